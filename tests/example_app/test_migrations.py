"""The migrations in migrations/versions build the schema the models describe, and undo it.

``compare_metadata`` is what ``alembic revision --autogenerate`` runs: the list of changes a
new revision would need to bring the database to the models. After ``upgrade head`` it must
be empty; a model changed without a migration makes it fail (and says what is missing).
"""

from collections.abc import Callable

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from example_app.conftest import alembic_config
from helpers import open_database
from helpers.models import Base


def model_changes_without_migration(connection: Connection) -> list[object]:
    return compare_metadata(MigrationContext.configure(connection), Base.metadata)


async def test_migrations_match_the_models(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        assert await conn.run_sync(model_changes_without_migration) == []


def tables(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


async def run(engine: AsyncEngine, step: Callable[[Config, str], None], revision: str) -> set[str]:
    """Run one Alembic command on a connection of ``engine``; return the tables it left."""
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync_conn: step(alembic_config(sync_conn), revision))
        return await conn.run_sync(tables)


async def test_downgrade_to_base_and_upgrade_again() -> None:
    db = await open_database("example_app_migrations")  # an empty database of its own
    engine = create_async_engine(db.url)
    try:
        models = {*Base.metadata.tables, "alembic_version"}
        assert await run(engine, command.upgrade, "head") == models
        assert await run(engine, command.downgrade, "base") == {"alembic_version"}
        assert await run(engine, command.upgrade, "head") == models
    finally:
        await engine.dispose()
        await db.close()
