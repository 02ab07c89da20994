"""Unit tests for the self-checks of notebook 15 (beyond CRUD: events and async ORM features).

One private database for the module (SQLite by default, PostgreSQL with DATABASE_URL) holds the
sensors and readings tables the notebook defines. Each wrong answer below is a mistake the lesson
warns about, or a plausible shortcut; each must get its own hint.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import ForeignKey, String, event, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.ext.asyncio import create_async_engine as make_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, WriteOnlyMapped, mapped_column, relationship

from helpers import open_database
from helpers.database import NotebookDatabase, sqlite_transactions
from helpers.exercises import Status, Verdict
from helpers.exercises.nb15 import check_app_engine, check_reading_batches, check_save_sensors

Factory = async_sessionmaker[AsyncSession]


class Base(DeclarativeBase):
    pass


class Sensor(Base):
    __tablename__ = "sensors"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(20), unique=True)
    name: Mapped[str] = mapped_column(String(50))
    readings: WriteOnlyMapped[Reading] = relationship(back_populates="sensor")


class Reading(Base):
    __tablename__ = "readings"

    id: Mapped[int] = mapped_column(primary_key=True)
    sensor_id: Mapped[int] = mapped_column(ForeignKey("sensors.id", ondelete="CASCADE"))
    value: Mapped[float]
    sensor: Mapped[Sensor] = relationship(back_populates="readings")


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def db() -> AsyncIterator[NotebookDatabase]:
    db = await open_database("test_nb15")
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with async_sessionmaker(db.engine).begin() as session:
            for n, code in enumerate(["T-1", "T-2", "T-3"]):
                session.add(Sensor(code=code, name=f"sensor {n}", readings=[Reading(value=20 + n)]))
        yield db
    finally:
        await db.close()


@pytest.fixture
def Session(db: NotebookDatabase) -> Factory:
    return async_sessionmaker(db.engine, expire_on_commit=False)


def hint(verdict: Verdict) -> str:
    assert verdict.status is Status.WRONG, verdict
    return verdict.message


# 15.1 ------------------------------------------------------------------------------------------


def pragma_on(dbapi_connection: Any, connection_record: Any = None, *more: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def good_app_engine(url: URL) -> AsyncEngine:
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":
        sqlite_transactions(engine)
        event.listen(engine.sync_engine, "connect", pragma_on)
    return engine


async def test_app_engine_correct(db: NotebookDatabase) -> None:
    verdict = await check_app_engine(good_app_engine, db.url)
    assert verdict.status is Status.CORRECT, verdict


async def test_app_engine_correct_with_the_pragma_on_every_checkout(db: NotebookDatabase) -> None:
    def app_engine(url: URL) -> AsyncEngine:
        engine = make_engine(url)
        if engine.dialect.name == "sqlite":
            sqlite_transactions(engine)
            event.listen(engine.sync_engine, "checkout", pragma_on)
        return engine

    assert (await check_app_engine(app_engine, db.url)).status is Status.CORRECT


async def test_app_engine_not_attempted(db: NotebookDatabase) -> None:
    def app_engine(url: URL) -> AsyncEngine:
        raise NotImplementedError  # your code here

    assert (await check_app_engine(app_engine, db.url)).status is Status.NOT_ATTEMPTED


async def test_app_engine_listener_on_the_async_engine(db: NotebookDatabase) -> None:
    def app_engine(url: URL) -> AsyncEngine:
        engine = make_engine(url)
        event.listen(engine, "connect", pragma_on)  # the lesson's first pitfall
        return engine

    assert "engine.sync_engine" in hint(await check_app_engine(app_engine, db.url))


async def test_app_engine_pragma_inside_the_transaction(db: NotebookDatabase) -> None:
    def app_engine(url: URL) -> AsyncEngine:
        engine = make_engine(url)
        if engine.dialect.name == "sqlite":
            sqlite_transactions(engine)  # BEGIN first, then the PRAGMA: SQLite ignores it

            @event.listens_for(engine.sync_engine, "begin")
            def foreign_keys_on(conn: Any) -> None:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")

        return engine

    assert "inside a transaction" in hint(await check_app_engine(app_engine, db.url))


async def test_app_engine_first_connect_only(db: NotebookDatabase) -> None:
    def app_engine(url: URL) -> AsyncEngine:
        engine = make_engine(url)
        if engine.dialect.name == "sqlite":
            sqlite_transactions(engine)
            event.listen(engine.sync_engine, "first_connect", pragma_on)
        return engine

    assert "'first_connect' runs once" in hint(await check_app_engine(app_engine, db.url))


async def test_app_engine_engine_connect(db: NotebookDatabase) -> None:
    def app_engine(url: URL) -> AsyncEngine:
        engine = make_engine(url)
        if engine.dialect.name == "sqlite":
            sqlite_transactions(engine)

            @event.listens_for(engine.sync_engine, "engine_connect")
            def foreign_keys_on(conn: Any) -> None:
                conn.exec_driver_sql("PRAGMA foreign_keys=ON")

        return engine

    assert "'engine_connect'" in hint(await check_app_engine(app_engine, db.url))


async def test_app_engine_without_foreign_keys(db: NotebookDatabase) -> None:
    def app_engine(url: URL) -> AsyncEngine:
        engine = make_engine(url)
        return sqlite_transactions(engine) if engine.dialect.name == "sqlite" else engine

    assert "foreign keys off" in hint(await check_app_engine(app_engine, db.url))


async def test_app_engine_without_the_recipe(db: NotebookDatabase) -> None:
    def app_engine(url: URL) -> AsyncEngine:
        engine = make_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", pragma_on)
        return engine

    assert "no BEGIN is sent" in hint(await check_app_engine(app_engine, db.url))


async def test_app_engine_recipe_twice(db: NotebookDatabase) -> None:
    def app_engine(url: URL) -> AsyncEngine:
        engine = make_engine(url)
        if engine.dialect.name == "sqlite":
            sqlite_transactions(sqlite_transactions(engine))
            event.listen(engine.sync_engine, "connect", pragma_on)
        return engine

    assert "applied twice" in hint(await check_app_engine(app_engine, db.url))


async def test_app_engine_pragma_on_postgresql_too(db: NotebookDatabase) -> None:
    def app_engine(url: URL) -> AsyncEngine:
        engine = make_engine(url)
        if engine.dialect.name == "sqlite":
            sqlite_transactions(engine)
        event.listen(engine.sync_engine, "connect", pragma_on)  # whatever the database
        return engine

    assert "PRAGMA, which PostgreSQL rejects" in hint(await check_app_engine(app_engine, db.url))


async def test_app_engine_recipe_on_postgresql_too(db: NotebookDatabase) -> None:
    def app_engine(url: URL) -> AsyncEngine:
        engine = sqlite_transactions(make_engine(url))  # whatever the database
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", pragma_on)
        return engine

    assert "send BEGIN itself" in hint(await check_app_engine(app_engine, db.url))


async def test_app_engine_async_def(db: NotebookDatabase) -> None:
    async def app_engine(url: URL) -> AsyncEngine:
        return good_app_engine(url)

    assert "plain def" in hint(await check_app_engine(app_engine, db.url))


async def test_app_engine_returns_nothing(db: NotebookDatabase) -> None:
    def app_engine(url: URL) -> None:
        good_app_engine(url)

    assert "return the AsyncEngine" in hint(await check_app_engine(app_engine, db.url))


# 15.2 ------------------------------------------------------------------------------------------


def dialect_insert(session: AsyncSession) -> Any:
    assert session.bind is not None
    return {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[session.bind.dialect.name]


async def good_save(session: AsyncSession, rows: list[dict[str, str]]) -> list[Sensor]:
    stmt = dialect_insert(session)(Sensor).values(rows)
    stmt = stmt.on_conflict_do_update(index_elements=[Sensor.code], set_={"name": stmt.excluded.name})
    saved = await session.scalars(stmt.returning(Sensor), execution_options={"populate_existing": True})
    return list(saved)


async def check_15_2(Session: Factory, save: Any) -> Verdict:
    return await check_save_sensors(save, Session, Sensor)


async def test_save_sensors_correct(Session: Factory) -> None:
    assert (await check_15_2(Session, good_save)).status is Status.CORRECT


async def test_save_sensors_correct_with_the_rows_as_parameters(Session: Factory) -> None:
    async def save(session: AsyncSession, rows: list[dict[str, str]]) -> list[Sensor]:
        stmt = dialect_insert(session)(Sensor)
        stmt = stmt.on_conflict_do_update(index_elements=["code"], set_={"name": stmt.excluded.name})
        saved = await session.scalars(
            stmt.returning(Sensor), rows, execution_options={"populate_existing": True}
        )
        return list(saved)

    assert (await check_15_2(Session, save)).status is Status.CORRECT


async def test_save_sensors_leaves_the_table_as_it_was(Session: Factory) -> None:
    await check_15_2(Session, good_save)
    async with Session() as session:
        codes = (await session.scalars(select(Sensor.code).order_by(Sensor.code))).all()
    assert codes == ["T-1", "T-2", "T-3"]


async def test_save_sensors_not_attempted(Session: Factory) -> None:
    async def save(session: AsyncSession, rows: list[dict[str, str]]) -> list[Sensor]:
        raise NotImplementedError  # your code here

    assert (await check_15_2(Session, save)).status is Status.NOT_ATTEMPTED


async def test_save_sensors_generic_insert(Session: Factory) -> None:
    async def save(session: AsyncSession, rows: list[dict[str, str]]) -> list[Sensor]:
        stmt = insert(Sensor).values(rows)
        stmt = stmt.on_conflict_do_update(index_elements=[Sensor.code], set_={"name": "x"})  # type: ignore[attr-defined]
        return list(await session.scalars(stmt.returning(Sensor)))

    assert "dialect-specific" in hint(await check_15_2(Session, save))


async def test_save_sensors_plain_insert(Session: Factory) -> None:
    async def save(session: AsyncSession, rows: list[dict[str, str]]) -> list[Sensor]:
        return list(await session.scalars(insert(Sensor).returning(Sensor), rows))

    assert "unique code" in hint(await check_15_2(Session, save))


async def test_save_sensors_look_up_then_write(Session: Factory) -> None:
    async def save(session: AsyncSession, rows: list[dict[str, str]]) -> list[Sensor]:
        saved = []
        for row in rows:
            sensor = await session.scalar(select(Sensor).where(Sensor.code == row["code"]))
            if sensor is None:
                sensor = Sensor(**row)
                session.add(sensor)
            sensor.name = row["name"]
            saved.append(sensor)
        await session.flush()
        return saved

    assert "Let the database decide" in hint(await check_15_2(Session, save))


async def test_save_sensors_one_upsert_per_row(Session: Factory) -> None:
    async def save(session: AsyncSession, rows: list[dict[str, str]]) -> list[Sensor]:
        return [saved for row in rows for saved in await good_save(session, [row])]

    assert "3 INSERT statements" in hint(await check_15_2(Session, save))


async def test_save_sensors_do_nothing(Session: Factory) -> None:
    async def save(session: AsyncSession, rows: list[dict[str, str]]) -> list[Sensor]:
        stmt = dialect_insert(session)(Sensor).values(rows).on_conflict_do_nothing()
        return list(await session.scalars(stmt.returning(Sensor)))

    assert "DO NOTHING keeps the old names" in hint(await check_15_2(Session, save))


async def test_save_sensors_one_fixed_name(Session: Factory) -> None:
    async def save(session: AsyncSession, rows: list[dict[str, str]]) -> list[Sensor]:
        stmt = dialect_insert(session)(Sensor).values(rows)
        stmt = stmt.on_conflict_do_update(index_elements=[Sensor.code], set_={"name": rows[0]["name"]})
        saved = await session.scalars(stmt.returning(Sensor), execution_options={"populate_existing": True})
        return list(saved)

    assert "stmt.excluded.name" in hint(await check_15_2(Session, save))


async def test_save_sensors_without_populate_existing(Session: Factory) -> None:
    async def save(session: AsyncSession, rows: list[dict[str, str]]) -> list[Sensor]:
        stmt = dialect_insert(session)(Sensor).values(rows)
        stmt = stmt.on_conflict_do_update(index_elements=[Sensor.code], set_={"name": stmt.excluded.name})
        return list(await session.scalars(stmt.returning(Sensor)))

    assert "populate_existing" in hint(await check_15_2(Session, save))


async def test_save_sensors_returns_rows(Session: Factory) -> None:
    async def save(session: AsyncSession, rows: list[dict[str, str]]) -> list[Any]:
        stmt = dialect_insert(session)(Sensor).values(rows)
        stmt = stmt.on_conflict_do_update(index_elements=[Sensor.code], set_={"name": stmt.excluded.name})
        return list(await session.execute(stmt.returning(Sensor.code, Sensor.name)))

    assert ".returning(Sensor)" in hint(await check_15_2(Session, save))


async def test_save_sensors_insert_or_replace(Session: Factory, db: NotebookDatabase) -> None:
    if not db.is_sqlite:
        pytest.skip("INSERT OR REPLACE is SQLite's")

    async def save(session: AsyncSession, rows: list[dict[str, str]]) -> list[Sensor]:
        stmt = sqlite.insert(Sensor).values(rows).prefix_with("OR REPLACE")
        saved = await session.scalars(stmt.returning(Sensor), execution_options={"populate_existing": True})
        return list(saved)

    assert "INSERT OR REPLACE deletes the old row" in hint(await check_15_2(Session, save))


# 15.3 ------------------------------------------------------------------------------------------

STATEMENT = select(Reading.id, Reading.value).order_by(Reading.id)


async def good_batches(engine: AsyncEngine, size: int) -> AsyncIterator[Any]:
    async with engine.connect() as conn, conn.stream(STATEMENT.execution_options(yield_per=size)) as result:
        async for batch in result.partitions():
            yield batch


async def check_15_3(db: NotebookDatabase, batches: Any) -> Verdict:
    return await check_reading_batches(batches, db.engine, Reading)


async def test_batches_correct(db: NotebookDatabase) -> None:
    assert (await check_15_3(db, good_batches)).status is Status.CORRECT


async def test_batches_leave_the_readings_as_they_were(db: NotebookDatabase) -> None:
    await check_15_3(db, good_batches)
    async with db.engine.connect() as conn:
        assert await conn.scalar(select(func.count()).select_from(Reading)) == 3
        assert await conn.scalar(select(func.count()).select_from(Sensor)) == 3


async def test_batches_not_attempted(db: NotebookDatabase) -> None:
    async def batches(engine: AsyncEngine, size: int) -> AsyncIterator[Any]:
        raise NotImplementedError  # your code here

    assert (await check_15_3(db, batches)).status is Status.NOT_ATTEMPTED


async def test_batches_a_list_instead_of_a_generator(db: NotebookDatabase) -> None:
    async def batches(engine: AsyncEngine, size: int) -> list[Any]:
        async with engine.connect() as conn:
            rows = (await conn.execute(STATEMENT)).all()
        return [rows[i : i + size] for i in range(0, len(rows), size)]

    assert "async generator" in hint(await check_15_3(db, batches))


async def test_batches_execute_with_yield_per(db: NotebookDatabase) -> None:
    async def batches(engine: AsyncEngine, size: int) -> AsyncIterator[Any]:
        async with engine.connect() as conn:
            result = await conn.execute(STATEMENT.execution_options(yield_per=size))
            for batch in result.partitions():
                yield batch

    assert "AsyncMethodRequired" in hint(await check_15_3(db, batches))


async def test_batches_buffered_then_chunked(db: NotebookDatabase) -> None:
    async def batches(engine: AsyncEngine, size: int) -> AsyncIterator[Any]:
        async with engine.connect() as conn:
            rows = (await conn.execute(STATEMENT)).all()
        for i in range(0, len(rows), size):
            yield rows[i : i + size]

    assert "fetched all at once" in hint(await check_15_3(db, batches))


async def test_batches_without_order_by(db: NotebookDatabase) -> None:
    async def batches(engine: AsyncEngine, size: int) -> AsyncIterator[Any]:
        unordered = select(Reading.id, Reading.value).execution_options(yield_per=size)
        async with engine.connect() as conn, conn.stream(unordered) as result:
            async for batch in result.partitions():
                yield batch

    assert "has no ORDER BY" in hint(await check_15_3(db, batches))


async def test_batches_of_orm_objects(db: NotebookDatabase) -> None:
    async def batches(engine: AsyncEngine, size: int) -> AsyncIterator[Any]:
        statement = select(Reading).order_by(Reading.id).execution_options(yield_per=size)
        async with AsyncSession(engine) as session:
            result = await session.stream_scalars(statement)
            async for batch in result.partitions():
                yield batch

    assert "two columns" in hint(await check_15_3(db, batches))


async def test_batches_without_yield_per(db: NotebookDatabase) -> None:
    async def batches(engine: AsyncEngine, size: int) -> AsyncIterator[Any]:
        async with engine.connect() as conn, conn.stream(STATEMENT) as result:
            async for batch in result.partitions(size):
                yield batch

    assert "yield_per=size" in hint(await check_15_3(db, batches))


async def test_batches_of_the_wrong_size(db: NotebookDatabase) -> None:
    async def batches(engine: AsyncEngine, size: int) -> AsyncIterator[Any]:
        async with engine.connect() as conn, conn.stream(STATEMENT) as result:
            async for batch in result.partitions():  # neither yield_per nor a size
                yield batch

    assert "your batches held" in hint(await check_15_3(db, batches))


async def test_batches_connection_never_closed(db: NotebookDatabase) -> None:
    opened: list[AsyncConnection] = []

    async def batches(engine: AsyncEngine, size: int) -> AsyncIterator[Any]:
        conn = await engine.connect()
        opened.append(conn)
        result = await conn.stream(STATEMENT.execution_options(yield_per=size))
        async for batch in result.partitions():
            yield batch

    try:
        assert "after the last batch" in hint(await check_15_3(db, batches))
    finally:
        for conn in opened:
            await conn.close()


async def test_batches_connection_kept_when_closed_early(db: NotebookDatabase) -> None:
    opened: list[AsyncConnection] = []

    async def batches(engine: AsyncEngine, size: int) -> AsyncIterator[Any]:
        conn = await engine.connect()
        opened.append(conn)
        result = await conn.stream(STATEMENT.execution_options(yield_per=size))
        async for batch in result.partitions():
            yield batch
        await conn.close()  # only when every batch was read

    try:
        assert "stopped early" in hint(await check_15_3(db, batches))
    finally:
        for conn in opened:
            await conn.close()
