"""helpers.explain on the real exceptions, produced by running the mistakes for real.

SQLite runs everywhere; the PostgreSQL-only pitfalls run with each driver (asyncpg, psycopg)
on the server DATABASE_URL selects, or on a local server at the default URL, and are skipped
when there is none (the PgBouncer one also when there is no pgbouncer program). The Alembic
pitfalls run in throw-away projects made by ``alembic init``, removed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    Date,
    DateTime,
    event,
    func,
    insert,
    literal,
    make_url,
    select,
    text,
    true,
)
from sqlalchemy.exc import MissingGreenlet, SAWarning, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, DynamicMapped, raiseload, relationship
from sqlalchemy.pool import NullPool

import helpers
from helpers import pgbouncer
from helpers.database import DatabaseConfigError, NotebookDatabase, configured_url, open_database
from helpers.explain import EXCLUDED, NOTEBOOKS, PITFALLS, SECTIONS, anchor, explain, find_pitfall, first_line
from helpers.models import Post, User
from helpers.sample_data import load_sample_data

ROOT = Path(__file__).resolve().parents[1]
LOCAL_POSTGRESQL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


@pytest.fixture(autouse=True)
def _collect_unawaited_cursors():
    """A MissingGreenlet leaves aiosqlite's un-awaited cursor coroutine behind: collect it quietly."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gc.collect()


@pytest.fixture
async def db() -> AsyncIterator[NotebookDatabase]:
    database = await open_database("test_explain")
    try:
        await load_sample_data(database.engine)
        yield database
    finally:
        await database.close()


@pytest.fixture(params=["asyncpg", "psycopg"])
async def pg(request: pytest.FixtureRequest) -> AsyncIterator[NotebookDatabase]:
    """A PostgreSQL database reached through each driver in turn."""
    url = configured_url()
    server = url if url is not None and url.get_backend_name() == "postgresql" else LOCAL_POSTGRESQL
    driver = f"postgresql+{request.param}"
    environ = {"DATABASE_URL": make_url(server).set(drivername=driver).render_as_string(False)}
    try:
        database = await open_database("test_explain_pg", environ=environ)
    except DatabaseConfigError as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    try:
        yield database
    finally:
        await database.close()


async def raised(action: Callable[[], Awaitable[object]]) -> BaseException:
    try:
        await action()
    except Exception as exc:
        return exc
    raise AssertionError("the mistake raised nothing")


