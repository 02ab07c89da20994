"""Self-checks for the exercises of notebook 04 (CRUD).

* 04.1 ``posts_before(session, before_id, size)``: keyset pagination, newest first, one
  SELECT with WHERE/ORDER BY/LIMIT and no OFFSET, returning a list of ``Post`` objects.
* 04.2 ``delete_posts_of(session, author_id)``: one ORM-enabled DELETE, committed, returning
  the number of deleted rows, without loading the posts.

Both checks reload the sample data (:func:`helpers.sample_data.load_sample_data`) into the
engine they are given, then call the learner's function with fresh sessions while recording
its statements with :class:`helpers.QueryRecorder`.
"""

from __future__ import annotations

import gc
import inspect
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import Row, event, func, select
from sqlalchemy.engine import CursorResult, Result, ScalarResult
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from helpers.exercises.base import Verdict, check, correct, wrong
from helpers.models import Post, User
from helpers.queries import QueryRecorder, RecordedStatement
from helpers.sample_data import load_sample_data

__all__ = ["check_delete_posts_of", "check_posts_before"]

PostsBefore = Callable[[AsyncSession, int | None, int], Awaitable[Sequence[Post]]]
DeletePostsOf = Callable[[AsyncSession, int], Awaitable[int]]

#: (before_id, size, expected ids) on the sample data (posts 1-10)
PAGES: list[tuple[int | None, int, list[int]]] = [
    (None, 3, [10, 9, 8]),
    (8, 3, [7, 6, 5]),
    (5, 4, [4, 3, 2, 1]),
    (3, 5, [2, 1]),
    (1, 3, []),
]
#: Transaction control: on SQLite the recipe's BEGIN goes through the cursor, so it may be recorded.
_TRANSACTION_CONTROL = {"BEGIN", "COMMIT", "ROLLBACK"}


def _statements(queries: QueryRecorder) -> list[RecordedStatement]:
    """The recorded statements without transaction control (which differs between backends)."""
    return [s for s in queries.statements if s.verb not in _TRANSACTION_CONTROL]


async def _call(func: Callable[..., Any], *args: Any) -> tuple[Any, str | None]:
    """Await ``func(*args)``; return its value and, if an ``await`` is missing, a hint saying which.

    A coroutine that is never awaited warns only when it is garbage-collected; collecting here,
    while warnings are recorded, turns that into a hint instead of a stray line on stderr.
    """
    error = returned = None
    value: Any = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            produced = func(*args)
            value = await produced if inspect.isawaitable(produced) else produced
        except (AttributeError, TypeError) as exc:
            if "'coroutine' object" not in str(exc):
                raise
            error = str(exc)
        if inspect.iscoroutine(value):
            returned = value.__qualname__
            value.close()
        gc.collect()
    never_awaited = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    if returned:
        return (
            None,
            f"an await is missing: your function returned the coroutine {returned}() instead of its result.",
        )
    if never_awaited or error:
        what = never_awaited[0] if never_awaited else "a coroutine was used without await"
        return None, f"an await is missing: {what}" + (f" ({error})." if error else ".")
    return value, None


def _skips_rows(statement: RecordedStatement) -> bool:
    """True if the statement has an OFFSET that skips rows (SQLite renders ``OFFSET 0`` with any LIMIT)."""
    if "OFFSET" not in statement.sql.upper():
        return False
    parameters = statement.parameters
    if isinstance(parameters, Sequence) and parameters and not isinstance(parameters, str):
        return parameters[-1] != 0
    return True


def _page_hint(page: Any, call: str) -> str | None:
    """A hint if ``page`` is not a list of ``Post`` objects."""
    if page is None:
        return f"{call} returned None; return the list of posts."
    if isinstance(page, Result | ScalarResult):
        return (
            f"{call} returned a {type(page).__name__}, which can be iterated only once; return a list: "
            "(await session.scalars(stmt)).all()."
        )
    if not isinstance(page, Sequence) or isinstance(page, str):
        return f"{call} returned {type(page).__name__}; return a list of Post objects."
    if any(isinstance(item, Row) for item in page):
        return (
            f"{call} returned rows (session.execute); use await session.scalars(select(Post)...) to get "
            "Post objects."
        )
    if any(not isinstance(item, Post) for item in page):
        return f"{call} returned {type(page[0]).__name__} items; return Post objects (select(Post))."
    return None


