"""Explain an exception a learner just hit: what caused it, how to fix it, where it is taught.

    try:
        user.name
    except Exception as exc:
        explain(exc)

or, in the cell after one that failed, simply ``explain()`` (it reads the last exception
IPython showed). The answer is two lines (cause, fix) and the notebook section that
demonstrates the pitfall live (and the sections that show the same error elsewhere):

    MissingGreenlet: an expired attribute was read without an await.
      cause: commit() expired the object (or a server value was never fetched); reloading it is I/O.
      fix:   read before commit(), expire_on_commit=False, await session.refresh(obj), or awaitable_attrs.
      learn: notebooks/05_expire_on_commit.ipynb § "Pitfall: reading an attribute after commit"
      also:  notebooks/05_expire_on_commit.ipynb § "Pitfall: values the database computes on UPDATE"

Errors that share a message (a ``MissingGreenlet`` from a lazy load, from an expired attribute,
from Alembic's sync ``env.py``) are told apart by the functions their traceback passed through;
without such a clue the general entry names the possible causes.

:data:`PITFALLS` is the single table behind :func:`explain` and the pitfall cheat sheet
(notebook 12), so the two cannot drift apart. Where each pitfall is taught is kept apart, in
:data:`NOTEBOOKS` (file names) and :data:`SECTIONS` (headings): renumbering a notebook or
renaming a heading means changing one line there. ``tests/test_cheat_sheet.py`` checks that
every heading named there exists in its notebook.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "EXCLUDED",
    "NOTEBOOKS",
    "PITFALLS",
    "RECORDED_WITH",
    "SECTIONS",
    "Explanation",
    "Pitfall",
    "Section",
    "anchor",
    "explain",
    "find_pitfall",
    "first_line",
]


def first_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"``, as a learner sees it at the bottom of a traceback."""
    text = str(exc).split("\n", 1)[0].strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def anchor(heading: str) -> str:
    """A markdown heading's anchor as JupyterLab builds it: rendered text, spaces turned into '-'."""
    return heading.replace("`", "").replace(" ", "-")


# --- where each pitfall is taught: the one place to update ------------------------------------

#: The notebooks, by topic. Renumbering or renaming a notebook means changing one line here.
NOTEBOOKS: dict[str, str] = {
    "start": "00_start_here.ipynb",
    "engine": "01_engine_setup.ipynb",
    "models": "02_models_and_schema.ipynb",
    "sessions": "03_session_factories.ipynb",
    "crud": "04_crud.ipynb",
    "expire": "05_expire_on_commit.ipynb",
    "lazy": "06_lazy_loading.ipynb",
    "transactions": "07_transactions.ipynb",
    "locking": "08_locking_and_isolation.ipynb",
    "concurrency": "09_concurrency.ipynb",
    "fastapi": "10_fastapi.ipynb",
    "testing": "11_testing.ipynb",
    "cheat_sheet": "12_pitfall_cheat_sheet.ipynb",
    "migrations": "13_migrations.ipynb",
    "production": "14_postgresql_in_production.ipynb",
    "beyond_crud": "15_beyond_crud.ipynb",
    "async_sync": "16_async_meets_sync.ipynb",
    "performance": "17_performance.ipynb",
}


@dataclass(frozen=True)
class Section:
    """A section of a notebook: the topic key of :data:`NOTEBOOKS` and the exact heading text."""

    topic: str
    heading: str  #: the markdown heading without its leading '#'s

    @property
    def notebook(self) -> str:
        """The file name inside ``notebooks/``."""
        return NOTEBOOKS[self.topic]

    @property
    def anchor(self) -> str:
        return anchor(self.heading)

    @property
    def link(self) -> str:
        """A relative link from another notebook in ``notebooks/`` to the section."""
        return f"{self.notebook}#{self.anchor}"

    @property
    def label(self) -> str:
        """``"05 · reading an attribute after commit"``: the notebook's number and the heading."""
        return f"{self.notebook.split('_')[0]} · {self.heading.removeprefix('Pitfall: ')}"


