"""Self-checks for the exercises of the performance lesson (notebook 17).

* 17.1 ``count_items(SyncSession)``: an ``async def`` that runs synchronous database code in a
  worker thread, so that the event loop keeps running while the query waits.
* 17.2 ``load_items(Session, rows)``: every row inserted in one committed transaction, with one
  ``INSERT`` statement and nothing fetched back.
* 17.3 ``export_items(Session, write)``: every item handed to ``write`` in id order, holding at
  most a quarter of the memory ``.all()`` holds.

The checks reset the ``items`` table themselves and watch the engine the learner's factory is
bound to (the statements, the threads that ran them, the commits) only while the learner's
function runs.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, delete, event, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio.exc import AsyncMethodRequired
from sqlalchemy.orm import Session, sessionmaker

from helpers.exercises.base import Verdict, check, correct, wrong
from helpers.performance import peak_memory, worst_delay

__all__ = ["check_bulk_load", "check_export", "check_unblocked"]

TIME_LIMIT = 20.0  # seconds for the learner's function in any check
STALL = 0.05  # the longest the event loop may stand still in 17.1, in seconds


@dataclass
class EngineWatch:
    """What an engine executed while the ``watching()`` block ran."""

    statements: list[str] = field(default_factory=list)
    threads: set[int] = field(default_factory=set)  # thread ids that executed statements
    commits: int = 0
    server_side: list[bool] = field(default_factory=list)  # per SELECT: a streaming cursor?
    yield_per: list[int | None] = field(default_factory=list)  # per SELECT: the yield_per option

    def inserts(self) -> list[str]:
        return [s for s in self.statements if s.lstrip().upper().startswith("INSERT")]


@contextmanager
def watching(engine: Engine | AsyncEngine) -> Iterator[EngineWatch]:
    """Record the statements, executing threads and commits of ``engine`` inside the block."""
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    watch = EngineWatch()

    def executed(conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
        watch.statements.append(statement)
        watch.threads.add(threading.get_ident())
        if statement.lstrip().upper().startswith("SELECT") and context is not None:
            watch.server_side.append(bool(getattr(context, "_is_server_side", False)))
            watch.yield_per.append(context.execution_options.get("yield_per"))

    def committed(conn: Any) -> None:
        watch.commits += 1

    event.listen(sync_engine, "before_cursor_execute", executed)
    event.listen(sync_engine, "commit", committed)
    try:
        yield watch
    finally:
        event.remove(sync_engine, "before_cursor_execute", executed)
        event.remove(sync_engine, "commit", committed)


def _bind(factory: Any, exercise: str) -> Engine | AsyncEngine:
    bind = factory.kw.get("bind")
    if bind is None:
        raise TypeError(f"exercise {exercise}: the session factory passed to the check has no engine")
    return bind


# 17.1 ------------------------------------------------------------------------------------------

COUNT = 7  # items in the table during check 17.1
CountItems = Callable[[sessionmaker[Session]], Awaitable[int]]


def _fill(factory: sessionmaker[Session], item_class: Any, n: int) -> None:
    with factory.begin() as session:
        session.execute(delete(item_class))
        session.execute(insert(item_class), [{"name": f"item {i}", "note": "check"} for i in range(n)])


@check("17.1")
async def check_unblocked(
    count_items: CountItems, SyncSession: sessionmaker[Session], item_class: Any
) -> Verdict:
    """Three calls at once, under a heartbeat: results, executing threads and the loop's worst stall."""
    if not inspect.iscoroutinefunction(count_items):
        return wrong(
            "17.1",
            "count_items must be declared `async def`: the point is an async function that does not "
            "block. (A plain `def` is what FastAPI runs in a thread for you; here you do it yourself.)",
        )
    engine = _bind(SyncSession, "17.1")
    await asyncio.to_thread(_fill, SyncSession, item_class, COUNT)
    loop_thread = threading.get_ident()
    with watching(engine) as watch:
        try:
            results, stall = await worst_delay(
                lambda: asyncio.gather(*(count_items(SyncSession) for _ in range(3))), time_limit=TIME_LIMIT
            )
        except TypeError as exc:
            if loop_thread in watch.threads and "not callable" in str(exc):
                return wrong(
                    "17.1",
                    f"{exc}: `asyncio.to_thread(legacy_count(session))` calls legacy_count first, "
                    "here in the event loop, and hands its result to the thread. Pass the function and "
                    "its arguments: `await asyncio.to_thread(legacy_count, session)`.",
                )
            raise
        except TimeoutError:
            return wrong("17.1", f"three calls were still running after {TIME_LIMIT:.0f} s.")
    if any(inspect.isawaitable(result) for result in results):
        for result in results:
            if inspect.iscoroutine(result):
                result.close()  # never awaited: close it quietly
        return wrong(
            "17.1",
            "count_items returned an awaitable instead of the count: `await` the call to "
            "asyncio.to_thread (or run_in_executor) and return its result.",
        )
    if loop_thread in watch.threads:
        return wrong(
            "17.1",
            f"the synchronous query ran in the event loop's own thread, so the loop stood still for "
            f"{stall * 1000:.0f} ms and no other request was served. Hand the synchronous call to a "
            "thread: `await asyncio.to_thread(legacy_count, session)`.",
        )
    if not watch.statements:
        return wrong(
            "17.1",
            "no statement ran through the SyncSession factory passed to count_items: open the "
            "session from it (the check watches its engine).",
        )
    if any(result != COUNT for result in results):
        return wrong("17.1", f"the table holds {COUNT} items, but count_items returned {list(results)}.")
    if stall >= STALL:
        return wrong(
            "17.1",
            f"the queries ran in threads, but the event loop still stood still for {stall * 1000:.0f} ms: "
            "does your function sleep or wait synchronously (time.sleep, a Future's .result())?",
        )
    return correct(
        "17.1",
        f"three counts at once, each in a worker thread; the loop never stood still longer than "
        f"{STALL * 1000:.0f} ms.",
    )


