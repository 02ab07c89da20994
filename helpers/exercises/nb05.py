"""Self-checks for the exercises of notebook 05 (expire_on_commit).

* 05.1 ``rename(session_factory, user_id, new_name)``: rename a user, commit, and return the
  user's ``id``, ``name`` and ``email`` as a dict, although ``commit()`` expired the object.
  The factory keeps the default ``expire_on_commit=True``, and turning it off is the one fix
  this exercise does not accept.
* 05.2 ``current_email(session, user)``: the email the database holds *now* for an object the
  session loaded earlier (another session changed the row in between), with ``user`` showing
  it too.

Both checks reload the sample data of :mod:`helpers.sample_data` into the engine they get.
Each wrong answer a learner is likely to write gets its own hint; ``tests/test_exercises_nb05.py``
has one test per hint.
"""

from __future__ import annotations

import gc
import logging
import re
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import MissingGreenlet, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm.exc import DetachedInstanceError

from helpers.exercises.base import Verdict, check, correct, wrong
from helpers.models import User
from helpers.queries import QueryRecorder
from helpers.sample_data import load_sample_data

__all__ = ["check_current_email", "check_rename", "missing_greenlet_in"]

Rename = Callable[[async_sessionmaker[AsyncSession], int, str], Awaitable[Any]]
CurrentEmail = Callable[[AsyncSession, User], Awaitable[Any]]

_NEW_NAME = "linus t."
_OLD_EMAIL = "grace@example.com"
_NEW_EMAIL = "grace@navy.example"
#: the driver's own coroutines (aiosqlite's Connection.cursor, Connection.rollback, ...), which a
#: refused load leaves behind: not the learner's forgotten await
_DRIVER_COROUTINE = re.compile(r"(Connection|Cursor)\.")
_NEVER_AWAITED = re.compile(r"coroutine '([\w.]+)' was never awaited")


def missing_greenlet_in(exc: BaseException) -> MissingGreenlet | None:
    """The ``MissingGreenlet`` behind ``exc``: ``exc`` itself (asyncpg; every driver under
    SQLAlchemy 2.0), or the ``orig`` of a ``StatementError`` (aiosqlite and psycopg under 2.1;
    ``DBAPIError`` with the SQLite transaction recipe), else ``None``."""
    if isinstance(exc, MissingGreenlet):
        return exc
    if isinstance(exc, StatementError) and isinstance(exc.orig, MissingGreenlet):
        return exc.orig
    return None


class _Run:
    """What happened while the learner's answer ran: its result or the error it raised."""

    def __init__(self) -> None:
        self.result: Any = None
        self.refused = False  # MissingGreenlet: an implicit load was refused
        self.detached = False  # DetachedInstanceError
        self.never_awaited: list[str] = []  # coroutines created and dropped, e.g. AsyncSession.commit


async def _run_answer(answer: Callable[[], Awaitable[Any]]) -> _Run:
    """Run a learner's answer and note what Python and SQLAlchemy only report on the side.

    * "coroutine ... was never awaited" warnings: a forgotten ``await`` (recorded, then named
      in the hint) and aiosqlite's abandoned driver coroutine after a refused load (dropped);
      :func:`gc.collect` runs before the warning filter is restored, so both arrive now, not
      in a later cell.
    * The pool's "Exception during reset or similar" log: on an engine with the SQLite
      transaction recipe, a load refused after commit() also fails the pool's rollback, and the
      pool logs a second traceback on stderr. The verdict already says what went wrong.
    """
    run = _Run()
    pool_logger = logging.getLogger("sqlalchemy.pool")
    level = pool_logger.level
    pool_logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always", RuntimeWarning)
            try:
                run.result = await answer()
            except (MissingGreenlet, StatementError) as exc:
                if missing_greenlet_in(exc) is None:
                    raise
                run.refused = True
            except DetachedInstanceError:
                run.detached = True
            except AttributeError as exc:  # a coroutine used as its result: a forgotten await
                if "'coroutine' object" not in str(exc):
                    raise
            gc.collect()  # the exception, its frames and what they held are gone by now
    finally:
        pool_logger.setLevel(level)
    for warning in seen:
        match = _NEVER_AWAITED.search(str(warning.message))
        if match and not _DRIVER_COROUTINE.match(match[1]):
            run.never_awaited.append(match[1])
        elif not match:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return run


def _forgot_await(exercise: str, names: list[str]) -> Verdict:
    call = names[0].rsplit(".", 1)[-1]
    return wrong(
        exercise,
        f"{names[0]}() was called without await, so it never ran (Python warns: coroutine "
        f"'{names[0]}' was never awaited); write await session.{call}(...).",
    )