#: Every section that a pitfall (or an exclusion below) refers to. When a heading changes in a
#: notebook, change it here; tests/test_cheat_sheet.py fails until every one exists.
SECTIONS: dict[str, Section] = {
    "setup-check": Section("start", "Check your set-up"),
    "bad-dialect": Section("engine", "Pitfall: `sqlite_aiosqlite://` is not a dialect"),
    "sync-driver": Section("engine", "Pitfall: a synchronous driver in `create_async_engine`"),
    "memory-pool-size": Section("engine", "Pitfall: `pool_size` on an in-memory database"),
    "exhausted-pool": Section("engine", "Pitfall: an exhausted pool"),
    "pool-timeout-except": Section("engine", "Pitfall: `except TimeoutError` does not catch a pool timeout"),
    "server-closed": Section("engine", "Pitfall: a connection the server closed"),
    "f-strings": Section("engine", "Pitfall: building SQL with f-strings"),
    "create-all": Section("models", "Pitfall: `metadata.create_all()` with an async engine"),
    "utcnow": Section("models", "Pitfall: `default=datetime.utcnow`"),
    "asyncpg-types": Section("models", "Pitfall: asyncpg refuses values of the wrong type"),
    "many-to-one": Section("models", "Pitfall: attaching an object from the many-to-one side only"),
    "never-closed": Section("sessions", "Pitfall: a session that is never closed"),
    "dependency-annotation": Section(
        "sessions", "Pitfall: annotating the dependency as returning `AsyncSession`"
    ),
    "one-or-none": Section("crud", "Pitfall: `scalar_one_or_none()` on a query that matches several rows"),
    "no-query": Section("crud", "Pitfall: `AsyncSession` has no `query()`"),
    "forgotten-await": Section("crud", "Pitfall: a forgotten `await`"),
    "forgotten-commit": Section("crud", "Pitfall: a forgotten `await session.commit()`"),
    "after-commit": Section("expire", "Pitfall: reading an attribute after commit"),
    "after-close": Section("expire", "Pitfall: using an object after its session closed"),
    "onupdate": Section("expire", "Pitfall: values the database computes on UPDATE"),
    "lazy": Section("lazy", "Pitfall: touching a lazy relationship"),
    "joined-unique": Section("lazy", "Pitfall: `joinedload()` of a collection without `.unique()`"),
    "lazy-raise": Section("lazy", 'Pitfall: lazy="raise" stops the query'),
    "response-after-close": Section("lazy", "Pitfall: building the response after the session closed"),
    "failed-flush": Section("transactions", "Pitfall: catching a failed flush without a savepoint"),
    "float-numeric": Section("transactions", "Pitfall: subtracting a float from a `Numeric` balance"),
    "no-lock": Section("locking", "Pitfall: one transaction, no lock"),
    "database-locked": Section("locking", 'Pitfall: "database is locked"'),
    "deadlock": Section("locking", "Pitfall: locking in opposite orders deadlocks (PostgreSQL)"),
    "gather": Section("concurrency", "Pitfall: one session shared by `asyncio.gather`"),
    "illegal-state": Section(
        "concurrency", "Pitfall: `IllegalStateChangeError` when `async with` closes a session in use"
    ),
    "another-operation": Section("concurrency", 'Pitfall: asyncpg\'s "another operation is in progress"'),
    "more-tasks": Section("concurrency", "Pitfall: more tasks than connections"),
    "background": Section("concurrency", "Pitfall: background work borrowing the request's session"),
    "second-loop": Section("concurrency", "Pitfall: an engine used from a second event loop"),
    "read-then-write": Section("concurrency", "Pitfall: a transaction that reads, then writes, on SQLite"),
    "lifespan": Section("fastapi", "Pitfall: ASGITransport does not run the lifespan"),
    "begin-in-service": Section("fastapi", "Pitfall: `session.begin()` in a service"),
    "orm-from-route": Section("fastapi", "Pitfall: returning an ORM object from a route"),
    "commit-after-yield": Section("fastapi", "Pitfall: committing after `yield` in the dependency"),
    "sqlite-rollback": Section("testing", "Pitfall: the rollback that does not roll back on SQLite"),
    "seeding": Section("testing", "Pitfall: seeding through the test's session"),
    "two-loops": Section("testing", "Pitfall: one engine, two event loops"),
    "alembic-running-loop": Section(
        "migrations", "Pitfall: `asyncio.run()` inside Jupyter's running event loop"
    ),
    "not-null-column": Section("migrations", "Pitfall: a NOT NULL column on a table that has rows"),
    "sync-url-env": Section("migrations", "Pitfall: a sync URL in the async `env.py`"),
    "sync-env": Section("migrations", "Pitfall: `MissingGreenlet` from a sync `env.py`"),
    "pgbouncer-prepared": Section("production", "Pitfall: prepared statements behind PgBouncer"),
    "nullpool-no-cure": Section("production", "Pitfall: `NullPool` is not the cure"),
    "statement-timeout": Section("production", "`statement_timeout`: the server's own limit"),
    "late-isolation": Section("production", "Pitfall: choosing the level after the transaction began"),
    "engine-listener": Section("beyond_crud", "Pitfall: a listener on the `AsyncEngine`"),
    "sqlite-orphan": Section("beyond_crud", "Pitfall: SQLite stores a row whose parent does not exist"),
    "session-listener": Section("beyond_crud", "Pitfall: listening on `AsyncSession`"),
    "dynamic": Section("beyond_crud", 'Pitfall: `lazy="dynamic"` under asyncio'),
    "generic-insert": Section(
        "beyond_crud", "Pitfall: the generic `insert()` has no `on_conflict_do_update()`"
    ),
    "yield-per": Section("beyond_crud", "Pitfall: `execute()` with `yield_per`"),
    "scoped-remove": Section("beyond_crud", "Pitfall: tasks that end without `remove()`"),
    "sync-engine": Section("async_sync", "Pitfall: handing `sync_engine` to synchronous code"),
    "pandas": Section("async_sync", "Pitfall: passing the `AsyncEngine` to pandas"),
    "orm-in-thread": Section("async_sync", "Pitfall: ORM objects handed to a thread"),
    "borrowed-session": Section(
        "async_sync", "Pitfall: a background task that borrows the request's session"
    ),
    "more-requests": Section("performance", "Pitfall: far more requests than connections"),
    "yield-per-scalars": Section("performance", "Pitfall: `yield_per` with `session.scalars()`"),
}

#: Pitfall sections whose demonstration raises, but whose exception is an ordinary symptom
#: rather than the pitfall's signature: the cheat sheet lists them with the reason instead.
EXCLUDED: dict[str, str] = {
    "f-strings": "the syntax error appears only for harmless input; hostile input runs as SQL",
    "commit-after-yield": "the IntegrityError comes after the response: the client was already told 201",
    "sqlite-orphan": "the IntegrityError is the foreign key at work; the pitfall is SQLite raising nothing",
}


