"""helpers.explain on the real exceptions, produced by running the mistakes for real.

SQLite runs everywhere; the PostgreSQL-only pitfall (asyncpg's "another operation is in
progress") runs when DATABASE_URL selects PostgreSQL, or when a local server answers at the
default URL, and is skipped otherwise.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import raiseload
from sqlalchemy.pool import NullPool

import helpers
from helpers.database import DatabaseConfigError, NotebookDatabase, configured_url, open_database
from helpers.explain import EXCLUDED, NOTEBOOKS, PITFALLS, SECTIONS, anchor, explain, find_pitfall, first_line
from helpers.models import User
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


@pytest.fixture
async def pg() -> AsyncIterator[NotebookDatabase]:
    url = configured_url()
    environ = (
        None
        if url is not None and url.get_backend_name() == "postgresql"
        else {"DATABASE_URL": LOCAL_POSTGRESQL}
    )
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
        exc = await raised(lambda: asyncio.sleep(0, user.posts))
    assert key_of(exc) == "lazy-load"
    assert "06_lazy_loading.ipynb" in str(explain(exc))


async def test_detached_instance(db: NotebookDatabase) -> None:
    async with async_sessionmaker(db.engine)() as session:
        user = await session.get(User, 1)
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


async def test_asyncpg_another_operation(pg: NotebookDatabase) -> None:
    engine: AsyncEngine = pg.create_engine(poolclass=NullPool)
    session = async_sessionmaker(engine)()
    await session.execute(text("SELECT 1"))  # the session now holds one connection
    results = await asyncio.gather(
        session.execute(text("SELECT pg_sleep(0.05)")), session.commit(), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    await session.close()
    assert len(errors) == 1
    assert "another operation is in progress" in first_line(errors[0])
    assert key_of(errors[0]) == "asyncpg-concurrent"


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
    for p in PITFALLS:
        assert (ROOT / "notebooks").joinpath(p.notebook).suffix == ".ipynb"
        assert len(f"  cause: {p.cause}") <= 110 and len(f"  fix:   {p.fix}") <= 110, p.key
        assert " " not in p.anchor
        assert p.section in SECTIONS and all(key in SECTIONS for key in p.also), p.key
        # a recorded text exactly where the cheat sheet cannot raise the error without a server
        assert bool(p.seen) == (p.backend == "postgresql"), p.key
    assert PITFALLS[-1].key == "missing-greenlet"  # the general entry comes last


def test_sections_name_known_notebooks() -> None:
    for key, section in SECTIONS.items():
        assert section.topic in NOTEBOOKS, key
        assert section.link == f"{NOTEBOOKS[section.topic]}#{anchor(section.heading)}"
    assert set(EXCLUDED) <= set(SECTIONS)
    assert NOTEBOOKS["cheat_sheet"] in str(explain(ZeroDivisionError("x")))


def test_explain_is_exported() -> None:
    assert helpers.explain is explain
