"""Unit tests for the self-checks of notebook 16 (where async meets sync).

One private database for the module (SQLite by default, PostgreSQL with DATABASE_URL) with the
sample blog rows. Every wrong answer below is a mistake the lesson warns about; each must get
its own hint, and the right answers must pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any

import pytest
import pytest_asyncio
from fastapi import BackgroundTasks, Depends, Request
from sqlalchemy import URL, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from helpers import NotebookDatabase, open_database
from helpers.exercises import Status, nb16
from helpers.exercises.nb16 import check_run_job_within, check_signup
from helpers.models import Post, User
from helpers.sample_data import load_sample_data

pytestmark = pytest.mark.asyncio(loop_scope="module")

Job = Callable[[AsyncSession], Awaitable[Any]]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def db() -> AsyncIterator[NotebookDatabase]:
    db = await open_database("test_nb16")
    try:
        await load_sample_data(db.engine)
        yield db
    finally:
        await db.close()


# 16.1 ------------------------------------------------------------------------------------------


def good_run_job_within(url: URL, job: Job, seconds: float) -> Any:
    async def main() -> Any:
        engine = create_async_engine(url)
        try:
            async with AsyncSession(engine) as session, asyncio.timeout(seconds):
                return await job(session)
        finally:
            await engine.dispose()

    return asyncio.run(main())


async def check_16_1(db: NotebookDatabase, answer: Any) -> Any:
    return await check_run_job_within(answer, db.url)


async def test_run_job_within_correct(db: NotebookDatabase) -> None:
    verdict = await check_16_1(db, good_run_job_within)
    assert verdict.status is Status.CORRECT, verdict


async def test_run_job_within_correct_with_wait_for_and_a_nullpool_engine(db: NotebookDatabase) -> None:
    def run_job_within(url: URL, job: Job, seconds: float) -> Any:
        async def main() -> Any:
            engine = create_async_engine(url, poolclass=NullPool)
            async with AsyncSession(engine) as session:
                return await asyncio.wait_for(job(session), seconds)

        return asyncio.run(main())

    verdict = await check_16_1(db, run_job_within)
    assert verdict.status is Status.CORRECT, verdict


async def test_run_job_within_correct_with_the_timeout_around_everything(db: NotebookDatabase) -> None:
    def run_job_within(url: URL, job: Job, seconds: float) -> Any:
        async def main() -> Any:
            async with asyncio.timeout(seconds):  # the engine's dispose() still runs after the cancel
                engine = create_async_engine(url)
                try:
                    async with async_sessionmaker(engine)() as session:
                        return await job(session)
                finally:
                    await engine.dispose()

        return asyncio.run(main())

    verdict = await check_16_1(db, run_job_within)
    assert verdict.status is Status.CORRECT, verdict


async def test_run_job_within_not_attempted(db: NotebookDatabase) -> None:
    def run_job_within(url: URL, job: Job, seconds: float) -> Any:
        raise NotImplementedError

    assert (await check_16_1(db, run_job_within)).status is Status.NOT_ATTEMPTED


async def async_def(url: URL, job: Job, seconds: float) -> Any:
    engine = create_async_engine(url)
    try:
        async with AsyncSession(engine) as session, asyncio.timeout(seconds):
            return await job(session)
    finally:
        await engine.dispose()


def returns_the_coroutine(url: URL, job: Job, seconds: float) -> Any:
    async def main() -> Any:
        engine = create_async_engine(url)
        try:
            async with AsyncSession(engine) as session, asyncio.timeout(seconds):
                return await job(session)
        finally:
            await engine.dispose()

    return main()


def no_time_limit(url: URL, job: Job, seconds: float) -> Any:
    async def main() -> Any:
        engine = create_async_engine(url)
        try:
            async with AsyncSession(engine) as session:
                return await job(session)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def swallows_the_timeout(url: URL, job: Job, seconds: float) -> Any:
    async def main() -> Any:
        engine = create_async_engine(url)
        try:
            async with AsyncSession(engine) as session, asyncio.timeout(seconds):
                return await job(session)
        except TimeoutError:
            return None
        finally:
            await engine.dispose()

    return asyncio.run(main())


def cancels_by_hand(url: URL, job: Job, seconds: float) -> Any:
    async def main() -> Any:
        engine = create_async_engine(url)
        try:
            async with AsyncSession(engine) as session:
                task = asyncio.create_task(job(session))
                asyncio.get_running_loop().call_later(seconds, task.cancel)
                return await task
        finally:
            await engine.dispose()

    return asyncio.run(main())


def dispose_not_in_finally(url: URL, job: Job, seconds: float) -> Any:
    async def main() -> Any:
        engine = create_async_engine(url)
        async with AsyncSession(engine) as session, asyncio.timeout(seconds):
            result = await job(session)
        await engine.dispose()  # skipped when the timeout raises
        return result

    return asyncio.run(main())


def never_disposed(url: URL, job: Job, seconds: float) -> Any:
    async def main() -> Any:
        engine = create_async_engine(url)
        async with AsyncSession(engine) as session, asyncio.timeout(seconds):
            return await job(session)

    return asyncio.run(main())


def session_never_closed(url: URL, job: Job, seconds: float) -> Any:
    async def main() -> Any:
        engine = create_async_engine(url)
        try:
            async with asyncio.timeout(seconds):
                return await job(AsyncSession(engine))
        finally:
            await engine.dispose()

    return asyncio.run(main())


def loop_never_closed(url: URL, job: Job, seconds: float) -> Any:
    async def main() -> Any:
        engine = create_async_engine(url)
        try:
            async with AsyncSession(engine) as session, asyncio.timeout(seconds):
                return await job(session)
        finally:
            await engine.dispose()

    return asyncio.new_event_loop().run_until_complete(main())


def abandons_the_job(url: URL, job: Job, seconds: float) -> Any:
    """Waits for the job from outside, in another thread: the job keeps running after the raise."""
    runner = ThreadPoolExecutor(max_workers=1)
    try:
        return runner.submit(no_time_limit, url, job, seconds).result(timeout=seconds)
    finally:
        runner.shutdown(wait=False)


def forgets_the_result(url: URL, job: Job, seconds: float) -> Any:
    async def main() -> None:
        engine = create_async_engine(url)
        try:
            async with AsyncSession(engine) as session, asyncio.timeout(seconds):
                await job(session)
        finally:
            await engine.dispose()

    return asyncio.run(main())


def passes_a_connection(url: URL, job: Job, seconds: float) -> Any:
    async def main() -> Any:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn, asyncio.timeout(seconds):
                return await job(conn)  # type: ignore[arg-type]
        finally:
            await engine.dispose()

    return asyncio.run(main())


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (async_def, "make it a plain `def`"),
        (returns_the_coroutine, "returned an awaitable"),
        (no_time_limit, "nothing stopped it at the limit"),
        (swallows_the_timeout, "TimeoutError must reach the caller"),
        (cancels_by_hand, "CancelledError reached the caller"),
        (dispose_not_in_finally, "stayed open after the time limit struck"),
        (never_disposed, "the engine was not disposed"),
        (session_never_closed, "the session that held it was never closed"),
        (loop_never_closed, "you must close it yourself"),
        (abandons_the_job, "it was abandoned, not stopped"),
        (forgets_the_result, "return what `await job(session)` gave"),
        (passes_a_connection, "job expects an AsyncSession"),
    ],
)
async def test_run_job_within_wrong(db: NotebookDatabase, answer: Any, hint: str) -> None:
    verdict = await check_16_1(db, answer)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict


@pytest.mark.parametrize("pool", ["default", "nullpool", "disposed"])
async def test_run_job_within_one_engine_for_every_loop(db: NotebookDatabase, pool: str) -> None:
    """One engine made outside the jobs: refused whether it breaks (asyncpg), happens to work
    (aiosqlite, psycopg) or is made safe for jobs run one after another (NullPool, dispose())."""
    options: dict[str, Any] = {"poolclass": NullPool} if pool == "nullpool" else {}
    shared = create_async_engine(db.url, **options)

    def run_job_within(url: URL, job: Job, seconds: float) -> Any:
        async def main() -> Any:
            try:
                async with AsyncSession(shared) as session, asyncio.timeout(seconds):
                    return await job(session)
            finally:
                if pool == "disposed":
                    await shared.dispose()

        return asyncio.run(main())

    try:
        verdict = await check_16_1(db, run_job_within)
    finally:
        await shared.dispose(close=False)  # its connections belong to loops that are gone
    assert verdict.status is Status.WRONG, verdict
    assert "one engine served jobs on different event loops" in verdict.message, verdict


# 16.2 ------------------------------------------------------------------------------------------


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


RequestSession = Annotated[AsyncSession, Depends(get_session)]


async def send_welcome(sessions: async_sessionmaker[AsyncSession], user_id: int) -> None:
    async with sessions.begin() as session:
        session.add(Post(title="Welcome!", author_id=user_id))


async def new_user(session: AsyncSession, name: str) -> User:
    user = User(name=name, email=f"{name}@example.com")
    session.add(user)
    await session.commit()
    return user


async def good_signup(
    name: str, request: Request, session: RequestSession, background_tasks: BackgroundTasks
) -> dict[str, int]:
    user = await new_user(session, name)
    background_tasks.add_task(send_welcome, request.app.state.sessions, user.id)
    return {"id": user.id}


async def test_signup_correct(db: NotebookDatabase) -> None:
    verdict = await check_signup(good_signup, db.engine)
    assert verdict.status is Status.CORRECT, verdict
    async with AsyncSession(db.engine) as session:  # the check removed its rows
        assert await session.scalar(select(User).where(User.name == "welcome-check")) is None


async def test_signup_not_attempted(db: NotebookDatabase) -> None:
    async def signup(
        name: str, request: Request, session: RequestSession, background_tasks: BackgroundTasks
    ) -> dict[str, int]:
        raise NotImplementedError

    assert (await check_signup(signup, db.engine)).status is Status.NOT_ATTEMPTED


async def borrowed_welcome(session: AsyncSession, user_id: int) -> None:
    session.add(Post(title="Welcome!", author_id=user_id))
    await session.commit()


async def borrows_the_session(
    name: str, request: Request, session: RequestSession, background_tasks: BackgroundTasks
) -> dict[str, int]:
    user = await new_user(session, name)
    background_tasks.add_task(borrowed_welcome, session, user.id)
    return {"id": user.id}


class Borrower:
    """Hides the request's session inside another object: caught by what the session does."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def __call__(self, user_id: int) -> None:
        await borrowed_welcome(self.session, user_id)