# --- recognising an exception -----------------------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it wraps: the DBAPI ``orig`` of a StatementError, causes, contexts."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        for inner in (getattr(current, "orig", None), current.__cause__, current.__context__):
            if isinstance(inner, BaseException):
                todo.append(inner)


def _is(name: str, *texts: str) -> Callable[[BaseException], bool]:
    """Match an exception (or one it wraps) by class name and pieces of its message (all of them)."""

    def matches(exc: BaseException) -> bool:
        return any(type(e).__name__ == name and all(t in str(e) for t in texts) for e in _chain(exc))

    return matches


def _any(*tests: Callable[[BaseException], bool]) -> Callable[[BaseException], bool]:
    return lambda exc: any(test(exc) for test in tests)


def _all(*tests: Callable[[BaseException], bool]) -> Callable[[BaseException], bool]:
    return lambda exc: all(test(exc) for test in tests)


def _sqlstate(*codes: str) -> Callable[[BaseException], bool]:
    """Match a PostgreSQL error by its SQLSTATE, which asyncpg's and psycopg's exceptions both carry."""
    return lambda exc: any(getattr(e, "sqlstate", None) in codes for e in _chain(exc))


def _code(exc: BaseException) -> set[tuple[str, str]]:
    """(file, function) of every frame the exception (or anything it wraps) passed through."""
    found: set[tuple[str, str]] = set()
    for item in _chain(exc):
        tb = item.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            found.add((code.co_filename.replace("\\", "/"), code.co_name))
            tb = tb.tb_next
    return found


def _through(file_part: str, function: str | None = None) -> Callable[[BaseException], bool]:
    """Raised on the way through a file whose path contains ``file_part`` (and that function)."""
    return lambda exc: any(file_part in file and function in (None, name) for file, name in _code(exc))


def _frames(exc: BaseException) -> set[str]:
    """Names of the functions the exception (or anything it wraps) passed through."""
    return {name for _, name in _code(exc)}


#: Alembic runs a project's env.py from this function: an error whose traceback passed through
#: it happened while env.py ran.
_in_alembic_env = _through("alembic", "run_env")


def _missing_greenlet_via(*frames: str) -> Callable[[BaseException], bool]:
    """MissingGreenlet raised on the way through one of ``frames`` (names differ by release)."""
    is_missing_greenlet = _is("MissingGreenlet")

    def matches(exc: BaseException) -> bool:
        return is_missing_greenlet(exc) and not _frames(exc).isdisjoint(frames)

    return matches


@dataclass(frozen=True)
class Pitfall:
    """One pitfall that ends in an exception: how to recognise it, cause, fix, where it is taught."""

    key: str
    error: str  #: the exception class name a learner sees at the bottom of the traceback
    summary: str  #: what happened, in a few words
    cause: str  #: one line
    fix: str  #: one line
    section: str  #: key of SECTIONS: where the pitfall is taught
    matches: Callable[[BaseException], bool] = field(repr=False, compare=False)
    also: tuple[str, ...] = ()  #: keys of SECTIONS that show the same error in another setting
    backend: Literal["any", "sqlite", "postgresql"] = "any"  #: where the error can happen at all
    #: the error as notebook 12 shows it per PostgreSQL driver, recorded with SQLAlchemy
    #: RECORDED_WITH: for a postgresql row, every driver on which it happens; for an "any" row,
    #: where PostgreSQL words it differently from SQLite. The cheat sheet shows the records where
    #: it cannot raise the error; with a driver named here it raises it live and checks that it
    #: still reads like this.
    seen: dict[str, str] = field(default_factory=dict, compare=False)
    #: for a row whose error only some drivers raise: what the other drivers do instead
    elsewhere: str = ""
    #: what else the cheat sheet needs to raise the error live ("pgbouncer": PgBouncer 1.21+)
    requires: Literal["", "pgbouncer"] = ""

    @property
    def errors(self) -> tuple[str, ...]:
        """The class names in :attr:`error` (``"InterfaceError / OperationalError"``: two drivers)."""
        return tuple(self.error.split(" / "))

    def live_on(self, backend: str, driver: str) -> bool:
        """Whether the cheat sheet can raise this error on ``backend`` through ``driver``.

        SQLite-only rows run on a private SQLite database, so they are live everywhere; a
        PostgreSQL row needs PostgreSQL and one of the drivers in :attr:`seen`; a row that
        :attr:`requires` PgBouncer also needs PgBouncer 1.21 or newer (as ``%needs_pgbouncer``).
        """
        if self.backend == "postgresql" and not (backend == "postgresql" and driver in self.seen):
            return False
        if self.requires == "pgbouncer":
            from helpers import pgbouncer

            return pgbouncer.available()
        return True

    @property
    def where(self) -> Section:
        return SECTIONS[self.section]

    @property
    def sections(self) -> tuple[Section, ...]:
        return (self.where, *(SECTIONS[key] for key in self.also))

    @property
    def notebook(self) -> str:
        return self.where.notebook

    @property
    def heading(self) -> str:
        return self.where.heading

    @property
    def anchor(self) -> str:
        return self.where.anchor

    @property
    def link(self) -> str:
        return self.where.link


#: The SQLAlchemy release series the ``seen`` texts were recorded with.
RECORDED_WITH = "2.1"

