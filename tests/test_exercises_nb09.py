"""The self-checks of notebook 09 accept right answers and reject wrong ones with a specific hint.

Each wrong answer below is a mistake the lesson warns against (or one a learner plausibly
types); each gets its own hint.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from helpers import open_database
from helpers.exercises import Status
from helpers.exercises.nb09 import check_fetch_names, check_signup, describe_counts, tracked_sessionmaker
from helpers.models import Post, User
from helpers.sample_data import load_sample_data

Factory = async_sessionmaker[AsyncSession]


pytestmark = pytest.mark.asyncio(loop_scope="module")


# One private database and one event loop for the whole module: creating a database per test
# costs about 0.15 s on PostgreSQL, and an engine belongs to the loop it was first used on.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[AsyncEngine]:
    db = await open_database("test_nb08")
    try:
        await load_sample_data(db.engine)
        yield db.engine
    finally:
        await db.close()


async def name_of(factory: Factory, user_id: int) -> str:
    async with factory() as session:
        return await session.scalar(select(User.name).where(User.id == user_id))


# ---- 08.1: fetch names concurrently, one session per task, bounded ---------------------------


async def fetch_right(factory: Factory, user_ids: list[int], limit: int) -> list[str]:
    semaphore = asyncio.Semaphore(limit)

    async def one(user_id: int) -> str:
        async with semaphore:
            return await name_of(factory, user_id)

    return list(await asyncio.gather(*(one(i) for i in user_ids)))


async def fetch_with_taskgroup(factory: Factory, user_ids: list[int], limit: int) -> list[str]:
    semaphore = asyncio.Semaphore(limit)

    async def one(user_id: int) -> str:
        async with semaphore, factory() as session:
            user = await session.get(User, user_id)
            assert user is not None
            return user.name

    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(one(i)) for i in user_ids]
    return [t.result() for t in tasks]


async def fetch_shared(factory: Factory, user_ids: list[int], limit: int) -> list[str]:
    semaphore = asyncio.Semaphore(limit)
    async with factory() as session:

        async def one(user_id: int) -> str:
            async with semaphore:
                return await session.scalar(select(User.name).where(User.id == user_id))

        return list(await asyncio.gather(*(one(i) for i in user_ids)))


async def fetch_sequential(factory: Factory, user_ids: list[int], limit: int) -> list[str]:
    return [await name_of(factory, i) for i in user_ids]


async def fetch_unbounded(factory: Factory, user_ids: list[int], limit: int) -> list[str]:
    return list(await asyncio.gather(*(name_of(factory, i) for i in user_ids)))


async def fetch_semaphore_per_task(factory: Factory, user_ids: list[int], limit: int) -> list[str]:
    async def one(user_id: int) -> str:
        async with asyncio.Semaphore(limit):  # a new semaphore per task bounds nothing
            return await name_of(factory, user_id)

    return list(await asyncio.gather(*(one(i) for i in user_ids)))


async def fetch_semaphore_too_big(factory: Factory, user_ids: list[int], limit: int) -> list[str]:
    semaphore = asyncio.Semaphore(limit + 1)

    async def one(user_id: int) -> str:
        async with semaphore:
            return await name_of(factory, user_id)

    return list(await asyncio.gather(*(one(i) for i in user_ids)))


async def fetch_permit_released_early(factory: Factory, user_ids: list[int], limit: int) -> list[str]:
    semaphore = asyncio.Semaphore(limit)

    async def one(user_id: int) -> str:
        async with factory() as session:  # noqa: SIM117 (the mistake: the permit is taken inside)
            async with semaphore:  # only around the query: the session closes after the release
                return await session.scalar(select(User.name).where(User.id == user_id))

    return list(await asyncio.gather(*(one(i) for i in user_ids)))


async def fetch_forgot_release(factory: Factory, user_ids: list[int], limit: int) -> list[str]:
    semaphore = asyncio.Semaphore(limit)

    async def one(user_id: int) -> str:
        await semaphore.acquire()  # never released
        return await name_of(factory, user_id)

    return list(await asyncio.gather(*(one(i) for i in user_ids)))


async def fetch_completion_order(factory: Factory, user_ids: list[int], limit: int) -> list[str]:
    semaphore = asyncio.Semaphore(limit)
    names: list[str] = []

    async def one(user_id: int) -> None:
        async with semaphore:
            names.append(await name_of(factory, user_id))

    await asyncio.gather(*(one(i) for i in reversed(user_ids)))
    return names


async def fetch_sorted(factory: Factory, user_ids: list[int], limit: int) -> list[str]:
    return sorted(await fetch_right(factory, user_ids, limit))


async def fetch_one_query(factory: Factory, user_ids: list[int], limit: int) -> list[str]:
    async with factory() as session:
        rows = {user_id: name for user_id, name in await session.execute(select(User.id, User.name))}
    return [rows[i] for i in user_ids]


async def fetch_placeholder(factory: Factory, user_ids: list[int], limit: int) -> list[str]:
    raise NotImplementedError


@pytest.mark.parametrize("answer", [fetch_right, fetch_with_taskgroup])
async def test_fetch_names_accepts_right_answers(engine: AsyncEngine, answer: Any) -> None:
    verdict = await check_fetch_names(answer, engine)
    assert verdict.status is Status.CORRECT, verdict


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (fetch_shared, "one session was used by several tasks"),
        (fetch_sequential, "ran one at a time"),
        (fetch_unbounded, "all 6 lookups ran at once with limit=2"),
        (fetch_semaphore_per_task, "a semaphore created inside each task limits nothing"),
        (fetch_semaphore_too_big, "more permits than `limit`"),
        (fetch_permit_released_early, "a session gave its permit back before it closed"),
        (fetch_forgot_release, "a semaphore permit that is never given back"),
        (fetch_completion_order, "in the order of the ids"),
        (fetch_sorted, "in the order of the ids"),
        (fetch_one_query, "one query for all of them"),
    ],
)
async def test_fetch_names_rejects_wrong_answers(engine: AsyncEngine, answer: Any, hint: str) -> None:
    verdict = await check_fetch_names(answer, engine)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict


async def test_fetch_names_not_attempted(engine: AsyncEngine) -> None:
    assert (await check_fetch_names(fetch_placeholder, engine)).status is Status.NOT_ATTEMPTED
    assert (await check_fetch_names(..., engine)).status is Status.NOT_ATTEMPTED


async def test_fetch_names_does_not_need_the_sample_users(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session, session.begin():
        await session.execute(Post.__table__.delete())
        await session.execute(User.__table__.delete())
    try:
        assert (await check_fetch_names(fetch_right, engine)).ok
    finally:
        await load_sample_data(engine)


# ---- 08.2: background work opens its own session, and the request does not wait --------------


async def welcome_own_session(factory: Factory, user_id: int, name: str) -> None:
    async with factory() as session, session.begin():
        session.add(Post(title=f"Welcome, {name}", author_id=user_id))


async def commit_user(factory: Factory, name: str) -> int:
    async with factory() as session:
        user = User(name=name, email=f"{name}@example.com")
        session.add(user)
        await session.commit()
        return user.id


async def signup_right(factory: Factory, name: str, background: set[asyncio.Task[Any]]) -> int:
    user_id = await commit_user(factory, name)
    task = asyncio.create_task(welcome_own_session(factory, user_id, name))
    background.add(task)
    task.add_done_callback(background.discard)
    return user_id


async def signup_shared(factory: Factory, name: str, background: set[asyncio.Task[Any]]) -> int:
    async def welcome(session: AsyncSession, user_id: int) -> None:
        session.add(Post(title=f"Welcome, {name}", author_id=user_id))
        await session.commit()

    async with factory() as session:
        user = User(name=name, email=f"{name}@example.com")
        session.add(user)
        await session.commit()
        background.add(asyncio.create_task(welcome(session, user.id)))
        return user.id


async def signup_inline(factory: Factory, name: str, background: set[asyncio.Task[Any]]) -> int:
    user_id = await commit_user(factory, name)
    await welcome_own_session(factory, user_id, name)
    return user_id


async def signup_awaits_task(factory: Factory, name: str, background: set[asyncio.Task[Any]]) -> int:
    user_id = await commit_user(factory, name)
    task = asyncio.create_task(welcome_own_session(factory, user_id, name))
    background.add(task)
    await task  # the request waits for the post after all
    return user_id


async def signup_gathers_background(factory: Factory, name: str, background: set[asyncio.Task[Any]]) -> int:
    user_id = await commit_user(factory, name)
    background.add(asyncio.create_task(welcome_own_session(factory, user_id, name)))
    await asyncio.gather(*background)
    return user_id


async def signup_task_not_kept(factory: Factory, name: str, background: set[asyncio.Task[Any]]) -> int:
    user_id = await commit_user(factory, name)
    asyncio.create_task(welcome_own_session(factory, user_id, name))  # noqa: RUF006 (the mistake)
    return user_id


async def signup_no_commit(factory: Factory, name: str, background: set[asyncio.Task[Any]]) -> int:
    async def welcome(user_id: int) -> None:
        async with factory() as session:
            session.add(Post(title=f"Welcome, {name}", author_id=user_id))
            await session.flush()

    user_id = await commit_user(factory, name)
    background.add(asyncio.create_task(welcome(user_id)))
    return user_id


async def signup_request_not_closed(factory: Factory, name: str, background: set[asyncio.Task[Any]]) -> int:
    session = factory()  # never closed
    user = User(name=name, email=f"{name}@example.com")
    session.add(user)
    await session.commit()
    background.add(asyncio.create_task(welcome_own_session(factory, user.id, name)))
    return user.id


async def signup_passes_orm_object(factory: Factory, name: str, background: set[asyncio.Task[Any]]) -> int:
    async def welcome(user: User) -> None:
        async with factory() as session, session.begin():
            session.add(Post(title=f"Welcome, {name}", author=user))  # attaches the request's object

    async with factory() as session:
        user = User(name=name, email=f"{name}@example.com")
        session.add(user)
        await session.commit()
    background.add(asyncio.create_task(welcome(user)))
    return user.id


async def signup_user_not_committed(factory: Factory, name: str, background: set[asyncio.Task[Any]]) -> int:
    async with factory() as session:
        user = User(name=name, email=f"{name}@example.com")
        session.add(user)
        await session.flush()  # the id exists, but the closing session rolls the user back
        user_id = user.id
    background.add(asyncio.create_task(welcome_own_session(factory, user_id, name)))
    return user_id


async def signup_placeholder(factory: Factory, name: str, background: set[asyncio.Task[Any]]) -> int:
    raise NotImplementedError


async def test_signup_accepts_right_answer(engine: AsyncEngine) -> None:
    verdict = await check_signup(signup_right, engine)
    assert verdict.status is Status.CORRECT, verdict
    again = await check_signup(signup_right, engine)  # the check cleaned up after itself
    assert again.status is Status.CORRECT, again


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (signup_shared, "the background task used the request's session"),
        (signup_inline, "nothing was added to `background`"),
        (signup_awaits_task, "signup waited for the welcome post"),
        (signup_gathers_background, "signup waited for the welcome post"),
        (signup_task_not_kept, "did not add it to `background`"),
        (signup_no_commit, "did the background task commit?"),
        (signup_request_not_closed, "the request's session was never closed"),
        (signup_passes_orm_object, "received an ORM object"),
        (signup_user_not_committed, "the user is not in the database"),
    ],
)
async def test_signup_rejects_wrong_answers(engine: AsyncEngine, answer: Any, hint: str) -> None:
    verdict = await check_signup(answer, engine)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict
    assert (await check_signup(signup_right, engine)).ok  # no rows left behind by the wrong answer


async def test_signup_not_attempted(engine: AsyncEngine) -> None:
    assert (await check_signup(signup_placeholder, engine)).status is Status.NOT_ATTEMPTED


async def test_tracker_counts_sessions_and_overlap(engine: AsyncEngine) -> None:
    factory, tracker = tracked_sessionmaker(engine, delay=0.01)
    assert await asyncio.gather(*(name_of(factory, i) for i in (1, 2, 3))) == ["ada", "grace", "linus"]
    assert (tracker.created, tracker.calls, tracker.max_in_flight, tracker.shared_sessions) == (3, 3, 3, 0)
    assert (tracker.max_holding, tracker.holding, len(tracker.closed)) == (3, 0, 3)
    assert describe_counts(tracker) == (
        "3 sessions, 3 calls, at most 3 calls and 3 connections at once, 0 shared between tasks"
    )
