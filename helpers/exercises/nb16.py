"""Self-checks for the exercises of notebook 16 (where async meets sync).

* 16.1 ``run_job_within(url, job, seconds)``: a plain function, called from worker threads,
  that runs ``await job(session)`` on an event loop of its own, with an engine created and
  disposed on that loop, returns the job's result, and raises ``TimeoutError`` once the job has
  run ``seconds`` (the job stopped, its engine disposed).
* 16.2 ``signup(name, request, session, background_tasks)``: a FastAPI route that commits a
  user and schedules a welcome post as a background task that opens its own session from
  ``request.app.state.sessions`` and receives the user's id.

16.1 watches every connection pool through class-level pool and engine events, in every thread
but the notebook's: which loop opened and used each connection, and whether it was closed.
16.2 mounts the route on a small app whose session factory records, per session, whether it
was opened before the response went out and what it did afterwards.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import inspect
import itertools
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import fastapi
from httpx import ASGITransport, AsyncClient
from sqlalchemy import URL, Engine, delete, event, func, literal, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.exc import DBAPIError, SAWarning
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstanceState, Session
from sqlalchemy.pool import Pool

from helpers.exercises.base import Verdict, check, correct, wrong
from helpers.models import Post, User

__all__ = ["check_run_job_within", "check_signup"]

TIME_LIMIT = 20.0  # seconds for one batch of the learner's jobs, or for one request in 16.2

# 16.1 ------------------------------------------------------------------------------------------

RunJobWithin = Callable[[URL, Callable[[AsyncSession], Awaitable[Any]], float], Any]
SLOW = 2.0  # seconds the check's slow job would take
LIMIT = 0.2  # the time limit the check gives the slow job
GRACE = 1.0  # how long after LIMIT the answer may take to give up


@dataclass
class _Connection:
    """One DBAPI connection a pool opened outside the check's own thread."""

    loop: asyncio.AbstractEventLoop | None  # the loop it was opened on
    checked_out: bool = False
    closed: bool = False


@dataclass
class _PoolProbe:
    """What the pools did in other threads than the check's, recorded by class-level events."""

    home: int = field(default_factory=threading.get_ident)  # the check's (the notebook's) thread
    connections: dict[int, _Connection] = field(default_factory=dict)  # by id() of the record
    records: list[Any] = field(default_factory=list)  # keeps the ids above unique while watched
    engine_loops: dict[int, set[int]] = field(default_factory=dict)  # engine id -> ids of loops using it
    loops: list[asyncio.AbstractEventLoop] = field(default_factory=list)
    foreign_loop: bool = False  # a connection was checked out on a loop other than its own
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _watched(self) -> bool:
        return threading.get_ident() != self.home

    @staticmethod
    def _loop() -> asyncio.AbstractEventLoop | None:
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            return None

    def engine_connect(self, connection: Any) -> None:
        loop = self._loop()
        if not self._watched() or loop is None:
            return
        with self.lock:
            self.engine_loops.setdefault(id(connection.engine), set()).add(id(loop))
            if all(known is not loop for known in self.loops):
                self.loops.append(loop)

    def connect(self, dbapi_connection: Any, record: Any) -> None:
        if not self._watched():
            return
        with self.lock:
            self.connections[id(record)] = _Connection(self._loop())
            self.records.append(record)

    def checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        loop = self._loop()
        with self.lock:
            known = self.connections.get(id(record))
            if known is None:
                return
            known.checked_out = True
            if loop is not None and known.loop is not None and loop is not known.loop:
                self.foreign_loop = True

    def checkin(self, dbapi_connection: Any, record: Any) -> None:
        with self.lock:
            known = self.connections.get(id(record))
            if known is not None:
                known.checked_out = False

    def close(self, dbapi_connection: Any, record: Any) -> None:
        with self.lock:
            known = self.connections.get(id(record))
            if known is not None:
                known.closed = True

    def shared_engine(self) -> bool:
        return self.foreign_loop or any(len(loops) > 1 for loops in self.engine_loops.values())

    def open_connections(self) -> list[_Connection]:
        return [c for c in self.connections.values() if not c.closed]


