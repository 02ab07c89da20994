"""Alembic's environment for the example app: the async template, with two changes.

* ``target_metadata`` is the models' metadata, so ``alembic revision --autogenerate`` compares
  the database with ``helpers.models``.
* A caller that already has a connection (the tests, an app at start-up) passes it in
  ``config.attributes["connection"]`` from inside ``AsyncConnection.run_sync()``; the
  migrations then run on it, in the caller's event loop and transaction. Without one (the
  ``alembic`` command line), env.py makes its own engine and runs it with ``asyncio.run()``.
"""

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config

from helpers.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    """``alembic upgrade --sql``: write the SQL out instead of running it."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    """Alembic's migrations are synchronous code: they get the sync face of the connection."""
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations() -> None:
    """The command line's way: a short-lived engine, and ``run_sync`` into the migrations."""
    connectable = async_engine_from_config(
        config.get_section(config.config_ini_section, {}),
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    async with connectable.connect() as connection:
        await connection.run_sync(do_run_migrations)
    await connectable.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        if config.config_file_name is not None:
            fileConfig(config.config_file_name)  # the command line's logging, from alembic.ini
        asyncio.run(run_async_migrations())
    else:
        do_run_migrations(connection)  # already inside the caller's run_sync()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