# 17.2 ------------------------------------------------------------------------------------------

ROWS = 1_000
LoadItems = Callable[[async_sessionmaker[AsyncSession], list[dict[str, Any]]], Awaitable[Any]]


async def _table(Session: async_sessionmaker[AsyncSession], item_class: Any) -> list[tuple[str, str]]:
    async with Session() as session:
        return [tuple(row) for row in await session.execute(select(item_class.name, item_class.note))]


@check("17.2")
async def check_bulk_load(
    load_items: LoadItems, Session: async_sessionmaker[AsyncSession], item_class: Any
) -> Verdict:
    """Load ROWS rows; count the INSERT statements and the commits, then compare the table."""
    async with Session.begin() as session:
        await session.execute(delete(item_class))
    rows = [{"name": f"bulk {i}", "note": f"row {i} of the check"} for i in range(ROWS)]
    flushed: list[object] = []  # ORM objects the unit of work inserted (bulk inserts fire no event)

    def object_flushed(mapper: Any, connection: Any, target: Any) -> None:
        flushed.append(target)

    event.listen(item_class, "before_insert", object_flushed)
    try:
        with watching(_bind(Session, "17.2")) as watch:
            async with asyncio.timeout(TIME_LIMIT):
                await load_items(Session, [dict(row) for row in rows])
    except TimeoutError:
        return wrong("17.2", f"your function was still running after {TIME_LIMIT:.0f} s.")
    finally:
        event.remove(item_class, "before_insert", object_flushed)
    stored = await _table(Session, item_class)
    inserts = watch.inserts()
    if not stored and watch.commits == 0:
        return wrong(
            "17.2",
            "the table is empty after your function: nothing was committed. Use `async with "
            "Session.begin() as session:` (it commits when the block ends) or `await session.commit()`.",
        )
    if sorted(stored) != sorted((row["name"], row["note"]) for row in rows):
        return wrong(
            "17.2", f"{ROWS} rows were passed in, but the table holds {len(stored)} rows afterwards."
        )
    if watch.commits > 1:
        return wrong(
            "17.2",
            f"your function committed {watch.commits} transactions: load everything in one, so that a "
            "failure leaves nothing half loaded (and each commit costs a round trip).",
        )
    if flushed:
        return wrong(
            "17.2",
            f"your function built {len(flushed)} ORM objects and flushed them (add() or add_all()): the "
            "ORM must complete each one with its new id, which it fetches back (on SQLite with one "
            f"INSERT per object; here {len(inserts)} INSERT statement(s)). The caller needs nothing "
            "back: `await session.execute(insert(Item), rows)` inserts the dicts as they are.",
        )
    if len(inserts) > 1:
        return wrong(
            "17.2",
            f"your function sent {len(inserts)} INSERT statements for {ROWS} rows, each a round trip. Pass "
            "the whole list to one call: `await session.execute(insert(Item), rows)` hands it to the "
            "driver's executemany() at once.",
        )
    if any(" RETURNING " in f" {' '.join(statement.upper().split())} " for statement in inserts):
        return wrong(
            "17.2",
            "your INSERT fetched the new rows back (RETURNING) and built objects from them: the caller "
            "needs nothing back, so leave out .returning().",
        )
    return correct("17.2", f"{ROWS} rows in one INSERT statement and one transaction.")