@contextlib.contextmanager
def _watching_pools() -> Iterator[_PoolProbe]:
    probe = _PoolProbe()
    hooks: dict[str, Callable[..., None]] = {
        "connect": probe.connect,
        "checkout": probe.checkout,
        "checkin": probe.checkin,
        "close": probe.close,
    }
    for name, hook in hooks.items():
        event.listen(Pool, name, hook)
    event.listen(Engine, "engine_connect", probe.engine_connect)
    try:
        yield probe
    finally:
        for name, hook in hooks.items():
            event.remove(Pool, name, hook)
        event.remove(Engine, "engine_connect", probe.engine_connect)
        leaked = bool(probe.open_connections())
        probe.records.clear()
        probe.loops.clear()
        if leaked:  # let the garbage collector close what the answer left open, quietly
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ResourceWarning)
                warnings.simplefilter("ignore", SAWarning)  # "garbage collector is trying to clean up"
                gc.collect()


def _job(n: int, pause: float = 0.0) -> Callable[[AsyncSession], Awaitable[tuple[str, int | None]]]:
    """The check's job: it asks the database for n (its session now holds a connection and a
    transaction), waits ``pause`` seconds, and returns n, tagged."""

    async def job(session: AsyncSession) -> tuple[str, int | None]:
        if not isinstance(session, AsyncSession):
            raise TypeError(f"job expects an AsyncSession, and got {type(session).__name__}")
        value = await session.scalar(select(literal(n)))
        await asyncio.sleep(pause)
        return ("job", value)

    return job


async def _in_threads(calls: list[Callable[[], Any]], workers: int) -> list[Any]:
    """Run the calls on a thread pool of the check's own; bounded by TIME_LIMIT."""
    loop = asyncio.get_running_loop()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nb16-job")
    try:
        futures = [loop.run_in_executor(pool, call) for call in calls]
        async with asyncio.timeout(TIME_LIMIT):
            return await asyncio.gather(*futures)
    finally:
        pool.shutdown(wait=False)


def _close_awaitables(results: list[Any]) -> bool:
    found = False
    for result in results:
        if inspect.iscoroutine(result):
            result.close()  # never run: close it quietly
            found = True
        elif inspect.isawaitable(result):
            found = True
    return found


async def _settle(probe: _PoolProbe) -> None:
    """Give a job that outlived the answer's return (at most SLOW s) the time to end."""
    for _ in range(int(SLOW / 0.05) + 10):
        if not any(c.checked_out for c in probe.open_connections()):
            return
        await asyncio.sleep(0.05)


def _leak_verdict(probe: _PoolProbe, timed_out: bool = False) -> Verdict | None:
    left = probe.open_connections()
    running = [loop for loop in probe.loops if loop.is_running()]
    if running and any(c.checked_out for c in left):
        return wrong(
            "16.1",
            "the slow job was still running in its thread when your function had already raised: it was "
            "abandoned, not stopped, and kept its session and connection. Cancel it inside its own loop "
            "(asyncio.timeout or asyncio.wait_for around the await).",
        )
    if any(c.checked_out for c in left):
        return wrong(
            "16.1",
            "a connection was still checked out when the job's loop closed: the session that held it "
            "was never closed. Open it with `async with` so it returns its connection.",
        )
    if left:
        when = " after the time limit struck" if timed_out else ""
        return wrong(
            "16.1",
            f"{len(left)} connection(s) stayed open{when}: the engine was not disposed. "
            "`await engine.dispose()` in a finally block inside the coroutine, so it runs on every way "
            "out, before the loop closes (after asyncio.run() returns it is too late).",
        )
    if any(not loop.is_closed() for loop in probe.loops):
        return wrong(
            "16.1",
            "the event loop your function made is still open after it returned: asyncio.run() creates "
            "the loop and closes it; with new_event_loop() you must close it yourself.",
        )
    return None


_SHARED_ENGINE = (
    "one engine served jobs on different event loops (it connected on two loops). NullPool or "
    "dispose() make that survive jobs run one after another (notebook 09), but jobs in a thread pool "
    "run at the same time: create the engine inside the job's coroutine, on its loop."
)


@dataclass
class _Raised:
    """What the learner's function raised in a worker thread."""

    error: BaseException


class JobCancelled(Exception):
    """The learner's function let a CancelledError out (shown as a hint by the check)."""


