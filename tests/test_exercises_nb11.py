"""The notebook 11 self-checks accept right answers and reject wrong ones with a specific hint."""

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine

from helpers import NotebookDatabase, open_database
from helpers.exercises import Status, nb11

pytestmark = pytest.mark.asyncio(loop_scope="module")


# One private database and one event loop for the whole module: creating a database per test
# costs about 0.15 s on PostgreSQL, and an engine belongs to the loop it was first used on.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def database() -> AsyncIterator[NotebookDatabase]:
    db = await open_database("test_nb10")
    try:
        yield db
    finally:
        await db.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(database: NotebookDatabase) -> AsyncEngine:
    return database.engine  # on SQLite it carries SQLAlchemy's transaction recipe already


# 11.1 -----------------------------------------------------------------------------------


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


async def fixture_session_not_bound_to_conn(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with engine.connect() as conn:
        transaction = await conn.begin()
        session = AsyncSession(engine, join_transaction_mode="create_savepoint")  # its own connection
        try:
            yield session
        finally:
            await session.close()
            await transaction.rollback()


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


async def fixture_rollback_only(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with engine.connect() as conn:
        transaction = await conn.begin()
        session = AsyncSession(bind=conn, join_transaction_mode="rollback_only")
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


async def fixture_engine_begin(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with engine.begin() as conn:  # commits when the block ends
        session = AsyncSession(bind=conn, join_transaction_mode="create_savepoint")
        yield session
        await session.close()


LEFT_OPEN: list[AsyncConnection] = []  # what fixture_keeps_connection forgets, closed by its test


async def fixture_keeps_connection(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    conn = await engine.connect()  # never closed
    LEFT_OPEN.append(conn)
    transaction = await conn.begin()
    session = AsyncSession(bind=conn, join_transaction_mode="create_savepoint")
    yield session
    await session.close()
    await transaction.rollback()


async def fixture_placeholder(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    raise NotImplementedError
    yield


def fixture_not_a_generator(engine: AsyncEngine) -> AsyncSession:
    return AsyncSession(engine)


async def fixture_yields_connection(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with engine.connect() as conn:
        yield conn


async def test_fixture_right(engine: AsyncEngine) -> None:
    verdict = await nb11.check_rolled_back_session(fixture_right, engine)
    assert verdict.status is Status.CORRECT, verdict


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (fixture_plain_session, "was a real COMMIT"),
        (fixture_session_not_bound_to_conn, "was a real COMMIT"),
        (fixture_without_savepoints, "create_savepoint"),
        (fixture_rollback_only, "create_savepoint"),
        (fixture_commits_at_end, "committed the test's transaction at the end"),
        (fixture_engine_begin, "committed the test's transaction at the end"),
        (fixture_not_a_generator, "async generator"),
        (fixture_yields_connection, "yield an AsyncSession"),
    ],
)
async def test_fixture_wrong(engine: AsyncEngine, answer, hint: str) -> None:
    verdict = await nb11.check_rolled_back_session(answer, engine)
    assert verdict.status is Status.WRONG and hint in verdict.message, verdict


async def test_fixture_that_keeps_its_connection(engine: AsyncEngine) -> None:
    try:
        verdict = await nb11.check_rolled_back_session(fixture_keeps_connection, engine)
        assert verdict.status is Status.WRONG and "not returned" in verdict.message, verdict
    finally:
        while LEFT_OPEN:
            await LEFT_OPEN.pop().close()


async def test_fixture_not_attempted(engine: AsyncEngine) -> None:
    assert (await nb11.check_rolled_back_session(fixture_placeholder, engine)).status is Status.NOT_ATTEMPTED
    assert (await nb11.check_rolled_back_session(..., engine)).status is Status.NOT_ATTEMPTED


async def test_sqlite_engine_without_the_recipe_is_named_in_the_hint(database: NotebookDatabase) -> None:
    plain = create_async_engine(database.url)  # the driver's own transaction handling
    try:
        verdict = await nb11.check_rolled_back_session(fixture_right, plain)
    finally:
        await plain.dispose()
    if database.is_sqlite:
        assert verdict.status is Status.WRONG and "transaction recipe" in verdict.message, verdict
    else:
        assert verdict.status is Status.CORRECT, verdict


# 11.2 -----------------------------------------------------------------------------------


async def test_right(client: AsyncClient) -> None:
    first = await client.post("/users", json={"name": "zoe", "email": "zoe@example.com"})
    second = await client.post("/users", json={"name": "zoe2", "email": "zoe@example.com"})
    assert first.status_code == 201
    assert second.status_code == 409


async def test_too_weak(client: AsyncClient) -> None:
    first = await client.post("/users", json={"name": "zoe", "email": "zoe@example.com"})
    assert first.status_code == 201


async def test_cannot_fail(client: AsyncClient) -> None:
    first = await client.post("/users", json={"name": "zoe", "email": "zoe@example.com"})
    second = await client.post("/users", json={"name": "zoe2", "email": "zoe@example.com"})
    assert first is not None and second is not None  # always true: no status is checked


async def test_swallows_its_assertion(client: AsyncClient) -> None:
    await client.post("/users", json={"name": "zoe", "email": "zoe@example.com"})
    second = await client.post("/users", json={"name": "zoe2", "email": "zoe@example.com"})
    try:
        assert second.status_code == 409
    except AssertionError:  # a learner's "keep going" that silences the one check that matters
        print("409 expected")


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
for _answer in (
    test_right,
    test_too_weak,
    test_cannot_fail,
    test_swallows_its_assertion,
    test_wrong_expectation,
    test_crashes,
    test_placeholder,
    test_sync,
):
    _answer.__test__ = False


async def test_catches_bug_right(engine: AsyncEngine) -> None:
    verdict = await nb11.check_test_catches_bug(test_right, engine)
    assert verdict.status is Status.CORRECT, verdict


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (test_too_weak, "also passes against the buggy app"),
        (test_cannot_fail, "it cannot fail"),
        (test_swallows_its_assertion, "it cannot fail"),
        (test_wrong_expectation, "fails against the correct app"),
        (test_crashes, "crashed with TypeError"),
        (test_sync, "async def"),
    ],
)
async def test_catches_bug_wrong(engine: AsyncEngine, answer, hint: str) -> None:
    verdict = await nb11.check_test_catches_bug(answer, engine)
    assert verdict.status is Status.WRONG and hint in verdict.message, verdict


async def test_catches_bug_not_attempted(engine: AsyncEngine) -> None:
    assert (await nb11.check_test_catches_bug(test_placeholder, engine)).status is Status.NOT_ATTEMPTED
    assert (await nb11.check_test_catches_bug(..., engine)).status is Status.NOT_ATTEMPTED
