"""Fixtures for testing the example app against a real database, SQLite or PostgreSQL.

Every async fixture and test runs on one event loop for the whole test session: that is the
configuration in pyproject.toml (``asyncio_default_fixture_loop_scope`` and
``asyncio_default_test_loop_scope``), so no fixture or module has to say it. An engine's
pooled connections belong to the loop that opened them.

* ``database``: a private database from ``helpers.open_database`` (DATABASE_URL picks the
  backend), removed at the end of the test session.
* ``engine``: one engine for the whole session, with the tables created once. On SQLite it
  gets SQLAlchemy's transaction recipe right where it is created, and only there.
* ``session``: per test, an ``AsyncSession`` inside a transaction that is rolled back at the
  end, so every test starts from the same empty tables. ``create_savepoint`` turns the
  app's own ``commit()`` into a RELEASE SAVEPOINT inside that transaction.
* ``client``: an httpx client calling the app in-process, with ``get_session`` overridden to
  hand out the test's session.
"""

from collections.abc import AsyncIterator
from typing import Any

import pytest
from httpx import ASGITransport, AsyncClient
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from example_app.app import create_app, get_session
from helpers import NotebookDatabase, open_database
from helpers.models import Base


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
        await conn.run_sync(Base.metadata.create_all)
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