def _reraise(results: list[Any]) -> None:
    """Raise the first error the learner's function raised, as an Exception the check reports."""
    for result in results:
        if isinstance(result, _Raised):
            if isinstance(result.error, Exception):
                raise result.error
            raise JobCancelled(f"{type(result.error).__name__} escaped your function") from None


def _result_verdict(pairs: list[tuple[int, Any]]) -> Verdict | None:
    for n, result in pairs:
        if result != ("job", n):
            return wrong("16.1", f"your function returned {result!r}; return what `await job(session)` gave.")
    return None


@check("16.1")
async def check_run_job_within(run_job_within: RunJobWithin, url: URL) -> Verdict:
    """Two quick jobs one after the other in one thread, a slow one that must be stopped, then
    four quick ones in two threads at once."""
    if inspect.iscoroutinefunction(run_job_within):
        return wrong(
            "16.1",
            "run_job_within is called by synchronous code (a worker thread, a CLI) that has no event loop "
            "to await it in: make it a plain `def` that starts one with asyncio.run(...).",
        )
    counter = itertools.count(1)

    def one(pause: float = 0.0, seconds: float = 10.0) -> tuple[int, Any]:
        n = next(counter)
        try:
            return n, run_job_within(url, _job(n, pause), seconds)
        except BaseException as exc:  # handed back as a value: a CancelledError must not cancel the check
            return n, _Raised(exc)

    # 1. Two quick jobs, one after the other, in one thread.
    with _watching_pools() as probe:
        try:
            pairs = (await _in_threads([lambda: [one(), one()]], workers=1))[0]
        except TimeoutError:
            return wrong("16.1", f"two quick jobs were still running after {TIME_LIMIT:.0f} s.")
        if probe.shared_engine():
            return wrong("16.1", _SHARED_ENGINE)
        _reraise([result for _, result in pairs])
        if _close_awaitables([result for _, result in pairs]):
            return wrong(
                "16.1",
                "your function returned an awaitable, not the job's result: nothing ran it. Run the "
                "coroutine with `return asyncio.run(main())`.",
            )
        if not probe.connections:
            return wrong("16.1", "no connection was opened for the job: create an engine from `url` there.")
        if (verdict := _result_verdict(pairs) or _leak_verdict(probe)) is not None:
            return verdict

    # 2. A job that would take SLOW seconds, limited to LIMIT.
    with _watching_pools() as probe:
        started = time.perf_counter()
        try:
            _, slow = (await _in_threads([lambda: one(pause=SLOW, seconds=LIMIT)], workers=1))[0]
        except TimeoutError:
            return wrong("16.1", f"a job limited to {LIMIT} s was still running after {TIME_LIMIT:.0f} s.")
        took = time.perf_counter() - started
        if not isinstance(slow, _Raised) and took > LIMIT + GRACE:
            return wrong(
                "16.1",
                f"a job limited to {LIMIT} s ran to its end ({took:.1f} s): nothing stopped it at the limit. "
                "Put asyncio.timeout(seconds) around the job's await, inside the coroutine.",
            )
        if not isinstance(slow, _Raised):
            return wrong(
                "16.1",
                f"a job limited to {LIMIT} s returned {slow!r} after {took:.1f} s: when the limit strikes, "
                "TimeoutError must reach the caller (do not catch it, do not return None).",
            )
        if isinstance(slow.error, asyncio.CancelledError | concurrent.futures.CancelledError):
            return wrong(
                "16.1",
                "the job was cancelled, and CancelledError reached the caller: use asyncio.timeout(seconds) "
                "(or asyncio.wait_for), which turns the cancellation into TimeoutError.",
            )
        if not isinstance(slow.error, TimeoutError):
            _reraise([slow])
        if took > LIMIT + GRACE:
            return wrong(
                "16.1",
                f"a job limited to {LIMIT} s ran {took:.1f} s before TimeoutError: nothing stopped it at "
                "the limit. Put asyncio.timeout(seconds) around the job's await, inside the coroutine.",
            )
        verdict = _leak_verdict(probe, timed_out=True)
        await _settle(probe)
        if verdict is not None:
            return verdict

    # 3. Four quick jobs in two threads at once.
    with _watching_pools() as probe:
        try:
            pairs = await _in_threads([lambda: one(pause=0.05) for _ in range(4)], workers=2)
        except TimeoutError:
            return wrong(
                "16.1", f"four quick jobs in two threads were still running after {TIME_LIMIT:.0f} s."
            )
        if probe.shared_engine():
            return wrong("16.1", _SHARED_ENGINE)
        _reraise([result for _, result in pairs])
        if (verdict := _result_verdict(pairs) or _leak_verdict(probe)) is not None:
            return verdict
    return correct(
        "16.1",
        f"seven jobs, each on a loop and an engine of its own, disposed on every way out; the slow one "
        f"was stopped after {took:.1f} s with TimeoutError.",
    )