@check("04.1")
async def check_posts_before(posts_before: PostsBefore, engine: AsyncEngine) -> Verdict:
    """``posts_before(session, before_id, size)``: keyset pagination, newest first."""
    await load_sample_data(engine)
    factory = async_sessionmaker(engine, expire_on_commit=False)
    for before_id, size, expected in PAGES:
        call = f"posts_before(session, {before_id}, {size})"
        async with factory() as session:
            with QueryRecorder(engine) as queries:
                try:
                    page, missing_await = await _call(posts_before, session, before_id, size)
                except ArgumentError as exc:
                    if before_id is not None or "None" not in str(exc):
                        raise
                    return wrong(
                        "04.1",
                        f"{call} raised ArgumentError: SQLAlchemy refuses Post.id < None. The first page "
                        "(before_id None) has no condition: add .where(...) only when before_id is not None.",
                    )
        if missing_await:
            return wrong("04.1", missing_await)
        hint = _page_hint(page, call)
        if hint:
            return wrong("04.1", hint)
        ids = [post.id for post in page]
        statements = _statements(queries)
        if any(_skips_rows(statement) for statement in statements):
            return wrong(
                "04.1",
                "that is offset pagination; keyset pagination filters with .where(Post.id < before_id).",
            )
        if len(statements) != 1:
            return wrong("04.1", f"{call} ran {len(statements)} queries; one SELECT per page is enough.")
        sql = statements[0].sql.upper()
        if "ORDER BY" not in sql:
            return wrong(
                "04.1",
                f"{call} sent a SELECT without ORDER BY, so the database may return the rows in any order: "
                "add .order_by(Post.id.desc()).",
            )
        if ids != expected and len(ids) > size:
            return wrong("04.1", f"{call} returned {len(ids)} posts; at most {size}: add .limit(size).")
        if "LIMIT" not in sql:
            return wrong(
                "04.1",
                f"{call} loaded every post and cut the page in Python; let the database do it: .limit(size).",
            )
        if before_id is not None and "WHERE" not in sql:
            return wrong(
                "04.1",
                f"{call} sent a SELECT without WHERE; filter in SQL: .where(Post.id < before_id).",
            )
        if ids != expected:
            if sorted(ids) == sorted(expected) or (len(ids) > 1 and ids == sorted(ids)):
                return wrong(
                    "04.1", f"{call} returned ids {ids}: wrong order; newest first is Post.id.desc()."
                )
            if before_id is not None and any(i >= before_id for i in ids):
                return wrong("04.1", f"{call} returned ids {ids}; keep only posts with Post.id < before_id.")
            return wrong(
                "04.1",
                f"{call} returned ids {ids}, expected {expected}: posts with id < before_id, "
                "highest id first, at most size.",
            )
    return correct("04.1", "keyset pages, newest first, one query each.")


@check("04.2")
async def check_delete_posts_of(delete_posts_of: DeletePostsOf, engine: AsyncEngine) -> Verdict:
    """``delete_posts_of(session, author_id)``: one bulk DELETE, committed, count returned."""
    await load_sample_data(engine)
    factory = async_sessionmaker(engine, expire_on_commit=False)
    async with factory() as fresh:
        users = await fresh.scalar(select(func.count(User.id)))
    # author 3 (linus) has posts 7 and 8; nobody has id 99
    for author_id, expected, left in ((3, 2, 8), (99, 0, 8)):
        call = f"delete_posts_of(session, {author_id})"
        orm_deletes: list[bool] = []
        async with factory() as session:
            event.listen(
                session.sync_session,
                "do_orm_execute",
                lambda state, seen=orm_deletes: seen.append(state.is_delete),
            )
            with QueryRecorder(engine) as queries:
                deleted, missing_await = await _call(delete_posts_of, session, author_id)
        if missing_await:
            return wrong("04.2", missing_await)
        async with factory() as fresh:  # sees committed data only
            theirs = await fresh.scalar(select(func.count(Post.id)).where(Post.author_id == author_id))
            remaining = await fresh.scalar(select(func.count(Post.id)))
            users_left = await fresh.scalar(select(func.count(User.id)))
        statements = _statements(queries)
        if users_left != users:
            return wrong(
                "04.2",
                f"after {call} a user is gone: delete the author's posts, delete(Post), not the author.",
            )
        if theirs:
            return wrong(
                "04.2",
                f"after {call}, a fresh session still finds {theirs} of their posts: "
                "the deletion was not committed (await session.commit()).",
            )
        if remaining != left:
            return wrong(
                "04.2",
                f"after {call}, {remaining} posts are left instead of {left}: filter with "
                ".where(Post.author_id == author_id).",
            )
        if any(s.verb == "SELECT" and " FROM posts" in s.sql for s in statements):
            return wrong(
                "04.2",
                "you loaded the posts first; one delete(Post).where(...) statement deletes them "
                "without loading.",
            )
        if sum(s.verb == "DELETE" for s in statements) != 1:
            return wrong("04.2", "use exactly one ORM-enabled delete(Post) statement.")
        if not any(orm_deletes):
            return wrong(
                "04.2",
                "the DELETE did not go through session.execute(delete(Post)...) (SQL text, or a "
                "connection?); use the ORM-enabled delete(Post).where(...).",
            )
        if isinstance(deleted, CursorResult | Result):
            return wrong("04.2", f"{call} returned the {type(deleted).__name__}; return result.rowcount.")
        if isinstance(deleted, bool) or not isinstance(deleted, int):
            return wrong(
                "04.2",
                f"{call} returned {type(deleted).__name__}; return the number of deleted rows "
                "(result.rowcount).",
            )
        if deleted != expected:
            return wrong("04.2", f"{call} returned {deleted}; it deleted {expected} rows (result.rowcount).")
    return correct("04.2", "one DELETE statement, committed, with its row count.")