class _WatchedFactory(async_sessionmaker[AsyncSession]):
    """An ``async_sessionmaker`` that remembers the sessions it made, to read their settings later."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)  # expire_on_commit=True, the default, on purpose
        self.made: list[AsyncSession] = []

    def __call__(self, **local_kw: Any) -> AsyncSession:
        session = super().__call__(**local_kw)
        self.made.append(session)
        return session


@check("05.1")
async def check_rename(rename: Rename, engine: AsyncEngine) -> Verdict:
    """``rename`` must commit the new name and return the stored values as a plain dict."""
    await load_sample_data(engine)
    factory = _WatchedFactory(engine)
    expected = {"id": 3, "name": _NEW_NAME, "email": "linus@example.com"}
    run = await _run_answer(lambda: rename(factory, 3, _NEW_NAME))
    if run.never_awaited:
        return _forgot_await("05.1", run.never_awaited)
    if run.refused:
        return wrong(
            "05.1",
            "MissingGreenlet: an attribute was read after commit() had expired it. Read the values "
            "before commit(), or reload them with await session.refresh(user) (or await "
            "user.awaitable_attrs.name) after it.",
        )
    if any(not session.sync_session.expire_on_commit for session in factory.made):
        return wrong(
            "05.1",
            "you turned expire_on_commit off. That hides the error for every object of the session "
            "and lets stale values through; this exercise keeps expiry on. Read the values before "
            "commit(), or await session.refresh(user) after it.",
        )
    result = run.result
    async with AsyncSession(engine) as session:
        stored = await session.scalar(select(User.name).where(User.id == 3))
    if stored != _NEW_NAME:
        return wrong(
            "05.1",
            f"the database still says {stored!r}: the change was never committed; call "
            "await session.commit() before returning.",
        )
    if isinstance(result, DeclarativeBase):
        return wrong(
            "05.1",
            "you returned the ORM object; return a dict of plain values "
            "({'id': ..., 'name': ..., 'email': ...}), which needs no session to read.",
        )
    if not isinstance(result, dict):
        return wrong("05.1", f"return a dict with keys 'id', 'name', 'email', not {type(result).__name__}.")
    if set(result) != set(expected):
        keys = sorted(map(str, result))
        hint = " (user.__dict__ holds SQLAlchemy's own state too)" if "_sa_instance_state" in result else ""
        return wrong("05.1", f"the dict needs exactly the keys 'id', 'name', 'email'; it has {keys}{hint}.")
    if result["name"] == "linus":
        return wrong("05.1", "the dict holds the old name: read it after renaming (before or after commit).")
    if result != expected:
        return wrong("05.1", f"expected {expected}, got {result}.")
    return correct("05.1", "renamed, committed, and the stored values read back without hidden I/O.")


@check("05.2")
async def check_current_email(current_email: CurrentEmail, engine: AsyncEngine) -> Verdict:
    """``current_email`` must return the database's value and leave ``user`` showing it."""
    await load_sample_data(engine)
    factory = async_sessionmaker(engine, expire_on_commit=False)
    async with factory() as session:
        user = await session.get(User, 2)
        assert user is not None
        await session.commit()  # nothing is expired: user keeps grace@example.com
        async with factory() as other:  # meanwhile, someone else changes the row
            await other.execute(update(User).where(User.id == 2).values(email=_NEW_EMAIL))
            await other.commit()
        with QueryRecorder(engine) as queries:
            run = await _run_answer(lambda: current_email(session, user))
        shown = user.__dict__.get("email")
    answer = run.result
    if run.never_awaited:
        return _forgot_await("05.2", run.never_awaited)
    if run.refused:
        return wrong(
            "05.2",
            "MissingGreenlet: after session.expire(user) (or expire_all()) the next plain read of "
            "user.email needs I/O; await session.refresh(user) expires and reloads in one awaited step.",
        )
    if run.detached:
        return wrong("05.2", "DetachedInstanceError: keep using the session you were given; do not close it.")
    if answer == _OLD_EMAIL:
        if "SELECT" not in queries.verbs():
            return wrong(
                "05.2",
                "no query ran, so you got the value this session loaded before the change: user.email, "
                "session.get() (it finds user in the identity map) and commit() (this session has "
                "expire_on_commit=False) all keep it. await session.refresh(user) reloads the row.",
            )
        return wrong(
            "05.2",
            "your query fetched the new row, but the identity map handed back the object already "
            "loaded, with its old values. await session.refresh(user), or add "
            ".execution_options(populate_existing=True) to the select, overwrites them.",
        )
    if answer != _NEW_EMAIL:
        return wrong("05.2", f"expected the email the database holds now, {_NEW_EMAIL!r}; got {answer!r}.")
    if shown != _NEW_EMAIL:
        return wrong(
            "05.2",
            "the returned value is right, but the object still shows the old email (a column-only "
            "select or another session bypasses it): refresh the object itself, await session.refresh(user).",
        )
    return correct("05.2", "the object was reloaded from the database, not from the identity map.")
