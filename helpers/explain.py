"""Explain an exception a learner just hit: what caused it, how to fix it, where it is taught.

    try:
        user.name
    except Exception as exc:
        explain(exc)

or, in the cell after one that failed, simply ``explain()`` (it reads the last exception
IPython showed). The answer is two lines (cause, fix) and the notebook section that
demonstrates the pitfall live:

    MissingGreenlet: an expired attribute was read outside an await.
      cause: commit() expired the object, and reloading an attribute needs I/O that only ...
      fix:   read what you need before commit(), or await session.refresh(obj), or ...
      learn: notebooks/05_expire_on_commit.ipynb § "Pitfall: ..."

:data:`PITFALLS` is the single table behind :func:`explain` and the pitfall cheat sheet
(notebook 11), so the two cannot drift apart.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["PITFALLS", "Explanation", "Pitfall", "anchor", "explain", "find_pitfall", "first_line"]


def first_line(exc: BaseException) -> str:
    """``"TypeName: first line of the message"``, as a learner sees it at the bottom of a traceback."""
    text = str(exc).split("\n", 1)[0].strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def anchor(heading: str) -> str:
    """A markdown heading's anchor as JupyterLab builds it: rendered text, spaces turned into '-'."""
    return heading.replace("`", "").replace(" ", "-")


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


def _is(name: str, text: str = "") -> Callable[[BaseException], bool]:
    """Match an exception (or one it wraps) by class name and a piece of its message."""

    def matches(exc: BaseException) -> bool:
        return any(type(e).__name__ == name and text in str(e) for e in _chain(exc))

    return matches


def _missing_greenlet_via(*frames: str) -> Callable[[BaseException], bool]:
    """MissingGreenlet raised on the way through one of ``frames`` (names differ by release)."""
    is_missing_greenlet = _is("MissingGreenlet")

    def matches(exc: BaseException) -> bool:
        return is_missing_greenlet(exc) and not _frames(exc).isdisjoint(frames)

    return matches


@dataclass(frozen=True)
class Pitfall:
    """One async pitfall: how to recognise it, its cause and fix, and where it is taught."""

    key: str
    error: str  #: the exception class name a learner sees at the bottom of the traceback
    summary: str  #: what happened, in a few words
    cause: str  #: one line
    fix: str  #: one line
    notebook: str  #: file name inside notebooks/, e.g. "05_expire_on_commit.ipynb"
    heading: str  #: the markdown heading (without the leading #) of the section that shows it
    matches: Callable[[BaseException], bool] = field(repr=False, compare=False)
    backend: Literal["any", "postgresql"] = "any"

    @property
    def anchor(self) -> str:
        return anchor(self.heading)

    @property
    def link(self) -> str:
        """A relative link from another notebook in ``notebooks/`` to the section."""
        return f"{self.notebook}#{self.anchor}"


