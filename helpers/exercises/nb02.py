"""Self-checks for the exercises of notebook 02 (models and schema).

* 02.1 ``Product``: a mapped class with a UUID key made in Python, a unique ``sku``, a
  ``Numeric(10, 2)`` price read back as ``Decimal``, and a timezone-aware ``created_at``
  filled in by the database.
* 02.2 ``create_tables(engine, metadata)``: create every table of ``metadata`` through
  ``run_sync``, committed.

Each check runs the answer against a fresh in-memory SQLite database and disposes it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import typing
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterator
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    TextClause,
    event,
    inspect,
    select,
)
from sqlalchemy.exc import IntegrityError, MissingGreenlet, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Mapped

from helpers.exercises.base import Verdict, check, correct, wrong

__all__ = ["check_create_tables", "check_product_model", "sample_metadata"]


def _column(table: Table, name: str) -> Column[Any] | None:
    return table.columns.get(name)


def _annotation(product: Any, name: str) -> Any:
    """The argument of ``Mapped[...]`` for attribute ``name``, or ``None`` if unknown."""
    for klass in getattr(product, "__mro__", ()):
        annotation = getattr(klass, "__annotations__", {}).get(name)
        if annotation is None:
            continue
        if isinstance(annotation, str):  # from __future__ import annotations
            return annotation.removeprefix("Mapped[").removesuffix("]").strip()
        if typing.get_origin(annotation) is Mapped:
            return typing.get_args(annotation)[0]
        return None
    return None


def _is_func_now(default: Any) -> bool:
    return getattr(getattr(default, "arg", None), "name", None) == "now"


def _static_problems(product: Any) -> str | None:
    """What is wrong with the mapping itself, read from the Table (no database needed)."""
    table = getattr(product, "__table__", None)
    if not isinstance(table, Table):
        return "Product must be a mapped class: `class Product(ExerciseBase):` with a __tablename__."
    missing = [name for name in ("id", "sku", "price", "created_at") if _column(table, name) is None]
    if missing:
        return f"Product has no column named {', '.join(missing)}."
    pk = [c.name for c in table.primary_key.columns]
    if pk != ["id"]:
        return f"the primary key must be `id` alone, not {pk}."
    id_col = table.c.id
    if id_col.type.python_type is not uuid.UUID:
        return f"`id` must be `Mapped[uuid.UUID]` (SQLAlchemy's Uuid type), not {type(id_col.type).__name__}."
    if id_col.default is None:
        return "`id` has no Python default, so a new Product has no key: add default=uuid.uuid4."
    if not id_col.default.is_callable:
        return (
            "default=uuid.uuid4() calls uuid4 once, when the class is defined, so every product "
            "would get that same key. Pass the function itself: default=uuid.uuid4."
        )
    price = table.c.price
    if not isinstance(price.type, Numeric) or not price.type.asdecimal:
        return "`price` must be `Mapped[Decimal]` stored as Numeric(10, 2); floats cannot hold 0.1 exactly."
    if (price.type.precision, price.type.scale) != (10, 2):
        return (
            f"`price` is Numeric({price.type.precision}, {price.type.scale}); "
            "the exercise asks for Numeric(10, 2)."
        )
    if _annotation(product, "price") in (float, "float"):
        return (
            "`price` is stored as Numeric and comes back as Decimal, but it is annotated "
            "Mapped[float]: write Mapped[Decimal], so the annotation tells the truth."
        )
    created = table.c.created_at
    if not isinstance(created.type, DateTime) or not created.type.timezone:
        return (
            "`created_at` must be DateTime(timezone=True), so PostgreSQL keeps the instant, "
            "not a wall-clock reading."
        )
    python_default = getattr(getattr(created.default, "arg", None), "__name__", "")
    if python_default == "utcnow":
        return (
            "datetime.utcnow makes naive datetimes (and is deprecated in 3.12): "
            "use server_default=func.now()."
        )
    if python_default == "now" and created.server_default is None:
        return (
            "default=datetime.now makes naive local times, in Python; the exercise wants the "
            "database's clock: server_default=func.now()."
        )
    server = getattr(created.server_default, "arg", None)
    if isinstance(server, str):
        return (
            f"server_default={server!r} is a literal value the database would store as it is, "
            "not a function it calls: use server_default=func.now()."
        )
    if isinstance(server, TextClause) and "now" in server.text.lower():
        return (
            f"server_default=text({server.text!r}) is PostgreSQL's spelling, and SQLite has no "
            "now(): func.now() writes the right SQL for each database (CURRENT_TIMESTAMP on SQLite)."
        )
    if created.server_default is None:
        if created.default is not None:
            return (
                "your default runs in Python, on the application's clock; the exercise wants "
                "the database to fill `created_at`: server_default=func.now()."
            )
        return "let the database fill `created_at`: server_default=func.now()."
    return None


@check("02.1")
async def check_product_model(product: Any) -> Verdict:
    """Read the mapping, then insert and read back rows to prove it behaves."""
    if problem := _static_problems(product):
        return wrong("02.1", problem)
    metadata = product.__table__.metadata
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    try:
        async with engine.begin() as conn:
            await conn.run_sync(metadata.create_all)
        async with AsyncSession(engine) as session:
            first = product(sku="MUG-01", price=Decimal("19.99"))
            session.add(first)
            await session.flush()
            if not isinstance(first.id, uuid.UUID):
                return wrong("02.1", "after a flush `id` should be a uuid.UUID made by default=uuid.uuid4.")
            await session.commit()
            price = await session.scalar(select(product.price))
            created = await session.scalar(select(product.created_at))
            if not isinstance(price, Decimal) or price != Decimal("19.99"):
                return wrong("02.1", f"the price came back as {price!r}, expected Decimal('19.99').")
            if created is None:
                return wrong("02.1", "`created_at` is empty after insert: give it server_default=func.now().")
            session.add(product(sku="MUG-01", price=Decimal("5.00")))
            try:
                await session.commit()
            except IntegrityError:
                await session.rollback()
            else:
                return wrong("02.1", "two products with the same sku were accepted: add unique=True to sku.")
    finally:
        await engine.dispose()
    return correct("02.1", "UUID key, unique sku, exact Decimal price, aware created_at from the database.")


def sample_metadata() -> MetaData:
    """Two related tables the 02.2 check asks the answer to create."""
    metadata = MetaData()
    Table("authors", metadata, Column("id", Integer, primary_key=True), Column("name", String(50)))
    Table(
        "books",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("author_id", ForeignKey("authors.id")),
        Column("title", String(200)),
    )
    return metadata


@contextlib.contextmanager
def _quiet_pool() -> Iterator[None]:
    """Keep the pool's 'Exception during reset' log and 'never awaited' warnings of a failed
    answer off the learner's screen: the verdict explains the mistake."""
    logger = logging.getLogger("sqlalchemy.pool")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
            gc.collect()
    finally:
        logger.setLevel(level)


