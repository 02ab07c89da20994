"""Fixtures for testing the example app against a real database, SQLite or PostgreSQL.

* ``database``: a private database from ``helpers.open_database`` (DATABASE_URL picks the
  backend), removed at the end of the test session.
* ``engine``: one engine for the whole session, with the tables created once. It lives on
  the session's event loop (``loop_scope="session"``), and so do the tests (see
  ``pytestmark`` in test_app.py): an engine's pooled connections belong to one loop.
* ``session``: per test, an ``AsyncSession`` inside a transaction that is rolled back at the
  end, so every test starts from the same empty tables. ``create_savepoint`` turns the
  app's own ``commit()``/``session.begin()`` into SAVEPOINTs inside that transaction.
* ``client``: an httpx client calling the app in-process, with ``get_session`` overridden to
  hand out the test's session.
"""

from collections.abc import AsyncIterator

import pytest_asyncio
from httpx import ASGITransport, AsyncClient
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from example_app.app import create_app, get_session
from helpers import NotebookDatabase, open_database
from helpers.models import Base


def enable_sqlite_savepoints(engine: AsyncEngine) -> None:
    """SQLAlchemy's documented recipe: let SQLAlchemy, not the driver, emit BEGIN on SQLite.

    The sqlite3/aiosqlite driver's legacy transaction mode does not BEGIN before a SAVEPOINT,
    so a released savepoint is committed and the test's final ROLLBACK cannot undo it.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def do_connect(dbapi_connection, connection_record):
        dbapi_connection.isolation_level = None  # the driver stops emitting BEGIN itself

    @event.listens_for(engine.sync_engine, "begin")
    def do_begin(conn):
        conn.exec_driver_sql("BEGIN")  # SQLAlchemy emits it when a transaction starts


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def database() -> AsyncIterator[NotebookDatabase]:
    db = await open_database("example_app_tests")
    try:
        yield db
    finally:
        await db.close()  # disposes the engines made by db.create_engine(), drops the database


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def engine(database: NotebookDatabase) -> AsyncIterator[AsyncEngine]:
    engine = database.create_engine()
    if database.is_sqlite:
        enable_sqlite_savepoints(engine)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    yield engine
    await engine.dispose()


@pytest_asyncio.fixture(loop_scope="session")
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with engine.connect() as conn:
        transaction = await conn.begin()
        session = AsyncSession(bind=conn, join_transaction_mode="create_savepoint")
        try:
            yield session
        finally:
            await session.close()
            await transaction.rollback()  # undo everything the test wrote, committed or not


@pytest_asyncio.fixture(loop_scope="session")
async def client(session: AsyncSession, database: NotebookDatabase) -> AsyncIterator[AsyncClient]:
    app = create_app(database.url)  # its lifespan is not entered: no second engine is needed

    async def test_session() -> AsyncIterator[AsyncSession]:
        yield session

    app.dependency_overrides[get_session] = test_session
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client:
        yield client
