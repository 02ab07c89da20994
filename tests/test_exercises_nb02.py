"""Unit tests for the self-checks of notebook 02: right, wrong and untouched answers.

Every wrong answer below is one a learner plausibly types, most of them a mistake the lesson
warns about (naive timestamps, float money, create_all on an AsyncEngine); each must get its
own hint.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from sqlalchemy import DateTime, Float, MetaData, Numeric, String, func, text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from helpers.exercises import Status
from helpers.exercises.nb02 import check_create_tables, check_product_model

# 02.1 ------------------------------------------------------------------------------------


def make_product(**overrides):
    """A Product class on a fresh base; ``overrides`` replace column definitions."""

    class ExerciseBase(DeclarativeBase):
        pass

    namespace = {
        "__tablename__": "products",
        "__annotations__": {
            "id": Mapped[uuid.UUID],
            "sku": Mapped[str],
            "price": Mapped[Decimal],
            "created_at": Mapped[datetime],
        },
        "id": mapped_column(primary_key=True, default=uuid.uuid4),
        "sku": mapped_column(String(32), unique=True),
        "price": mapped_column(Numeric(10, 2)),
        "created_at": mapped_column(DateTime(timezone=True), server_default=func.now()),
    }
    for name, value in overrides.items():
        if isinstance(value, tuple):  # (annotation, column)
            namespace["__annotations__"][name] = value[0]
            value = value[1]
        namespace[name] = value
    return type("Product", (ExerciseBase,), namespace)


async def test_product_correct() -> None:
    verdict = await check_product_model(make_product())
    assert verdict.status is Status.CORRECT, verdict


async def test_product_correct_with_aware_lambda_and_server_default() -> None:
    product = make_product(
        created_at=mapped_column(
            DateTime(timezone=True), server_default=func.now(), default=lambda: datetime.now(UTC)
        )
    )
    assert (await check_product_model(product)).ok


async def test_product_not_attempted() -> None:
    assert (await check_product_model(...)).status is Status.NOT_ATTEMPTED


@pytest.mark.parametrize(
    ("overrides", "hint"),
    [
        ({"id": (Mapped[int], mapped_column(primary_key=True))}, "Mapped[uuid.UUID]"),
        ({"id": mapped_column(primary_key=True)}, "default=uuid.uuid4"),
        ({"sku": mapped_column(String(32))}, "unique=True"),
        ({"price": (Mapped[float], mapped_column(Float))}, "Numeric(10, 2)"),
        ({"price": mapped_column(Numeric(8, 3))}, "Numeric(8, 3)"),
        ({"created_at": mapped_column(DateTime, server_default=func.now())}, "timezone=True"),
        ({"created_at": mapped_column(DateTime(timezone=True), default=datetime.utcnow)}, "utcnow"),
        ({"created_at": mapped_column(DateTime(timezone=True), nullable=True)}, "server_default"),
        # a key made once, when the class is defined
        ({"id": mapped_column(primary_key=True, default=uuid.uuid4())}, "calls uuid4 once"),
        # Numeric column, but the annotation still says float
        ({"price": (Mapped[float], mapped_column(Numeric(10, 2)))}, "annotated Mapped[float]"),
        # naive local time from Python
        ({"created_at": mapped_column(DateTime(timezone=True), default=datetime.now)}, "naive local times"),
        # an aware Python default: right kind of value, but not the database's clock
        (
            {"created_at": mapped_column(DateTime(timezone=True), default=lambda: datetime.now(UTC))},
            "your default runs in Python",
        ),
        # PostgreSQL's spelling, which SQLite does not know
        (
            {"created_at": mapped_column(DateTime(timezone=True), server_default=text("now()"))},
            "PostgreSQL's spelling",
        ),
        # a string is a literal value, not a function call
        ({"created_at": mapped_column(DateTime(timezone=True), server_default="now()")}, "literal value"),
        # an index alone does not refuse duplicates
        ({"sku": mapped_column(String(32), index=True)}, "unique=True"),
    ],
)
async def test_product_wrong(overrides, hint: str) -> None:
    verdict = await check_product_model(make_product(**overrides))
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message


async def test_product_not_a_model() -> None:
    class Product:
        pass

    verdict = await check_product_model(Product)
    assert verdict.status is Status.WRONG
    assert "mapped class" in verdict.message


async def test_product_missing_column() -> None:
    class ExerciseBase(DeclarativeBase):
        pass

    class Product(ExerciseBase):
        __tablename__ = "products"
        id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
        sku: Mapped[str] = mapped_column(String(32), unique=True)

    verdict = await check_product_model(Product)
    assert verdict.status is Status.WRONG
    assert "price, created_at" in verdict.message


# 02.2 ------------------------------------------------------------------------------------


async def test_create_tables_correct() -> None:
    async def create_tables(engine: AsyncEngine, metadata: MetaData) -> None:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)

    assert (await check_create_tables(create_tables)).ok


async def test_create_tables_not_attempted() -> None:
    async def create_tables(engine: AsyncEngine, metadata: MetaData) -> None:
        raise NotImplementedError

    assert (await check_create_tables(create_tables)).status is Status.NOT_ATTEMPTED


async def test_create_tables_sync_call() -> None:
    async def create_tables(engine: AsyncEngine, metadata: MetaData) -> None:
        metadata.create_all(engine)  # type: ignore[arg-type]

    verdict = await check_create_tables(create_tables)
    assert verdict.status is Status.WRONG
    assert "run_sync(metadata.create_all)" in verdict.message


async def test_create_tables_never_committed() -> None:
    async def create_tables(engine: AsyncEngine, metadata: MetaData) -> None:
        async with engine.connect() as conn:
            await conn.run_sync(metadata.create_all)

    verdict = await check_create_tables(create_tables)
    assert verdict.status is Status.WRONG
    assert "never committed" in verdict.message


async def test_create_tables_only_one() -> None:
    async def create_tables(engine: AsyncEngine, metadata: MetaData) -> None:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.tables["authors"].create)

    verdict = await check_create_tables(create_tables)
    assert verdict.status is Status.WRONG
    assert "['authors']" in verdict.message


async def test_create_tables_calls_create_all_itself() -> None:
    async def create_tables(engine: AsyncEngine, metadata: MetaData) -> None:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all(conn))  # type: ignore[arg-type]

    verdict = await check_create_tables(create_tables)
    assert verdict.status is Status.WRONG
    assert "without calling it" in verdict.message


async def test_create_tables_sync_engine() -> None:
    async def create_tables(engine: AsyncEngine, metadata: MetaData) -> None:
        metadata.create_all(engine.sync_engine)

    verdict = await check_create_tables(create_tables)
    assert verdict.status is Status.WRONG
    assert "engine.sync_engine cannot do I/O" in verdict.message


async def test_create_tables_forgotten_await() -> None:
    async def create_tables(engine: AsyncEngine, metadata: MetaData) -> None:
        async with engine.begin() as conn:
            conn.run_sync(metadata.create_all)  # the mistake under test: no await

    verdict = await check_create_tables(create_tables)
    assert verdict.status is Status.WRONG
    assert "Is `await` missing" in verdict.message


async def test_create_tables_of_another_metadata() -> None:
    class Base(DeclarativeBase):
        pass

    class Customer(Base):
        __tablename__ = "customers"
        id: Mapped[int] = mapped_column(primary_key=True)

    async def create_tables(engine: AsyncEngine, metadata: MetaData) -> None:
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)

    verdict = await check_create_tables(create_tables)
    assert verdict.status is Status.WRONG
    assert "of the metadata passed in" in verdict.message


async def test_create_tables_other_attribute_error_is_reported() -> None:
    async def create_tables(engine: AsyncEngine, metadata: MetaData) -> None:
        metadata.create_everything()  # type: ignore[attr-defined]

    verdict = await check_create_tables(create_tables)
    assert verdict.status is Status.WRONG
    assert "AttributeError" in verdict.message
