"""Self-checks for the exercises of notebook 05 (expire_on_commit).

* 05.1 ``rename(session_factory, user_id, new_name)``: rename a user, commit, and return the
  user's ``id``, ``name`` and ``email`` as a dict, although ``commit()`` expired the object
  (the factory keeps the default ``expire_on_commit=True``).
* 05.2 ``current_email(session, user)``: the email the database holds *now* for an object the
  session loaded earlier (another session changed the row in between), with ``user`` showing
  it too.

Both checks reload the sample data of :mod:`helpers.sample_data` into the engine they get.
"""

from __future__ import annotations

import contextlib
import gc
import warnings
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import MissingGreenlet, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm.exc import DetachedInstanceError

from helpers.exercises.base import Verdict, check, correct, wrong
from helpers.models import User
from helpers.sample_data import load_sample_data

__all__ = ["check_current_email", "check_rename", "missing_greenlet_in"]

Rename = Callable[[async_sessionmaker[AsyncSession], int, str], Awaitable[Any]]
CurrentEmail = Callable[[AsyncSession, User], Awaitable[Any]]

_NEW_NAME = "linus t."
_NEW_EMAIL = "grace@navy.example"
_COROUTINE_WARNING = "coroutine 'Connection.cursor' was never awaited"


def missing_greenlet_in(exc: BaseException) -> MissingGreenlet | None:
    """The ``MissingGreenlet`` behind ``exc``: ``exc`` itself (asyncpg) or the ``orig`` of a
    ``StatementError`` (aiosqlite), else ``None``."""
    if isinstance(exc, MissingGreenlet):
        return exc
    if isinstance(exc, StatementError) and isinstance(exc.orig, MissingGreenlet):
        return exc.orig
    return None


@contextlib.contextmanager
def _abandoned_coroutines_ignored() -> Iterator[None]:
    """Run a learner's answer with aiosqlite's "never awaited" warning ignored.

    When SQLAlchemy refuses an implicit load, aiosqlite has already created the coroutine for it;
    Python warns about that coroutine on stderr whenever it is garbage-collected. Inside this
    block the warning is ignored; call :func:`gc.collect` in it to get rid of such coroutines now.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_COROUTINE_WARNING, category=RuntimeWarning)
        yield


@check("05.1")
async def check_rename(rename: Rename, engine: AsyncEngine) -> Verdict:
    """``rename`` must commit the new name and return the stored values as a plain dict."""
    await load_sample_data(engine)
    factory = async_sessionmaker(engine)  # expire_on_commit=True, the default, on purpose
    expected = {"id": 3, "name": _NEW_NAME, "email": "linus@example.com"}
    refused = False
    with _abandoned_coroutines_ignored():
        try:
            result = await rename(factory, 3, _NEW_NAME)
        except (MissingGreenlet, StatementError) as exc:
            if missing_greenlet_in(exc) is None:
                raise
            refused = True
        if refused:
            gc.collect()
    if refused:
        return wrong(
            "05.1",
            "MissingGreenlet: an attribute was read after commit() had expired it. Read the values "
            "before commit(), or reload them with await session.refresh(user) (or await "
            "user.awaitable_attrs.name) after it.",
        )
    async with factory() as session:
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
        keys = sorted(result)
        return wrong("05.1", f"the dict needs exactly the keys 'id', 'name', 'email'; it has {keys}.")
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
    refused = detached = False
    async with factory() as session:
        user = await session.get(User, 2)
        assert user is not None
        await session.commit()  # nothing is expired: user keeps grace@example.com
        async with factory() as other:  # meanwhile, someone else changes the row
            await other.execute(update(User).where(User.id == 2).values(email=_NEW_EMAIL))
            await other.commit()
        with _abandoned_coroutines_ignored():
            try:
                answer = await current_email(session, user)
            except (MissingGreenlet, StatementError) as exc:
                if missing_greenlet_in(exc) is None:
                    raise
                refused = True
            except DetachedInstanceError:
                detached = True
            if refused:
                gc.collect()
        shown = user.__dict__.get("email")
    if refused:
        return wrong(
            "05.2",
            "MissingGreenlet: after session.expire(user) the next plain attribute read needs I/O; "
            "await session.refresh(user) does the expiring and the reloading in one awaited step.",
        )
    if detached:
        return wrong("05.2", "DetachedInstanceError: keep using the session you were given; do not close it.")
    if answer == "grace@example.com":
        return wrong(
            "05.2",
            "that is the value this session loaded before the other session's change. A new "
            "select(User) returns the same object from the identity map with its old values; "
            "await session.refresh(user) (or execution_options(populate_existing=True)) reloads it.",
        )
    if answer != _NEW_EMAIL:
        return wrong("05.2", f"expected the email the database holds now, {_NEW_EMAIL!r}; got {answer!r}.")
    if shown != _NEW_EMAIL:
        return wrong(
            "05.2",
            "the returned value is right, but the object still shows the old email (a column-only "
            "select bypasses it): refresh the object itself, await session.refresh(user).",
        )
    return correct("05.2", "the object was reloaded from the database, not from the identity map.")
