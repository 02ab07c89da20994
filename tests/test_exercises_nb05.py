"""The self-checks of notebook 05 accept right answers, reject wrong ones with a specific hint,
and report an untouched placeholder as not attempted. They run on the configured backend.

Notebook 05 passes the checks an engine made with plain ``create_async_engine(db.url)``; a
learner may pass ``db.engine``, which on SQLite has notebook 01's transaction recipe and fails
differently after commit (``DBAPIError``, plus a log line from the pool). The answers that hit
``MissingGreenlet`` are checked with both engines.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, MissingGreenlet, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from helpers import open_database
from helpers.database import NotebookDatabase
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
async def db() -> AsyncIterator[NotebookDatabase]:
    database = await open_database("test_nb05")
    try:
        yield database
    finally:
        await database.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(db: NotebookDatabase) -> AsyncIterator[AsyncEngine]:
    """The engine notebook 05 uses: plain create_async_engine(db.url)."""
    plain = create_async_engine(db.url)
    try:
        yield plain
    finally:
        await plain.dispose()


@pytest.fixture(params=["plain", "recipe"])
def any_engine(request: pytest.FixtureRequest, engine: AsyncEngine, db: NotebookDatabase) -> AsyncEngine:
    """Both engines a learner may pass: the notebook's plain one, and db.engine (the recipe on SQLite)."""
    return engine if request.param == "plain" or db.is_postgresql else db.engine


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