@contextlib.contextmanager
def unawaited_coroutines_expected() -> Iterator[None]:
    """Refused I/O leaves a coroutine that never ran (Alembic's, a driver's): no warning for it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "coroutine .* was never awaited", RuntimeWarning)
        yield
        gc.collect()


async def now(function: Callable[..., object], *args: object) -> object:
    """Call a synchronous ``function`` inside the running event loop (a mistake for :func:`raised`)."""
    return function(*args)


def key_of(exc: BaseException) -> str | None:
    pitfall = find_pitfall(exc)
    return pitfall.key if pitfall else None


# --- each pitfall, for real ------------------------------------------------------------------


@pytest.mark.parametrize("recipe", [False, True], ids=["plain engine", "SQLite recipe"])
async def test_attribute_after_commit(db: NotebookDatabase, recipe: bool) -> None:
    """Both shapes explain() must know: the reload fails at the SELECT (StatementError on
    aiosqlite with 2.1), or, with the recipe's BEGIN, one step earlier (DBAPIError)."""
    engine = db.engine if recipe else create_async_engine(db.url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the pool logs the failed reset; not what is tested
            async with async_sessionmaker(engine)() as session:
                user = await session.get(User, 1)
                assert user is not None
                await session.commit()
                exc = await raised(lambda: asyncio.sleep(0, user.name))
    finally:
        if not recipe:
            await engine.dispose()
        else:  # SQLAlchemy 2.0 ends the broken connection without awaiting its worker thread:
            await asyncio.sleep(0.2)  # let it finish while this test's loop still runs
    assert type(exc).__name__ in ("StatementError", "DBAPIError", "MissingGreenlet")
    if isinstance(exc, StatementError):
        assert type(exc.orig).__name__ == "MissingGreenlet"
        assert str(exc).startswith("(sqlalchemy.exc.MissingGreenlet) greenlet_spawn has not been called")
    assert key_of(exc) == "expired-attribute"
    shown = str(explain(exc))
    assert "05_expire_on_commit.ipynb" in shown and "Pitfall:" in shown


async def test_lazy_relationship(db: NotebookDatabase) -> None:
    async with async_sessionmaker(db.engine)() as session:
        user = await session.get(User, 1)
        assert user is not None
        exc = await raised(lambda: asyncio.sleep(0, user.posts))
    assert key_of(exc) == "lazy-load"
    assert "06_lazy_loading.ipynb" in str(explain(exc))


async def test_detached_instance(db: NotebookDatabase) -> None:
    async with async_sessionmaker(db.engine)() as session:
        user = await session.get(User, 1)
        assert user is not None
    exc = await raised(lambda: asyncio.sleep(0, user.posts))
    assert type(exc).__name__ == "DetachedInstanceError"
    assert key_of(exc) == "detached"


async def test_lazy_raise(db: NotebookDatabase) -> None:
    async with async_sessionmaker(db.engine)() as session:
        user = (await session.scalars(select(User).options(raiseload("*")).where(User.id == 1))).one()
        exc = await raised(lambda: asyncio.sleep(0, user.posts))
    assert first_line(exc) == "InvalidRequestError: 'User.posts' is not available due to lazy='raise'"
    assert key_of(exc) == "lazy-raise"


async def test_session_query(db: NotebookDatabase) -> None:
    async with async_sessionmaker(db.engine)() as session:
        exc = await raised(lambda: asyncio.sleep(0, session.query(User)))  # type: ignore[attr-defined]
    assert first_line(exc) == "AttributeError: 'AsyncSession' object has no attribute 'query'"
    assert key_of(exc) == "session-query"


async def test_concurrent_session(db: NotebookDatabase) -> None:
    engine = db.create_engine(poolclass=NullPool)  # no warm connection: both tasks must connect
    session = async_sessionmaker(engine)()
    results = await asyncio.gather(
        session.execute(select(User)), session.execute(select(User)), return_exceptions=True
    )
    await session.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1
    assert "concurrent operations are not permitted" in str(errors[0])
    assert key_of(errors[0]) == "concurrent-session"
    assert "09_concurrency.ipynb" in str(explain(errors[0]))


async def test_illegal_state_change(db: NotebookDatabase) -> None:
    engine = db.create_engine(poolclass=NullPool)
    session = async_sessionmaker(engine)()
    results = await asyncio.gather(session.execute(select(User)), session.close(), return_exceptions=True)
    await session.close()
    errors = [r for r in results if isinstance(r, BaseException)]
    assert [type(e).__name__ for e in errors] == ["IllegalStateChangeError"]
    assert key_of(errors[0]) == "illegal-state-change"


async def test_pool_timeout(db: NotebookDatabase) -> None:
    engine = db.create_engine(pool_size=1, max_overflow=0, pool_timeout=0.05)
    async with engine.connect():
        exc = await raised(engine.connect)
    assert first_line(exc).startswith("TimeoutError: QueuePool limit of size 1 overflow 0 reached")
    assert key_of(exc) == "pool-timeout"


async def test_bad_dialect() -> None:
    exc = await raised(lambda: asyncio.sleep(0, create_async_engine("sqlite_aiosqlite:///:memory:")))
    assert first_line(exc) == "NoSuchModuleError: Can't load plugin: sqlalchemy.dialects:sqlite_aiosqlite"
    assert key_of(exc) == "bad-dialect"


async def test_sync_driver() -> None:
    exc = await raised(lambda: asyncio.sleep(0, create_async_engine("sqlite://")))
    assert key_of(exc) == "sync-driver"


def test_greenlet_missing() -> None:
    """Block greenlet in a child interpreter: 2.1 refuses the import, 2.0 the first query."""
    code = (
        "import asyncio, sys; sys.modules['greenlet'] = None\n"
        "async def first_query():\n"
        "    from sqlalchemy import text\n"
        "    from sqlalchemy.ext.asyncio import create_async_engine\n"
        "    engine = create_async_engine('sqlite+aiosqlite://')\n"
        "    async with engine.connect() as conn:\n"
        "        await conn.execute(text('SELECT 1'))\n"
        "try:\n    asyncio.run(first_query())\n"
        "except (ImportError, ValueError) as exc:\n"
        "    del sys.modules['greenlet']  # let helpers import SQLAlchemy again\n"
        "    from helpers.explain import find_pitfall\n"
        "    print(find_pitfall(exc).key)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "greenlet-missing"


async def test_commit_during_a_query_on_one_connection(pg: NotebookDatabase) -> None:
    """asyncpg refuses the commit; psycopg makes it wait for the query (notebook 09 says so)."""
    engine: AsyncEngine = pg.create_engine(poolclass=NullPool)
    session = async_sessionmaker(engine)()
    await session.execute(text("SELECT 1"))  # the session now holds one connection
    steps: list[str] = []

    async def query() -> None:
        await session.execute(text("SELECT pg_sleep(0.05)"))
        steps.append("query")

    async def commit() -> None:
        await session.commit()
        steps.append("commit")

    results = await asyncio.gather(query(), commit(), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    await session.close()
    if pg.driver == "asyncpg":
        assert len(errors) == 1 and steps == ["query"]
        assert "another operation is in progress" in first_line(errors[0])
        assert key_of(errors[0]) == "asyncpg-concurrent"
    else:
        assert errors == [] and steps == ["query", "commit"]


async def test_connection_closed_by_the_server(pg: NotebookDatabase) -> None:
    """Each driver words it differently; explain() knows both and names the class raised."""
    fragile = pg.create_engine(pool_size=1, max_overflow=0)
    try:
        async with fragile.connect() as conn:
            pid = await conn.scalar(text("SELECT pg_backend_pid()"))
        async with pg.engine.connect() as conn:
            assert await conn.scalar(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid})

        async def reuse() -> None:
            async with fragile.connect() as conn:
                await conn.execute(text("SELECT 1"))

        exc = await raised(reuse)
    finally:
        await fragile.dispose()
    expected = {"asyncpg": "InterfaceError", "psycopg": "OperationalError"}[pg.driver]
    assert type(exc).__name__ == expected
    assert key_of(exc) == "connection-closed"
    assert str(explain(exc)).startswith(f"{expected}: a pooled connection had been closed")


async def test_aware_datetime_for_a_timestamp_without_time_zone(pg: NotebookDatabase) -> None:
    """asyncpg refuses the aware value (its own entry, not naive-aware, whose TypeError it wraps);
    psycopg lets the server convert it to the session's TimeZone and drop the offset."""
    noon_in_cairo = datetime(2024, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    stamp = select(literal(noon_in_cairo, DateTime()))
    async with pg.engine.connect() as conn:
        await conn.execute(text("SET TimeZone = 'UTC'"))
        if pg.driver == "asyncpg":
            exc = await raised(lambda: conn.execute(stamp))
            assert "invalid input for query argument $1" in first_line(exc)
            assert key_of(exc) == "asyncpg-strict-types"
        else:
            assert await conn.scalar(stamp) == datetime(2024, 3, 1, 10, 0)  # 12:00 at UTC+2, in UTC


async def test_string_for_a_date_parameter(pg: NotebookDatabase) -> None:
    """asyncpg wants a date object; psycopg sends the text and the server parses it."""
    day = select(literal("2024-03-01", Date()))
    async with pg.engine.connect() as conn:
        if pg.driver == "asyncpg":
            exc = await raised(lambda: conn.execute(day))
            assert "invalid input for query argument $1: '2024-03-01'" in first_line(exc)
            assert key_of(exc) == "asyncpg-strict-types"
        else:
            assert await conn.scalar(day) == date(2024, 3, 1)


# --- notebook 13: migrations ------------------------------------------------------------------


@contextlib.contextmanager
def alembic_project(template: str, url: str) -> Iterator[Config]:
    """A throw-away project made by ``alembic init -t template``, set to ``url``; removed after."""
    folder = Path(tempfile.mkdtemp(prefix="test-explain-alembic-"))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # init names each file it writes
            command.init(Config(str(folder / "alembic.ini")), str(folder / "migrations"), template=template)
        config = Config()
        config.set_main_option("script_location", str(folder / "migrations"))
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        yield config
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def test_alembic_command_in_a_running_loop() -> None:
    """The async env.py's asyncio.run() refuses this test's loop; a worker thread has none."""
    with alembic_project("async", "sqlite+aiosqlite://") as cfg:
        with unawaited_coroutines_expected():
            exc = await raised(lambda: now(command.upgrade, cfg, "head"))
            first, key = first_line(exc), key_of(exc)
            del exc  # its frames hold the coroutine that asyncio.run() refused
        await asyncio.to_thread(command.upgrade, cfg, "head")  # the fix
    assert first == "RuntimeError: asyncio.run() cannot be called from a running event loop"
    assert key == "alembic-running-loop"


@pytest.mark.parametrize("url", ["sqlite://", "postgresql+psycopg2://user@localhost/db"])
async def test_sync_url_in_the_async_env_py(url: str) -> None:
    """Notebook 01's message (or psycopg2 missing); the traceback through env.py tells them apart."""
    with alembic_project("async", url) as cfg:
        exc = await raised(lambda: asyncio.to_thread(command.upgrade, cfg, "head"))
    assert type(exc).__name__ in ("InvalidRequestError", "ModuleNotFoundError")
    assert key_of(exc) == "alembic-sync-url"
    assert key_of(await raised(lambda: asyncio.sleep(0, create_async_engine("sqlite://")))) == "sync-driver"


async def test_missing_greenlet_from_a_sync_env_py(db: NotebookDatabase) -> None:
    """The message of a lazy load, told apart by the traceback; a bare one names every cause."""
    with alembic_project("generic", "sqlite+aiosqlite://") as cfg, unawaited_coroutines_expected():
        exc = await raised(lambda: now(command.upgrade, cfg, "head"))
    assert type(exc).__name__ == "MissingGreenlet"
    assert key_of(exc) == "alembic-sync-env"
    async with async_sessionmaker(db.engine)() as session:
        user = await session.get(User, 1)
        assert user is not None
        lazy = await raised(lambda: asyncio.sleep(0, user.posts))
    message = str(exc).split(" (Background")[0]
    assert message in str(lazy).splitlines()[0]  # the same message (wrapped in a StatementError, or not)
    assert key_of(lazy) == "lazy-load"
    bare = str(explain(MissingGreenlet(str(exc))))
    for notebook in ("05_expire_on_commit", "06_lazy_loading", "13_migrations", "16_async_meets_sync"):
        assert notebook in bare


async def test_sync_env_py_on_postgresql(pg: NotebookDatabase) -> None:
    """asyncpg fails in the sync env.py like aiosqlite; psycopg has a sync mode and works."""
    with alembic_project("generic", pg.url.render_as_string(hide_password=False)) as cfg:
        if pg.driver == "asyncpg":
            with unawaited_coroutines_expected():
                exc = await raised(lambda: now(command.upgrade, cfg, "head"))
            assert key_of(exc) == "alembic-sync-env"
        else:
            await asyncio.to_thread(command.upgrade, cfg, "head")


def add_active_column(conn: Connection, server_default: bool = False) -> None:
    """Revision 0002 of notebook 13: users.active, NOT NULL (with or without a server default)."""
    column: Column[bool] = Column(
        "active", Boolean(), nullable=False, server_default=true() if server_default else None
    )
    Operations(MigrationContext.configure(conn)).add_column("users", column)


async def not_null_column_then_the_fix(engine: AsyncEngine) -> BaseException:
    """Add the column to the users table (which has rows), then the fixed column; the first error."""

    async def add_column() -> None:
        async with engine.begin() as conn:
            await conn.run_sync(add_active_column)

    exc = await raised(add_column)
    async with engine.begin() as conn:
        await conn.run_sync(add_active_column, True)
        assert set(await conn.scalars(text("SELECT active FROM users"))) == {True}
    return exc


async def test_not_null_column_on_a_table_with_rows(db: NotebookDatabase) -> None:
    exc = await not_null_column_then_the_fix(db.engine)
    if db.is_sqlite:  # PostgreSQL: the next test, with each driver
        assert first_line(exc).startswith(
            "OperationalError: (sqlite3.OperationalError) Cannot add a NOT NULL"
        )
    assert key_of(exc) == "not-null-column"


async def test_not_null_column_on_postgresql(pg: NotebookDatabase) -> None:
    await load_sample_data(pg.engine)
    exc = await not_null_column_then_the_fix(pg.engine)
    assert type(exc).__name__ == "IntegrityError"
    assert key_of(exc) == "not-null-column"
    assert str(explain(exc)).startswith("IntegrityError: a NOT NULL column")


# --- notebook 14: PostgreSQL in production ----------------------------------------------------


async def two_clients(engine: AsyncEngine) -> None:
    """Notebook 14's workload: two clients in turn (6 transactions each), then side by side."""
    query = select(literal(1))
    async with engine.connect() as a, engine.connect() as b:
        for client in (a, b):
            for _ in range(6):  # psycopg prepares a query at its 5th run
                await client.scalar(query)
                await client.commit()
        await a.scalar(query)  # a keeps its server connection (its transaction is open),
        await b.scalar(query)  # so b runs on the other one


@pytest.mark.parametrize("poolclass", [None, NullPool], ids=["QueuePool", "NullPool"])
async def test_prepared_statements_behind_pgbouncer(pg: NotebookDatabase, poolclass: type | None) -> None:
    """Each driver's error in PgBouncer's transaction mode (NullPool changes nothing)."""
    if not pgbouncer.available(minimum=(0, 0)):  # the error needs any PgBouncer, the fix 1.21
        pytest.skip("no pgbouncer program")
    bouncer = await pgbouncer.start_pgbouncer(pg.url, max_prepared_statements=0)
    engine = create_async_engine(bouncer.url, **({"poolclass": poolclass} if poolclass else {}))
    try:
        exc = await raised(lambda: two_clients(engine))
    finally:
        await engine.dispose()
        bouncer.stop()
    expected = {"asyncpg": "DBAPIError", "psycopg": "ProgrammingError"}[pg.driver]
    assert type(exc).__name__ == expected
    assert key_of(exc) == "pgbouncer-prepared"
    assert str(explain(exc)).startswith(f"{expected}: a prepared statement")


async def test_statement_timeout(pg: NotebookDatabase) -> None:
    async def slow() -> None:
        async with pg.engine.begin() as conn:
            await conn.execute(text("SET LOCAL statement_timeout = '50ms'"))
            await conn.execute(select(func.pg_sleep(1)))

    exc = await raised(slow)
    expected = {"asyncpg": "DBAPIError", "psycopg": "OperationalError"}[pg.driver]
    assert type(exc).__name__ == expected
    assert key_of(exc) == "statement-timeout"


async def test_isolation_level_after_the_transaction_began(db: NotebookDatabase) -> None:
    """A session warns (made an error here, as a test suite should); a connection refuses."""
    async with AsyncSession(db.engine) as session:
        await session.get(User, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("error", SAWarning)
            warned = await raised(
                lambda: session.connection(execution_options={"isolation_level": "SERIALIZABLE"})
            )
    async with db.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        refused = await raised(lambda: conn.execution_options(isolation_level="SERIALIZABLE"))
    assert type(warned).__name__ == "SAWarning" and type(refused).__name__ == "InvalidRequestError"
    assert key_of(warned) == key_of(refused) == "late-isolation-level"


# --- notebook 15: beyond CRUD -----------------------------------------------------------------


@pytest.mark.parametrize(
    "target, event_name, key",
    [
        ("engine", "connect", "engine-listener"),
        ("session", "before_flush", "engine-listener"),  # an AsyncSession object names sync_session
        ("AsyncSession", "before_flush", "session-listener"),
        ("factory", "before_flush", "session-listener"),
    ],
)
async def test_listener_on_an_asyncio_object(target: str, event_name: str, key: str) -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    targets = {
        "engine": engine,
        "session": AsyncSession(engine),
        "AsyncSession": AsyncSession,
        "factory": async_sessionmaker(engine),
    }
    exc = await raised(lambda: now(event.listen, targets[target], event_name, lambda *a: None))
    await engine.dispose()
    assert key_of(exc) == key
    assert "15_beyond_crud.ipynb" in str(explain(exc))


class Legacy(DeclarativeBase):
    pass


class OldUser(Legacy):
    """The users table mapped as before 2.0: posts as a dynamic relationship (notebook 15)."""

    __table__ = User.__table__
    posts: DynamicMapped[Post] = relationship(Post, lazy="dynamic", viewonly=True)


async def dynamic_query(engine: AsyncEngine) -> BaseException:
    async with AsyncSession(engine) as session:
        user = await session.get(OldUser, 1)
        assert user is not None
        return await raised(lambda: asyncio.sleep(0, user.posts.all()))


async def test_dynamic_relationship(db: NotebookDatabase) -> None:
    exc = await dynamic_query(db.engine)
    assert "MissingGreenlet" in (type(exc).__name__, type(getattr(exc, "orig", None)).__name__)
    assert key_of(exc) == "dynamic-relationship"


async def test_dynamic_relationship_on_postgresql(pg: NotebookDatabase) -> None:
    await load_sample_data(pg.engine)
    assert key_of(await dynamic_query(pg.engine)) == "dynamic-relationship"


async def test_generic_insert_has_no_upsert() -> None:
    exc = await raised(
        lambda: asyncio.sleep(0, insert(User).on_conflict_do_update(index_elements=[User.name]))  # type: ignore[attr-defined]
    )
    assert first_line(exc) == "AttributeError: 'Insert' object has no attribute 'on_conflict_do_update'"
    assert key_of(exc) == "generic-insert-upsert"


async def test_execute_with_yield_per(db: NotebookDatabase) -> None:
    async with AsyncSession(db.engine) as session:
        exc = await raised(lambda: session.execute(select(User).execution_options(yield_per=2)))
    assert type(exc).__name__ == "AsyncMethodRequired"
    assert key_of(exc) == "execute-yield-per"


# --- notebook 16: where async meets sync ------------------------------------------------------


async def test_sync_engine_in_synchronous_code(db: NotebookDatabase) -> None:
    """sync_engine used by plain sync code (in a thread): the general entry, taught in 16."""
    engine = create_async_engine(db.url)  # new: its first connect is the first I/O

    def user_names() -> list[str]:
        with engine.sync_engine.connect() as conn:
            return list(conn.scalars(select(User.name)))

    try:
        with unawaited_coroutines_expected():
            exc = await raised(lambda: asyncio.to_thread(user_names))
        async with engine.connect() as conn:  # the fix: the same function inside run_sync()
            assert len(await conn.run_sync(lambda sync_conn: list(sync_conn.scalars(select(User.name))))) == 4
    finally:
        await engine.dispose()
    assert type(exc).__name__ == "MissingGreenlet"
    assert key_of(exc) == "missing-greenlet"
    assert '16_async_meets_sync.ipynb § "Pitfall: handing `sync_engine`' in str(explain(exc))


async def test_orm_objects_in_a_thread(db: NotebookDatabase) -> None:
    """A lazy load in a worker thread is the lazy-load entry, which links notebook 16 too."""
    async with AsyncSession(db.engine) as session:
        users = (await session.scalars(select(User))).all()
        exc = await raised(lambda: asyncio.to_thread(lambda: [len(user.posts) for user in users]))
    assert key_of(exc) == "lazy-load"
    assert "16_async_meets_sync.ipynb" in str(explain(exc))


async def test_pandas_with_an_async_engine(db: NotebookDatabase) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pandas does not know the object
        exc = await raised(lambda: now(pd.read_sql, select(User.name), db.engine))
    assert first_line(exc) == "TypeError: Query must be a string unless using sqlalchemy."
    assert key_of(exc) == "pandas-async-engine"
    async with db.engine.connect() as conn:  # the fix
        frame = await conn.run_sync(lambda sync_conn: pd.read_sql(select(User.name), sync_conn))
    assert len(frame) == 4


async def test_session_used_after_it_was_closed_for_good(db: NotebookDatabase) -> None:
    async with async_sessionmaker(db.engine, close_resets_only=False)() as session:
        pass
    exc = await raised(lambda: session.scalar(select(User.name)))
    assert type(exc).__name__ == "InvalidRequestError"
    assert key_of(exc) == "closed-session-reused"


def test_pgbouncer_rows_are_live_only_with_pgbouncer(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [p for p in PITFALLS if p.requires == "pgbouncer"]
    assert rows
    for installed in (False, True):
        monkeypatch.setattr(pgbouncer, "available", lambda *args, installed=installed: installed)
        for p in rows:
            assert p.live_on("postgresql", "asyncpg") is installed
            assert not p.live_on("sqlite", "aiosqlite")


# --- the table and the display --------------------------------------------------------------


def test_unknown_exception_gets_a_fallback() -> None:
    shown = str(explain(ZeroDivisionError("division by zero")))
    assert shown.splitlines()[0] == "ZeroDivisionError: division by zero"
    assert "12_pitfall_cheat_sheet.ipynb" in shown


def test_a_bare_missing_greenlet_still_gets_the_general_entry() -> None:
    from sqlalchemy.exc import MissingGreenlet

    assert key_of(MissingGreenlet("greenlet_spawn has not been called")) == "missing-greenlet"


def test_explain_without_argument_reads_the_last_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        sys, "last_value", AttributeError("'AsyncSession' object has no attribute 'query'"), raising=False
    )
    monkeypatch.delattr(sys, "last_exc", raising=False)
    assert explain().pitfall is not None
    monkeypatch.delattr(sys, "last_value")
    with pytest.raises(ValueError, match="no exception to explain"):
        explain()


def test_table_is_well_formed() -> None:
    keys = [p.key for p in PITFALLS]
    assert len(keys) == len(set(keys))
    assert max(map(len, keys)) <= 22  # the width of the key column in notebook 12's list of errors
    for p in PITFALLS:
        assert (ROOT / "notebooks").joinpath(p.notebook).suffix == ".ipynb"
        assert len(f"  cause: {p.cause}") <= 110 and len(f"  fix:   {p.fix}") <= 110, p.key
        assert " " not in p.anchor
        assert p.section in SECTIONS and all(key in SECTIONS for key in p.also), p.key
        # a recorded text exactly where the cheat sheet cannot raise the error without a server,
        # per driver that raises it; what the other driver does instead, where only one does
        assert p.backend != "postgresql" or p.seen, p.key  # a record for SQLite runs
        assert p.backend != "sqlite" or not p.seen, p.key
        assert set(p.seen) <= {"asyncpg", "psycopg"}, p.key
        assert bool(p.elsewhere) == (p.backend == "postgresql" and len(p.seen) == 1), p.key
        assert len(f"- other drivers: {p.elsewhere}") <= 110, p.key
        assert all(text.split(": ")[0] in p.errors for text in p.seen.values()), p.key
    assert PITFALLS[-1].key == "missing-greenlet"  # the general entry comes last


def test_sections_name_known_notebooks() -> None:
    for key, section in SECTIONS.items():
        assert section.topic in NOTEBOOKS, key
        assert section.link == f"{NOTEBOOKS[section.topic]}#{anchor(section.heading)}"
    assert set(EXCLUDED) <= set(SECTIONS)
    assert NOTEBOOKS["cheat_sheet"] in str(explain(ZeroDivisionError("x")))


def test_explain_is_exported() -> None:
    assert helpers.explain is explain
