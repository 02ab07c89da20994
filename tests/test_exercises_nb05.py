"""The self-checks of notebook 05 accept right answers, reject wrong ones with a specific hint,
and report an untouched placeholder as not attempted. They run on the configured backend."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.exc import MissingGreenlet, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from helpers import open_database
from helpers.exercises import Status
from helpers.exercises.nb05 import check_current_email, check_rename, missing_greenlet_in
from helpers.models import User
from helpers.sample_data import load_sample_data

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.filterwarnings("ignore:coroutine 'Connection.cursor' was never awaited:RuntimeWarning"),
]

Factory = async_sessionmaker[AsyncSession]


# One private database and one event loop for the whole module: creating a database per test
# costs about 0.15 s on PostgreSQL, and an engine belongs to the loop it was first used on.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[AsyncEngine]:
    db = await open_database("test_nb05")
    try:
        yield db.engine
    finally:
        await db.close()


# 05.1 ---------------------------------------------------------------------------------------


async def rename_read_before_commit(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    async with factory() as session:
        user = await session.get(User, user_id)
        assert user is not None
        user.name = new_name
        values = {"id": user.id, "name": user.name, "email": user.email}
        await session.commit()
    return values


async def rename_refresh(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    async with factory() as session:
        user = await session.get(User, user_id)
        assert user is not None
        user.name = new_name
        await session.commit()
        await session.refresh(user)
        return {"id": user.id, "name": user.name, "email": user.email}


async def rename_awaitable_attrs(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    async with factory() as session:
        user = await session.get(User, user_id)
        assert user is not None
        user.name = new_name
        await session.commit()
        name = await user.awaitable_attrs.name
        return {"id": user.id, "name": name, "email": user.email}


async def rename_no_expire(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    async with factory(expire_on_commit=False) as session:
        user = await session.get(User, user_id)
        assert user is not None
        user.name = new_name
        await session.commit()
    return {"id": user.id, "name": user.name, "email": user.email}


@pytest.mark.parametrize(
    "answer", [rename_read_before_commit, rename_refresh, rename_awaitable_attrs, rename_no_expire]
)
async def test_rename_accepts_every_fix(engine: AsyncEngine, answer) -> None:
    verdict = await check_rename(answer, engine)
    assert verdict.status is Status.CORRECT, verdict


async def rename_read_after_commit(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    async with factory() as session:
        user = await session.get(User, user_id)
        assert user is not None
        user.name = new_name
        await session.commit()
        return {"id": user.id, "name": user.name, "email": user.email}  # expired: MissingGreenlet


async def rename_without_commit(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    async with factory() as session:
        user = await session.get(User, user_id)
        assert user is not None
        user.name = new_name
        return {"id": user.id, "name": user.name, "email": user.email}


async def rename_returns_object(factory: Factory, user_id: int, new_name: str) -> User:
    async with factory(expire_on_commit=False) as session:
        user = await session.get(User, user_id)
        assert user is not None
        user.name = new_name
        await session.commit()
        return user


async def rename_returns_old_name(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    async with factory() as session:
        user = await session.get(User, user_id)
        assert user is not None
        values = {"id": user.id, "name": user.name, "email": user.email}
        user.name = new_name
        await session.commit()
    return values


async def rename_wrong_keys(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    values = await rename_read_before_commit(factory, user_id, new_name)
    return {"name": values["name"]}


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (rename_read_after_commit, "MissingGreenlet: an attribute was read after commit()"),
        (rename_without_commit, "never committed"),
        (rename_returns_object, "you returned the ORM object"),
        (rename_returns_old_name, "holds the old name"),
        (rename_wrong_keys, "exactly the keys"),
    ],
)
async def test_rename_rejects_wrong_answers(engine: AsyncEngine, answer, hint: str) -> None:
    verdict = await check_rename(answer, engine)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message


async def rename_placeholder(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    raise NotImplementedError


async def test_rename_placeholder_is_not_attempted(engine: AsyncEngine) -> None:
    verdict = await check_rename(rename_placeholder, engine)
    assert verdict.status is Status.NOT_ATTEMPTED
    assert str(verdict).startswith("Exercise 05.1: not attempted yet")


# 05.2 ---------------------------------------------------------------------------------------


async def email_refresh(session: AsyncSession, user: User) -> str:
    await session.refresh(user)
    return user.email


async def email_populate_existing(session: AsyncSession, user: User) -> str:
    statement = select(User).where(User.id == user.id).execution_options(populate_existing=True)
    fresh = await session.scalar(statement)
    assert fresh is not None
    return fresh.email


async def email_expire_then_await(session: AsyncSession, user: User) -> str:
    session.expire(user)
    return await user.awaitable_attrs.email


@pytest.mark.parametrize("answer", [email_refresh, email_populate_existing, email_expire_then_await])
async def test_current_email_accepts_reloads(engine: AsyncEngine, answer) -> None:
    verdict = await check_current_email(answer, engine)
    assert verdict.status is Status.CORRECT, verdict


async def email_cached(session: AsyncSession, user: User) -> str:
    return user.email


async def email_new_select(session: AsyncSession, user: User) -> str:
    again = await session.scalar(select(User).where(User.id == user.id))
    assert again is not None
    return again.email


async def email_column_only(session: AsyncSession, user: User) -> str:
    value = await session.scalar(select(User.email).where(User.id == user.id))
    assert value is not None
    return value


async def email_expire_then_read(session: AsyncSession, user: User) -> str:
    session.expire(user)
    return user.email  # plain read of an expired attribute: MissingGreenlet


async def email_invented(session: AsyncSession, user: User) -> str:
    return "someone@example.com"


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (email_cached, "identity map"),
        (email_new_select, "identity map"),
        (email_column_only, "the object still shows the old email"),
        (email_expire_then_read, "MissingGreenlet"),
        (email_invented, "expected the email the database holds now"),
    ],
)
async def test_current_email_rejects_wrong_answers(engine: AsyncEngine, answer, hint: str) -> None:
    verdict = await check_current_email(answer, engine)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message


async def test_current_email_placeholder_is_not_attempted(engine: AsyncEngine) -> None:
    verdict = await check_current_email(..., engine)
    assert verdict.status is Status.NOT_ATTEMPTED


# helper -------------------------------------------------------------------------------------


async def test_missing_greenlet_in_finds_the_error_on_this_backend(engine: AsyncEngine) -> None:
    await load_sample_data(engine)
    async with async_sessionmaker(engine)() as session:
        user = await session.get(User, 1)
        await session.commit()
        with pytest.raises((MissingGreenlet, StatementError)) as info:
            user.name  # noqa: B018 - the read is the point
    assert isinstance(missing_greenlet_in(info.value), MissingGreenlet)
    del info
    gc.collect()  # aiosqlite's abandoned coroutine, while this module's warning filter applies
    assert missing_greenlet_in(ValueError("unrelated")) is None
    assert missing_greenlet_in(StatementError("other", None, None, ValueError("x"))) is None