PITFALLS: tuple[Pitfall, ...] = (
    Pitfall(
        key="greenlet-missing",
        error="ImportError",
        summary="SQLAlchemy's asyncio extension cannot find greenlet.",
        cause="SQLAlchemy 2.1 no longer installs greenlet by itself, and its async layer runs on it.",
        fix="install the extra: pip install 'sqlalchemy[asyncio]' (requirements.txt does).",
        section="setup-check",
        # 2.1 refuses the import; 2.0 imports, then fails at the first query with a ValueError
        matches=_any(
            _is("ImportError", "requires that the Python 'greenlet' library"),
            _is("ValueError", "the greenlet library is required"),
        ),
    ),
    Pitfall(
        key="bad-dialect",
        error="NoSuchModuleError",
        summary="the URL names a dialect SQLAlchemy does not know.",
        cause="dialect and driver are joined by '+', so 'sqlite_aiosqlite' is read as one unknown name.",
        fix="write 'sqlite+aiosqlite:///file.db' or 'postgresql+asyncpg://user@host/db'.",
        section="bad-dialect",
        matches=_is("NoSuchModuleError", "Can't load plugin"),
    ),
    Pitfall(
        key="alembic-sync-url",
        error="InvalidRequestError / ModuleNotFoundError",
        summary="Alembic's async env.py was given a URL with a synchronous driver.",
        cause="the async template builds an AsyncEngine from sqlalchemy.url, which needs an async driver.",
        fix="sqlalchemy.url = sqlite+aiosqlite://..., postgresql+asyncpg://... or postgresql+psycopg://...",
        section="sync-url-env",
        # create_async_engine()'s own refusal (next entry), or psycopg2 missing, while env.py ran
        matches=_all(
            _in_alembic_env,
            _any(
                _is("InvalidRequestError", "requires an async driver"),
                _is("ModuleNotFoundError", "No module named 'psycopg2'"),
            ),
        ),
    ),
    Pitfall(
        key="sync-driver",
        error="InvalidRequestError",
        summary="create_async_engine() was given a synchronous driver.",
        cause="'sqlite://' and 'postgresql://' select blocking drivers (pysqlite; psycopg2 or psycopg).",
        fix="name the async driver in the URL: 'sqlite+aiosqlite://' or 'postgresql+asyncpg://'.",
        section="sync-driver",
        matches=_is("InvalidRequestError", "requires an async driver"),
    ),
    Pitfall(
        key="memory-pool-size",
        error="TypeError",
        summary="pool_size was given to an in-memory SQLite engine.",
        cause="':memory:' gets a StaticPool (one shared connection), which has no pool_size.",
        fix="drop pool_size/max_overflow for ':memory:', or use a file: 'sqlite+aiosqlite:///app.db'.",
        section="memory-pool-size",
        matches=_is("TypeError", "Invalid argument(s) 'pool_size'"),
    ),
    Pitfall(
        key="pool-timeout",
        error="TimeoutError",
        summary="no connection became free in the pool within pool_timeout.",
        cause="every pooled connection (pool_size + max_overflow) was checked out and held.",
        fix=(
            "close sessions promptly; keep concurrency below the pool size; "
            "catch sqlalchemy.exc.TimeoutError."
        ),
        section="exhausted-pool",
        also=("pool-timeout-except", "never-closed", "more-tasks", "scoped-remove", "more-requests"),
        matches=_is("TimeoutError", "QueuePool limit"),
    ),
    Pitfall(
        key="connection-closed",
        error="InterfaceError / OperationalError",
        summary="a pooled connection had been closed by the server.",
        cause="the server (or a proxy) ended the connection while it sat idle in the pool.",
        fix="create_async_engine(..., pool_pre_ping=True): the checkout tests the connection first.",
        section="server-closed",
        # asyncpg finds its connection closed; psycopg reads the server's goodbye (SQLSTATE 57P01)
        matches=_any(_is("InterfaceError", "connection is closed"), _is("AdminShutdown")),
        backend="postgresql",
        seen={
            "asyncpg": (
                "InterfaceError: (sqlalchemy.dialects.postgresql.asyncpg.InterfaceError) connection is closed"
            ),
            "psycopg": (
                "OperationalError: (psycopg.errors.AdminShutdown) terminating connection due to "
                "administrator command"
            ),
        },
    ),
    Pitfall(
        key="create-all-async",
        error="AttributeError",
        summary="metadata.create_all() was given an AsyncEngine.",
        cause="create_all() is synchronous and needs a sync engine or connection.",
        fix="async with engine.begin() as conn: await conn.run_sync(Base.metadata.create_all)",
        section="create-all",
        matches=_is("AttributeError", "'AsyncEngine' object has no attribute"),
    ),
    Pitfall(
        key="asyncpg-strict-types",
        error="DBAPIError",
        summary="asyncpg refused a parameter whose Python type does not fit the column.",
        cause="asyncpg encodes by the column's type: no aware datetime for TIMESTAMP, no str for a date.",
        fix="DateTime(timezone=True), or naive UTC values; pass date/datetime objects, never strings.",
        section="asyncpg-types",
        # before naive-aware: asyncpg's error wraps the TypeError of a naive-aware subtraction
        matches=_is("DBAPIError", "invalid input for query argument"),
        backend="postgresql",
        seen={
            "asyncpg": (
                "DBAPIError: (sqlalchemy.dialects.postgresql.asyncpg.Error) invalid input for query "
                "argument $1: datetime.datetime(2024, 3, 1, 12, 0, tzi... (can't subtract offset-naive "
                "and offset-aware datetimes)"
            ),
        },
        elsewhere="psycopg stores both: the server converts them, the aware value to the session's TimeZone.",
    ),
    Pitfall(
        key="naive-aware",
        error="TypeError",
        summary="a naive datetime met a timezone-aware one.",
        cause="utcnow() and SQLite give naive values; Python refuses to compare them with aware ones.",
        fix="DateTime(timezone=True) with server_default=func.now() or default=lambda: datetime.now(UTC).",
        section="utcnow",
        matches=_is("TypeError", "offset-naive and offset-aware"),
    ),
    Pitfall(
        key="many-to-one-not-saved",
        error="SAWarning",
        summary="an object set on a many-to-one side was not saved.",
        cause="in 2.x, setting post.author = user no longer adds the post to the user's session.",
        fix="session.add() the new object yourself, or append it to the one-to-many collection.",
        section="many-to-one",
        matches=_is("SAWarning", "not in session", "will not proceed"),
    ),
    Pitfall(
        key="dependency-generator",
        error="AttributeError",
        summary="an async generator was used as if it were a session.",
        cause="a function with yield returns an async generator, whatever its annotation says.",
        fix="annotate it -> AsyncIterator[AsyncSession] and let Depends() run it; else async with factory().",
        section="dependency-annotation",
        matches=_is("AttributeError", "'async_generator' object has no attribute"),
    ),
    Pitfall(
        key="multiple-results",
        error="MultipleResultsFound",
        summary="scalar_one_or_none() (or one()) found several rows.",
        cause="the query's filter is not unique, so 'one or none' does not hold.",
        fix="filter on a unique column, or choose a row explicitly: order_by(...).limit(1).",
        section="one-or-none",
        matches=_is("MultipleResultsFound"),
    ),
    Pitfall(
        key="session-query",
        error="AttributeError",
        summary="AsyncSession has no query() method.",
        cause="the legacy Query API does implicit I/O, so AsyncSession does not offer it.",
        fix="await session.scalars(select(User)) / session.execute(...); wrap old code in run_sync().",
        section="no-query",
        matches=_is("AttributeError", "'AsyncSession' object has no attribute 'query'"),
    ),
    Pitfall(
        key="forgotten-await",
        error="AttributeError",
        summary="a coroutine was used as if it were its result.",
        cause="without await, session.execute(...) returns a coroutine that has not run yet.",
        fix="await every AsyncSession call that does I/O: result = await session.execute(...).",
        section="forgotten-await",
        matches=_is("AttributeError", "'coroutine' object has no attribute"),
    ),
    Pitfall(
        key="awaited-add",
        error="TypeError",
        summary="a plain method's result (None) was awaited.",
        cause="session.add(), add_all() and expunge() only change memory: they return None.",
        fix="call them without await; await the methods that do I/O (flush, commit, execute, ...).",
        section="forgotten-commit",
        matches=_is("TypeError", "object NoneType can't be used in 'await' expression"),
    ),
    Pitfall(
        key="expired-attribute",
        error="MissingGreenlet",
        summary="an expired attribute was read without an await.",
        cause="commit() expired the object (or a server value was never fetched); reloading it is I/O.",
        fix="read before commit(), expire_on_commit=False, await session.refresh(obj), or awaitable_attrs.",
        section="after-commit",
        also=("onupdate",),
        matches=_missing_greenlet_via("_load_scalar_attributes", "load_scalar_attributes"),
    ),
    Pitfall(
        key="response-after-close",
        error="ValidationError",
        summary="Pydantic read an attribute that needed the closed session.",
        cause="from_attributes read an unloaded relationship after the session closed (error inside).",
        fix="load what the response needs (selectinload) and build the response before the session ends.",
        section="response-after-close",
        matches=_is("ValidationError", "Error extracting attribute"),
    ),
    Pitfall(
        key="orm-from-route",
        error="ResponseValidationError",
        summary="FastAPI serialised an ORM object and hit an unloaded relationship.",
        cause="response validation read a lazy relationship, which needs I/O (MissingGreenlet inside).",
        fix="load what the response model reads in the route's query (selectinload/joinedload).",
        section="orm-from-route",
        matches=_is("ResponseValidationError"),
    ),
    Pitfall(
        key="detached",
        error="DetachedInstanceError",
        summary="an object was used after its session closed.",
        cause="an unloaded or expired attribute needs a session to load it, and the object has none.",
        fix="load everything you need (eager options) and build the result before the session ends.",
        section="after-close",
        matches=_is("DetachedInstanceError"),
    ),
    Pitfall(
        key="lazy-load",
        error="MissingGreenlet",
        summary="a relationship was lazy-loaded without an await.",
        cause="touching an unloaded relationship runs a SELECT implicitly, which asyncio cannot do.",
        fix="load it in the query: .options(selectinload(User.posts)), or await obj.awaitable_attrs.posts.",
        section="lazy",
        also=("orm-in-thread",),
        matches=_missing_greenlet_via("_emit_lazyload"),
    ),
    Pitfall(
        key="joinedload-unique",
        error="InvalidRequestError",
        summary="a joinedload() of a collection was read without unique().",
        cause="the JOIN repeats each parent row once per child, so SQLAlchemy requires de-duplicating.",
        fix="(await session.scalars(stmt)).unique().all(), or selectinload() for collections.",
        section="joined-unique",
        matches=_is("InvalidRequestError", "The unique() method must be invoked"),
    ),
    Pitfall(
        key="lazy-raise",
        error="InvalidRequestError",
        summary="a relationship marked lazy='raise' (or raiseload) was touched.",
        cause="the safety net worked: the query did not load this relationship.",
        fix="add selectinload()/joinedload() for it to the query that fetched the object.",
        section="lazy-raise",
        matches=_is("InvalidRequestError", "is not available due to lazy='raise'"),
    ),
    Pitfall(
        key="closed-transaction",
        error="InvalidRequestError",
        summary="a statement ran in a session.begin() block after a failed flush.",
        cause="the failed flush rolled the whole transaction back; catching the error does not revive it.",
        fix="put the step that may fail in async with session.begin_nested(): (a savepoint), try around it.",
        section="failed-flush",
        matches=_is("InvalidRequestError", "Can't operate on closed transaction inside context manager"),
    ),
    Pitfall(
        key="pending-rollback",
        error="PendingRollbackError",
        summary="a session was used again after a failed flush.",
        cause="the failed flush rolled the transaction back; the session waits for your rollback().",
        fix="await session.rollback() before reusing it, or put the risky step in begin_nested().",
        section="failed-flush",
        matches=_is("PendingRollbackError"),
    ),
    Pitfall(
        key="decimal-float",
        error="TypeError",
        summary="a float was mixed with a Decimal from a Numeric column.",
        cause="Numeric columns load as Decimal, and Python refuses arithmetic between Decimal and float.",
        fix="use Decimal throughout: Decimal('10.00'), never 10.0 (a float cannot hold most cents).",
        section="float-numeric",
        matches=_any(
            _is("TypeError", "unsupported operand", "'decimal.Decimal' and 'float'"),
            _is("TypeError", "unsupported operand", "'float' and 'decimal.Decimal'"),
        ),
    ),
    Pitfall(
        key="database-locked",
        error="OperationalError",
        summary="SQLite's write lock was not free.",
        cause="one write lock per file: another writer held it past the timeout, or this one had read first.",
        fix="short write transactions; BEGIN IMMEDIATE for read-then-write ones; a longer timeout.",
        section="database-locked",
        also=("no-lock", "read-then-write"),
        matches=_is("OperationalError", "database is locked"),
        backend="sqlite",
    ),
    Pitfall(
        key="deadlock",
        error="DBAPIError / OperationalError",
        summary="PostgreSQL broke a deadlock by aborting this transaction.",
        cause="two transactions each held a row lock the other wanted (SQLSTATE 40P01).",
        fix="lock rows in one global order (ORDER BY id ... FOR UPDATE); retry the aborted one.",
        section="deadlock",
        # asyncpg: DeadlockDetectedError behind a DBAPIError; psycopg: DeadlockDetected
        matches=_any(
            _is("DeadlockDetectedError"), _is("DeadlockDetected"), _is("DBAPIError", "deadlock detected")
        ),
        backend="postgresql",
        seen={
            "asyncpg": "DBAPIError: (sqlalchemy.dialects.postgresql.asyncpg.Error) deadlock detected",
            "psycopg": "OperationalError: (psycopg.errors.DeadlockDetected) deadlock detected",
        },
    ),
    Pitfall(
        key="concurrent-session",
        error="InvalidRequestError",
        summary="two tasks used one AsyncSession at the same time.",
        cause="a session runs one operation at a time; a second task called it while it connected.",
        fix="give each task its own session: async with session_factory() as session, inside the task.",
        section="gather",
        matches=_is("InvalidRequestError", "concurrent operations are not permitted"),
    ),
    Pitfall(
        key="illegal-state-change",
        error="IllegalStateChangeError",
        summary="a session was closed or committed while another task was using it.",
        cause="one task changed the session's state in the middle of another task's operation.",
        fix="one session per task; await every operation before closing or committing the session.",
        section="illegal-state",
        also=("background",),
        matches=_is("IllegalStateChangeError"),
    ),
    Pitfall(
        key="asyncpg-concurrent",
        error="InterfaceError",
        summary="asyncpg got a second command while one was running on the same connection.",
        cause="two tasks shared a session, so they shared its single asyncpg connection.",
        fix="one session per task; bound the number of tasks with a semaphore below the pool size.",
        section="another-operation",
        matches=_is("InterfaceError", "another operation is in progress"),
        backend="postgresql",
        seen={
            "asyncpg": (
                "InterfaceError: (sqlalchemy.dialects.postgresql.asyncpg.InterfaceError) "
                "cannot perform operation: another operation is in progress"
            ),
        },
        elsewhere=(
            "psycopg raises nothing: the commit waits for the query, then commits the shared transaction."
        ),
    ),
    Pitfall(
        key="different-loop",
        error="RuntimeError",
        summary="a pooled connection was used from another event loop.",
        cause="an asyncpg connection belongs to the loop that opened it; the pool kept it for a new loop.",
        fix="one engine per event loop, or NullPool, or await engine.dispose() before the loop changes.",
        section="second-loop",
        also=("two-loops",),
        matches=_is("RuntimeError", "attached to a different loop"),
        backend="postgresql",
        seen={
            "asyncpg": (
                "RuntimeError: Task <Task pending …> got Future <Future pending …> attached to a "
                "different loop"
            )
        },
        elsewhere="psycopg raises nothing here: its connections are not tied to the loop that opened them.",
    ),
    Pitfall(
        key="missing-lifespan",
        error="AttributeError",
        summary="the app's lifespan never ran, so app.state has no engine or factory.",
        cause="httpx's ASGITransport calls the app directly and skips the lifespan start-up.",
        fix="async with app.router.lifespan_context(app): around the client (or asgi-lifespan).",
        section="lifespan",
        matches=_is("AttributeError", "'State' object has no attribute"),
    ),
    Pitfall(
        key="begin-after-autobegin",
        error="InvalidRequestError",
        summary="session.begin() was called on a session already in a transaction.",
        cause="an earlier statement autobegan a transaction on this session, so begin() cannot start one.",
        fix="finish the work with await session.commit(), or call begin() before the first statement.",
        section="begin-in-service",
        also=("seeding",),
        matches=_is("InvalidRequestError", "A transaction is already begun on this Session"),
    ),
    Pitfall(
        key="recipe-twice",
        error="OperationalError",
        summary="SQLite was sent BEGIN inside a transaction.",
        cause="SQLite's transaction recipe was applied twice to one engine: two listeners, two BEGINs.",
        fix="apply the recipe once, where the engine is created (db.engine already has it).",
        section="sqlite-rollback",
        matches=_is("OperationalError", "cannot start a transaction within a transaction"),
        backend="sqlite",
    ),
    Pitfall(
        key="alembic-running-loop",
        error="RuntimeError",
        summary="asyncio.run() was called in a thread whose event loop is running.",
        cause="Alembic's async env.py calls asyncio.run(); Jupyter, FastAPI, async tests run a loop already.",
        fix="await asyncio.to_thread(command.upgrade, cfg, 'head'), or hand env.py a connection (run_sync).",
        section="alembic-running-loop",
        matches=_is("RuntimeError", "asyncio.run() cannot be called from a running event loop"),
    ),
    Pitfall(
        key="not-null-column",
        error="OperationalError / IntegrityError",
        summary="a NOT NULL column without a default was added to a table that has rows.",
        cause="the rows already there get no value for the new column, which may not be NULL.",
        fix="give it a server_default, or add it nullable, fill it with an UPDATE, then make it NOT NULL.",
        section="not-null-column",
        # SQLite refuses the ALTER; PostgreSQL runs it and finds NULLs (SQLSTATE 23502)
        matches=_any(
            _is("OperationalError", "Cannot add a NOT NULL column"),
            _all(_sqlstate("23502"), _is("IntegrityError", "contains null values")),
        ),
        seen={
            "asyncpg": (
                "IntegrityError: (sqlalchemy.dialects.postgresql.asyncpg.NotNullViolationError) "
                'column "active" of relation "users" contains null values'
            ),
            "psycopg": (
                'IntegrityError: (psycopg.errors.NotNullViolation) column "active" of relation "users" '
                "contains null values"
            ),
        },
    ),
    Pitfall(
        key="alembic-sync-env",
        error="MissingGreenlet",
        summary="Alembic's sync env.py connected through an async-only driver.",
        cause="the default env.py makes a sync Engine (engine_from_config); aiosqlite, asyncpg must await.",
        fix="the async template's env.py (alembic init -t async); postgresql+psycopg works in a sync one.",
        section="sync-env",
        matches=_all(_is("MissingGreenlet"), _in_alembic_env),
    ),
    Pitfall(
        key="pgbouncer-prepared",
        error="DBAPIError / ProgrammingError",
        summary="a prepared statement was missing, or taken, on the server connection PgBouncer chose.",
        cause="transaction mode moves clients between server connections; prepared statements stay on one.",
        fix="PgBouncer 1.21+ with max_prepared_statements > 0; or no prepared statements in the driver (14).",
        section="pgbouncer-prepared",
        also=("nullpool-no-cure",),
        # "does not exist" (26000, asyncpg) or "already exists" (42P05, psycopg)
        matches=_sqlstate("26000", "42P05"),
        backend="postgresql",
        seen={
            "asyncpg": (
                "DBAPIError: (sqlalchemy.dialects.postgresql.asyncpg.Error) prepared statement "
                '"__asyncpg_stmt_…__" does not exist'
            ),
            "psycopg": (
                'ProgrammingError: (psycopg.errors.DuplicatePreparedStatement) prepared statement "_pg3_0" '
                "already exists"
            ),
        },
        requires="pgbouncer",
    ),
    Pitfall(
        key="statement-timeout",
        error="DBAPIError / OperationalError",
        summary="PostgreSQL cancelled a statement that ran longer than statement_timeout.",
        cause="the server's limit for one statement was reached (SQLSTATE 57014); the transaction failed.",
        fix="make the statement faster, or raise the limit for this work: SET LOCAL statement_timeout = ...",
        section="statement-timeout",
        matches=_all(_sqlstate("57014"), lambda exc: "statement timeout" in str(exc)),
        backend="postgresql",
        seen={
            "asyncpg": (
                "DBAPIError: (sqlalchemy.dialects.postgresql.asyncpg.Error) canceling statement due to "
                "statement timeout"
            ),
            "psycopg": (
                "OperationalError: (psycopg.errors.QueryCanceled) canceling statement due to "
                "statement timeout"
            ),
        },
    ),
    Pitfall(
        key="late-isolation-level",
        error="SAWarning / InvalidRequestError",
        summary="an isolation level was chosen after the transaction had begun.",
        cause="the first statement began the transaction at the default level; it cannot change any more.",
        fix="session.connection(execution_options={'isolation_level': ...}) before the first statement.",
        section="late-isolation",
        # a session only warns (ignored); a connection refuses
        matches=_any(
            _is("SAWarning", "execution_options ignored"),
            _is("InvalidRequestError", "isolation_level may not be altered"),
        ),
    ),
    Pitfall(
        key="engine-listener",
        error="NotImplementedError",
        summary="an event listener was attached to an asyncio object.",
        cause="events are callbacks of the synchronous core, which AsyncEngine and AsyncSession wrap.",
        fix="listen on engine.sync_engine, conn.sync_connection or session.sync_session instead.",
        section="engine-listener",
        also=("session-listener",),
        matches=_is("NotImplementedError", "asynchronous events are not implemented"),
    ),
    Pitfall(
        key="session-listener",
        error="InvalidRequestError",
        summary="a session event was attached to the AsyncSession class or its factory.",
        cause="session events belong to the sync Session inside each AsyncSession, not to the async class.",
        fix="listen on orm.Session, or on a subclass given to async_sessionmaker(sync_session_class=...).",
        section="session-listener",
        matches=_any(
            _is("InvalidRequestError", "No such event", "AsyncSession"),
            _is("InvalidRequestError", "No such event", "async_sessionmaker"),
        ),
    ),
    Pitfall(
        key="dynamic-relationship",
        error="MissingGreenlet",
        summary='a lazy="dynamic" relationship ran its query without an await.',
        cause="the dynamic loader returns a legacy sync Query: iterating it, or .all(), does I/O at once.",
        fix="WriteOnlyMapped and await session.scalars(obj.rel.select()), or run it inside run_sync().",
        section="dynamic",
        matches=_all(_is("MissingGreenlet"), _through("sqlalchemy/orm/dynamic.py")),
    ),
    Pitfall(
        key="generic-insert-upsert",
        error="AttributeError",
        summary="ON CONFLICT was asked of the generic insert().",
        cause="ON CONFLICT is dialect-specific: only the postgresql and sqlite insert() constructs have it.",
        fix="from sqlalchemy.dialects.postgresql import insert (or .sqlite), then .on_conflict_do_update().",
        section="generic-insert",
        matches=_is("AttributeError", "'Insert' object has no attribute 'on_conflict_do_"),
    ),
    Pitfall(
        key="execute-yield-per",
        error="AsyncMethodRequired",
        summary="execute() or scalars() was asked for a server-side cursor (yield_per, stream_results).",
        cause="execute()'s result is read without await, so it cannot fetch from a cursor batch by batch.",
        fix="async with conn.stream(stmt) as result, or await session.stream(stmt) / stream_scalars().",
        section="yield-per",
        also=("yield-per-scalars",),
        matches=_is("AsyncMethodRequired", "server-side cursor"),
    ),
    Pitfall(
        key="pandas-async-engine",
        error="TypeError",
        summary="pandas was given an AsyncEngine.",
        cause="pandas runs sync SQLAlchemy code; it does not take an AsyncEngine for an engine (it warns).",
        fix="df = await conn.run_sync(lambda sync_conn: pd.read_sql(query, sync_conn)); to_sql the same way.",
        section="pandas",
        matches=_is("TypeError", "Query must be a string unless using sqlalchemy"),
    ),
    Pitfall(
        key="closed-session-reused",
        error="InvalidRequestError",
        summary="a session closed for good (close_resets_only=False) was used again.",
        cause="code kept the session after its owner closed it, e.g. a background task given the request's.",
        fix="give the task its own session: async with session_factory() as session, inside the task.",
        section="borrowed-session",
        matches=_is("InvalidRequestError", "This Session has been permanently closed"),
    ),
    Pitfall(
        key="missing-greenlet",
        error="MissingGreenlet",
        summary="database I/O was attempted outside SQLAlchemy's greenlet, without an await.",
        cause="a query ran unawaited: sync code on sync_engine, a lazy or expired load, a sync env.py, ...",
        fix="run sync code with await conn.run_sync(fn); load with await (refresh, eager loading).",
        section="sync-engine",
        also=("after-commit", "lazy", "sync-env"),
        matches=_is("MissingGreenlet"),
    ),
)
"""Most specific first: :func:`find_pitfall` returns the first entry that matches. The last
entry (any MissingGreenlet) is the general one for implicit I/O the others do not name: its
text and links name the usual causes, for an exception whose traceback gives no clue."""