async def borrows_it_hidden(
    name: str, request: Request, session: RequestSession, background_tasks: BackgroundTasks
) -> dict[str, int]:
    user = await new_user(session, name)
    borrower = Borrower(session)

    async def welcome(user_id: int) -> None:
        await borrower(user_id)

    background_tasks.add_task(welcome, user.id)
    return {"id": user.id}


async def orm_welcome(sessions: async_sessionmaker[AsyncSession], user: User) -> None:
    async with sessions.begin() as session:
        session.add(Post(title="Welcome!", author_id=user.id))


async def passes_the_user(
    name: str, request: Request, session: RequestSession, background_tasks: BackgroundTasks
) -> dict[str, int]:
    user = await new_user(session, name)
    background_tasks.add_task(orm_welcome, request.app.state.sessions, user)
    return {"id": user.id}


def sync_welcome(sessions: async_sessionmaker[AsyncSession], user_id: int) -> None:
    asyncio.run(send_welcome(sessions, user_id))


async def sync_task(
    name: str, request: Request, session: RequestSession, background_tasks: BackgroundTasks
) -> dict[str, int]:
    user = await new_user(session, name)
    background_tasks.add_task(sync_welcome, request.app.state.sessions, user.id)
    return {"id": user.id}


async def inline(
    name: str, request: Request, session: RequestSession, background_tasks: BackgroundTasks
) -> dict[str, int]:
    user = await new_user(session, name)
    await send_welcome(request.app.state.sessions, user.id)
    return {"id": user.id}


