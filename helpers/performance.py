"""Measuring what async buys and what it costs (notebook 17).

* The same database through a synchronous driver, and a query that waits on the server:
  :func:`sync_url`, :func:`create_sync_engine`, :func:`server_wait`. PostgreSQL has
  ``pg_sleep``; on SQLite, :func:`add_sleep_function` registers a ``sleep(seconds)`` SQL function
  on every new connection. It runs where the driver runs the query (aiosqlite's worker thread, or
  the calling thread for ``sqlite3``), so it stands in for network and server time.
* Timers: :func:`best_of` (the fastest of a few interleaved rounds), :func:`worst_delay` (how
  long the event loop stood still while some work ran) and :func:`peak_memory` (tracemalloc).
* Charts drawn like :mod:`helpers.diagrams` (900 pixels wide, DejaVu fonts, a short stable repr):
  :func:`bar_chart` and :func:`throughput_chart`.

Timings differ on every run and every machine: a notebook prints them in cells whose output is
not compared, draws them, and asserts only margins that hold on any laptop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import math
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator
from sqlalchemy import Engine, Select, create_engine, event, func, select
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncEngine

from helpers.database import DatabaseConfigError, NotebookDatabase
from helpers.diagrams import AMBER, BLUE, DPI, FONT, GREEN, INK, MUTED, RED, WIDTH_IN, Diagram

__all__ = [
    "MAX_SLEEP",
    "add_sleep_function",
    "bar_chart",
    "best_of",
    "create_sync_engine",
    "peak_memory",
    "server_wait",
    "sync_url",
    "throughput_chart",
    "worst_delay",
]

T = TypeVar("T")

#: The longest wait one ``sleep()`` call on SQLite may ask for, in seconds.
MAX_SLEEP = 5.0
PALETTE = [BLUE, GREEN, AMBER, RED, "#6741d9", MUTED]


# --- the same database, synchronously; a query that waits on the server -------------------------


def sync_url(url: URL) -> URL:
    """``url`` with the synchronous driver: ``sqlite+pysqlite`` (sqlite3) or ``postgresql+psycopg``.

    Raises:
        DatabaseConfigError: for a database other than SQLite or PostgreSQL.
    """
    backend = url.get_backend_name()
    if backend == "sqlite":
        return url.set(drivername="sqlite+pysqlite")
    if backend == "postgresql":
        return url.set(drivername="postgresql+psycopg")  # psycopg 3, used synchronously
    raise DatabaseConfigError(
        f"No synchronous driver is set up here for {backend!r}; use SQLite or PostgreSQL."
    )


def _sleep(seconds: float | None) -> None:
    time.sleep(min(max(float(seconds or 0), 0.0), MAX_SLEEP))


def _register_sleep(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.create_function("sleep", 1, _sleep)


def add_sleep_function(engine: Engine | AsyncEngine) -> None:
    """On SQLite, give every new connection of ``engine`` a ``sleep(seconds)`` SQL function.

    The function blocks the thread that runs the query for ``seconds`` (at most
    :data:`MAX_SLEEP`), as a network round trip and a slow query would. Safe to call twice;
    does nothing on other databases (PostgreSQL has ``pg_sleep``).
    """
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    if sync_engine.dialect.name != "sqlite" or event.contains(sync_engine, "connect", _register_sleep):
        return
    event.listen(sync_engine, "connect", _register_sleep)


def create_sync_engine(db: NotebookDatabase, **kwargs: Any) -> Engine:
    """A synchronous engine for the notebook's database (see :func:`sync_url`), with ``sleep()`` on SQLite.

    Dispose of it yourself (``engine.dispose()``): ``db.dispose()`` knows only async engines.
    """
    engine = create_engine(sync_url(db.url), **kwargs)
    add_sleep_function(engine)
    return engine


def server_wait(db: NotebookDatabase, seconds: float) -> Select[Any]:
    """A SELECT that spends ``seconds`` waiting where the database works.

    ``SELECT pg_sleep(seconds)`` on PostgreSQL; on SQLite ``SELECT sleep(seconds)``, which
    needs :func:`add_sleep_function` on the engine that runs it.
    """
    wait = func.pg_sleep if db.is_postgresql else func.sleep
    return select(wait(seconds))


# --- timers ---------------------------------------------------------------------------------------


async def best_of(ways: Mapping[str, Callable[[], Any]], rounds: int = 3, per: int = 1) -> dict[str, float]:
    """The fastest time of each way, in seconds, divided by ``per`` (e.g. the queries one call runs).

    Each round calls every way once, one after another, so that a burst of load from other
    programs slows them all alike; the fastest of ``rounds`` rounds is the least disturbed. A
    way may be a plain function or return an awaitable, which is awaited.
    """
    best = dict.fromkeys(ways, math.inf)
    for _ in range(rounds):
        for name, way in ways.items():
            start = time.perf_counter()
            result = way()
            if inspect.isawaitable(result):
                await result
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: seconds / per for name, seconds in best.items()}


async def worst_delay(
    start: Callable[[], Awaitable[T]], *, tick: float = 0.01, time_limit: float = 30.0
) -> tuple[T, float]:
    """Run ``await start()`` while a heartbeat task asks to wake every ``tick`` seconds.

    Returns the work's result and the heartbeat's worst lateness in seconds: how long the event
    loop could not run any other task. The work is started only once the heartbeat ticks (so
    pass a function: ``asyncio.gather(...)`` would start its tasks at once). ``time_limit``
    bounds work that awaits; work that blocks the loop cannot be interrupted.
    """
    loop = asyncio.get_running_loop()
    worst = 0.0

    async def heartbeat() -> None:
        nonlocal worst
        while True:
            asked = loop.time()
            await asyncio.sleep(tick)
            worst = max(worst, loop.time() - asked - tick)

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0)  # the heartbeat's first sleep is under way before the work starts
    try:
        async with asyncio.timeout(time_limit):
            result = await start()
        await asyncio.sleep(2 * tick)  # a tick that the work's last stretch delayed is counted too
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
    return result, worst


async def peak_memory(work: Callable[[], Awaitable[object]]) -> int:
    """The most Python memory, in bytes, held at once by what ``await work()`` allocates (tracemalloc)."""
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        start = tracemalloc.get_traced_memory()[0]
        await work()
        return max(0, tracemalloc.get_traced_memory()[1] - start)
    finally:
        if not tracing:
            tracemalloc.stop()


# --- charts ---------------------------------------------------------------------------------------


def _figure(title: str, height_in: float) -> tuple[Diagram, Any]:
    fig = Diagram(figsize=(WIDTH_IN, height_in), dpi=DPI)
    fig.title = title
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _style(ax: Any) -> None:
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color(MUTED)
    ax.tick_params(colors=INK, labelsize=10)
    for label in ax.get_xticklabels() + ax.get_yticklabels():
        label.set_family(FONT)


def _heading(fig: Diagram, title: str, note: str) -> None:
    fig.text(0.01, 0.985, title, fontsize=13, fontweight="bold", color=INK, family=FONT, va="top")
    if note:
        fig.text(0.01, 0.015, note, fontsize=9, color=MUTED, family=FONT, va="bottom")


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2g}" if value < 1 else f"{value:.2f}"


def bar_chart(
    values: Mapping[str, float],
    *,
    title: str,
    unit: str,
    relative_to: str | None = None,
    relation: str = "",
    log: bool = False,
    note: str = "",
    marker: tuple[float, str] | None = None,
) -> Diagram:
    """Horizontal bars, one per entry, top-down, each labelled with its value.

    Args:
        values: label -> value (e.g. microseconds per query, rows per second).
        unit: printed after each value ("µs per query", "rows/s").
        relative_to: the label of the entry the others are compared with: each other bar also
            shows ``value / values[relative_to]``, followed by ``relation`` ("the fastest").
        log: a logarithmic axis, for values that span orders of magnitude.
        note: a line of small print under the chart (what was measured, on what).
        marker: (value, label) for a dashed vertical reference line.
    """
    names = list(values)
    fig, ax = _figure(title, 1.2 + 0.5 * len(names))
    height = fig.get_figheight()
    fig.subplots_adjust(left=0.3, right=0.64, top=1 - 0.5 / height, bottom=0.55 / height)
    _heading(fig, title, note)
    positions = range(len(names))[::-1]
    low = min(values.values()) / 2 if log else 0.0
    for position, name, color in zip(positions, names, _colors(len(names)), strict=True):
        value = values[name]
        ax.barh(position, value - low, left=low, height=0.62, color=color, alpha=0.85)
        text = f"  {_number(value)} {unit}"
        if relative_to is not None and name != relative_to:
            ratio = value / values[relative_to]
            text += f", {ratio:.0f}x {relation}" if ratio >= 10 else f", {ratio:.1f}x {relation}"
        ax.text(value, position, text, va="center", fontsize=9.5, color=INK, family=FONT, clip_on=False)
    ax.set_yticks(list(positions), names, fontsize=10.5)
    if log:
        ax.set_xscale("log")
        ax.set_xlim(low, max(values.values()) * 1.05)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:,.0f}"))
    else:
        ax.set_xlim(0, max(values.values()) * 1.02)
    if marker is not None:
        ax.axvline(marker[0], color=RED, linestyle="--", linewidth=1.3)
        ax.text(marker[0], len(names) - 0.45, f" {marker[1]}", color=RED, fontsize=9, family=FONT)
    _style(ax)
    return fig


def _colors(n: int) -> list[str]:
    return [PALETTE[i % len(PALETTE)] for i in range(n)]


def throughput_chart(
    series: Mapping[str, Mapping[int, float]],
    *,
    title: str,
    ceilings: Mapping[str, float] | None = None,
    note: str = "",
) -> Diagram:
    """Requests per second against the number of concurrent requests, one line per way of serving them.

    Args:
        series: label -> {concurrent requests: requests per second}.
        ceilings: label -> requests per second, drawn as dashed horizontal lines (what a pool can
            serve at most).
        note: a line of small print under the chart.
    """
    fig, ax = _figure(title, 4.6)
    fig.subplots_adjust(left=0.09, right=0.7, top=0.89, bottom=0.2)
    _heading(fig, title, note)
    top = max(rate for points in series.values() for rate in points.values())
    for (label, points), color in zip(series.items(), _colors(len(series)), strict=True):
        xs = sorted(points)
        style = "--" if len(xs) < 3 else "-"
        ax.plot(xs, [points[x] for x in xs], style, marker="o", color=color, linewidth=2, label=label)
    for label, ceiling in (ceilings or {}).items():
        top = max(top, ceiling)
        ax.axhline(ceiling, color=MUTED, linestyle=":", linewidth=1.2)
        ax.text(
            1.02, ceiling, label, transform=ax.get_yaxis_transform(), fontsize=9, color=MUTED, va="center"
        )
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: f"{x:g}"))
    ax.set_ylim(0, top * 1.12)
    ax.set_xlabel("requests at the same time", fontsize=10, color=MUTED, family=FONT)
    ax.set_ylabel("requests per second", fontsize=10, color=MUTED, family=FONT)
    ax.grid(axis="y", color="#e9ecef")
    legend = ax.legend(loc="upper left", bbox_to_anchor=(1.0, 0.7), frameon=False, fontsize=9.5)
    for text in legend.get_texts():
        text.set_family(FONT)
    _style(ax)
    return fig
