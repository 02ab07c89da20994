"""The notebook 04 self-checks accept right answers and reject wrong ones with a specific hint."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
import pytest_asyncio
from sqlalchemy import delete, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from helpers import open_database
from helpers.exercises import nb04
from helpers.exercises.base import Status
from helpers.models import Post, User

pytestmark = pytest.mark.asyncio(loop_scope="module")


# One private database and one event loop for the whole module: creating a database per test
# costs about 0.15 s on PostgreSQL, and an engine belongs to the loop it was first used on.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[AsyncEngine]:
    db = await open_database("test_nb04")
    try:
        yield db.engine
    finally:
        await db.close()


# 04.1 ------------------------------------------------------------------------------------


async def keyset(session: AsyncSession, before_id: int | None, size: int) -> Sequence[Post]:
    stmt = select(Post).order_by(Post.id.desc()).limit(size)
    if before_id is not None:
        stmt = stmt.where(Post.id < before_id)
    return (await session.scalars(stmt)).all()


async def ascending(session: AsyncSession, before_id: int | None, size: int) -> Sequence[Post]:
    stmt = select(Post).order_by(Post.id).limit(size)
    if before_id is not None:
        stmt = stmt.where(Post.id < before_id)
    return (await session.scalars(stmt)).all()


async def no_limit(session: AsyncSession, before_id: int | None, size: int) -> Sequence[Post]:
    stmt = select(Post).order_by(Post.id.desc())
    if before_id is not None:
        stmt = stmt.where(Post.id < before_id)
    return (await session.scalars(stmt)).all()


async def less_or_equal(session: AsyncSession, before_id: int | None, size: int) -> Sequence[Post]:
    stmt = select(Post).order_by(Post.id.desc()).limit(size)
    if before_id is not None:
        stmt = stmt.where(Post.id <= before_id)
    return (await session.scalars(stmt)).all()


async def by_offset(session: AsyncSession, before_id: int | None, size: int) -> Sequence[Post]:
    skip = 0 if before_id is None else 11 - before_id  # right ids on gap-free data, but OFFSET
    return (await session.scalars(select(Post).order_by(Post.id.desc()).offset(skip).limit(size))).all()


async def rows(session: AsyncSession, before_id: int | None, size: int) -> Sequence[object]:
    stmt = select(Post.id, Post.title).order_by(Post.id.desc()).limit(size)
    if before_id is not None:
        stmt = stmt.where(Post.id < before_id)
    return (await session.execute(stmt)).all()


async def one_by_one(session: AsyncSession, before_id: int | None, size: int) -> Sequence[Post]:
    posts = [await session.get(Post, i) for i in range((before_id or 11) - 1, 0, -1)][:size]
    return [p for p in posts if p is not None]


async def forgot_await(session: AsyncSession, before_id: int | None, size: int) -> Sequence[Post]:
    session.scalars(select(Post))  # the coroutine is dropped: "never awaited"
    return await keyset(session, before_id, size)


async def no_order(session: AsyncSession, before_id: int | None, size: int) -> Sequence[Post]:
    stmt = select(Post).limit(size)
    if before_id is not None:
        stmt = stmt.where(Post.id < before_id)
    return (await session.scalars(stmt)).all()


async def greater_than(session: AsyncSession, before_id: int | None, size: int) -> Sequence[Post]:
    stmt = select(Post).order_by(Post.id.desc()).limit(size)
    if before_id is not None:
        stmt = stmt.where(Post.id > before_id)
    return (await session.scalars(stmt)).all()


async def none_not_handled(session: AsyncSession, before_id: int | None, size: int) -> Sequence[Post]:
    stmt = select(Post).where(Post.id < before_id).order_by(Post.id.desc()).limit(size)
    return (await session.scalars(stmt)).all()


async def sliced_in_python(session: AsyncSession, before_id: int | None, size: int) -> Sequence[Post]:
    posts = (await session.scalars(select(Post).order_by(Post.id.desc()))).all()
    return [post for post in posts if before_id is None or post.id < before_id][:size]


async def scalar_result(session: AsyncSession, before_id: int | None, size: int) -> object:
    stmt = select(Post).order_by(Post.id.desc()).limit(size)
    if before_id is not None:
        stmt = stmt.where(Post.id < before_id)
    return await session.scalars(stmt)  # a ScalarResult, not a list


async def rows_of_posts(session: AsyncSession, before_id: int | None, size: int) -> Sequence[object]:
    stmt = select(Post).order_by(Post.id.desc()).limit(size)
    if before_id is not None:
        stmt = stmt.where(Post.id < before_id)
    return (await session.execute(stmt)).all()  # Row objects wrapping the posts


async def no_await_all(session: AsyncSession, before_id: int | None, size: int) -> Sequence[Post]:
    stmt = select(Post).order_by(Post.id.desc()).limit(size)
    if before_id is not None:
        stmt = stmt.where(Post.id < before_id)
    return session.scalars(stmt).all()  # type: ignore[attr-defined]


async def returns_coroutine(session: AsyncSession, before_id: int | None, size: int) -> object:
    stmt = select(Post).order_by(Post.id.desc()).limit(size)
    if before_id is not None:
        stmt = stmt.where(Post.id < before_id)
    return session.scalars(stmt)


async def placeholder_1(session: AsyncSession, before_id: int | None, size: int) -> Sequence[Post]:
    raise NotImplementedError("your code here")


async def test_posts_before_correct(engine: AsyncEngine) -> None:
    verdict = await nb04.check_posts_before(keyset, engine)
    assert verdict.status is Status.CORRECT, verdict


async def test_posts_before_not_attempted(engine: AsyncEngine) -> None:
    assert (await nb04.check_posts_before(placeholder_1, engine)).status is Status.NOT_ATTEMPTED
    assert (await nb04.check_posts_before(..., engine)).status is Status.NOT_ATTEMPTED


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (ascending, "wrong order"),
        (no_limit, ".limit(size)"),
        (less_or_equal, "Post.id < before_id"),
        (by_offset, "offset pagination"),
        (rows, "returned rows"),
        (one_by_one, "one SELECT per page"),
        (forgot_await, "an await is missing: coroutine 'AsyncSession.scalars' was never awaited"),
        (no_order, "without ORDER BY"),
        (greater_than, "Post.id < before_id"),
        (none_not_handled, "refuses Post.id < None"),
        (sliced_in_python, "cut the page in Python"),
        (scalar_result, "iterated only once"),
        (rows_of_posts, "returned rows"),
        (no_await_all, "an await is missing: coroutine 'AsyncSession.scalars' was never awaited"),
        (returns_coroutine, "returned the coroutine AsyncSession.scalars() instead"),
    ],
    ids=lambda v: getattr(v, "__name__", "hint"),
)
async def test_posts_before_wrong(engine: AsyncEngine, answer, hint: str) -> None:
    verdict = await nb04.check_posts_before(answer, engine)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message


# 04.2 ------------------------------------------------------------------------------------


async def bulk_delete(session: AsyncSession, author_id: int) -> int:
    result = await session.execute(delete(Post).where(Post.author_id == author_id))
    await session.commit()
    return result.rowcount


async def no_commit(session: AsyncSession, author_id: int) -> int:
    result = await session.execute(delete(Post).where(Post.author_id == author_id))
    return result.rowcount


async def commit_not_awaited(session: AsyncSession, author_id: int) -> int:
    result = await session.execute(delete(Post).where(Post.author_id == author_id))
    session.commit()
    return result.rowcount


async def no_where(session: AsyncSession, author_id: int) -> int:
    result = await session.execute(delete(Post))
    await session.commit()
    return result.rowcount


async def load_then_delete(session: AsyncSession, author_id: int) -> int:
    posts = (await session.scalars(select(Post).where(Post.author_id == author_id))).all()
    for post in posts:
        await session.delete(post)
    await session.commit()
    return len(posts)


async def returns_nothing(session: AsyncSession, author_id: int) -> None:
    await bulk_delete(session, author_id)


async def wrong_count(session: AsyncSession, author_id: int) -> int:
    return await bulk_delete(session, author_id) + 1


async def execute_not_awaited(session: AsyncSession, author_id: int) -> int:
    result = session.execute(delete(Post).where(Post.author_id == author_id))
    await session.commit()
    return result.rowcount  # type: ignore[attr-defined]


async def deletes_author(session: AsyncSession, author_id: int) -> int:
    result = await session.execute(delete(User).where(User.id == author_id))
    await session.commit()
    return result.rowcount


async def raw_sql(session: AsyncSession, author_id: int) -> int:
    result = await session.execute(text("DELETE FROM posts WHERE author_id = :a"), {"a": author_id})
    await session.commit()
    return result.rowcount


async def select_ids_then_delete(session: AsyncSession, author_id: int) -> int:
    ids = (await session.scalars(select(Post.id).where(Post.author_id == author_id))).all()
    await session.execute(delete(Post).where(Post.id.in_(ids)))
    await session.commit()
    return len(ids)


async def returns_result(session: AsyncSession, author_id: int) -> object:
    result = await session.execute(delete(Post).where(Post.author_id == author_id))
    await session.commit()
    return result


async def placeholder_2(session: AsyncSession, author_id: int) -> int:
    raise NotImplementedError("your code here")


async def delete_in_begin_block(session: AsyncSession, author_id: int) -> int:
    async with session.begin():
        result = await session.execute(delete(Post).where(Post.author_id == author_id))
    return result.rowcount


async def delete_returning(session: AsyncSession, author_id: int) -> int:
    result = await session.execute(delete(Post).where(Post.author_id == author_id).returning(Post.id))
    deleted = len(result.all())
    await session.commit()
    return deleted


@pytest.mark.parametrize(
    "answer", [bulk_delete, delete_in_begin_block, delete_returning], ids=lambda f: f.__name__
)
async def test_delete_posts_of_correct(engine: AsyncEngine, answer) -> None:
    verdict = await nb04.check_delete_posts_of(answer, engine)
    assert verdict.status is Status.CORRECT, verdict


async def test_delete_posts_of_not_attempted(engine: AsyncEngine) -> None:
    assert (await nb04.check_delete_posts_of(placeholder_2, engine)).status is Status.NOT_ATTEMPTED


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (no_commit, "not committed"),
        (commit_not_awaited, "coroutine 'AsyncSession.commit' was never awaited"),
        (no_where, "filter with"),
        (load_then_delete, "you loaded the posts first"),
        (returns_nothing, "returned None"),
        (wrong_count, "returned 3; it deleted 2"),
        (execute_not_awaited, "an await is missing: coroutine 'AsyncSession.execute' was never awaited"),
        (deletes_author, "delete(Post), not the author"),
        (raw_sql, "SQL text"),
        (select_ids_then_delete, "you loaded the posts first"),
        (returns_result, "returned the CursorResult"),
    ],
    ids=lambda v: getattr(v, "__name__", "hint"),
)
async def test_delete_posts_of_wrong(engine: AsyncEngine, answer, hint: str) -> None:
    verdict = await nb04.check_delete_posts_of(answer, engine)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message
