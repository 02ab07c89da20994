"""Fixtures for testing the example app against a real database, SQLite or PostgreSQL.

Every async fixture and test runs on one event loop for the whole test session: that is the
configuration in pyproject.toml (``asyncio_default_fixture_loop_scope`` and
``asyncio_default_test_loop_scope``), so no fixture or module has to say it. An engine's
pooled connections belong to the loop that opened them.

* ``database``: a private database from ``helpers.open_database`` (DATABASE_URL picks the
  backend), removed at the end of the test session.
* ``engine``: one engine for the whole session. Its schema is built once by the project's
  migrations (``alembic upgrade head`` on the engine's own connection: ``alembic_config``),
  as in production, not by ``create_all``. On SQLite it gets SQLAlchemy's transaction recipe
  right where it is created, and only there.
* ``session``: per test, an ``AsyncSession`` inside a transaction that is rolled back at the
  end, so every test starts from the same empty tables. ``create_savepoint`` turns the
  app's own ``commit()`` into a RELEASE SAVEPOINT inside that transaction.
* ``client``: an httpx client calling the app in-process, with ``get_session`` overridden to
  hand out the test's session.
"""

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from httpx import ASGITransport, AsyncClient
from sqlalchemy import Connection, event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from example_app.app import create_app, get_session
from helpers import NotebookDatabase, open_database


def use_sqlalchemy_begin(engine: AsyncEngine) -> None:
    """SQLAlchemy's recipe for (aio)sqlite: SQLAlchemy, not the driver, emits BEGIN.

    The driver's legacy transaction mode sends no BEGIN before a SELECT or a SAVEPOINT, so a
    released savepoint is committed and the test's final ROLLBACK cannot undo it. Apply this
    once per engine: each listener runs on every event, and a second BEGIN fails.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _driver_stops_beginning(dbapi_connection: Any, connection_record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _sqlalchemy_begins(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")


def alembic_config(connection: Connection) -> Config:
    """This project's alembic.ini, with a connection for env.py to run the migrations on.

    Call it inside ``AsyncConnection.run_sync()``: env.py then uses that connection instead
    of making an engine and calling ``asyncio.run()``, which cannot run in a running loop.
    """
    config = Config(Path(__file__).with_name("alembic.ini"))
    config.attributes["connection"] = connection
    return config


@pytest.fixture(scope="session")
async def database() -> AsyncIterator[NotebookDatabase]:
    db = await open_database("example_app_tests")
    try:
        yield db
    finally:
        await db.close()  # drops the private database


@pytest.fixture(scope="session")
async def engine(database: NotebookDatabase) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database.url)
    if engine.dialect.name == "sqlite":
        use_sqlalchemy_begin(engine)
    async with engine.begin() as conn:
        await conn.run_sync(lambda sync_conn: command.upgrade(alembic_config(sync_conn), "head"))
    yield engine
    await engine.dispose()


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with engine.connect() as conn:
        transaction = await conn.begin()
        session = AsyncSession(bind=conn, join_transaction_mode="create_savepoint")
        try:
            yield session
        finally:
            await session.close()
            await transaction.rollback()  # undo everything the test wrote, committed or not


@pytest.fixture
async def client(session: AsyncSession, database: NotebookDatabase) -> AsyncIterator[AsyncClient]:
    app = create_app(database.url)  # its lifespan is not entered: no second engine is needed

    async def test_session() -> AsyncIterator[AsyncSession]:
        yield session

    app.dependency_overrides[get_session] = test_session
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client:
        yield client
