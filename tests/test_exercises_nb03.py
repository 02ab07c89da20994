"""The notebook 03 self-checks accept right answers and reject wrong ones with a specific hint."""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, AsyncIterator, Iterator

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
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


class MySession(AsyncSession):
    pass


@pytest.mark.parametrize(
    "answer",
    [
        lambda e: async_sessionmaker(e, expire_on_commit=False),
        lambda e: async_sessionmaker(bind=e, expire_on_commit=False),
        lambda e: async_sessionmaker(e, class_=AsyncSession, expire_on_commit=False),  # redundant
        lambda e: async_sessionmaker(e, expire_on_commit=False, autoflush=True, future=True),  # defaults
    ],
    ids=["positional", "bind-keyword", "redundant-class", "explicit-defaults"],
)
async def test_factory_correct(engine: AsyncEngine, answer) -> None:
    verdict = await nb03.check_session_factory(answer, engine)
    assert verdict.status is Status.CORRECT, verdict
    assert engine.pool.checkedout() == 0


def _placeholder(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    raise NotImplementedError("your code here")


def _other_engine(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(create_async_engine(engine.url), expire_on_commit=False)  # never connects


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (lambda e: async_sessionmaker(e), "expire_on_commit=False"),
        (lambda e: async_sessionmaker(e, expire_on_commit=False, autoflush=False), "autoflush"),
        (lambda e: async_sessionmaker(e, expire_on_commit=False, autobegin=False), "leave autobegin"),
        (lambda e: sessionmaker(bind=e, class_=AsyncSession, expire_on_commit=False), "untyped 1.4"),
        (lambda e: sessionmaker(expire_on_commit=False), "synchronous Session"),
        (lambda e: AsyncSession(e, expire_on_commit=False), "you returned a session"),
        (lambda e: async_sessionmaker(expire_on_commit=False), "not bound to an engine"),
        (_other_engine, "bound to another engine"),
        (lambda e: async_sessionmaker(e, class_=MySession, expire_on_commit=False), "makes MySession"),
        (lambda e: functools.partial(AsyncSession, e, expire_on_commit=False), "got partial"),
        (lambda e: "factory", "expected an async_sessionmaker, got str"),
    ],
    ids=[
        "default-expire",
        "autoflush-off",
        "other-option",
        "legacy-sessionmaker",
        "sync-sessionmaker",
        "a-session",
        "unbound",
        "other-engine",
        "own-class",
        "partial",
        "not-a-factory",
    ],
)
async def test_factory_wrong(engine: AsyncEngine, answer, hint: str) -> None:
    verdict = await nb03.check_session_factory(answer, engine)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict
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


async def right_try_finally(factory: async_sessionmaker[AsyncSession]) -> AsyncGenerator[AsyncSession, None]:
    session = factory()
    try:
        yield session
    finally:
        await session.close()


async def right_unannotated(factory):  # type: ignore[no-untyped-def]
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


def sync_generator(factory: async_sessionmaker[AsyncSession]) -> Iterator[AsyncSession]:
    yield factory()


async def never_closes(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    session = factory()
    yield session


async def closes_only_on_success(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    session = factory()
    yield session
    await session.close()


async def commits_after_yield(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with factory() as session:
        yield session
        await session.commit()


async def begin_block(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with factory.begin() as session:  # commits when the generator is resumed
        yield session


async def swallows(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with factory() as session:
        try:  # noqa: SIM105 (the learner's code, as typed)
            yield session
        except Exception:
            pass


async def annotated_as_session(factory: async_sessionmaker[AsyncSession]) -> AsyncSession:  # type: ignore[misc]
    async with factory() as session:
        yield session


async def yields_factory(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[object]:
    yield factory


async def yields_nothing(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    if False:
        yield factory()


async def yields_twice(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with factory() as session:
        yield session
        yield session


async def own_session(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with AsyncSession(factory.kw["bind"]) as session:
        yield session


async def new_factory_per_call(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with async_sessionmaker(factory.kw["bind"], expire_on_commit=False)() as session:
        yield session


@pytest.mark.parametrize("answer", [right, right_try_finally, right_unannotated], ids=lambda f: f.__name__)
async def test_get_session_correct(engine: AsyncEngine, answer) -> None:
    verdict = await nb03.check_get_session(answer, engine)
    assert verdict.status is Status.CORRECT, verdict
    assert engine.pool.checkedout() == 0


async def test_get_session_not_attempted(engine: AsyncEngine) -> None:
    assert (await nb03.check_get_session(placeholder, engine)).status is Status.NOT_ATTEMPTED
    assert (await nb03.check_get_session(..., engine)).status is Status.NOT_ATTEMPTED


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (returns_session, "returned the session"),
        (plain_returns_session, "returned the session"),
        (sync_generator, "plain generator"),
        (never_closes, "still holds its connection"),
        (closes_only_on_success, "not when the endpoint raises"),
        (commits_after_yield, "committed after the yield"),
        (begin_block, "committed after the yield"),
        (swallows, "swallowed the endpoint's exception"),
        (annotated_as_session, "`-> AsyncSession` is false"),
        (yields_factory, "yielded async_sessionmaker"),
        (yields_nothing, "without yielding"),
        (yields_twice, "more than once"),
        (own_session, "did not come from the factory"),
        (new_factory_per_call, "did not come from the factory"),
    ],
    ids=lambda v: getattr(v, "__name__", "hint"),
)
async def test_get_session_wrong(engine: AsyncEngine, answer, hint: str) -> None:
    verdict = await nb03.check_get_session(answer, engine)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict
    assert engine.pool.checkedout() == 0  # the check cleans up after a wrong answer


async def test_get_session_string_annotations(engine: AsyncEngine) -> None:
    async def stringly(factory):  # type: ignore[no-untyped-def]
        async with factory() as session:
            yield session

    stringly.__annotations__["return"] = "AsyncSession"
    assert "is false" in (await nb03.check_get_session(stringly, engine)).message
    stringly.__annotations__["return"] = "AsyncIterator[AsyncSession]"
    assert (await nb03.check_get_session(stringly, engine)).ok


async def test_get_session_that_hangs_times_out(engine: AsyncEngine, monkeypatch) -> None:
    import asyncio

    monkeypatch.setattr(nb03, "STEP_TIMEOUT", 0.1)

    async def hangs(factory: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
        await asyncio.sleep(60)
        yield factory()

    verdict = await nb03.check_get_session(hangs, engine)
    assert verdict.status is Status.WRONG and "did not reach its yield within" in verdict.message, verdict
