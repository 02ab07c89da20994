"""Unit tests for the self-checks of the PostgreSQL-in-production lesson (notebook 14).

One private database for the module (SQLite by default, PostgreSQL with DATABASE_URL) holds the
items table the notebook defines. Every wrong answer below is a mistake the lesson warns about;
each must get its own hint.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
import pytest_asyncio
from sqlalchemy import String, update
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from helpers import NotebookDatabase, open_database
from helpers.exercises import Status
from helpers.exercises.nb14 import check_place_order, check_statement_timeout, milliseconds_of

Factory = async_sessionmaker[AsyncSession]
T = TypeVar("T")


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    stock: Mapped[int]


class OutOfStock(Exception):
    def __init__(self, item_id: int, stock: int, quantity: int) -> None:
        super().__init__(f"item {item_id} has {stock} in stock, {quantity} ordered")
        self.item_id, self.stock, self.quantity = item_id, stock, quantity


def retryable(exc: BaseException) -> bool:  # as in the notebook
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    return (
        getattr(orig, "sqlstate", None) in {"40001", "40P01"}
        or getattr(orig, "sqlite_errorname", None) == "SQLITE_BUSY"
    )


async def run_in_transaction(
    Session: Factory, work: Callable[[AsyncSession], Awaitable[T]], *, attempts: int = 5
) -> T:  # as in the notebook
    for attempt in range(1, attempts + 1):
        try:
            async with Session.begin() as session:
                return await work(session)
        except DBAPIError as exc:
            if attempt == attempts or not retryable(exc):
                raise
        await asyncio.sleep(random.uniform(0, min(0.5, 0.01 * 2 ** (attempt - 1))))
    raise ValueError("attempts must be at least 1")


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def db() -> AsyncIterator[NotebookDatabase]:
    db = await open_database("test_nb14")
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        yield db
    finally:
        await db.close()


@pytest.fixture
def Session(db: NotebookDatabase) -> Factory:
    return async_sessionmaker(db.engine, expire_on_commit=False)


# 14.1 ------------------------------------------------------------------------------------------


def good_engine(url: URL, milliseconds: int) -> AsyncEngine:
    if url.get_driver_name() == "asyncpg":
        return create_async_engine(
            url, connect_args={"server_settings": {"statement_timeout": str(milliseconds)}}
        )
    return create_async_engine(url, connect_args={"options": f"-c statement_timeout={milliseconds}"})


def with_unit(url: URL, milliseconds: int) -> AsyncEngine:
    value = f"{milliseconds / 1000}s"
    if url.get_driver_name() == "asyncpg":
        return create_async_engine(url, connect_args={"server_settings": {"statement_timeout": value}})
    return create_async_engine(url, connect_args={"options": f"-c statement_timeout={value}"})


def command_timeout(url: URL, milliseconds: int) -> AsyncEngine:
    if url.get_driver_name() == "asyncpg":
        return create_async_engine(url, connect_args={"command_timeout": milliseconds / 1000})
    return create_async_engine(url, connect_args={"options": f"-c statement_timeout={milliseconds}"})


def asyncpg_only(url: URL, milliseconds: int) -> AsyncEngine:
    return create_async_engine(
        url, connect_args={"server_settings": {"statement_timeout": str(milliseconds)}}
    )


def options_only(url: URL, milliseconds: int) -> AsyncEngine:
    return create_async_engine(url, connect_args={"options": f"-c statement_timeout={milliseconds}"})


def seconds_not_milliseconds(url: URL, milliseconds: int) -> AsyncEngine:
    value = str(milliseconds / 1000)
    if url.get_driver_name() == "asyncpg":
        return create_async_engine(url, connect_args={"server_settings": {"statement_timeout": value}})
    return create_async_engine(url, connect_args={"options": f"-c statement_timeout={value}"})


def integer_value(url: URL, milliseconds: int) -> AsyncEngine:
    if url.get_driver_name() == "asyncpg":
        return create_async_engine(url, connect_args={"server_settings": {"statement_timeout": milliseconds}})
    return create_async_engine(url, connect_args={"options": f"-c statement_timeout={milliseconds}"})


def pool_timeout(url: URL, milliseconds: int) -> AsyncEngine:
    return create_async_engine(url, pool_timeout=milliseconds / 1000)


def wrong_setting_in_options(url: URL, milliseconds: int) -> AsyncEngine:
    if url.get_driver_name() == "asyncpg":
        return create_async_engine(
            url, connect_args={"server_settings": {"statement_timeout": str(milliseconds)}}
        )
    return create_async_engine(url, connect_args={"options": f"-c lock_timeout={milliseconds}"})


def returns_url(url: URL, milliseconds: int) -> Any:
    return url


async def test_statement_timeout_correct(db: NotebookDatabase) -> None:
    verdict = await check_statement_timeout(good_engine, db)
    assert verdict.status is Status.CORRECT, verdict


async def test_statement_timeout_correct_with_a_unit(db: NotebookDatabase) -> None:
    verdict = await check_statement_timeout(with_unit, db)
    assert verdict.status is Status.CORRECT, verdict


async def test_statement_timeout_not_attempted(db: NotebookDatabase) -> None:
    def placeholder(url: URL, milliseconds: int) -> AsyncEngine:
        raise NotImplementedError

    assert (await check_statement_timeout(placeholder, db)).status is Status.NOT_ATTEMPTED


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (command_timeout, "command_timeout is asyncpg's own client-side limit"),
        (asyncpg_only, "with psycopg your engine passes server_settings"),
        (options_only, "with asyncpg your engine passes options"),
        (seconds_not_milliseconds, "which means 1.5 ms"),
        (integer_value, "server_settings values are strings"),
        (pool_timeout, "no statement_timeout"),
        (wrong_setting_in_options, "sets no statement_timeout"),
        (returns_url, "return the engine"),
    ],
)
async def test_statement_timeout_wrong(db: NotebookDatabase, answer, hint: str) -> None:
    verdict = await check_statement_timeout(answer, db)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message or (db.is_postgresql and "on this server" in verdict.message), verdict


async def test_milliseconds_of() -> None:
    assert milliseconds_of("1500") == milliseconds_of("1.5s") == milliseconds_of("1500ms") == 1500
    assert milliseconds_of("2min") == 120_000
    assert milliseconds_of("soon") is None and milliseconds_of("5 weeks") is None


# 14.2 ------------------------------------------------------------------------------------------


async def good_order(Session: Factory, item_id: int, quantity: int) -> int:
    async def work(session: AsyncSession) -> int:
        await session.connection(execution_options={"isolation_level": "SERIALIZABLE"})
        item = await session.get(Item, item_id)
        if item.stock < quantity:
            raise OutOfStock(item_id, item.stock, quantity)
        item.stock -= quantity
        return item.stock

    return await run_in_transaction(Session, work)


async def check_14_2(Session: Factory, answer) -> Any:
    return await check_place_order(answer, Session, Item, OutOfStock)


async def test_place_order_correct(Session: Factory) -> None:
    verdict = await check_14_2(Session, good_order)
    assert verdict.status is Status.CORRECT, verdict


async def test_place_order_correct_with_a_core_update(Session: Factory) -> None:
    async def place_order(Session: Factory, item_id: int, quantity: int) -> int:
        async def work(session: AsyncSession) -> int:
            await session.connection(execution_options={"isolation_level": "SERIALIZABLE"})
            stock = (await session.get(Item, item_id)).stock
            if stock < quantity:
                raise OutOfStock(item_id, stock, quantity)
            await session.execute(update(Item).where(Item.id == item_id).values(stock=stock - quantity))
            return stock - quantity

        return await run_in_transaction(Session, work)

    verdict = await check_14_2(Session, place_order)
    assert verdict.status is Status.CORRECT, verdict


async def test_place_order_not_attempted(Session: Factory) -> None:
    async def placeholder(Session: Factory, item_id: int, quantity: int) -> int:
        raise NotImplementedError

    assert (await check_14_2(Session, placeholder)).status is Status.NOT_ATTEMPTED


async def default_level(Session: Factory, item_id: int, quantity: int) -> int:
    async def work(session: AsyncSession) -> int:
        item = await session.get(Item, item_id)
        if item.stock < quantity:
            raise OutOfStock(item_id, item.stock, quantity)
        item.stock -= quantity
        return item.stock

    return await run_in_transaction(Session, work)


async def level_too_late(Session: Factory, item_id: int, quantity: int) -> int:
    async def work(session: AsyncSession) -> int:
        item = await session.get(Item, item_id)  # the transaction begins here
        await session.connection(execution_options={"isolation_level": "SERIALIZABLE"})
        if item.stock < quantity:
            raise OutOfStock(item_id, item.stock, quantity)
        item.stock -= quantity
        return item.stock

    return await run_in_transaction(Session, work)


async def repeatable_read(Session: Factory, item_id: int, quantity: int) -> int:
    async def work(session: AsyncSession) -> int:
        await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
        item = await session.get(Item, item_id)
        if item.stock < quantity:
            raise OutOfStock(item_id, item.stock, quantity)
        item.stock -= quantity
        return item.stock

    return await run_in_transaction(Session, work)


async def no_retry(Session: Factory, item_id: int, quantity: int) -> int:
    async with Session.begin() as session:
        await session.connection(execution_options={"isolation_level": "SERIALIZABLE"})
        item = await session.get(Item, item_id)
        if item.stock < quantity:
            raise OutOfStock(item_id, item.stock, quantity)
        item.stock -= quantity
        return item.stock


async def swallows_the_failure(Session: Factory, item_id: int, quantity: int) -> int:
    try:
        return await no_retry(Session, item_id, quantity)
    except DBAPIError:  # logged and forgotten: the order is lost
        async with Session() as session:
            return (await session.get(Item, item_id)).stock


async def retries_out_of_stock(Session: Factory, item_id: int, quantity: int) -> int:
    for attempt in range(3):
        try:
            return await good_order(Session, item_id, quantity)
        except OutOfStock:
            if attempt == 2:
                raise
    raise AssertionError


async def returns_instead_of_raising(Session: Factory, item_id: int, quantity: int) -> int:
    try:
        return await good_order(Session, item_id, quantity)
    except OutOfStock as exc:
        return exc.stock


async def oversells(Session: Factory, item_id: int, quantity: int) -> int:
    async def work(session: AsyncSession) -> int:
        await session.connection(execution_options={"isolation_level": "SERIALIZABLE"})
        item = await session.get(Item, item_id)
        item.stock -= quantity
        return item.stock

    return await run_in_transaction(Session, work)


async def value_error(Session: Factory, item_id: int, quantity: int) -> int:
    try:
        return await good_order(Session, item_id, quantity)
    except OutOfStock as exc:
        raise ValueError(str(exc)) from None


async def read_then_write_apart(Session: Factory, item_id: int, quantity: int) -> int:
    async def read(session: AsyncSession) -> int:
        await session.connection(execution_options={"isolation_level": "SERIALIZABLE"})
        return (await session.get(Item, item_id)).stock

    async def write(session: AsyncSession) -> int:
        await session.connection(execution_options={"isolation_level": "SERIALIZABLE"})
        (await session.get(Item, item_id)).stock = stock - quantity
        return stock - quantity

    stock = await run_in_transaction(Session, read)
    if stock < quantity:
        raise OutOfStock(item_id, stock, quantity)
    return await run_in_transaction(Session, write)


async def own_factory(Session: Factory, item_id: int, quantity: int) -> int:
    Serializable = async_sessionmaker(Session.kw["bind"].execution_options(isolation_level="SERIALIZABLE"))
    return await good_order(Serializable, item_id, quantity)


async def returns_nothing(Session: Factory, item_id: int, quantity: int) -> None:
    await good_order(Session, item_id, quantity)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (default_level, "ran at the factory's default level"),
        (level_too_late, "SQLAlchemy only warns and ignores it"),
        (repeatable_read, "REPEATABLE READ"),  # on SQLite: not a level it knows
        (no_retry, "reached the caller"),
        (swallows_the_failure, "without running again"),
        (retries_out_of_stock, "it is not retryable"),
        (returns_instead_of_raising, "raise OutOfStock before taking anything"),
        (oversells, "raise OutOfStock before taking anything"),
        (value_error, "raised ValueError: raise OutOfStock instead"),
        (read_then_write_apart, "read, check and write in one transaction"),
        (own_factory, "only through the factory passed"),
        (returns_nothing, "return the stock left"),
    ],
)
@pytest.mark.filterwarnings("ignore:Connection is already established:sqlalchemy.exc.SAWarning")
async def test_place_order_wrong(Session: Factory, answer, hint: str) -> None:
    verdict = await check_14_2(Session, answer)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict
