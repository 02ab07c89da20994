"""Self-checks for notebook 08 (concurrency).

Both checks run the learner's function against an *instrumented* session factory: an
``async_sessionmaker`` whose sessions record which asyncio task used them and how many
database calls were in flight at once. Each database call also waits a little first (a
stand-in for network latency), so overlapping calls really overlap and the counts do not
depend on how fast the machine is. That is how a check tells a shared session, a
sequential loop and unbounded concurrency apart from the right answer.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

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


@dataclass
class SessionTracker:
    """What the sessions of one :func:`tracked_sessionmaker` factory did."""

    created: int = 0
    calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    tasks_by_session: dict[int, set[int]] = field(default_factory=dict)

    def note(self, serial: int) -> None:
        # serial numbers, not id(session): ids are reused once a closed session is collected
        self.tasks_by_session.setdefault(serial, set()).add(id(asyncio.current_task()))

    @property
    def shared_sessions(self) -> int:
        """How many sessions were used from more than one asyncio task."""
        return sum(len(tasks) > 1 for tasks in self.tasks_by_session.values())


def tracked_sessionmaker(
    engine: AsyncEngine, *, delay: float = 0.02
) -> tuple[async_sessionmaker[AsyncSession], SessionTracker]:
    """An ``async_sessionmaker`` for ``engine`` whose sessions report to a :class:`SessionTracker`.

    ``execute``, ``scalar``, ``scalars``, ``get``, ``flush`` and ``commit`` are counted (and
    delayed by ``delay`` seconds); ``add`` only records which task called it.
    """
    tracker = SessionTracker()

    class TrackedSession(AsyncSession):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            tracker.created += 1
            self.tracking_serial = tracker.created

        async def _tracked(self, call: Callable[[], Awaitable[Any]]) -> Any:
            tracker.note(self.tracking_serial)
            if _inside_call.get():  # scalars() calls execute(): count it once
                return await call()
            token = _inside_call.set(True)
            tracker.calls += 1
            tracker.in_flight += 1
            tracker.max_in_flight = max(tracker.max_in_flight, tracker.in_flight)
            try:
                await asyncio.sleep(delay)
                return await call()
            finally:
                tracker.in_flight -= 1
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

        def add(self, instance: object, *args: Any, **kwargs: Any) -> None:
            tracker.note(self.tracking_serial)
            super().add(instance, *args, **kwargs)

    factory = async_sessionmaker(engine, class_=TrackedSession, expire_on_commit=False)
    return factory, tracker


FetchNames = Callable[[async_sessionmaker[AsyncSession], list[int], int], Awaitable[list[str]]]


@check("08.1")
async def check_fetch_names(fetch_names: FetchNames, engine: AsyncEngine) -> Verdict:
    """``fetch_names(factory, user_ids, limit)``: names in id order, one session per task,
    at most ``limit`` at once.

    ``engine`` must hold the sample data (``helpers.sample_data``).
    """
    async with AsyncSession(engine) as session:
        names = {user_id: name for user_id, name in await session.execute(select(User.id, User.name))}
    for user_ids, limit in (([4, 1, 3, 2, 1, 4], 2), ([2, 3, 1, 4, 3, 2, 1], 3)):
        factory, tracker = tracked_sessionmaker(engine)
        try:
            result = await fetch_names(factory, list(user_ids), limit)
            raised: Exception | None = None
        except NotImplementedError:
            raise
        except Exception as exc:  # judged below: a shared session explains most errors
            result, raised = [], exc
        expected = [names[i] for i in user_ids]
        if tracker.calls == 0:
            return wrong(
                "08.1",
                "no query went through the factory's sessions: open each session with "
                "`async with factory() as session` and read with session.get/scalar/execute.",
            )
        if tracker.shared_sessions:
            return wrong(
                "08.1",
                "one session was used by several tasks at once; open a new session inside each "
                "task (`async with factory() as session:` in the per-id coroutine).",
            )
        if raised is not None:
            return wrong("08.1", f"your code raised {type(raised).__name__}: {raised}")
        if tracker.max_in_flight == 1:
            return wrong(
                "08.1",
                "the lookups ran one at a time; start them together with asyncio.gather "
                "or an asyncio.TaskGroup.",
            )
        if tracker.created != len(user_ids):
            return wrong(
                "08.1",
                f"{tracker.created} sessions for {len(user_ids)} ids; open exactly one session per id, "
                "inside the task that uses it.",
            )
        if tracker.max_in_flight > limit:
            return wrong(
                "08.1",
                f"{tracker.max_in_flight} queries ran at once with limit={limit}; wrap each task's "
                "work in `async with semaphore:` with asyncio.Semaphore(limit).",
            )
        if list(result) != expected:
            return wrong(
                "08.1",
                f"for ids {user_ids} expected {expected}, got {result!r}; return the names in the "
                "order of the ids (gather keeps the order of its arguments).",
            )
    return correct("08.1", "one session per task, never more than `limit` at once, names in order.")


Signup = Callable[[async_sessionmaker[AsyncSession], str, set[asyncio.Task[Any]]], Awaitable[int]]


@check("08.2")
async def check_signup(signup: Signup, engine: AsyncEngine) -> Verdict:
    """``signup(factory, name, background)``: commit a user, then a background task posts a welcome.

    ``engine`` must hold the shared blog schema. The check removes the rows it caused.
    """
    name = "check_zara"
    factory, tracker = tracked_sessionmaker(engine)
    background: set[asyncio.Task[Any]] = set()
    try:
        try:
            user_id = await signup(factory, name, background)
            raised: Exception | None = None
            scheduled = set(background)  # a done-callback may discard them later
        except NotImplementedError:
            raise
        except Exception as exc:
            raised, scheduled = exc, set(background)
        if scheduled:
            await asyncio.wait(scheduled)
        if tracker.shared_sessions:
            return wrong(
                "08.2",
                "the background task used the request's session (which the request closes while the "
                "task still runs); give the background coroutine the factory and let it open its "
                "own `async with factory() as session`.",
            )
        if raised is not None:
            return wrong("08.2", f"your code raised {type(raised).__name__}: {raised}")
        if not scheduled:
            return wrong(
                "08.2",
                "nothing was added to `background`; start the welcome post with asyncio.create_task "
                "and add the task to the set (it keeps a reference so the task is not lost).",
            )
        failed = [t.exception() for t in scheduled if t.exception() is not None]
        if failed:
            exc = failed[0]
            return wrong("08.2", f"the background task raised {type(exc).__name__}: {exc}")
        async with AsyncSession(engine) as session:
            user = await session.scalar(select(User).where(User.name == name))
            titles = (
                list(await session.scalars(select(Post.title).where(Post.author_id == user.id)))
                if user is not None
                else []
            )
        if user is None or user.id != user_id:
            return wrong(
                "08.2",
                "the user is not in the database under the id you returned; add it, commit, "
                "and return user.id.",
            )
        if titles != [f"Welcome, {name}"]:
            return wrong(
                "08.2",
                f"expected one post titled 'Welcome, {name}' by the new user, found {titles!r}; "
                "did the background task commit?",
            )
        if tracker.created < 2:
            return wrong("08.2", "use one session for the request and a second one in the background task.")
    finally:
        async with AsyncSession(engine) as session, session.begin():
            ids = select(User.id).where(User.name == name).scalar_subquery()
            await session.execute(delete(Post).where(Post.author_id == ids))
            await session.execute(delete(User).where(User.name == name))
    return correct("08.2", "the request committed and closed its session; the background task used its own.")


def describe_counts(tracker: SessionTracker) -> str:
    """One line for notebooks: sessions created, calls made, most calls in flight at once."""
    return (
        f"{tracker.created} sessions, {tracker.calls} calls, at most {tracker.max_in_flight} at once, "
        f"{tracker.shared_sessions} shared between tasks"
    )