def find_pitfall(exc: BaseException) -> Pitfall | None:
    """The entry of :data:`PITFALLS` that explains ``exc``, or ``None``."""
    return next((p for p in PITFALLS if p.matches(exc)), None)


@dataclass(frozen=True)
class Explanation:
    """What :func:`explain` returns; shows as a few plain lines in a notebook or a terminal."""

    error: str  #: the first line of the exception as raised
    pitfall: Pitfall | None
    #: class names of the exception and of what it wraps (to name the one a driver raised)
    raised: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        p = self.pitfall
        if p is None:
            return [
                f"{_clip(self.error)}",
                "  not one of the async pitfalls this collection teaches. Read the last line of the",
                f"  traceback first; the pitfall cheat sheet (notebooks/{NOTEBOOKS['cheat_sheet']}) lists "
                "the others.",
            ]
        # a row that names one class per driver shows the one raised here
        shown = next((name for name in p.errors if name in self.raised), p.error)
        return [
            f"{shown}: {p.summary}",
            f"  cause: {p.cause}",
            f"  fix:   {p.fix}",
            f'  learn: notebooks/{p.notebook} § "{p.heading}"',
            *(f'  also:  notebooks/{s.notebook} § "{s.heading}"' for s in p.sections[1:]),
        ]

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


def _clip(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def explain(exc: BaseException | None = None) -> Explanation:
    """Explain ``exc`` (default: the last exception shown by IPython or the interpreter).

    Returns an :class:`Explanation`; in a notebook it displays as a few lines.
    """
    if exc is None:
        exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
        if exc is None:
            raise ValueError("no exception to explain yet: pass one, e.g. explain(exc)")
    raised = tuple(type(e).__name__ for e in _chain(exc))
    return Explanation(error=first_line(exc), pitfall=find_pitfall(exc), raised=raised)
