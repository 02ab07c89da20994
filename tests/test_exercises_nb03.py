"""The notebook 03 self-checks accept right answers and reject wrong ones with a specific hint."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from helpers import open_database
from helpers.exercises import nb03
from helpers.exercises.base import Status

pytestmark = pytest.mark.asyncio(loop_scope="module")


# One private database and one event loop for the whole module: creating a database per test
# costs about 0.15 s on PostgreSQL, and an engine belongs to the loop it was first used on.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[AsyncEngine]:
    db = await open_database("test_nb03")
    try:
        yield db.engine
    finally:
        await db.close()


# 03.1 ------------------------------------------------------------------------------------


async def test_factory_correct(engine: AsyncEngine) -> None:
    verdict = await nb03.check_session_factory(
        lambda e: async_sessionmaker(e, expire_on_commit=False), engine
    )
    assert verdict.status is Status.CORRECT, verdict


async def test_factory_redundant_class_is_still_correct(engine: AsyncEngine) -> None:
    verdict = await nb03.check_session_factory(
        lambda e: async_sessionmaker(e, class_=AsyncSession, expire_on_commit=False), engine
    )
    assert verdict.ok, verdict


def _placeholder(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    raise NotImplementedError("your code here")


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (lambda e: async_sessionmaker(e), "expire_on_commit=False"),
        (lambda e: async_sessionmaker(e, expire_on_commit=False, autoflush=False), "autoflush"),
        (lambda e: sessionmaker(bind=e, class_=AsyncSession, expire_on_commit=False), "untyped 1.4"),
        (lambda e: AsyncSession(e, expire_on_commit=False), "you returned a session"),
        (lambda e: async_sessionmaker(expire_on_commit=False), "not bound to the engine"),
        (lambda e: "factory", "expected an async_sessionmaker, got str"),
    ],
    ids=["default-expire", "autoflush-off", "legacy-sessionmaker", "a-session", "unbound", "not-a-factory"],
)
async def test_factory_wrong(engine: AsyncEngine, answer, hint: str) -> None:
    verdict = await nb03.check_session_factory(answer, engine)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message
    assert engine.pool.checkedout() == 0


async def test_factory_coroutine_answer_is_wrong_and_closed(engine: AsyncEngine) -> None:
    async def make(e: AsyncEngine) -> async_sessionmaker[AsyncSession]:
        return async_sessionmaker(e, expire_on_commit=False)

    verdict = await nb03.check_session_factory(make, engine)
    assert verdict.status is Status.WRONG and "plain def" in verdict.message


async def test_factory_not_attempted(engine: AsyncEngine) -> None:
    assert (await nb03.check_session_factory(_placeholder, engine)).status is Status.NOT_ATTEMPTED
    assert (await nb03.check_session_factory(..., engine)).status is Status.NOT_ATTEMPTED


# 03.2 ------------------------------------------------------------------------------------


async def right(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with factory() as session:
        yield session


async def placeholder(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    raise NotImplementedError("your code here")
    yield


async def returns_session(factory: async_sessionmaker[AsyncSession]) -> AsyncSession:
    async with factory() as session:
        return session


def plain_returns_session(factory: async_sessionmaker[AsyncSession]) -> AsyncSession:
    return factory()


async def never_closes(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    session = factory()
    yield session


async def yields_factory(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[object]:
    yield factory


async def yields_twice(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with factory() as session:
        yield session
        yield session


async def own_engine(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with AsyncSession() as session:
        yield session


async def test_get_session_correct(engine: AsyncEngine) -> None:
    verdict = await nb03.check_get_session(right, engine)
    assert verdict.status is Status.CORRECT, verdict
    assert engine.pool.checkedout() == 0


async def test_get_session_not_attempted(engine: AsyncEngine) -> None:
    assert (await nb03.check_get_session(placeholder, engine)).status is Status.NOT_ATTEMPTED
    assert (await nb03.check_get_session(..., engine)).status is Status.NOT_ATTEMPTED


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (returns_session, "yield it instead"),
        (plain_returns_session, "returned the session"),
        (never_closes, "still holds its connection"),
        (yields_factory, "yielded async_sessionmaker"),
        (yields_twice, "more than once"),
        (own_engine, "did not come from the factory"),
    ],
    ids=lambda v: getattr(v, "__name__", "hint"),
)
async def test_get_session_wrong(engine: AsyncEngine, answer, hint: str) -> None:
    verdict = await nb03.check_get_session(answer, engine)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message
    assert engine.pool.checkedout() == 0  # the check cleans up after a wrong answer
