"""The notebook 10 self-checks accept right answers and reject wrong ones with a specific hint."""

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from httpx import AsyncClient
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from helpers import open_database
from helpers.exercises import Status, nb10

pytestmark = pytest.mark.asyncio(loop_scope="module")


# One private database and one event loop for the whole module: creating a database per test
# costs about 0.15 s on PostgreSQL, and an engine belongs to the loop it was first used on.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[AsyncEngine]:
    db = await open_database("test_nb10")
    engine = db.create_engine()
    if db.is_sqlite:  # the savepoint fix the notebook shows

        @event.listens_for(engine.sync_engine, "connect")
        def do_connect(dbapi_connection, connection_record):
            dbapi_connection.isolation_level = None

        @event.listens_for(engine.sync_engine, "begin")
        def do_begin(conn):
            conn.exec_driver_sql("BEGIN")

    try:
        yield engine
    finally:
        await db.close()


# 10.1 -----------------------------------------------------------------------------------


async def fixture_right(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with engine.connect() as conn:
        transaction = await conn.begin()
        session = AsyncSession(bind=conn, join_transaction_mode="create_savepoint")
        try:
            yield session
        finally:
            await session.close()
            await transaction.rollback()


async def fixture_plain_session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with AsyncSession(engine) as session:
        yield session


async def fixture_without_savepoints(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with engine.connect() as conn:
        transaction = await conn.begin()
        session = AsyncSession(bind=conn)
        try:
            yield session
        finally:
            await session.close()
            if transaction.is_active:
                await transaction.rollback()


async def fixture_commits_at_end(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with engine.connect() as conn:
        transaction = await conn.begin()
        session = AsyncSession(bind=conn, join_transaction_mode="create_savepoint")
        yield session
        await session.close()
        await transaction.commit()


async def fixture_placeholder(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    raise NotImplementedError
    yield


def fixture_not_a_generator(engine: AsyncEngine) -> AsyncSession:
    return AsyncSession(engine)


async def test_fixture_right(engine: AsyncEngine) -> None:
    verdict = await nb10.check_rolled_back_session(fixture_right, engine)
    assert verdict.status is Status.CORRECT, verdict


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (fixture_plain_session, "data survived"),
        (fixture_without_savepoints, "create_savepoint"),
        (fixture_commits_at_end, "data survived"),
        (fixture_not_a_generator, "async generator"),
    ],
)
async def test_fixture_wrong(engine: AsyncEngine, answer, hint: str) -> None:
    verdict = await nb10.check_rolled_back_session(answer, engine)
    assert verdict.status is Status.WRONG and hint in verdict.message, verdict


async def test_fixture_not_attempted(engine: AsyncEngine) -> None:
    assert (await nb10.check_rolled_back_session(fixture_placeholder, engine)).status is Status.NOT_ATTEMPTED
    assert (await nb10.check_rolled_back_session(..., engine)).status is Status.NOT_ATTEMPTED


async def test_sqlite_engine_without_fix_is_named_in_the_hint() -> None:
    db = await open_database("test_nb10_nofix")
    try:
        verdict = await nb10.check_rolled_back_session(fixture_right, db.engine)
        if db.is_sqlite:
            assert verdict.status is Status.WRONG and "savepoint fix" in verdict.message, verdict
        else:
            assert verdict.status is Status.CORRECT, verdict
    finally:
        await db.close()


# 10.2 -----------------------------------------------------------------------------------


async def test_right(client: AsyncClient) -> None:
    first = await client.post("/users", json={"name": "zoe", "email": "zoe@example.com"})
    second = await client.post("/users", json={"name": "zoe2", "email": "zoe@example.com"})
    assert first.status_code == 201
    assert second.status_code == 409


async def test_too_weak(client: AsyncClient) -> None:
    first = await client.post("/users", json={"name": "zoe", "email": "zoe@example.com"})
    assert first.status_code == 201


async def test_wrong_expectation(client: AsyncClient) -> None:
    response = await client.post("/users", json={"name": "zoe", "email": "zoe@example.com"})
    assert response.status_code == 200


async def test_crashes(client: AsyncClient) -> None:
    created = await client.post("/users", json={"name": "zoe", "email": "zoe@example.com"})
    assert created.json()["id"] + 1  # the buggy app answers "id": null


async def test_placeholder(client: AsyncClient) -> None:
    raise NotImplementedError


def test_sync(client) -> None:
    pass


# These are answers, not tests of this module: keep pytest from collecting them.
for _answer in (test_right, test_too_weak, test_wrong_expectation, test_crashes, test_placeholder, test_sync):
    _answer.__test__ = False


async def test_catches_bug_right(engine: AsyncEngine) -> None:
    verdict = await nb10.check_test_catches_bug(test_right, engine)
    assert verdict.status is Status.CORRECT, verdict


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (test_too_weak, "also passes against the buggy app"),
        (test_wrong_expectation, "fails against the correct app"),
        (test_crashes, "crashed with TypeError"),
        (test_sync, "async def"),
    ],
)
async def test_catches_bug_wrong(engine: AsyncEngine, answer, hint: str) -> None:
    verdict = await nb10.check_test_catches_bug(answer, engine)
    assert verdict.status is Status.WRONG and hint in verdict.message, verdict


async def test_catches_bug_not_attempted(engine: AsyncEngine) -> None:
    assert (await nb10.check_test_catches_bug(test_placeholder, engine)).status is Status.NOT_ATTEMPTED
    assert (await nb10.check_test_catches_bug(..., engine)).status is Status.NOT_ATTEMPTED
