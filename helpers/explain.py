"""Explain an exception a learner just hit: what caused it, how to fix it, where it is taught.

    try:
        user.name
    except Exception as exc:
        explain(exc)

or, in the cell after one that failed, simply ``explain()`` (it reads the last exception
IPython showed). The answer is two lines (cause, fix) and the notebook section that
demonstrates the pitfall live:

    MissingGreenlet: an expired attribute was read without an await.
      cause: commit() expired the object (or a server value was never fetched); reloading it is I/O.
      fix:   read before commit(), expire_on_commit=False, await session.refresh(obj), or awaitable_attrs.
      learn: notebooks/05_expire_on_commit.ipynb § "Pitfall: reading an attribute after commit"

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
}

#: Pitfall sections whose demonstration raises, but whose exception is an ordinary symptom
#: rather than the pitfall's signature: the cheat sheet lists them with the reason instead.
EXCLUDED: dict[str, str] = {
    "f-strings": "the syntax error appears only for harmless input; hostile input runs as SQL",
    "commit-after-yield": "the IntegrityError comes after the response: the client was already told 201",
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


def _frames(exc: BaseException) -> set[str]:
    """Names of the functions the exception (or anything it wraps) passed through."""
    names: set[str] = set()
    for item in _chain(exc):
        tb = item.__traceback__
        while tb is not None:
            names.add(tb.tb_frame.f_code.co_name)
            tb = tb.tb_next
    return names


def _is(name: str, *texts: str) -> Callable[[BaseException], bool]:
    """Match an exception (or one it wraps) by class name and pieces of its message (all of them)."""

    def matches(exc: BaseException) -> bool:
        return any(type(e).__name__ == name and all(t in str(e) for t in texts) for e in _chain(exc))

    return matches


def _any(*tests: Callable[[BaseException], bool]) -> Callable[[BaseException], bool]:
    return lambda exc: any(test(exc) for test in tests)


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
    #: postgresql rows only: the error as notebook 12 shows it, recorded on PostgreSQL with
    #: SQLAlchemy RECORDED_WITH (the cheat sheet shows it on SQLite; on PostgreSQL it raises the
    #: error live and checks that it still reads like this)
    seen: str = ""

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
        also=("pool-timeout-except", "never-closed", "more-tasks"),
        matches=_is("TimeoutError", "QueuePool limit"),
    ),
    Pitfall(
        key="connection-closed",
        error="InterfaceError",
        summary="a pooled connection had been closed by the server.",
        cause="the server (or a proxy) ended the connection while it sat idle in the pool.",
        fix="create_async_engine(..., pool_pre_ping=True): the checkout tests the connection first.",
        section="server-closed",
        matches=_is("InterfaceError", "connection is closed"),
        backend="postgresql",
        seen="InterfaceError: (sqlalchemy.dialects.postgresql.asyncpg.InterfaceError) connection is closed",
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
        error="DBAPIError",
        summary="PostgreSQL broke a deadlock by aborting this transaction.",
        cause="two transactions each held a row lock the other wanted (SQLSTATE 40P01).",
        fix="lock rows in one global order (ORDER BY id ... FOR UPDATE); retry the aborted one.",
        section="deadlock",
        matches=_any(_is("DeadlockDetectedError"), _is("DBAPIError", "deadlock detected")),
        backend="postgresql",
        seen="DBAPIError: (sqlalchemy.dialects.postgresql.asyncpg.Error) deadlock detected",
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
        seen=(
            "InterfaceError: (sqlalchemy.dialects.postgresql.asyncpg.InterfaceError) "
            "cannot perform operation: another operation is in progress"
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
        seen="RuntimeError: Task <Task pending …> got Future <Future pending …> attached to a different loop",
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
        key="missing-greenlet",
        error="MissingGreenlet",
        summary="database I/O was attempted outside an await.",
        cause="something ran a query implicitly (attribute load, sync API) where asyncio cannot wait.",
        fix="make the I/O explicit: await session.refresh()/scalars(), eager loading, or run_sync().",
        section="after-commit",
        matches=_is("MissingGreenlet"),
    ),
)
"""Most specific first: :func:`find_pitfall` returns the first entry that matches. The last
entry (any MissingGreenlet) is the general one for implicit I/O the others do not name."""


def find_pitfall(exc: BaseException) -> Pitfall | None:
    """The entry of :data:`PITFALLS` that explains ``exc``, or ``None``."""
    return next((p for p in PITFALLS if p.matches(exc)), None)


@dataclass(frozen=True)
class Explanation:
    """What :func:`explain` returns; shows as a few plain lines in a notebook or a terminal."""

    error: str  #: the first line of the exception as raised
    pitfall: Pitfall | None

    def lines(self) -> list[str]:
        p = self.pitfall
        if p is None:
            return [
                f"{_clip(self.error)}",
                "  not one of the async pitfalls this collection teaches. Read the last line of the",
                f"  traceback first; the pitfall cheat sheet (notebooks/{NOTEBOOKS['cheat_sheet']}) lists "
                "the others.",
            ]
        return [
            f"{p.error}: {p.summary}",
            f"  cause: {p.cause}",
            f"  fix:   {p.fix}",
            f'  learn: notebooks/{p.notebook} § "{p.heading}"',
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
    return Explanation(error=first_line(exc), pitfall=find_pitfall(exc))