# 16.2 ------------------------------------------------------------------------------------------

Signup = Callable[..., Awaitable[Any]]
_NAME = "welcome-check"


@dataclass
class _RequestWatch:
    """Which sessions the request opened, and what happened after its response went out."""

    loop_thread: int
    phase: str = "request"  # "background" once the response's status line is sent
    borrowed: bool = False  # a session opened for the request was used after the response
    in_thread: bool = False  # a session was used outside the event loop's thread
    posts_at_response: int | None = None
    users_at_response: int | None = None
    sessions: list[AsyncSession] = field(default_factory=list)  # every session the app's factory made
    tasks: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = field(default_factory=list)


def _watched_session_class(watch: _RequestWatch) -> type[Session]:
    """A Session subclass that notes when each session was opened and what it did afterwards."""

    class WatchedSession(Session):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.info["nb16_phase"] = watch.phase

    def used(session: Session) -> None:
        if session.info.get("nb16_phase") == "request" and watch.phase == "background":
            watch.borrowed = True
        if threading.get_ident() != watch.loop_thread:
            watch.in_thread = True

    event.listen(WatchedSession, "after_begin", lambda session, transaction, connection: used(session))
    event.listen(WatchedSession, "after_flush", lambda session, context: used(session))
    event.listen(WatchedSession, "after_commit", used)
    event.listen(WatchedSession, "do_orm_execute", lambda state: used(state.session))
    return WatchedSession


def _remembering_session_class(watch: _RequestWatch) -> type[AsyncSession]:
    """An AsyncSession subclass whose instances the check can close afterwards, whatever the answer did."""

    class RememberedSession(AsyncSession):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            watch.sessions.append(self)

    return RememberedSession


async def _count(engine: AsyncEngine, model: type, name: str) -> int:
    async with AsyncSession(engine) as session:
        query = select(func.count()).select_from(User).where(User.name == name)
        if model is Post:
            query = select(func.count()).select_from(Post).join(Post.author).where(User.name == name)
        return int(await session.scalar(query) or 0)


