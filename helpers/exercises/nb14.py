"""Self-checks for the exercises of the PostgreSQL-in-production lesson (notebook 14).

* 14.1 ``engine_with_statement_timeout(url, milliseconds)``: ``statement_timeout`` sent with every
  connection request, the way the URL's driver takes it (asyncpg ``server_settings``, psycopg
  libpq ``options``). Checked without a server by catching the arguments of the connection
  attempt; on PostgreSQL also live, with ``SHOW statement_timeout``.
* 14.2 ``place_order(Session, item_id, quantity)``: through ``run_in_transaction()``, at
  ``SERIALIZABLE`` chosen for the session before its first statement, a simulated serialization
  failure retried in a new transaction, ``OutOfStock`` raised at once and never retried.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import ORMExecuteState, SessionTransaction
from sqlalchemy.orm import Session as SyncSession

from helpers.database import NotebookDatabase
from helpers.exercises.base import Verdict, check, correct, wrong

__all__ = ["SimulatedSerializationFailure", "check_place_order", "check_statement_timeout", "milliseconds_of"]

TIME_LIMIT = 20.0  # seconds for one call of the learner's function


# 14.1 ------------------------------------------------------------------------------------------

MILLISECONDS = 1500
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "min": 60_000.0, "h": 3_600_000.0, "d": 86_400_000.0}


def milliseconds_of(value: object) -> float | None:
    """What PostgreSQL makes of a ``statement_timeout`` value, in milliseconds (None: invalid)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(value))
    if match is None or match[2] not in ("", *_UNITS):
        return None
    return float(match[1]) * _UNITS.get(match[2], 1.0)


class _Captured(Exception):
    """Raised by the check's do_connect listener: the arguments are recorded, no connection is made."""


