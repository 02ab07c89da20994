"""Self-checks for notebook 09 (concurrency).

Both checks run the learner's function against an *instrumented* session factory: an
``async_sessionmaker`` whose sessions record which asyncio task used them, how many database
calls were in flight at once, and how many sessions held a connection at once. Each database
call (and each close) also waits a little first, a stand-in for network latency, so
overlapping work really overlaps and the counts do not depend on how fast the machine is.
That is how a check tells a shared session, a sequential loop, unbounded concurrency and a
semaphore released too early apart from the right answer.

For 08.2 the factory also holds back every session that a background task opens until the
request has returned (for at most :data:`GATE_BOUND` seconds): an answer that waits for its
background work does not return in that time, and the check says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, event, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from helpers.exercises.base import Verdict, check, correct, wrong
from helpers.models import Post, User

__all__ = [
    "SessionTracker",
    "check_fetch_names",
    "check_signup",
    "describe_counts",
    "tracked_sessionmaker",
]

_inside_call: contextvars.ContextVar[bool] = contextvars.ContextVar("_inside_call", default=False)

#: How long a check lets the learner's function run before it reports that it waited.
PATIENCE = 3.0
#: How long a background session waits for the request to return before it is let through.
GATE_BOUND = 1.0


@dataclass
class SessionTracker:
    """What the sessions of one :func:`tracked_sessionmaker` factory did."""

    created: int = 0
    calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    holding: int = 0  #: sessions holding a connection right now (first statement to end of transaction)
    max_holding: int = 0
    closed: set[int] = field(default_factory=set)  #: serials of the sessions that were closed
    tasks_by_session: dict[int, set[int]] = field(default_factory=dict)
    created_by_task: dict[int, int] = field(default_factory=dict)  #: session serial -> creating task
    attached_from_elsewhere: int = 0  #: objects loaded by one session, then added to another
    sessions: list[AsyncSession] = field(default_factory=list)
    #: set by check_signup: sessions created outside ``request_task`` wait for it before any I/O
    gate: asyncio.Event | None = None
    request_task: asyncio.Task[Any] | None = None
    let_through: int = 0  #: background calls the gate let through because the request never returned

    def note(self, serial: int) -> None:
        # serial numbers, not id(session): ids are reused once a closed session is collected
        self.tasks_by_session.setdefault(serial, set()).add(id(asyncio.current_task()))

    @property
    def tasks(self) -> set[int]:
        """Ids of the tasks that created or used one of the sessions."""
        return set(self.created_by_task.values()).union(*self.tasks_by_session.values())

    async def contain(self, started_after: set[asyncio.Task[Any]]) -> None:
        """Let the tasks that used these sessions end (cancel them after a while), then close
        every session, so a wrong answer leaves no transaction (and no lock) behind."""
        current = asyncio.current_task()
        leftover = {
            t for t in asyncio.all_tasks() - started_after if t is not current and id(t) in self.tasks
        }
        if leftover:
            _, pending = await asyncio.wait(leftover, timeout=PATIENCE)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=PATIENCE)
        for session in self.sessions:
            with contextlib.suppress(Exception):
                await AsyncSession.close(session)

    @property
    def shared_sessions(self) -> int:
        """How many sessions were used from more than one asyncio task."""
        return sum(len(tasks) > 1 for tasks in self.tasks_by_session.values())


def tracked_sessionmaker(
    engine: AsyncEngine, *, delay: float = 0.02
) -> tuple[async_sessionmaker[AsyncSession], SessionTracker]:
    """An ``async_sessionmaker`` for ``engine`` whose sessions report to a :class:`SessionTracker`.

    ``execute``, ``scalar``, ``scalars``, ``get``, ``flush`` and ``commit`` are counted (and
    delayed by ``delay`` seconds), as is ``close`` (delayed, not counted); ``add`` only records
    which task called it. A session *holds a connection* from the start of its transaction to
    its end (SQLAlchemy's ``after_begin`` and ``after_transaction_end`` session events).
    """
    tracker = SessionTracker()

    class TrackedSyncSession(Session):
        pass

    @event.listens_for(TrackedSyncSession, "after_begin")
    def _took_connection(session: Session, transaction: Any, connection: Any) -> None:
        if transaction.parent is None:  # the root transaction: a connection was checked out
            tracker.holding += 1
            tracker.max_holding = max(tracker.max_holding, tracker.holding)
            session.info["holding"] = True

    @event.listens_for(TrackedSyncSession, "after_transaction_end")
    def _gave_connection_back(session: Session, transaction: Any) -> None:
        if transaction.parent is None and session.info.pop("holding", False):
            tracker.holding -= 1

    @event.listens_for(TrackedSyncSession, "detached_to_persistent")
    def _attached(session: Session, instance: Any) -> None:
        tracker.attached_from_elsewhere += 1

    class TrackedSession(AsyncSession):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            tracker.sessions.append(self)
            tracker.created += 1
            self.tracking_serial = tracker.created
            tracker.created_by_task[self.tracking_serial] = id(asyncio.current_task())

        async def _held_back(self) -> None:
            """Background sessions wait until the request has returned (check_signup only).

            The wait is bounded: a request that waits for its background work would otherwise
            never return. A session let through by the bound proves that the request waited.
            """
            gate = tracker.gate
            request = tracker.request_task
            if gate is not None and tracker.created_by_task[self.tracking_serial] != id(request):
                try:
                    await asyncio.wait_for(gate.wait(), GATE_BOUND)
                except TimeoutError:
                    tracker.let_through += 1

        async def _tracked(self, call: Callable[[], Awaitable[Any]]) -> Any:
            tracker.note(self.tracking_serial)
            if _inside_call.get():  # scalars() calls execute(): count it once
                return await call()
            token = _inside_call.set(True)
            try:
                await self._held_back()
                tracker.calls += 1
                tracker.in_flight += 1
                tracker.max_in_flight = max(tracker.max_in_flight, tracker.in_flight)
                try:
                    result = await call()
                    await asyncio.sleep(delay)  # the answer's latency: the call stays in flight
                    return result
                finally:
                    tracker.in_flight -= 1
            finally:
                _inside_call.reset(token)

        async def execute(self, *args: Any, **kwargs: Any) -> Any:
            return await self._tracked(lambda: super(TrackedSession, self).execute(*args, **kwargs))

        async def scalar(self, *args: Any, **kwargs: Any) -> Any:
            return await self._tracked(lambda: super(TrackedSession, self).scalar(*args, **kwargs))

        async def scalars(self, *args: Any, **kwargs: Any) -> Any:
            return await self._tracked(lambda: super(TrackedSession, self).scalars(*args, **kwargs))

        async def get(self, *args: Any, **kwargs: Any) -> Any:
            return await self._tracked(lambda: super(TrackedSession, self).get(*args, **kwargs))

        async def flush(self, *args: Any, **kwargs: Any) -> None:
            await self._tracked(lambda: super(TrackedSession, self).flush(*args, **kwargs))

        async def commit(self) -> None:
            await self._tracked(lambda: super(TrackedSession, self).commit())

        async def close(self) -> None:
            # not noted: `async with` closes the session from a helper task of its own
            await self._held_back()
            await asyncio.sleep(delay)  # closing is a round trip too (it rolls back)
            await super().close()
            tracker.closed.add(self.tracking_serial)

        def add(self, instance: object, *args: Any, **kwargs: Any) -> None:
            tracker.note(self.tracking_serial)
            super().add(instance, *args, **kwargs)

    factory = async_sessionmaker(
        engine, class_=TrackedSession, sync_session_class=TrackedSyncSession, expire_on_commit=False
    )
    return factory, tracker


async def _make_users(engine: AsyncEngine, names: list[str]) -> dict[int, str]:
    """Insert users the check owns (removing leftovers of an interrupted run first)."""
    await _remove_users(engine, names)
    async with AsyncSession(engine) as session, session.begin():
        rows = await session.execute(
            insert(User).returning(User.id, User.name),
            [{"name": n, "email": f"{n}@example.com"} for n in names],
        )
        return {user_id: name for user_id, name in rows}


async def _remove_users(engine: AsyncEngine, names: list[str], *post_titles: str) -> None:
    """Delete these users, their posts, and posts with these titles (whoever they point at)."""
    async with AsyncSession(engine) as session, session.begin():
        ids = select(User.id).where(User.name.in_(names))
        await session.execute(delete(Post).where(or_(Post.author_id.in_(ids), Post.title.in_(post_titles))))
        await session.execute(delete(User).where(User.name.in_(names)))


FetchNames = Callable[[async_sessionmaker[AsyncSession], list[int], int], Awaitable[list[str]]]
_CHECK_USERS = ["check_ann", "check_ben", "check_cy", "check_dee"]


@check("09.1")
async def check_fetch_names(fetch_names: FetchNames, engine: AsyncEngine) -> Verdict:
    """``fetch_names(factory, user_ids, limit)``: names in id order, one session per task,
    never more than ``limit`` sessions holding a connection at once.

    ``engine`` needs the blog schema (``helpers.models``); the check adds four users of its
    own and removes them afterwards.
    """
    names = await _make_users(engine, _CHECK_USERS)
    try:
        return await _judge_fetch_names(fetch_names, engine, names)
    finally:
        await _remove_users(engine, _CHECK_USERS)


async def _judge_fetch_names(fetch_names: FetchNames, engine: AsyncEngine, names: dict[int, str]) -> Verdict:
    ids = list(names)  # in insertion order: ann, ben, cy, dee
    for order, limit in (([3, 0, 2, 1, 0, 3], 2), ([1, 2, 0, 3, 2, 1, 0], 3)):
        user_ids = [ids[i] for i in order]
        expected = [names[i] for i in user_ids]
        factory, tracker = tracked_sessionmaker(engine)
        raised: BaseException | None = None
        result: list[str] = []
        before = asyncio.all_tasks()
        try:
            result = await asyncio.wait_for(fetch_names(factory, list(user_ids), limit), PATIENCE)
        except NotImplementedError:
            raise
        except TimeoutError as exc:
            raised = exc
            if tracker.max_holding and not tracker.holding and tracker.in_flight == 0:
                return wrong(
                    "09.1",
                    f"your function had not finished after {PATIENCE:.0f} s, with every session closed: "
                    "a semaphore permit that is never given back? Take it with `async with semaphore:` "
                    "(acquire() needs a release() in a finally block).",
                )
            return wrong("09.1", f"your function had not finished after {PATIENCE:.0f} s.")
        except Exception as exc:  # judged below: a shared session explains most errors
            raised = exc
        finally:
            await tracker.contain(before)
        if tracker.calls == 0:
            return wrong(
                "09.1",
                "no query went through the factory's sessions: open each session with "
                "`async with factory() as session` and read with session.get/scalar/execute.",
            )
        if tracker.shared_sessions:
            return wrong(
                "09.1",
                "one session was used by several tasks at once; open a new session inside each "
                "task (`async with factory() as session:` in the per-id coroutine).",
            )
        if raised is not None:
            return wrong("09.1", f"your code raised {type(raised).__name__}: {raised}")
        if tracker.created < len(user_ids) and tracker.calls < len(user_ids):
            return wrong(
                "09.1",
                f"{tracker.calls} queries for {len(user_ids)} ids: one query for all of them is fine in "
                "real code, but this exercise practises one lookup per id, each in its own session.",
            )
        if tracker.max_in_flight == 1:
            return wrong(
                "09.1",
                "the lookups ran one at a time; start them together with asyncio.gather "
                "or an asyncio.TaskGroup.",
            )
        if tracker.created != len(user_ids):
            return wrong(
                "09.1",
                f"{tracker.created} sessions for {len(user_ids)} ids; open exactly one session per id, "
                "inside the task that uses it.",
            )
        if tracker.max_in_flight >= len(user_ids):
            return wrong(
                "09.1",
                f"all {len(user_ids)} lookups ran at once with limit={limit}: create ONE "
                "asyncio.Semaphore(limit) before starting the tasks and take it in every task (a "
                "semaphore created inside each task limits nothing).",
            )
        if tracker.max_in_flight > limit:
            return wrong(
                "09.1",
                f"{tracker.max_in_flight} lookups ran at once with limit={limit}: the semaphore has "
                "more permits than `limit`; use asyncio.Semaphore(limit).",
            )
        if tracker.max_holding > limit:
            return wrong(
                "09.1",
                f"{tracker.max_holding} sessions held a connection at once with limit={limit}: a "
                "session gave its permit back before it closed. Take the semaphore before opening "
                "the session: `async with semaphore, factory() as session:`.",
            )
        if list(result) != expected:
            return wrong(
                "09.1",
                f"expected {expected}, got {result!r}; return the names in the order of the ids "
                "(gather keeps the order of its arguments).",
            )
    return correct("09.1", "one session per task, never more than `limit` at once, names in order.")


Signup = Callable[[async_sessionmaker[AsyncSession], str, set[asyncio.Task[Any]]], Awaitable[int]]


@check("09.2")
async def check_signup(signup: Signup, engine: AsyncEngine) -> Verdict:
    """``signup(factory, name, background)``: commit a user, return its id, and leave a welcome
    post to a background task with its own session, without waiting for it.

    Sessions opened by any other task than the request wait until ``signup`` has returned (at
    most :data:`GATE_BOUND` seconds), so an answer that awaits its background work is caught.
    ``engine`` needs the blog schema; the check removes the rows it caused.
    """
    name = "check_zara"
    title = f"Welcome, {name}"
    await _remove_users(engine, [name], title)
    factory, tracker = tracked_sessionmaker(engine)
    tracker.gate = asyncio.Event()
    background: set[asyncio.Task[Any]] = set()
    before = asyncio.all_tasks()

    async def request() -> int:
        tracker.request_task = asyncio.current_task()
        return await signup(factory, name, background)

    try:
        user_id: int | None = None
        raised: BaseException | None = None
        waited = False
        try:
            user_id = await asyncio.wait_for(request(), PATIENCE)
        except NotImplementedError:
            raise
        except TimeoutError:
            waited = True
        except Exception as exc:
            raised = exc
        scheduled = set(background)  # a done-callback may discard them later
        await asyncio.sleep(0.05)  # tasks the request started run until their first database call
        started = {t for t in asyncio.all_tasks() - before if id(t) in tracker.tasks}
        watched = scheduled | started
        tracker.gate.set()  # the request is over: background work may run now
        if watched:
            await asyncio.wait(watched, timeout=PATIENCE)
        if waited or tracker.let_through:
            return wrong(
                "09.2",
                "signup waited for the welcome post: the check holds the background session back until "
                "the request has returned, and the request did not return. Start the work "
                "with asyncio.create_task, add the task to `background`, and return the id without "
                "awaiting the task.",
            )
        if tracker.shared_sessions:
            return wrong(
                "09.2",
                "the background task used the request's session (which the request closes while the "
                "task still runs); give the background coroutine the factory and let it open its "
                "own `async with factory() as session`.",
            )
        if raised is not None:
            return wrong("09.2", f"your code raised {type(raised).__name__}: {raised}")
        if not scheduled and started:
            return wrong(
                "09.2",
                "you started a task but did not add it to `background`: the event loop keeps only a "
                "weak reference to a task, so an unreferenced one can be garbage-collected before it "
                "ends. Add it to the set (and discard it when done).",
            )
        if not scheduled:
            return wrong(
                "09.2",
                "nothing was added to `background`; start the welcome post with asyncio.create_task "
                "and add the task to the set (it keeps a reference so the task is not lost).",
            )
        pending = [t for t in scheduled if not t.done()]
        if pending:
            return wrong("09.2", f"the background task had not finished {PATIENCE:.0f} s after the request.")
        request_sessions = [
            s for s, task in tracker.created_by_task.items() if task == id(tracker.request_task)
        ]
        if any(s not in tracker.closed for s in request_sessions):
            return wrong(
                "09.2",
                "the request's session was never closed; open it with `async with factory() as "
                "session:`, so it is closed (and its connection returned) however the request ends.",
            )
        async with AsyncSession(engine) as session:
            user = await session.scalar(select(User).where(User.name == name))
            titles = (
                list(await session.scalars(select(Post.title).where(Post.author_id == user.id)))
                if user is not None
                else []
            )
        if user is None or user.id != user_id:
            return wrong(
                "09.2",
                "the user is not in the database under the id you returned; add it, commit, "
                "and return user.id.",
            )
        failed = [t.exception() for t in scheduled if not t.cancelled() and t.exception() is not None]
        if failed:
            exc = failed[0]
            return wrong("09.2", f"the background task raised {type(exc).__name__}: {exc}")
        if tracker.attached_from_elsewhere:
            return wrong(
                "09.2",
                "the background session received an ORM object loaded by the request's session; pass "
                "plain values instead (the user's id) and build the Post from them.",
            )
        if titles != [title]:
            return wrong(
                "09.2",
                f"expected one post titled {title!r} by the new user, found {titles!r}; "
                "did the background task commit?",
            )
        if tracker.created < 2:
            return wrong("09.2", "use one session for the request and a second one in the background task.")
    finally:
        tracker.gate.set()
        await tracker.contain(before)
        await _remove_users(engine, [name], title)
    return correct(
        "09.2", "the request committed, closed its session and returned; the background task used its own."
    )


def describe_counts(tracker: SessionTracker) -> str:
    """One line for notebooks: sessions, calls, most calls and connections at once, sessions shared."""
    return (
        f"{tracker.created} sessions, {tracker.calls} calls, at most {tracker.max_in_flight} calls and "
        f"{tracker.max_holding} connections at once, {tracker.shared_sessions} shared between tasks"
    )