running: set[asyncio.Task[None]] = set()


async def own_task(
    name: str, request: Request, session: RequestSession, background_tasks: BackgroundTasks
) -> dict[str, int]:
    user = await new_user(session, name)
    task = asyncio.create_task(send_welcome(request.app.state.sessions, user.id))
    running.add(task)
    task.add_done_callback(running.discard)
    return {"id": user.id}


async def uncommitted_welcome(sessions: async_sessionmaker[AsyncSession], user_id: int) -> None:
    async with sessions() as session:
        session.add(Post(title="Welcome!", author_id=user_id))
        await session.flush()


async def task_never_commits(
    name: str, request: Request, session: RequestSession, background_tasks: BackgroundTasks
) -> dict[str, int]:
    user = await new_user(session, name)
    background_tasks.add_task(uncommitted_welcome, request.app.state.sessions, user.id)
    return {"id": user.id}


open_sessions: list[AsyncSession] = []


async def unclosed_welcome(sessions: async_sessionmaker[AsyncSession], user_id: int) -> None:
    session = sessions()
    open_sessions.append(session)  # closed by the test afterwards
    session.add(Post(title="Welcome!", author_id=user_id))
    await session.commit()
    await session.scalar(select(User.name).where(User.id == user_id))  # a new transaction, left open