async def _remove_check_rows(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session, session.begin():
        ids = select(User.id).where(User.name == _NAME)
        await session.execute(delete(Post).where(Post.author_id.in_(ids)))
        await session.execute(delete(User).where(User.name == _NAME))


def _is_orm_object(value: Any) -> bool:
    return isinstance(sa_inspect(value, raiseerr=False), InstanceState)


@contextlib.contextmanager
def _recording_tasks(watch: _RequestWatch) -> Iterator[None]:
    """Note every BackgroundTasks.add_task call; a plain-def task is noted but not run."""
    original = fastapi.BackgroundTasks.add_task

    def add_task(self: Any, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        watch.tasks.append((func, args, kwargs))
        if not inspect.iscoroutinefunction(func):
            return  # it would run in a worker thread; the verdict says why that is wrong
        original(self, func, *args, **kwargs)

    fastapi.BackgroundTasks.add_task = add_task  # type: ignore[method-assign]
    try:
        yield
    finally:
        fastapi.BackgroundTasks.add_task = original  # type: ignore[method-assign]


@check("16.2")
async def check_signup(signup: Signup, engine: AsyncEngine) -> Verdict:
    """POST /signup?name=... on an app built around ``signup``; watch the sessions and the tasks."""
    await _remove_check_rows(engine)
    watch = _RequestWatch(loop_thread=threading.get_ident())
    app = fastapi.FastAPI()
    app.state.sessions = async_sessionmaker(
        engine,
        class_=_remembering_session_class(watch),
        sync_session_class=_watched_session_class(watch),
        expire_on_commit=False,
    )
    app.post("/signup", status_code=201)(signup)

    async def watched_app(scope: Any, receive: Any, send: Any) -> None:
        async def watched_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                watch.posts_at_response = await _count(engine, Post, _NAME)
                watch.users_at_response = await _count(engine, User, _NAME)
                watch.phase = "background"
            await send(message)

        await app(scope, receive, watched_send)

    try:
        try:
            with _recording_tasks(watch):
                async with (
                    AsyncClient(transport=ASGITransport(app=watched_app), base_url="http://check") as client,
                    asyncio.timeout(TIME_LIMIT),
                ):
                    response = await client.post("/signup", params={"name": _NAME})
        except (TimeoutError, DBAPIError):
            if watch.tasks and watch.users_at_response == 0:
                return wrong(
                    "16.2",
                    "the background task ran while the new user was still uncommitted, and waited for the "
                    "request's lock on it until it gave up: commit the user in the route, before you return.",
                )
            if watch.users_at_response is None:  # the route itself did not finish
                raise
            return wrong("16.2", f"the background task was still running after {TIME_LIMIT:.0f} s.")
        return await _signup_verdict(watch, response, engine)
    finally:
        for session in watch.sessions:  # what the answer left open, so nothing stays locked
            await session.close()
        await _remove_check_rows(engine)


async def _signup_verdict(watch: _RequestWatch, response: Any, engine: AsyncEngine) -> Verdict:
    if response.status_code != 201:
        return wrong(
            "16.2", f"POST /signup answered {response.status_code} {response.text[:200]}; expected 201."
        )
    if not watch.tasks:
        if watch.posts_at_response:
            return wrong(
                "16.2",
                "the welcome post was written before the response went out: the client waited for it. "
                "Schedule it with background_tasks.add_task(...), which runs after the response.",
            )
        for _ in range(100):  # up to 2 s for an asyncio.create_task() of the route to finish
            if await _count(engine, Post, _NAME):
                break
            await asyncio.sleep(0.02)
        return wrong(
            "16.2",
            "no background task was added: use background_tasks.add_task(send_welcome, ...). A task of "
            "your own (asyncio.create_task) is not awaited by the server, nor by a test client.",
        )
    for task, args, kwargs in watch.tasks:
        values = [*args, *kwargs.values()]
        if any(isinstance(value, AsyncSession | Session) for value in values):
            return wrong(
                "16.2",
                "the background task received the request's session. It belongs to the request: with "
                "Depends(scope='function') it is closed before the task runs, and under the default scope "
                "the request's clean-up waits for the task. Pass request.app.state.sessions and open a "
                "session of its own in the task.",
            )
        if any(_is_orm_object(value) for value in values):
            return wrong(
                "16.2",
                "the background task received an ORM object, which belongs to the request's session "
                "(reading an expired attribute of it queries through that session). Pass the id.",
            )
        if not inspect.iscoroutinefunction(task):
            return wrong(
                "16.2",
                f"{getattr(task, '__name__', task)!s} is a plain def: Starlette runs such a task in a "
                "worker thread, where an AsyncSession cannot be used. Make it `async def`.",
            )
    if watch.borrowed:
        return wrong(
            "16.2",
            "a session opened for the request was used after the response went out: the background "
            "task must open its own session from request.app.state.sessions.",
        )
    if watch.in_thread:
        return wrong("16.2", "a session was used outside the event loop's thread; keep the task `async def`.")
    if await _count(engine, User, _NAME) != 1:
        return wrong("16.2", "the user was not saved: commit it in the route, before the task is scheduled.")
    posts = await _count(engine, Post, _NAME)
    if posts != 1:
        return wrong(
            "16.2",
            f"the new user has {posts} posts after the background task; expected one welcome post. "
            "Commit it in the task (`async with sessions.begin() as session:`).",
        )
    if any(session.in_transaction() for session in watch.sessions):
        return wrong(
            "16.2",
            "a connection was still checked out after the request and its task ended: close the session "
            "the task opens (`async with`).",
        )
    async with AsyncSession(engine) as session:
        user_id = await session.scalar(select(User.id).where(User.name == _NAME))
    if response.json() != {"id": user_id}:
        return wrong("16.2", f"the route returned {response.json()!r}; return {{'id': <the new user's id>}}.")
    return correct(
        "16.2",
        "the user is committed before the response, and the welcome post is written after it, by an "
        "async task in a session of its own.",
    )
