"""Unit tests for the self-checks of the locking and isolation lesson (notebook 08).

One private database for the module (SQLite by default, PostgreSQL with DATABASE_URL) holds
the accounts table the notebook defines. Every wrong answer below is a mistake the lesson
warns about; each must get its own hint.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import pytest_asyncio
from sqlalchemy import Numeric, String, make_url, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from helpers import open_database
from helpers.database import DatabaseConfigError, configured_url
from helpers.exercises import Status, nb07
from helpers.exercises.nb08 import SimulatedDeadlock, check_locked_transfer, check_retry

Factory = async_sessionmaker[AsyncSession]
LOCAL_POSTGRESQL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(50))
    balance: Mapped[Decimal] = mapped_column(Numeric(12, 2))


class InsufficientFunds(Exception):
    def __init__(self, account_id: int, balance: Decimal, amount: Decimal) -> None:
        super().__init__(f"account {account_id} holds {balance}, cannot send {amount}")
        self.account_id, self.balance, self.amount = account_id, balance, amount


RETRYABLE_SQLSTATES = {"40001", "40P01"}


def retryable(exc: BaseException) -> bool:  # as in the notebook
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    return (
        getattr(orig, "sqlstate", None) in RETRYABLE_SQLSTATES
        or getattr(orig, "sqlite_errorname", None) == "SQLITE_BUSY"
    )


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def Session() -> AsyncIterator[Factory]:
    db = await open_database("test_nb08")
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        yield async_sessionmaker(db.engine, expire_on_commit=False)
    finally:
        await db.close()


# 08.1 ------------------------------------------------------------------------------------------


def lock_both(*ids: int):
    return select(Account).where(Account.id.in_(ids)).order_by(Account.id).with_for_update()


async def good_transfer(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        accounts = {a.id: a for a in await session.scalars(lock_both(from_id, to_id))}
        source, target = accounts[from_id], accounts[to_id]
        if source.balance < amount:
            raise InsufficientFunds(from_id, source.balance, amount)
        source.balance -= amount
        target.balance += amount


async def check_08_1(Session: Factory, transfer) -> object:
    return await check_locked_transfer(transfer, Session, Account, InsufficientFunds)


async def test_locked_transfer_correct(Session: Factory) -> None:
    verdict = await check_08_1(Session, good_transfer)
    assert verdict.status is Status.CORRECT, verdict


async def test_locked_transfer_correct_with_two_ordered_gets(Session: Factory) -> None:
    async def transfer(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
        async with Session.begin() as session:
            locked = {
                i: await session.get(Account, i, with_for_update=True) for i in sorted((from_id, to_id))
            }
            if locked[from_id] is None or locked[to_id] is None:
                raise LookupError("no such account")
            if locked[from_id].balance < amount:
                raise InsufficientFunds(from_id, locked[from_id].balance, amount)
            locked[from_id].balance -= amount
            locked[to_id].balance += amount

    verdict = await check_08_1(Session, transfer)
    assert verdict.status is Status.CORRECT, verdict


async def test_locked_transfer_not_attempted(Session: Factory) -> None:
    async def placeholder(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
        raise NotImplementedError

    assert (await check_08_1(Session, placeholder)).status is Status.NOT_ATTEMPTED


async def no_lock(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        source, target = await session.get(Account, from_id), await session.get(Account, to_id)
        if source.balance < amount:
            raise InsufficientFunds(from_id, source.balance, amount)
        source.balance -= amount
        target.balance += amount


async def source_first(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        source = await session.get(Account, from_id, with_for_update=True)
        target = await session.get(Account, to_id, with_for_update=True)
        if source.balance < amount:
            raise InsufficientFunds(from_id, source.balance, amount)
        source.balance -= amount
        target.balance += amount


async def unordered(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        stmt = select(Account).where(Account.id.in_([from_id, to_id])).with_for_update()
        accounts = {a.id: a for a in await session.scalars(stmt)}
        if accounts[from_id].balance < amount:
            raise InsufficientFunds(from_id, accounts[from_id].balance, amount)
        accounts[from_id].balance -= amount
        accounts[to_id].balance += amount


async def locks_source_only(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        source = await session.get(Account, from_id, with_for_update=True)
        target = await session.get(Account, to_id)
        if source.balance < amount:
            raise InsufficientFunds(from_id, source.balance, amount)
        source.balance -= amount
        target.balance += amount


async def shared_lock(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        stmt = select(Account).where(Account.id.in_([from_id, to_id])).order_by(Account.id)
        accounts = {a.id: a for a in await session.scalars(stmt.with_for_update(read=True))}
        if accounts[from_id].balance < amount:
            raise InsufficientFunds(from_id, accounts[from_id].balance, amount)
        accounts[from_id].balance -= amount
        accounts[to_id].balance += amount


async def skips_locked(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        stmt = select(Account).where(Account.id.in_([from_id, to_id])).order_by(Account.id)
        accounts = {a.id: a for a in await session.scalars(stmt.with_for_update(skip_locked=True))}
        if accounts[from_id].balance < amount:
            raise InsufficientFunds(from_id, accounts[from_id].balance, amount)
        accounts[from_id].balance -= amount
        accounts[to_id].balance += amount


async def lock_then_write_elsewhere(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:  # locks, checks, and commits: the locks are gone
        accounts = {a.id: a for a in await session.scalars(lock_both(from_id, to_id))}
        if accounts[from_id].balance < amount:
            raise InsufficientFunds(from_id, accounts[from_id].balance, amount)
    async with Session.begin() as session:
        (await session.get(Account, from_id)).balance -= amount
        (await session.get(Account, to_id)).balance += amount


async def float_amount(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        accounts = {a.id: a for a in await session.scalars(lock_both(from_id, to_id))}
        accounts[from_id].balance = float(accounts[from_id].balance) - float(amount)
        accounts[to_id].balance = float(accounts[to_id].balance) + float(amount)


async def catches_inside(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        accounts = {a.id: a for a in await session.scalars(lock_both(from_id, to_id))}
        source = accounts[from_id]
        if source.balance < amount:
            raise InsufficientFunds(from_id, source.balance, amount)
        source.balance -= amount
        try:
            accounts[to_id].balance += amount
        except KeyError:
            print("credit failed")  # logged, and the block commits the debit


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (no_lock, "no SELECT locked the rows"),
        (source_first, "lock in id order"),
        (unordered, "without ORDER BY"),
        (locks_source_only, "lock both 1 and 2"),
        (shared_lock, "FOR SHARE"),
        (skips_locked, "skip_locked=True"),
        (lock_then_write_elsewhere, "ran 2 transactions"),
        (float_amount, "keep money Decimal"),
        (catches_inside, "the block committed the half that had run"),
    ],
)
async def test_locked_transfer_wrong(Session: Factory, answer, hint: str) -> None:
    verdict = await check_08_1(Session, answer)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict


async def locks_in_two_sessions(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as first:
        source = await first.get(Account, from_id, with_for_update=True)
        async with Session.begin() as second:  # waits for the row (or database) the first one locked
            target = await second.get(Account, to_id, with_for_update=True)
            await second.get(Account, from_id, with_for_update=True)
            target.balance += amount
        source.balance -= amount


async def test_locked_transfer_waiting_for_its_own_lock_is_stopped(Session: Factory, monkeypatch) -> None:
    monkeypatch.setattr(nb07, "TIME_LIMIT", 1.0)
    verdict = await check_08_1(Session, locks_in_two_sessions)
    assert verdict.status is Status.WRONG, verdict
    assert "one session and one transaction" in verdict.message, verdict


# 08.2 ------------------------------------------------------------------------------------------


async def good_retry(Session: Factory, work, attempts: int = 3):
    for attempt in range(1, attempts + 1):
        try:
            async with Session.begin() as session:
                return await work(session)
        except DBAPIError as exc:
            if attempt == attempts or not retryable(exc):
                raise


async def check_08_2(Session: Factory, run_with_retry) -> object:
    return await check_retry(run_with_retry, Session, Account)


async def test_retry_correct(Session: Factory) -> None:
    verdict = await check_08_2(Session, good_retry)
    assert verdict.status is Status.CORRECT, verdict


async def test_retry_correct_with_backoff_and_one_session(Session: Factory) -> None:
    async def run_with_retry(Session: Factory, work, attempts: int = 3):
        async with Session() as session:
            for attempt in range(attempts):
                try:
                    async with session.begin():
                        return await work(session)
                except DBAPIError as exc:
                    if not retryable(exc) or attempt == attempts - 1:
                        raise
                    await asyncio.sleep(0.01 * 2**attempt)

    verdict = await check_08_2(Session, run_with_retry)
    assert verdict.status is Status.CORRECT, verdict


async def test_retry_not_attempted(Session: Factory) -> None:
    async def placeholder(Session: Factory, work, attempts: int = 3):
        raise NotImplementedError

    assert (await check_08_2(Session, placeholder)).status is Status.NOT_ATTEMPTED


async def one_transaction(Session: Factory, work, attempts: int = 3):
    async with Session.begin() as session:
        for attempt in range(attempts):
            try:
                return await work(session)
            except DBAPIError as exc:
                if attempt == attempts - 1 or not retryable(exc):
                    raise


async def no_retry(Session: Factory, work, attempts: int = 3):
    async with Session.begin() as session:
        return await work(session)


async def only_operational_errors(Session: Factory, work, attempts: int = 3):
    for attempt in range(attempts):
        try:
            async with Session.begin() as session:
                return await work(session)
        except OperationalError:
            if attempt == attempts - 1:
                raise


async def retries_everything(Session: Factory, work, attempts: int = 3):
    for attempt in range(attempts):
        try:
            async with Session.begin() as session:
                return await work(session)
        except Exception:
            if attempt == attempts - 1:
                raise


async def retries_every_driver_error(Session: Factory, work, attempts: int = 3):
    for attempt in range(attempts):
        try:
            async with Session.begin() as session:
                return await work(session)
        except DBAPIError:
            if attempt == attempts - 1:
                raise


async def forever(Session: Factory, work, attempts: int = 3):
    while True:
        try:
            async with Session.begin() as session:
                return await work(session)
        except DBAPIError as exc:
            if not retryable(exc):
                raise


async def one_too_many(Session: Factory, work, attempts: int = 3):
    for attempt in range(attempts + 1):
        try:
            async with Session.begin() as session:
                return await work(session)
        except DBAPIError as exc:
            if attempt == attempts or not retryable(exc):
                raise


async def swallows_the_last(Session: Factory, work, attempts: int = 3):
    for _ in range(attempts):
        try:
            async with Session.begin() as session:
                return await work(session)
        except DBAPIError as exc:
            if not retryable(exc):
                raise
    return None


async def wraps_the_last(Session: Factory, work, attempts: int = 3):
    for attempt in range(attempts):
        try:
            async with Session.begin() as session:
                return await work(session)
        except DBAPIError as exc:
            if not retryable(exc):
                raise
            if attempt == attempts - 1:
                raise RuntimeError("gave up") from exc


async def forgets_the_result(Session: Factory, work, attempts: int = 3):
    for attempt in range(attempts):
        try:
            async with Session.begin() as session:
                await work(session)
                return None
        except DBAPIError as exc:
            if attempt == attempts - 1 or not retryable(exc):
                raise


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (one_transaction, "the failed attempts' writes were kept"),
        (no_retry, "reached the caller"),
        (only_operational_errors, "asyncpg raises a deadlock as a plain DBAPIError"),
        (retries_everything, "work raised ValueError"),
        (retries_every_driver_error, "a unique violation"),
        (forever, "would not stop"),
        (one_too_many, "attempts counts every call"),
        (swallows_the_last, "re-raise the last error, or the caller believes"),
        (wraps_the_last, "raised RuntimeError: re-raise the last error itself"),
        (forgets_the_result, "return what work returned"),
    ],
)
async def test_retry_wrong(Session: Factory, answer, hint: str) -> None:
    verdict = await check_08_2(Session, answer)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_simulated_deadlock_looks_like_each_drivers_real_one(driver: str) -> None:
    """The check's SimulatedDeadlock stands for what either driver raises on SQLSTATE 40P01: a
    DBAPIError (asyncpg: DBAPIError itself; psycopg: OperationalError, as 08.2's hint says) whose
    ``orig.sqlstate`` retryable() reads. The server raises the SQLSTATE itself, without a deadlock."""
    url = configured_url()
    server = url if url is not None and url.get_backend_name() == "postgresql" else LOCAL_POSTGRESQL
    environ = {
        "DATABASE_URL": make_url(server).set(drivername=f"postgresql+{driver}").render_as_string(False)
    }
    try:
        db = await open_database("test_nb08_driver", environ=environ)
    except DatabaseConfigError as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    try:
        async with db.engine.connect() as conn:
            with pytest.raises(DBAPIError) as raised:
                await conn.execute(
                    text("DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = '40P01'; END $$")
                )
    finally:
        await db.close()
    exc = raised.value
    assert type(exc) is {"asyncpg": DBAPIError, "psycopg": OperationalError}[driver]
    assert exc.orig.sqlstate == SimulatedDeadlock.sqlstate
    assert retryable(exc)