async def task_never_closes(
    name: str, request: Request, session: RequestSession, background_tasks: BackgroundTasks
) -> dict[str, int]:
    user = await new_user(session, name)
    background_tasks.add_task(unclosed_welcome, request.app.state.sessions, user.id)
    return {"id": user.id}


async def user_not_committed(
    name: str, request: Request, session: RequestSession, background_tasks: BackgroundTasks
) -> dict[str, int]:
    user = User(name=name, email=f"{name}@example.com")
    session.add(user)
    await session.flush()
    background_tasks.add_task(send_welcome, request.app.state.sessions, user.id)
    return {"id": user.id}


async def wrong_body(
    name: str, request: Request, session: RequestSession, background_tasks: BackgroundTasks
) -> dict[str, str]:
    user = await new_user(session, name)
    background_tasks.add_task(send_welcome, request.app.state.sessions, user.id)
    return {"name": user.name}


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (borrows_the_session, "received the request's session"),
        (borrows_it_hidden, "a session opened for the request was used after the response"),
        (passes_the_user, "received an ORM object"),
        (sync_task, "is a plain def"),
        (inline, "written before the response went out"),
        (own_task, "no background task was added"),
        (task_never_commits, "expected one welcome post"),
        (task_never_closes, "close the session the task opens"),
        (wrong_body, "return {'id'"),
    ],
)
async def test_signup_wrong(db: NotebookDatabase, answer: Any, hint: str) -> None:
    try:
        verdict = await check_signup(answer, db.engine)
    finally:
        for session in open_sessions:
            await session.close()
        open_sessions.clear()
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict


async def test_signup_user_not_committed(db: NotebookDatabase, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user is only flushed, and the request's session rolls it back when it closes, after
    the task. On SQLite the task's INSERT waits for the request's write lock until the busy
    timeout (0.5 s here); on PostgreSQL it waits for the uncommitted user's row lock,
    which the request holds until the task ends: the check's time limit stops it."""
    monkeypatch.setattr(nb16, "TIME_LIMIT", 2.0)
    engine = db.create_engine(connect_args={"timeout": 0.5}) if db.is_sqlite else db.engine
    verdict = await check_signup(user_not_committed, engine)
    assert verdict.status is Status.WRONG, verdict
    assert "commit the user in the route" in verdict.message, verdict