PITFALLS: tuple[Pitfall, ...] = (
    Pitfall(
        key="greenlet-missing",
        error="ImportError",
        summary="SQLAlchemy's asyncio extension cannot find greenlet.",
        cause="SQLAlchemy 2.1 no longer installs greenlet by itself, and its async layer runs on it.",
        fix="install the extra: pip install 'sqlalchemy[asyncio]' (requirements.txt does).",
        notebook="00_start_here.ipynb",
        heading="Check your set-up",
        # 2.1 refuses the import; 2.0 imports, then fails at the first query with a ValueError
        matches=lambda exc: (
            _is("ImportError", "requires that the Python 'greenlet' library")(exc)
            or _is("ValueError", "the greenlet library is required")(exc)
        ),
    ),
    Pitfall(
        key="bad-dialect",
        error="NoSuchModuleError",
        summary="the URL names a dialect SQLAlchemy does not know.",
        cause="dialect and driver are joined by '+', so 'sqlite_aiosqlite' is read as one unknown name.",
        fix="write 'sqlite+aiosqlite:///file.db' or 'postgresql+asyncpg://user@host/db'.",
        notebook="01_engine_setup.ipynb",
        heading="Pitfall: `sqlite_aiosqlite://` is not a dialect",
        matches=_is("NoSuchModuleError", "Can't load plugin"),
    ),
    Pitfall(
        key="sync-driver",
        error="InvalidRequestError",
        summary="create_async_engine() was given a synchronous driver.",
        cause="'sqlite://' and 'postgresql://' select blocking drivers (pysqlite; psycopg2 or psycopg).",
        fix="name the async driver in the URL: 'sqlite+aiosqlite://' or 'postgresql+asyncpg://'.",
        notebook="01_engine_setup.ipynb",
        heading="Pitfall: a synchronous driver in `create_async_engine`",
        matches=_is("InvalidRequestError", "requires an async driver"),
    ),
    Pitfall(
        key="memory-pool-size",
        error="TypeError",
        summary="pool_size was given to an in-memory SQLite engine.",
        cause="':memory:' gets a StaticPool (one shared connection), which has no pool_size.",
        fix="drop pool_size/max_overflow for ':memory:', or use a file: 'sqlite+aiosqlite:///app.db'.",
        notebook="01_engine_setup.ipynb",
        heading="Pitfall: `pool_size` on an in-memory database",
        matches=_is("TypeError", "Invalid argument(s) 'pool_size'"),
    ),
    Pitfall(
        key="session-query",
        error="AttributeError",
        summary="AsyncSession has no query() method.",
        cause="the legacy Query API does implicit I/O, so AsyncSession does not offer it.",
        fix="await session.scalars(select(User)) / session.execute(...); wrap old code in run_sync().",
        notebook="04_crud.ipynb",
        heading="Pitfall: `AsyncSession` has no `query()`",
        matches=_is("AttributeError", "'AsyncSession' object has no attribute 'query'"),
    ),
    Pitfall(
        key="forgotten-await",
        error="AttributeError",
        summary="a coroutine was used as if it were its result.",
        cause="without await, session.execute(...) returns a coroutine that has not run yet.",
        fix="await every AsyncSession call: result = await session.execute(...).",
        notebook="04_crud.ipynb",
        heading="Pitfall: a forgotten `await`",
        matches=_is("AttributeError", "'coroutine' object has no attribute"),
    ),
    Pitfall(
        key="expired-attribute",
        error="MissingGreenlet",
        summary="an expired attribute was read without an await.",
        cause="commit() expired the object (or a server value was never fetched); reloading it is I/O.",
        fix="read before commit(), expire_on_commit=False, await session.refresh(obj), or awaitable_attrs.",
        notebook="05_expire_on_commit.ipynb",
        heading="Pitfall: reading an attribute after commit",
        matches=_missing_greenlet_via("_load_scalar_attributes", "load_scalar_attributes"),
    ),
    Pitfall(
        key="detached",
        error="DetachedInstanceError",
        summary="an object was used after its session closed.",
        cause="an unloaded or expired attribute needs a session to load it, and the object has none.",
        fix="load everything you need (eager options) and build the result before the session ends.",
        notebook="05_expire_on_commit.ipynb",
        heading="Pitfall: using an object after its session closed",
        matches=_is("DetachedInstanceError"),
    ),
    Pitfall(
        key="lazy-load",
        error="MissingGreenlet",
        summary="a relationship was lazy-loaded without an await.",
        cause="touching an unloaded relationship runs a SELECT implicitly, which asyncio cannot do.",
        fix="load it in the query: .options(selectinload(User.posts)), or await obj.awaitable_attrs.posts.",
        notebook="06_lazy_loading.ipynb",
        heading="Pitfall: touching a lazy relationship",
        matches=_missing_greenlet_via("_emit_lazyload"),
    ),
    Pitfall(
        key="lazy-raise",
        error="InvalidRequestError",
        summary="a relationship marked lazy='raise' (or raiseload) was touched.",
        cause="the safety net worked: the query did not load this relationship.",
        fix="add selectinload()/joinedload() for it to the query that fetched the object.",
        notebook="06_lazy_loading.ipynb",
        heading='Pitfall: lazy="raise" stops the query',
        matches=_is("InvalidRequestError", "is not available due to lazy='raise'"),
    ),
    Pitfall(
        key="concurrent-session",
        error="InvalidRequestError",
        summary="two tasks used one AsyncSession at the same time.",
        cause="a session (and its connection) runs one operation at a time; gather() started two.",
        fix="give each task its own session: async with session_factory() as session, inside the task.",
        notebook="08_concurrency.ipynb",
        heading="Pitfall: one session shared by `asyncio.gather`",
        matches=_is("InvalidRequestError", "concurrent operations are not permitted"),
    ),
    Pitfall(
        key="illegal-state-change",
        error="IllegalStateChangeError",
        summary="a session was closed or committed while another task was using it.",
        cause="one task changed the session's state in the middle of another task's operation.",
        fix="one session per task; await every operation before closing or committing the session.",
        notebook="08_concurrency.ipynb",
        heading="Pitfall: `IllegalStateChangeError` when `async with` closes a session in use",
        matches=_is("IllegalStateChangeError"),
    ),
    Pitfall(
        key="asyncpg-concurrent",
        error="InterfaceError",
        summary="asyncpg got a second command while one was running on the same connection.",
        cause="two tasks shared a session, so they shared its single asyncpg connection.",
        fix="one session per task; bound the number of tasks with a semaphore sized to the pool.",
        notebook="08_concurrency.ipynb",
        heading='Pitfall: asyncpg\'s "another operation is in progress"',
        matches=_is("InterfaceError", "another operation is in progress"),
        backend="postgresql",
    ),
    Pitfall(
        key="pool-timeout",
        error="TimeoutError",
        summary="no connection became free in the pool within pool_timeout.",
        cause="every pooled connection (pool_size + max_overflow) was checked out and held.",
        fix="close sessions promptly (async with), bound concurrency to the pool, or size the pool.",
        notebook="01_engine_setup.ipynb",
        heading="Pitfall: an exhausted pool",
        matches=_is("TimeoutError", "QueuePool limit"),
    ),
    Pitfall(
        key="missing-greenlet",
        error="MissingGreenlet",
        summary="database I/O was attempted outside an await.",
        cause="something ran a query implicitly (attribute load, sync API) where asyncio cannot wait.",
        fix="make the I/O explicit: await session.refresh()/scalars(), eager loading, or run_sync().",
        notebook="05_expire_on_commit.ipynb",
        heading="Pitfall: reading an attribute after commit",
        matches=_is("MissingGreenlet"),
    ),
)
"""Most specific first: :func:`find_pitfall` returns the first entry that matches."""


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
                "  traceback first; the pitfall cheat sheet (notebooks/11_pitfall_cheat_sheet.ipynb) lists "
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