# 17.3 ------------------------------------------------------------------------------------------

ITEMS = 4_000
MEMORY_SHARE = 4  # the export may hold at most 1/MEMORY_SHARE of what .all() holds
ExportItems = Callable[[async_sessionmaker[AsyncSession], Callable[[Any], None]], Awaitable[Any]]


class _Receiver:
    """The check's ``write``: remembers ids only (never the objects) and how they arrived."""

    def __init__(self, item_class: Any) -> None:
        self.item_class = item_class
        self.ids: list[int] = []
        self.wrong_type: str | None = None

    def __call__(self, item: Any) -> None:
        if not isinstance(item, self.item_class):
            self.wrong_type = type(item).__name__
            return
        self.ids.append(item.id)


@check("17.3")
async def check_export(
    export_items: ExportItems, Session: async_sessionmaker[AsyncSession], item_class: Any
) -> Verdict:
    """Compare the learner's peak memory with .all()'s on ITEMS items; check order and types."""
    async with Session.begin() as session:
        await session.execute(delete(item_class))
        await session.execute(
            insert(item_class), [{"name": f"item {i}", "note": "x" * 60} for i in range(ITEMS)]
        )
    async with Session() as session:
        expected = list(await session.scalars(select(item_class.id).order_by(item_class.id)))

    receiver = _Receiver(item_class)

    async def theirs() -> None:
        async with asyncio.timeout(TIME_LIMIT):
            await export_items(Session, receiver)

    with watching(_bind(Session, "17.3")) as watch:
        try:
            peak = await peak_memory(theirs)
        except TimeoutError:
            return wrong("17.3", f"your function was still running after {TIME_LIMIT:.0f} s.")
        except AsyncMethodRequired:
            return wrong(
                "17.3",
                "AsyncMethodRequired: yield_per needs a streaming result, and session.scalars() or "
                "session.execute() read everything first. Use `await session.stream_scalars(...)` with "
                "`.execution_options(yield_per=...)`, and `async for` over it.",
            )

    async def everything() -> None:
        async with Session() as session:
            for item in (await session.scalars(select(item_class).order_by(item_class.id))).all():
                len(item.note)

    baseline = await peak_memory(everything)
    if receiver.wrong_type is not None:
        return wrong(
            "17.3",
            f"write() received a {receiver.wrong_type}: pass it Item objects (select(Item)), one by one.",
        )
    if sorted(receiver.ids) != expected or len(receiver.ids) != len(expected):
        return wrong(
            "17.3", f"write() was called for {len(receiver.ids)} items; the table holds {len(expected)}."
        )
    if receiver.ids != expected:
        return wrong("17.3", "the items arrived out of id order: add .order_by(Item.id) to the select.")
    selects = [" ".join(sql.upper().split()) for sql in watch.statements]
    if not any(sql.startswith("SELECT") and " ORDER BY " in sql for sql in selects):
        return wrong(
            "17.3",
            "the items arrived in id order, but your select has no ORDER BY: without it the database "
            "may return rows in any order, and the order you got is luck. Add .order_by(Item.id).",
        )
    if peak * MEMORY_SHARE > baseline:
        return wrong("17.3", _memory_hint(watch, peak / baseline))
    return correct(
        "17.3",
        f"all {ITEMS:,} items in id order, holding less than a quarter of the memory .all() holds.",
    )


def _memory_hint(watch: EngineWatch, share: float) -> str:
    held = (
        f"your export held {share:.0%} of the memory .all() holds (at most {1 / MEMORY_SHARE:.0%} is allowed)"
    )
    if not any(watch.server_side):
        return (
            f"{held}: every item was read at once. Stream them: `await session.stream_scalars(...)` "
            "with `.execution_options(yield_per=...)`, and `async for` over the result."
        )
    sizes = [size for size in watch.yield_per if size]
    if not sizes:
        return (
            f"{held}: stream_scalars() without yield_per still builds every object before handing out the "
            "first. Add `.execution_options(yield_per=250)` to the select."
        )
    if max(sizes) * MEMORY_SHARE > ITEMS:
        return f"{held}: yield_per={max(sizes)} builds that many objects at a time; a few hundred is plenty."
    return (
        f"{held}, although it streamed in batches of {max(sizes)}: does your code keep the items "
        "(a list, a dict)? Hand each one to write() and let it go."
    )
