"""The notebook 09 self-checks accept right answers and reject wrong ones with a specific hint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

import pytest
import pytest_asyncio
from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from helpers import open_database
from helpers.exercises import Status, nb09
from helpers.models import User


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    email: str


class NotFound(Exception):
    pass


class Conflict(Exception):
    pass


pytestmark = pytest.mark.asyncio(loop_scope="module")


# One private database and one event loop for the whole module: creating a database per test
# costs about 0.15 s on PostgreSQL, and an engine belongs to the loop it was first used on.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[AsyncEngine]:
    db = await open_database("test_nb09")
    try:
        yield db.engine
    finally:
        await db.close()


# 09.1 -----------------------------------------------------------------------------------


async def rename_right(session: AsyncSession, user_id: int, new_name: str) -> UserOut:
    try:
        async with session.begin():
            user = await session.get(User, user_id)
            if user is None:
                raise NotFound(user_id)
            user.name = new_name
            await session.flush()
            renamed = UserOut.model_validate(user)
    except IntegrityError as exc:
        raise Conflict(new_name) from exc
    return renamed


async def rename_without_commit(session: AsyncSession, user_id: int, new_name: str) -> UserOut:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFound(user_id)
    user.name = new_name
    await session.flush()
    return UserOut.model_validate(user)


async def rename_returns_orm(session: AsyncSession, user_id: int, new_name: str) -> User:
    async with session.begin():
        user = await session.get(User, user_id)
        assert user is not None
        user.name = new_name
    return user


async def rename_no_not_found(session: AsyncSession, user_id: int, new_name: str) -> UserOut | None:
    async with session.begin():
        user = await session.get(User, user_id)
        if user is None:
            return None
        user.name = new_name
        await session.flush()
        return UserOut.model_validate(user)


async def rename_leaks_integrity_error(session: AsyncSession, user_id: int, new_name: str) -> UserOut:
    async with session.begin():
        user = await session.get(User, user_id)
        if user is None:
            raise NotFound(user_id)
        user.name = new_name
        await session.flush()
        return UserOut.model_validate(user)


async def rename_placeholder(session: AsyncSession, user_id: int, new_name: str) -> UserOut:
    raise NotImplementedError


async def check_rename(answer, engine: AsyncEngine):
    return await nb09.check_rename_user(answer, engine, not_found=NotFound, conflict=Conflict)


async def test_rename_right(engine: AsyncEngine) -> None:
    verdict = await check_rename(rename_right, engine)
    assert verdict.status is Status.CORRECT, verdict


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (rename_without_commit, "never committed"),
        (rename_returns_orm, "returned the ORM object"),
        (rename_no_not_found, "user 999 does not exist"),
        (rename_leaks_integrity_error, "catch IntegrityError"),
    ],
)
async def test_rename_wrong(engine: AsyncEngine, answer, hint: str) -> None:
    verdict = await check_rename(answer, engine)
    assert verdict.status is Status.WRONG and hint in verdict.message, verdict


async def test_rename_not_attempted(engine: AsyncEngine) -> None:
    assert (await check_rename(rename_placeholder, engine)).status is Status.NOT_ATTEMPTED
    assert (await check_rename(..., engine)).status is Status.NOT_ATTEMPTED


# 09.2 -----------------------------------------------------------------------------------


async def commit_after_yield(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session
        await session.commit()


async def never_commits(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


async def test_committing_session_right(engine: AsyncEngine) -> None:
    answer = Annotated[AsyncSession, Depends(commit_after_yield, scope="function")]
    verdict = await nb09.check_committing_session(answer, engine)
    assert verdict.status is Status.CORRECT, verdict


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (Annotated[AsyncSession, Depends(commit_after_yield)], 'scope="function"'),
        (Annotated[AsyncSession, Depends(never_commits, scope="function")], "commit after the `yield`"),
        (commit_after_yield, "must be an annotated type"),
        (Depends(commit_after_yield, scope="function"), "must be an annotated type"),
    ],
)
async def test_committing_session_wrong(engine: AsyncEngine, answer, hint: str) -> None:
    verdict = await nb09.check_committing_session(answer, engine)
    assert verdict.status is Status.WRONG and hint in verdict.message, verdict


async def test_committing_session_not_attempted(engine: AsyncEngine) -> None:
    assert (await nb09.check_committing_session(..., engine)).status is Status.NOT_ATTEMPTED