async def rename_get_again(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    async with factory() as session:
        user = await session.get(User, user_id)
        assert user is not None
        user.name = new_name
        await session.commit()
        again = await session.get(User, user_id)  # expired in the identity map: get() reloads it
        assert again is not None
        return {"id": again.id, "name": again.name, "email": again.email}


async def rename_begin_block(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    async with factory.begin() as session:
        user = await session.get(User, user_id)
        assert user is not None
        user.name = new_name
        values = {"id": user.id, "name": user.name, "email": user.email}
    return values


@pytest.mark.parametrize(
    "answer",
    [rename_read_before_commit, rename_refresh, rename_awaitable_attrs, rename_get_again, rename_begin_block],
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


async def rename_read_after_begin_block(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    async with factory() as session:
        async with session.begin():
            user = await session.get(User, user_id)
            assert user is not None
            user.name = new_name
        return {"id": user.id, "name": user.name, "email": user.email}  # the block committed


async def rename_refresh_before_commit(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    async with factory() as session:
        user = await session.get(User, user_id)
        assert user is not None
        user.name = new_name
        await session.flush()
        await session.refresh(user)  # too early: commit() expires it again
        await session.commit()
        return {"id": user.id, "name": user.name, "email": user.email}


async def rename_no_expire(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    async with factory(expire_on_commit=False) as session:
        user = await session.get(User, user_id)
        assert user is not None
        user.name = new_name
        await session.commit()
    return {"id": user.id, "name": user.name, "email": user.email}


async def rename_configure_no_expire(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    factory.configure(expire_on_commit=False)
    return await rename_read_after_commit(factory, user_id, new_name)


async def rename_without_commit(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    async with factory() as session:
        user = await session.get(User, user_id)
        assert user is not None
        user.name = new_name
        await session.flush()  # sent, but rolled back when the session closes
        return {"id": user.id, "name": user.name, "email": user.email}


async def rename_commit_not_awaited(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    async with factory() as session:
        user = await session.get(User, user_id)
        assert user is not None
        user.name = new_name
        session.commit()  # type: ignore[unused-coroutine]  # the forgotten await
        return {"id": user.id, "name": user.name, "email": user.email}


async def rename_get_not_awaited(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    async with factory() as session:
        user = session.get(User, user_id)  # a coroutine, not a User
        user.name = new_name  # type: ignore[attr-defined]
        await session.commit()
        return {}


async def rename_returns_object(factory: Factory, user_id: int, new_name: str) -> User:
    async with factory() as session:
        user = await session.get(User, user_id)
        assert user is not None
        user.name = new_name
        await session.commit()
        await session.refresh(user)
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


async def rename_returns_dunder_dict(factory: Factory, user_id: int, new_name: str) -> dict[str, object]:
    async with factory() as session:
        user = await session.get(User, user_id)
        assert user is not None
        user.name = new_name
        await session.commit()
        await session.refresh(user)
        return dict(user.__dict__)


async def rename_returns_tuple(factory: Factory, user_id: int, new_name: str) -> tuple[object, ...]:
    values = await rename_read_before_commit(factory, user_id, new_name)
    return tuple(values.values())


WRONG_RENAMES = [
    (rename_read_after_commit, "MissingGreenlet: an attribute was read after commit()"),
    (rename_read_after_begin_block, "MissingGreenlet: an attribute was read after commit()"),
    (rename_refresh_before_commit, "MissingGreenlet: an attribute was read after commit()"),
    (rename_no_expire, "you turned expire_on_commit off"),
    (rename_configure_no_expire, "you turned expire_on_commit off"),
    (rename_without_commit, "never committed"),
    (rename_commit_not_awaited, "AsyncSession.commit() was called without await"),
    (rename_get_not_awaited, "AsyncSession.get() was called without await"),
    (rename_returns_object, "you returned the ORM object"),
    (rename_returns_old_name, "holds the old name"),
    (rename_wrong_keys, "exactly the keys"),
    (rename_returns_dunder_dict, "SQLAlchemy's own state"),
    (rename_returns_tuple, "return a dict"),
]


@pytest.mark.parametrize(("answer", "hint"), WRONG_RENAMES)
async def test_rename_rejects_wrong_answers(engine: AsyncEngine, answer, hint: str) -> None:
    verdict = await check_rename(answer, engine)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message


async def test_rename_refusal_is_recognised_on_both_engines(
    any_engine: AsyncEngine, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.ERROR):
        verdict = await check_rename(rename_read_after_commit, any_engine)
    assert verdict.status is Status.WRONG and "MissingGreenlet" in verdict.message, verdict
    assert not caplog.records, "the pool's log of the failed rollback must not reach the learner"
    assert not capsys.readouterr().err


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


async def email_get_populate_existing(session: AsyncSession, user: User) -> str:
    fresh = await session.get(User, user.id, populate_existing=True)
    assert fresh is not None
    return fresh.email


async def email_expire_then_await(session: AsyncSession, user: User) -> str:
    session.expire(user)
    return await user.awaitable_attrs.email


@pytest.mark.parametrize(
    "answer", [email_refresh, email_populate_existing, email_get_populate_existing, email_expire_then_await]
)
async def test_current_email_accepts_reloads(engine: AsyncEngine, answer) -> None:
    verdict = await check_current_email(answer, engine)
    assert verdict.status is Status.CORRECT, verdict


async def email_cached(session: AsyncSession, user: User) -> str:
    return user.email


async def email_get(session: AsyncSession, user: User) -> str:
    again = await session.get(User, user.id)
    assert again is not None
    return again.email


async def email_commit_then_read(session: AsyncSession, user: User) -> str:
    await session.commit()  # expire_on_commit=False: nothing is expired
    return user.email


async def email_new_select(session: AsyncSession, user: User) -> str:
    again = await session.scalar(select(User).where(User.id == user.id))
    assert again is not None
    return again.email


async def email_column_only(session: AsyncSession, user: User) -> str:
    value = await session.scalar(select(User.email).where(User.id == user.id))
    assert value is not None
    return value


async def email_other_session(session: AsyncSession, user: User) -> str:
    async with AsyncSession(session.bind) as other:
        fresh = await other.get(User, user.id)
        assert fresh is not None
        return fresh.email


async def email_expire_then_read(session: AsyncSession, user: User) -> str:
    session.expire(user)
    return user.email  # plain read of an expired attribute: MissingGreenlet


async def email_expire_all_then_read(session: AsyncSession, user: User) -> str:
    session.expire_all()
    return user.email


async def email_rollback_then_read(session: AsyncSession, user: User) -> str:
    await session.rollback()  # no transaction since the commit: nothing to roll back or expire
    return user.email


async def email_refresh_not_awaited(session: AsyncSession, user: User) -> str:
    session.refresh(user)  # type: ignore[unused-coroutine]  # the forgotten await
    return user.email


async def email_expire_then_close(session: AsyncSession, user: User) -> str:
    session.expire(user)
    await session.close()  # user is detached, with nothing loaded
    return user.email


async def email_invented(session: AsyncSession, user: User) -> str:
    return "someone@example.com"


WRONG_EMAILS = [
    (email_cached, "no query ran"),
    (email_get, "no query ran"),
    (email_commit_then_read, "no query ran"),
    (email_new_select, "the identity map handed back the object"),
    (email_column_only, "the object still shows the old email"),
    (email_other_session, "the object still shows the old email"),
    (email_expire_then_read, "MissingGreenlet"),
    (email_expire_all_then_read, "MissingGreenlet"),
    (email_rollback_then_read, "no query ran"),
    (email_refresh_not_awaited, "AsyncSession.refresh() was called without await"),
    (email_expire_then_close, "DetachedInstanceError"),
    (email_invented, "expected the email the database holds now"),
]


@pytest.mark.parametrize(("answer", "hint"), WRONG_EMAILS)
async def test_current_email_rejects_wrong_answers(engine: AsyncEngine, answer, hint: str) -> None:
    verdict = await check_current_email(answer, engine)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message


@pytest.mark.parametrize("answer", [email_expire_then_read, email_expire_all_then_read])
async def test_current_email_refusal_is_recognised_on_both_engines(
    any_engine: AsyncEngine, answer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        verdict = await check_current_email(answer, any_engine)
    assert verdict.status is Status.WRONG and "MissingGreenlet" in verdict.message, verdict
    assert not caplog.records


async def test_current_email_placeholder_is_not_attempted(engine: AsyncEngine) -> None:
    verdict = await check_current_email(..., engine)
    assert verdict.status is Status.NOT_ATTEMPTED


# helper -------------------------------------------------------------------------------------


async def test_missing_greenlet_in_finds_the_error_on_both_engines(any_engine: AsyncEngine) -> None:
    await load_sample_data(any_engine)
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)  # the recipe's failed rollback
    try:
        async with async_sessionmaker(any_engine)() as session:
            user = await session.get(User, 1)
            await session.commit()
            with pytest.raises((MissingGreenlet, StatementError)) as info:
                user.name  # noqa: B018 - the read is the point
    finally:
        logging.getLogger("sqlalchemy.pool").setLevel(logging.NOTSET)
    assert isinstance(missing_greenlet_in(info.value), MissingGreenlet)
    del info
    gc.collect()  # aiosqlite's abandoned coroutine, while this module's warning filter applies
    assert missing_greenlet_in(ValueError("unrelated")) is None
    assert missing_greenlet_in(StatementError("other", None, None, ValueError("x"))) is None


class _Messages(logging.Handler):
    """Keeps only the text of log records: a record's traceback would keep the abandoned driver
    coroutines alive until pytest drops its own log capture, outside this module's filter."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_with_the_sqlite_recipe_the_read_fails_at_begin(db: NotebookDatabase) -> None:
    """Notebook 05's side note: on an engine with notebook 01's SQLite recipe, the refused read
    is a DBAPIError (orig: MissingGreenlet) without the SQL, and the pool logs a second failure."""
    if db.is_postgresql:
        pytest.skip("the recipe is applied on SQLite only")
    await load_sample_data(db.engine)
    pool_logger, pool_log = logging.getLogger("sqlalchemy.pool"), _Messages()
    pool_logger.addHandler(pool_log)
    pool_logger.propagate = False
    try:
        async with async_sessionmaker(db.engine)() as session:
            user = await session.get(User, 1)
            await session.commit()
            with pytest.raises(DBAPIError) as info:
                user.name  # noqa: B018 - the read is the point
    finally:
        pool_logger.removeHandler(pool_log)
        pool_logger.propagate = True
    assert isinstance(info.value.orig, MissingGreenlet)
    assert "[SQL:" not in str(info.value)
    assert pool_log.messages == ["Exception during reset or similar"]
    del info
    gc.collect()
