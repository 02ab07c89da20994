"""Unit tests for helpers.performance, the measuring tools of notebook 17."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import event, make_url

from helpers import open_database
from helpers import performance as perf
from helpers.database import DatabaseConfigError, NotebookDatabase

module_loop = pytest.mark.asyncio(loop_scope="module")  # the loop the fixture's engines live on


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sqlite() -> AsyncIterator[NotebookDatabase]:
    db = await open_database("test_performance", environ={})  # SQLite, whatever DATABASE_URL says
    try:
        yield db
    finally:
        await db.close()


def test_sync_url_picks_the_synchronous_driver() -> None:
    assert perf.sync_url(make_url("sqlite+aiosqlite:///x.db")).drivername == "sqlite+pysqlite"
    assert perf.sync_url(make_url("postgresql+asyncpg://u@h/d")).drivername == "postgresql+psycopg"
    with pytest.raises(DatabaseConfigError, match="No synchronous driver"):
        perf.sync_url(make_url("mysql+aiomysql://u@h/d"))


@module_loop
async def test_sleep_function_waits_in_the_driver_thread(sqlite: NotebookDatabase) -> None:
    engine = sqlite.create_engine(pool_size=3, max_overflow=0)
    perf.add_sleep_function(engine)
    perf.add_sleep_function(engine)  # a second call changes nothing
    assert event.contains(engine.sync_engine, "connect", perf._register_sleep)
    wait = perf.server_wait(sqlite, 0.2)

    async def one() -> None:
        async with engine.connect() as conn:
            await conn.execute(wait)

    async with engine.connect() as a, engine.connect() as b, engine.connect() as c:
        for conn in (a, b, c):  # three connections open (and their threads started) before timing
            await conn.execute(perf.server_wait(sqlite, 0))
    start = time.perf_counter()
    async with asyncio.timeout(10):
        await asyncio.gather(one(), one(), one())
    elapsed = time.perf_counter() - start
    assert 0.2 <= elapsed < 0.5, elapsed  # one after another: 0.6 s; each wait ran in its own thread


@module_loop
async def test_sleep_function_is_bounded(sqlite: NotebookDatabase) -> None:
    engine = perf.create_sync_engine(sqlite)
    try:
        perf.MAX_SLEEP, saved = 0.05, perf.MAX_SLEEP
        try:
            start = time.perf_counter()
            with engine.connect() as conn:
                conn.execute(perf.server_wait(sqlite, 60))
            assert time.perf_counter() - start < 5
        finally:
            perf.MAX_SLEEP = saved
    finally:
        engine.dispose()


@module_loop
async def test_worst_delay_sees_a_blocked_loop_and_not_an_awaiting_one() -> None:
    async def blocks() -> str:
        time.sleep(0.15)  # noqa: ASYNC251 (the mistake the heartbeat must see)
        return "done"

    async def awaits() -> str:
        await asyncio.sleep(0.15)
        return "done"

    result, blocked = await perf.worst_delay(blocks)
    assert result == "done" and blocked >= 0.12, blocked
    result, free = await perf.worst_delay(awaits)
    assert result == "done" and free < 0.1, free


@module_loop
async def test_worst_delay_gives_up_on_work_that_never_ends() -> None:
    with pytest.raises(TimeoutError):
        await perf.worst_delay(lambda: asyncio.sleep(10), time_limit=0.1)


@module_loop
async def test_best_of_keeps_the_fastest_round_per_call() -> None:
    calls = {"quick": 0, "slow": 0}

    def quick() -> None:
        calls["quick"] += 1

    async def slow() -> None:
        calls["slow"] += 1
        await asyncio.sleep(0.02 if calls["slow"] == 1 else 0.01)

    best = await perf.best_of({"quick": quick, "slow": slow}, rounds=3, per=2)
    assert calls == {"quick": 3, "slow": 3}
    assert 0.004 <= best["slow"] < 0.01 and best["quick"] < best["slow"]


@module_loop
async def test_peak_memory_counts_what_the_work_holds() -> None:
    async def holds() -> None:
        block = bytearray(4_000_000)
        await asyncio.sleep(0)
        del block

    async def holds_nothing() -> None:
        await asyncio.sleep(0)

    assert await perf.peak_memory(holds) >= 4_000_000
    assert await perf.peak_memory(holds_nothing) < 1_000_000


def test_charts_have_a_stable_repr_and_draw() -> None:
    bars = perf.bar_chart(
        {"a": 1.0, "b": 250.0}, title="t", unit="rows/s", relative_to="a", relation="a's", log=True
    )
    assert repr(bars) == "<diagram: t, 900x220 px>" and bars.png().startswith(b"\x89PNG")
    lines = perf.throughput_chart({"x": {1: 10.0, 10: 90.0, 100: 95.0}}, title="u", ceilings={"cap": 100.0})
    assert repr(lines) == "<diagram: u, 900x460 px>" and lines.png().startswith(b"\x89PNG")


@module_loop
async def test_server_wait_names_each_backends_function(sqlite: NotebookDatabase) -> None:
    server = NotebookDatabase(label="x", url=make_url("postgresql+asyncpg://u@h/d"), backend="postgresql")
    assert "pg_sleep(" in str(perf.server_wait(server, 0.1))
    assert "sleep(" in str(perf.server_wait(sqlite, 0.1))
    assert "pg_sleep(" not in str(perf.server_wait(sqlite, 0.1))
