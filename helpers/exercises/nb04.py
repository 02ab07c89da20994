"""Self-checks for the exercises of notebook 04 (CRUD).

Both checks reload the sample data (:func:`helpers.sample_data.load_sample_data`) into the
engine they are given, then call the learner's function with fresh sessions.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from helpers.exercises.base import Verdict, check, correct, wrong
from helpers.models import Post
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


async def _call(func: Callable[..., Any], *args: Any) -> tuple[Any, list[str]]:
    """Await ``func(*args)``, returning its value and any "never awaited" warnings it caused."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = func(*args)
        if inspect.isawaitable(value):
            value = await value
    never_awaited = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    return value, never_awaited


def _skips_rows(statement: RecordedStatement) -> bool:
    """True if the statement has an OFFSET that skips rows (SQLite renders ``OFFSET 0`` with any LIMIT)."""
    if "OFFSET" not in statement.sql.upper():
        return False
    parameters = statement.parameters
    if isinstance(parameters, Sequence) and parameters and not isinstance(parameters, str):
        return parameters[-1] != 0
    return True


@check("04.1")
async def check_posts_before(posts_before: PostsBefore, engine: AsyncEngine) -> Verdict:
    """``posts_before(session, before_id, size)``: keyset pagination, newest first."""
    await load_sample_data(engine)
    factory = async_sessionmaker(engine, expire_on_commit=False)
    for before_id, size, expected in PAGES:
        call = f"posts_before(session, {before_id}, {size})"
        async with factory() as session:
            with QueryRecorder(engine) as queries:
                page, never_awaited = await _call(posts_before, session, before_id, size)
        if never_awaited:
            return wrong("04.1", f"an await is missing: {never_awaited[0]}.")
        if page is None:
            return wrong("04.1", f"{call} returned None; return the list of posts.")
        page = list(page)
        if any(not isinstance(post, Post) for post in page):
            return wrong(
                "04.1",
                "return Post objects (await session.scalars(select(Post)...)), not rows or values.",
            )
        ids = [post.id for post in page]
        if any(_skips_rows(statement) for statement in queries.statements):
            return wrong(
                "04.1",
                "that is offset pagination; keyset pagination filters with .where(Post.id < before_id).",
            )
        if ids != expected:
            if sorted(ids) == sorted(expected) or (len(ids) > 1 and ids == sorted(ids)):
                return wrong(
                    "04.1", f"{call} returned ids {ids}: wrong order; newest first is Post.id.desc()."
                )
            if len(ids) > size:
                return wrong("04.1", f"{call} returned {len(ids)} posts; at most {size}: add .limit(size).")
            if before_id is not None and any(i >= before_id for i in ids):
                return wrong("04.1", f"{call} returned ids {ids}; keep only posts with Post.id < before_id.")
            return wrong(
                "04.1",
                f"{call} returned ids {ids}, expected {expected}: posts with id < before_id, "
                "highest id first, at most size.",
            )
        if queries.count != 1:
            return wrong("04.1", f"{call} ran {queries.count} queries; one SELECT per page is enough.")
    return correct("04.1", "keyset pages, newest first, one query each.")


@check("04.2")
async def check_delete_posts_of(delete_posts_of: DeletePostsOf, engine: AsyncEngine) -> Verdict:
    """``delete_posts_of(session, author_id)``: one bulk DELETE, committed, count returned."""
    await load_sample_data(engine)
    factory = async_sessionmaker(engine, expire_on_commit=False)
    # author 3 (linus) has posts 7 and 8; nobody has id 99
    for author_id, expected, left in ((3, 2, 8), (99, 0, 8)):
        call = f"delete_posts_of(session, {author_id})"
        async with factory() as session:
            with QueryRecorder(engine) as queries:
                deleted, never_awaited = await _call(delete_posts_of, session, author_id)
        if never_awaited:
            return wrong("04.2", f"an await is missing: {never_awaited[0]}.")
        async with factory() as fresh:  # sees committed data only
            theirs = await fresh.scalar(select(func.count(Post.id)).where(Post.author_id == author_id))
            remaining = await fresh.scalar(select(func.count(Post.id)))
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
        if any(s.verb == "SELECT" and " FROM posts" in s.sql for s in queries.statements):
            return wrong(
                "04.2",
                "you loaded the posts first; one delete(Post).where(...) statement deletes them "
                "without loading.",
            )
        if sum(s.verb == "DELETE" for s in queries.statements) != 1:
            return wrong("04.2", "use exactly one ORM-enabled delete(Post) statement.")
        if isinstance(deleted, bool) or not isinstance(deleted, int):
            return wrong(
                "04.2",
                f"{call} returned {deleted!r}; return the number of deleted rows (result.rowcount).",
            )
        if deleted != expected:
            return wrong("04.2", f"{call} returned {deleted}; it deleted {expected} rows (result.rowcount).")
    return correct("04.2", "one DELETE statement, committed, with its row count.")
