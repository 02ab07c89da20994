"""Unit tests for the self-checks of the performance lesson (notebook 17).

One private database for the module (SQLite by default, PostgreSQL with DATABASE_URL) holds the
items table the notebook defines, with the notebook's async and synchronous session factories.
Every wrong answer below is a mistake the lesson warns about; each must get its own hint.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import String, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from helpers import open_database
from helpers import performance as perf
from helpers.exercises import Status
from helpers.exercises.nb17 import check_bulk_load, check_export, check_unblocked

Factory = async_sessionmaker[AsyncSession]
SyncFactory = sessionmaker[Session]


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "items"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    note: Mapped[str] = mapped_column(String(100))


pytestmark = pytest.mark.asyncio(loop_scope="module")
WAIT = 0.1  # as legacy_count in the notebook


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def factories() -> AsyncIterator[tuple[Factory, SyncFactory, Callable[[Session], int]]]:
    db = await open_database("test_nb17")
    sync_engine = perf.create_sync_engine(db)
    try:
        perf.add_sleep_function(db.engine)
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

        def legacy_count(session: Session) -> int:  # as in the notebook
            session.execute(perf.server_wait(db, WAIT))
            return session.scalar(select(func.count()).select_from(Item)) or 0

        yield async_sessionmaker(db.engine, expire_on_commit=False), sessionmaker(sync_engine), legacy_count
    finally:
        sync_engine.dispose()
        await db.close()


# 17.1 ------------------------------------------------------------------------------------------


async def check_17_1(factories: Any, make: Callable[[Callable[[Session], int]], Any]) -> Any:
    _, SyncSession, legacy_count = factories
    return await check_unblocked(make(legacy_count), SyncSession, Item)


def in_a_thread(legacy_count: Callable[[Session], int]) -> Any:
    async def count_items(SyncSession: SyncFactory) -> int:
        def count() -> int:
            with SyncSession() as session:
                return legacy_count(session)

        return await asyncio.to_thread(count)

    return count_items


def run_in_executor(legacy_count: Callable[[Session], int]) -> Any:
    async def count_items(SyncSession: SyncFactory) -> int:
        with SyncSession() as session:  # opened here; every statement runs in the worker thread
            return await asyncio.get_running_loop().run_in_executor(None, legacy_count, session)

    return count_items


@pytest.mark.parametrize("make", [in_a_thread, run_in_executor])
async def test_unblocked_correct(factories: Any, make: Any) -> None:
    verdict = await check_17_1(factories, make)
    assert verdict.status is Status.CORRECT, verdict


async def test_unblocked_not_attempted(factories: Any) -> None:
    def placeholder(legacy_count: Any) -> Any:
        async def count_items(SyncSession: SyncFactory) -> int:
            raise NotImplementedError

        return count_items

    assert (await check_17_1(factories, placeholder)).status is Status.NOT_ATTEMPTED


def called_directly(legacy_count: Callable[[Session], int]) -> Any:
    async def count_items(SyncSession: SyncFactory) -> int:
        with SyncSession() as session:
            return legacy_count(session)

    return count_items


def result_handed_to_the_thread(legacy_count: Callable[[Session], int]) -> Any:
    async def count_items(SyncSession: SyncFactory) -> int:
        with SyncSession() as session:
            return await asyncio.to_thread(legacy_count(session))  # type: ignore[arg-type]

    return count_items


def plain_def(legacy_count: Callable[[Session], int]) -> Any:
    def count_items(SyncSession: SyncFactory) -> int:
        with SyncSession() as session:
            return legacy_count(session)

    return count_items


def not_awaited(legacy_count: Callable[[Session], int]) -> Any:
    async def count_items(SyncSession: SyncFactory) -> Any:
        def count() -> int:
            with SyncSession() as session:
                return legacy_count(session)

        return asyncio.to_thread(count)

    return count_items


def wrapped_in_a_task(legacy_count: Callable[[Session], int]) -> Any:
    async def count_items(SyncSession: SyncFactory) -> int:
        async def count() -> int:
            with SyncSession() as session:
                return legacy_count(session)

        return await asyncio.create_task(count())  # a task still runs on the loop's thread

    return count_items


def ignores_the_factory(legacy_count: Callable[[Session], int]) -> Any:
    async def count_items(SyncSession: SyncFactory) -> int:
        await asyncio.sleep(0)
        return 7

    return count_items


def sleeps_on_the_loop(legacy_count: Callable[[Session], int]) -> Any:
    async def count_items(SyncSession: SyncFactory) -> int:
        def count() -> int:
            with SyncSession() as session:
                return legacy_count(session)

        result = await asyncio.to_thread(count)
        time.sleep(0.1)  # noqa: ASYNC251  (the mistake under test: "give the database a moment")
        return result

    return count_items


def off_by_one(legacy_count: Callable[[Session], int]) -> Any:
    async def count_items(SyncSession: SyncFactory) -> int:
        def count() -> int:
            with SyncSession() as session:
                return legacy_count(session) - 1

        return await asyncio.to_thread(count)

    return count_items


@pytest.mark.parametrize(
    ("make", "hint"),
    [
        (called_directly, "ran in the event loop's own thread"),
        (wrapped_in_a_task, "ran in the event loop's own thread"),
        (result_handed_to_the_thread, "calls legacy_count first"),
        (plain_def, "must be declared `async def`"),
        (not_awaited, "returned an awaitable"),
        (ignores_the_factory, "no statement ran through the SyncSession factory"),
        (sleeps_on_the_loop, "does your function sleep or wait synchronously"),
        (off_by_one, "but count_items returned"),
    ],
)
async def test_unblocked_wrong(factories: Any, make: Any, hint: str) -> None:
    verdict = await check_17_1(factories, make)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict


# 17.2 ------------------------------------------------------------------------------------------

Rows = list[dict[str, Any]]


async def check_17_2(factories: Any, load_items: Any) -> Any:
    Session, _, _ = factories
    return await check_bulk_load(load_items, Session, Item)


async def orm_bulk_insert(Session: Factory, rows: Rows) -> None:
    async with Session.begin() as session:
        await session.execute(insert(Item), rows)


async def core_insert_through_the_session(Session: Factory, rows: Rows) -> None:
    async with Session() as session:
        await session.execute(insert(Base.metadata.tables["items"]), rows)  # Core: a Table, not the class
        await session.commit()


async def one_multi_row_values(Session: Factory, rows: Rows) -> None:
    async with Session.begin() as session:
        await session.execute(insert(Item).values(rows))


@pytest.mark.parametrize("answer", [orm_bulk_insert, core_insert_through_the_session, one_multi_row_values])
async def test_bulk_load_correct(factories: Any, answer: Any) -> None:
    verdict = await check_17_2(factories, answer)
    assert verdict.status is Status.CORRECT, verdict


async def test_bulk_load_not_attempted(factories: Any) -> None:
    async def placeholder(Session: Factory, rows: Rows) -> None:
        raise NotImplementedError

    assert (await check_17_2(factories, placeholder)).status is Status.NOT_ATTEMPTED


async def add_and_flush_each(Session: Factory, rows: Rows) -> None:
    async with Session.begin() as session:
        for row in rows:
            session.add(Item(**row))
            await session.flush()


async def add_all(Session: Factory, rows: Rows) -> None:
    async with Session.begin() as session:
        session.add_all([Item(**row) for row in rows])


async def execute_per_row(Session: Factory, rows: Rows) -> None:
    async with Session.begin() as session:
        for row in rows:
            await session.execute(insert(Item).values(**row))


async def in_chunks(Session: Factory, rows: Rows) -> None:
    async with Session.begin() as session:
        for start in range(0, len(rows), 500):
            await session.execute(insert(Item), rows[start : start + 500])


async def commit_per_chunk(Session: Factory, rows: Rows) -> None:
    async with Session() as session:
        for start in range(0, len(rows), 500):
            await session.execute(insert(Item), rows[start : start + 500])
            await session.commit()


async def never_commits(Session: Factory, rows: Rows) -> None:
    async with Session() as session:
        await session.execute(insert(Item), rows)


async def loses_a_row(Session: Factory, rows: Rows) -> None:
    async with Session.begin() as session:
        await session.execute(insert(Item), rows[1:])


async def fetches_objects_back(Session: Factory, rows: Rows) -> None:
    async with Session.begin() as session:
        (await session.scalars(insert(Item).returning(Item), rows)).all()


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (add_and_flush_each, "built 1000 ORM objects and flushed them"),
        (add_all, "built 1000 ORM objects and flushed them"),
        (fetches_objects_back, "leave out .returning()"),
        (execute_per_row, "sent 1000 INSERT statements"),
        (in_chunks, "sent 2 INSERT statements"),
        (commit_per_chunk, "committed 2 transactions"),
        (never_commits, "nothing was committed"),
        (loses_a_row, "the table holds 999"),
    ],
)
async def test_bulk_load_wrong(factories: Any, answer: Any, hint: str) -> None:
    verdict = await check_17_2(factories, answer)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict


# 17.3 ------------------------------------------------------------------------------------------

Write = Callable[[Item], None]


async def check_17_3(factories: Any, export_items: Any) -> Any:
    Session, _, _ = factories
    return await check_export(export_items, Session, Item)


async def streamed(Session: Factory, write: Write) -> None:
    async with Session() as session:
        items = await session.stream_scalars(select(Item).order_by(Item.id).execution_options(yield_per=250))
        async for item in items:
            write(item)


async def keyset_pages(Session: Factory, write: Write) -> None:
    last = 0
    while True:
        async with Session() as session:
            page = (
                await session.scalars(select(Item).where(Item.id > last).order_by(Item.id).limit(300))
            ).all()
        if not page:
            return
        for item in page:
            write(item)
        last = page[-1].id
        del page


@pytest.mark.parametrize("answer", [streamed, keyset_pages])
async def test_export_correct(factories: Any, answer: Any) -> None:
    verdict = await check_17_3(factories, answer)
    assert verdict.status is Status.CORRECT, verdict


async def test_export_not_attempted(factories: Any) -> None:
    async def placeholder(Session: Factory, write: Write) -> None:
        raise NotImplementedError

    assert (await check_17_3(factories, placeholder)).status is Status.NOT_ATTEMPTED


async def all_at_once(Session: Factory, write: Write) -> None:
    async with Session() as session:
        for item in (await session.scalars(select(Item).order_by(Item.id))).all():
            write(item)


async def yield_per_without_stream(Session: Factory, write: Write) -> None:
    async with Session() as session:
        for item in await session.scalars(select(Item).order_by(Item.id).execution_options(yield_per=250)):
            write(item)


async def stream_without_yield_per(Session: Factory, write: Write) -> None:
    async with Session() as session:
        async for item in await session.stream_scalars(select(Item).order_by(Item.id)):
            write(item)


async def one_huge_batch(Session: Factory, write: Write) -> None:
    async with Session() as session:
        stream = await session.stream_scalars(
            select(Item).order_by(Item.id).execution_options(yield_per=4000)
        )
        async for item in stream:
            write(item)


async def collects_first(Session: Factory, write: Write) -> None:
    async with Session() as session:
        stream = await session.stream_scalars(select(Item).order_by(Item.id).execution_options(yield_per=250))
        items = [item async for item in stream]
    for item in items:
        write(item)


async def unordered(Session: Factory, write: Write) -> None:
    async with Session() as session:
        async for item in await session.stream_scalars(select(Item).execution_options(yield_per=250)):
            write(item)


async def newest_first(Session: Factory, write: Write) -> None:
    async with Session() as session:
        stream = await session.stream_scalars(
            select(Item).order_by(Item.id.desc()).execution_options(yield_per=250)
        )
        async for item in stream:
            write(item)


async def columns_instead(Session: Factory, write: Write) -> None:
    async with Session() as session:
        async for row in await session.stream(select(Item.id, Item.name).order_by(Item.id)):
            write(row)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (all_at_once, "every item was read at once"),
        (yield_per_without_stream, "AsyncMethodRequired"),
        (stream_without_yield_per, "stream_scalars() without yield_per"),
        (one_huge_batch, "yield_per=4000 builds that many objects"),
        (collects_first, "does your code keep the items"),
        (unordered, "has no ORDER BY"),
        (newest_first, "out of id order"),
        (columns_instead, "write() received a Row"),
    ],
)
async def test_export_wrong(factories: Any, answer: Any, hint: str) -> None:
    verdict = await check_17_3(factories, answer)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict
