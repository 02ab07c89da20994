"""Self-checks for notebook 11 (testing async SQLAlchemy code).

* 10.1 :func:`check_rolled_back_session`: the body of a per-test session fixture, an async
  generator that yields a session whose work (commits included) is rolled back at the end.
* 10.2 :func:`check_test_catches_bug`: a test function that passes against a correct app and
  fails against one with the commit-after-``yield`` bug from notebook 10.

Both reload the sample data (:func:`helpers.sample_data.load_sample_data`) into the engine
they are given. On SQLite that engine needs SQLAlchemy's transaction recipe (``db.engine``
has it).
"""

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

from sqlalchemy import event, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from helpers.exercises.base import Verdict, check, correct, wrong
from helpers.models import Tag, User
from helpers.sample_data import load_sample_data

__all__ = ["build_app", "check_rolled_back_session", "check_test_catches_bug"]


async def _tags_named(engine: AsyncEngine, name: str) -> int:
    async with engine.connect() as conn:
        return await conn.scalar(select(func.count()).select_from(Tag).where(Tag.name == name)) or 0


def _has_begin_listener(engine: AsyncEngine) -> bool:
    """Whether a listener runs when SQLAlchemy starts a transaction (the SQLite recipe has one)."""
    return len(engine.sync_engine.dispatch.begin) > 0


@check("11.1")
async def check_rolled_back_session(
    fixture: Callable[[AsyncEngine], AsyncIterator[AsyncSession]], engine: AsyncEngine
) -> Verdict:
    """Drive the fixture like pytest would: commit, fail a commit, roll back, then look from outside."""
    exercise = "11.1"
    if not inspect.isasyncgenfunction(fixture):
        return wrong(exercise, "write an async generator: `async def ...(engine): ... yield session ...`.")
    await load_sample_data(engine)

    phase = "test"
    real_commits: list[str] = []  # COMMITs of a connection's outer transaction (not savepoints)

    def on_commit(conn: Any) -> None:
        real_commits.append(phase)

    event.listen(engine.sync_engine, "commit", on_commit)
    try:
        async with asynccontextmanager(fixture)(engine) as session:
            if not isinstance(session, AsyncSession):
                return wrong(exercise, f"yield an AsyncSession, not {type(session).__name__}.")
            session.add(Tag(name="kept-in-test"))
            await session.commit()  # what the code under test does
            session.add(Tag(name="async"))  # taken: the commit fails
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
            kept = await session.scalar(
                select(func.count()).select_from(Tag).where(Tag.name == "kept-in-test")
            )
            phase = "teardown"
    finally:
        event.remove(engine.sync_engine, "commit", on_commit)

    if "test" in real_commits:
        return wrong(
            exercise,
            "the test's session.commit() was a real COMMIT: bind the session to a connection whose "
            "transaction the fixture began, AsyncSession(bind=conn, ...), so the test's commits "
            "stay inside it.",
        )
    if kept != 1:
        return wrong(
            exercise,
            "a rollback inside the test also undid the work the test had committed before it: "
            'create the session with join_transaction_mode="create_savepoint".',
        )
    if "teardown" in real_commits:
        return wrong(
            exercise,
            "your fixture committed the test's transaction at the end (transaction.commit(), or "
            "engine.begin() as a context manager): roll it back instead.",
        )
    if await _tags_named(engine, "kept-in-test") != 0:
        if engine.dialect.name == "sqlite" and not _has_begin_listener(engine):
            return wrong(
                exercise,
                "the test's data survived the fixture because this SQLite engine lacks SQLAlchemy's "
                "transaction recipe (no BEGIN before the savepoints): use db.engine, or apply the "
                "recipe where you create the engine.",
            )
        return wrong(
            exercise,
            "the test's data survived the fixture: begin a transaction on the connection, and roll "
            "it back after the yield.",
        )
    if engine.pool.checkedout():
        return wrong(exercise, "the connection was not returned: use `async with engine.connect() as conn:`.")
    return correct(exercise, "commits inside the test become savepoints, and the end rolls everything back.")


AppKind = Literal["correct", "commit_after_yield", "broken"]


def build_app(engine: AsyncEngine, kind: AppKind = "correct") -> Any:
    """A tiny users API: ``POST /users`` (201, 409 on a taken name or e-mail), ``GET /users/{id}``.

    * ``"correct"``: the service flushes, builds the response and commits before returning.
    * ``"commit_after_yield"``: the session dependency commits after ``yield`` with the default
      scope, so a duplicate is answered 201 and silently not written (notebook 10).
    * ``"broken"``: every request answers 500; a test that passes against it cannot fail.
    """
    from fastapi import Depends, FastAPI, HTTPException, Request
    from pydantic import BaseModel

    class UserCreate(BaseModel):
        name: str
        email: str

    class UserOut(BaseModel):
        id: int | None
        name: str
        email: str

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.sessions = async_sessionmaker(engine)
        yield

    async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
        async with request.app.state.sessions() as session:
            yield session
            if kind == "commit_after_yield":
                await session.commit()

    app = FastAPI(lifespan=lifespan)
    session_dep = Annotated[AsyncSession, Depends(get_session)]

    @app.post("/users", status_code=201)
    async def register(data: UserCreate, session: session_dep) -> UserOut:
        if kind == "broken":
            raise HTTPException(500, "broken on purpose")
        user = User(name=data.name, email=data.email)
        session.add(user)
        if kind == "commit_after_yield":
            return UserOut(id=None, name=data.name, email=data.email)  # committed after the response
        try:
            await session.flush()
            created = UserOut(id=user.id, name=user.name, email=user.email)
            await session.commit()
        except IntegrityError:
            await session.rollback()
            raise HTTPException(409, "name or e-mail already taken") from None
        return created

    @app.get("/users/{user_id}")
    async def read(user_id: int, session: session_dep) -> UserOut:
        if kind == "broken":
            raise HTTPException(500, "broken on purpose")
        user = await session.get(User, user_id)
        if user is None:
            raise HTTPException(404, f"user {user_id} does not exist")
        return UserOut(id=user.id, name=user.name, email=user.email)

    return app


async def _run_test_against(test: Callable[[Any], Awaitable[None]], app: Any) -> BaseException | None:
    from httpx import ASGITransport, AsyncClient

    transport = ASGITransport(app=app, raise_app_exceptions=False)  # like a real server
    async with (
        app.router.lifespan_context(app),
        AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        try:
            await test(client)
        except NotImplementedError:
            raise
        except Exception as exc:
            return exc
    return None


@check("11.2")
async def check_test_catches_bug(test: Callable[[Any], Awaitable[None]], engine: AsyncEngine) -> Verdict:
    """Run the learner's test against the correct app, an app that always fails, and the
    commit-after-yield app."""
    exercise = "11.2"
    if not inspect.iscoroutinefunction(test):
        return wrong(exercise, "write the test as `async def test_...(client): ...`.")
    await load_sample_data(engine)
    failure = await _run_test_against(test, build_app(engine, "correct"))
    if failure is not None:
        return wrong(
            exercise,
            f"your test fails against the correct app ({type(failure).__name__}: {failure}); "
            "a duplicate e-mail gets 409 there, a new user 201.",
        )
    await load_sample_data(engine)
    if await _run_test_against(test, build_app(engine, "broken")) is None:
        return wrong(
            exercise,
            "your test also passes against an app that answers 500 to every request: it cannot fail. "
            "Assert the status code of each response.",
        )
    await load_sample_data(engine)
    failure = await _run_test_against(test, build_app(engine, "commit_after_yield"))
    if failure is None:
        return wrong(
            exercise,
            "your test also passes against the buggy app, which answers 201 to a duplicate e-mail and "
            "writes nothing: post the same e-mail twice and assert the second status code is 409.",
        )
    if not isinstance(failure, AssertionError):
        return wrong(
            exercise,
            f"against the buggy app your test crashed with {type(failure).__name__}: {failure}; "
            "it should fail on an `assert` about the response.",
        )
    return correct(exercise, "it passes on the correct app and catches the commit-after-yield bug.")