async def _connect_arguments(engine: AsyncEngine) -> dict[str, Any]:
    """The keyword arguments the engine's driver would be called with, without connecting."""
    captured: dict[str, Any] = {}

    def capture(dialect: Any, record: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        captured.update(cparams)
        raise _Captured

    event.listen(engine.sync_engine, "do_connect", capture)
    try:
        async with asyncio.timeout(5):
            async with engine.connect():
                pass
    except _Captured:
        pass
    finally:
        event.remove(engine.sync_engine, "do_connect", capture)
        await engine.dispose()
    return captured


def _setting_verdict(driver: str, params: dict[str, Any]) -> Verdict | None:
    """A hint when the connection arguments for ``driver`` do not carry the timeout."""
    other = "options" if driver == "asyncpg" else "server_settings"
    if other in params:
        return wrong(
            "14.1",
            f"with {driver} your engine passes {other}=..., which is the other driver's argument "
            f"({driver} would refuse the connection): look at url.get_driver_name() and use "
            + ("server_settings" if driver == "asyncpg" else "options")
            + " for it.",
        )
    if driver == "asyncpg":
        settings = params.get("server_settings") or {}
        if "statement_timeout" not in settings:
            if "command_timeout" in params:
                return wrong(
                    "14.1",
                    "command_timeout is asyncpg's own client-side limit: it raises a bare TimeoutError "
                    "and costs the connection, and other clients get no limit. Ask the server: "
                    'connect_args={"server_settings": {"statement_timeout": ...}}.',
                )
            return None  # maybe set another way: only the live check can tell
        value = settings["statement_timeout"]
        if not isinstance(value, str):
            return wrong(
                "14.1",
                f"server_settings values are strings; your statement_timeout is {value!r} "
                f"({type(value).__name__}), which asyncpg cannot send: use str(milliseconds).",
            )
    else:
        options = params.get("options")
        found = (
            re.search(r"(?:-c\s*|--)statement_timeout=(\S+)", options) if isinstance(options, str) else None
        )
        if found is None:
            if options is not None:
                return wrong(
                    "14.1",
                    f"your options string {options!r} sets no statement_timeout: write "
                    '"-c statement_timeout=<milliseconds>".',
                )
            return None
        value = found[1]
    ms = milliseconds_of(value)
    if ms != MILLISECONDS:
        means = "is not a valid value" if ms is None else f"means {ms:g} ms"
        return wrong(
            "14.1",
            f"for milliseconds={MILLISECONDS} your engine sets statement_timeout to {value!r}, which "
            f"{means}: a number without a unit is milliseconds, so pass str(milliseconds).",
        )
    return None


@check("14.1")
async def check_statement_timeout(answer: Callable[[URL, int], AsyncEngine], db: NotebookDatabase) -> Verdict:
    """Both drivers without a server; the notebook's own database too when it is PostgreSQL."""
    found_without_server = True
    for driver in ("asyncpg", "psycopg"):
        url = URL.create(f"postgresql+{driver}", username="app", host="db.invalid", database="shop")
        engine = answer(url, MILLISECONDS)
        if not isinstance(engine, AsyncEngine):
            return wrong("14.1", f"return the engine (an AsyncEngine), not {type(engine).__name__}.")
        if engine.url.get_driver_name() != driver:
            await engine.dispose()
            return wrong("14.1", f"for a {driver} URL your function made a {engine.url.drivername} engine.")
        params = await _connect_arguments(engine)
        verdict = _setting_verdict(driver, params)
        if verdict is not None:
            return verdict
        setting = params.get("server_settings", {}) if driver == "asyncpg" else params.get("options")
        found_without_server = found_without_server and bool(setting)
    if db.is_postgresql:
        engine = answer(db.url, MILLISECONDS)
        try:
            async with asyncio.timeout(10), engine.connect() as conn:
                shown = await conn.exec_driver_sql("SHOW statement_timeout")
                live = str(shown.scalar())
        finally:
            await engine.dispose()
        if milliseconds_of(live) != MILLISECONDS:
            return wrong(
                "14.1",
                f"on this server a new connection of your engine shows statement_timeout = {live}, "
                f"not {MILLISECONDS}ms.",
            )
    elif not found_without_server:
        return wrong(
            "14.1",
            "no statement_timeout travels with the connection request: pass it in connect_args "
            '(asyncpg: {"server_settings": {"statement_timeout": ...}}; psycopg: {"options": '
            '"-c statement_timeout=..."}).',
        )
    return correct("14.1", "statement_timeout travels with every connection request, for either driver.")


# 14.2 ------------------------------------------------------------------------------------------

PlaceOrder = Callable[[async_sessionmaker[AsyncSession], int, int], Awaitable[Any]]


class SimulatedSerializationFailure(Exception):
    """Stands in for the driver's error: what retryable() looks at, as PostgreSQL's has it."""

    sqlstate = "40001"  # serialization_failure
    sqlite_errorname = "SQLITE_BUSY"


def _serialization_failure() -> DBAPIError:
    orig = SimulatedSerializationFailure("could not serialize access due to concurrent update")
    return DBAPIError("UPDATE items SET stock=... (simulated by the check)", None, orig)


class OrderWatch:
    """A session factory like the learner's whose sessions report each transaction's isolation
    option, and can fail the first write with a simulated serialization failure."""

    def __init__(self, Session: async_sessionmaker[AsyncSession]) -> None:
        self.levels: list[str | None] = []  # per root transaction, as set when it began
        self.fail_writes = 0  # how many of the coming writes fail
        watch = self

        class WatchedSession(Session.kw.get("sync_session_class", SyncSession)):  # type: ignore[misc]
            pass

        @event.listens_for(WatchedSession, "after_begin")
        def began(session: Any, transaction: SessionTransaction, connection: Any) -> None:
            if not transaction.nested and transaction.parent is None:
                level = connection.get_execution_options().get("isolation_level")
                watch.levels.append(str(level).upper() if level else None)

        def fail_if_asked() -> None:
            if watch.fail_writes:
                watch.fail_writes -= 1
                raise _serialization_failure()

        @event.listens_for(WatchedSession, "before_flush")
        def flushing(session: Any, context: Any, instances: Any) -> None:
            if session.dirty or session.new or session.deleted:
                fail_if_asked()

        @event.listens_for(WatchedSession, "do_orm_execute")
        def executing(state: ORMExecuteState) -> None:
            if state.is_update or state.is_delete or state.is_insert:
                fail_if_asked()

        self.factory: async_sessionmaker[AsyncSession] = async_sessionmaker(
            **{**Session.kw, "sync_session_class": WatchedSession}, class_=Session.class_
        )

    def reset(self) -> None:
        self.levels.clear()
        self.fail_writes = 0


async def _set_stock(Session: async_sessionmaker[AsyncSession], item_class: Any, stock: int) -> None:
    async with Session.begin() as session:
        item = await session.get(item_class, 1)
        if item is None:
            session.add(item_class(id=1, name="lamp", stock=stock))
        else:
            item.stock = stock


async def _stock(Session: async_sessionmaker[AsyncSession], item_class: Any) -> int:
    async with Session() as session:
        return int(await session.scalar(select(item_class.stock).where(item_class.id == 1)) or 0)


async def _order(place_order: PlaceOrder, Session: async_sessionmaker[AsyncSession], quantity: int) -> Any:
    async with asyncio.timeout(TIME_LIMIT):
        return await place_order(Session, 1, quantity)


@check("14.2")
async def check_place_order(
    place_order: PlaceOrder,
    Session: async_sessionmaker[AsyncSession],
    item_class: Any,
    out_of_stock: type[Exception],
) -> Verdict:
    """Resets item 1, orders from it in four scenarios, and looks at stock and transactions."""
    watch = OrderWatch(Session)
    try:
        return await _check_place_order(place_order, Session, watch, item_class, out_of_stock)
    except TimeoutError:
        return wrong("14.2", f"an order was still running after {TIME_LIMIT:.0f} s: is something waiting?")


async def _check_place_order(
    place_order: PlaceOrder,
    Session: async_sessionmaker[AsyncSession],
    watch: OrderWatch,
    item_class: Any,
    out_of_stock: type[Exception],
) -> Verdict:
    # 1. An ordinary order.
    await _set_stock(Session, item_class, 10)
    left = await _order(place_order, watch.factory, 3)
    stock = await _stock(Session, item_class)
    if not watch.levels:
        return wrong(
            "14.2", "open sessions only through the factory passed to your function (its first argument)."
        )
    if stock != 7:
        return wrong("14.2", f"an order of 3 from a stock of 10 left {stock} in the database, not 7.")
    if left != 7:
        return wrong("14.2", f"return the stock left after the order (7), not {left!r}.")
    if len(watch.levels) != 1:
        return wrong(
            "14.2",
            f"one order ran {len(watch.levels)} transactions: read, check and write in one transaction.",
        )
    level = watch.levels[0]
    if level is None:
        return wrong(
            "14.2",
            "the transaction ran at the factory's default level: set SERIALIZABLE before the first "
            'statement, with await session.connection(execution_options={"isolation_level": '
            '"SERIALIZABLE"}) (later, SQLAlchemy only warns and ignores it).',
        )
    if level != "SERIALIZABLE":
        return wrong("14.2", f"the transaction ran at {level}; this exercise asks for SERIALIZABLE.")

    # 2. The first write fails with a serialization failure: the whole order runs again.
    await _set_stock(Session, item_class, 10)
    watch.reset()
    watch.fail_writes = 1
    try:
        left = await _order(place_order, watch.factory, 2)
    except DBAPIError:
        return wrong(
            "14.2",
            "a serialization failure (40001) reached the caller: run the order through "
            "run_in_transaction(Session, work), which retries it.",
        )
    stock = await _stock(Session, item_class)
    if stock == 10 or len(watch.levels) < 2:
        return wrong(
            "14.2",
            f"after a serialization failure the order left the stock at {stock} without running again: "
            "let the error out of work, so run_in_transaction() retries the whole transaction.",
        )
    if stock != 8 or left != 8:
        return wrong(
            "14.2",
            f"an order of 2 that failed once and was retried left {stock} in stock (returned {left!r}); "
            "expected 8: the retry must run the whole unit (read, check, write) again.",
        )
    if any(level != "SERIALIZABLE" for level in watch.levels):
        return wrong("14.2", "the retried transaction did not run at SERIALIZABLE: set it in every attempt.")

    # 3. Not enough stock: OutOfStock, nothing changed, no retry.
    await _set_stock(Session, item_class, 10)
    watch.reset()
    try:
        returned = await _order(place_order, watch.factory, 11)
    except out_of_stock as exc:
        if (getattr(exc, "item_id", None), getattr(exc, "stock", None), getattr(exc, "quantity", None)) != (
            1,
            10,
            11,
        ):
            return wrong(
                "14.2", "raise OutOfStock(item_id, stock, quantity) with the stock you read: (1, 10, 11)."
            )
    except DBAPIError as exc:
        return wrong("14.2", f"an order of 11 from 10 raised {type(exc).__name__}; raise OutOfStock.")
    except Exception as exc:
        return wrong("14.2", f"an order of 11 from 10 raised {type(exc).__name__}: raise OutOfStock instead.")
    else:
        stock = await _stock(Session, item_class)
        return wrong(
            "14.2",
            f"an order of 11 from a stock of 10 returned {returned!r} and left {stock}: check the stock "
            "and raise OutOfStock before taking anything.",
        )
    if await _stock(Session, item_class) != 10:
        return wrong("14.2", "a refused order changed the stock: raise OutOfStock before writing.")
    if len(watch.levels) != 1:
        return wrong(
            "14.2",
            f"OutOfStock ran {len(watch.levels)} transactions: it is not retryable (another attempt reads "
            "the same stock), so let it leave at once.",
        )

    # 4. Orders at the same time, on this backend: every one applied.
    await _set_stock(Session, item_class, 10)
    results = await asyncio.gather(
        *(_order(place_order, watch.factory, 1) for _ in range(4)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        return wrong("14.2", f"four orders at once: one raised {type(errors[0]).__name__}: {errors[0]}")
    stock = await _stock(Session, item_class)
    if stock != 6:
        return wrong("14.2", f"four orders of 1 at once left {stock} of 10 in stock, not 6.")
    return correct("14.2", "SERIALIZABLE from the first statement, retried as a whole, OutOfStock at once.")