def _greenlet_error(exc: BaseException) -> bool:
    """MissingGreenlet itself (asyncpg; SQLAlchemy 2.0), or wrapped in a StatementError (aiosqlite
    and psycopg under 2.1)."""
    return isinstance(exc, MissingGreenlet) or (
        isinstance(exc, StatementError) and isinstance(exc.orig, MissingGreenlet)
    )


@check("02.2")
async def check_create_tables(create_tables: Callable[[AsyncEngine, MetaData], Awaitable[None]]) -> Verdict:
    """``create_tables`` must create both tables of :func:`sample_metadata` and commit."""
    metadata = sample_metadata()
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    commits: list[object] = []
    event.listen(engine.sync_engine, "commit", commits.append)
    try:
        with _quiet_pool():
            try:
                await create_tables(engine, metadata)
            except AttributeError as exc:
                if "_run_ddl_visitor" not in str(exc):
                    raise
                if "AsyncConnection" in str(exc):
                    return wrong(
                        "02.2",
                        "you called metadata.create_all(conn) yourself; run_sync() must call it: "
                        "pass the function without calling it, `await conn.run_sync(metadata.create_all)`.",
                    )
                return wrong(
                    "02.2",
                    "metadata.create_all() is synchronous and cannot take an AsyncEngine: inside "
                    "`async with engine.begin() as conn:` call `await conn.run_sync(metadata.create_all)`.",
                )
            except Exception as exc:
                if not _greenlet_error(exc):
                    raise
                return wrong(
                    "02.2",
                    "engine.sync_engine cannot do I/O on its own (MissingGreenlet): synchronous "
                    "SQLAlchemy code runs only inside run_sync(). Write `async with engine.begin() "
                    "as conn:` and `await conn.run_sync(metadata.create_all)`.",
                )
        async with engine.connect() as conn:
            tables = await conn.run_sync(lambda sync_conn: sorted(inspect(sync_conn).get_table_names()))
    finally:
        await engine.dispose()
    if not tables:
        return wrong(
            "02.2",
            "no table was created. Is `await` missing before conn.run_sync(...)? Without it "
            "create_all never runs.",
        )
    if not set(tables) & {"authors", "books"}:
        return wrong(
            "02.2",
            f"the database has tables {tables}, not the ones of the `metadata` argument: create "
            "the tables of the metadata passed in, not of your own Base.",
        )
    if tables != ["authors", "books"]:
        return wrong("02.2", f"the database has tables {tables}, expected ['authors', 'books'].")
    if not commits:
        return wrong(
            "02.2",
            "the tables were never committed (SQLite kept them anyway, PostgreSQL would not): "
            "use `async with engine.begin() as conn:`.",
        )
    return correct("02.2", "both tables created through run_sync, in a committed transaction.")
