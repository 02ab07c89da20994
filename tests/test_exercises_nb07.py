"""Unit tests for the self-checks of notebook 07: right, wrong and untouched answers.

One private database for the module (SQLite by default, PostgreSQL with DATABASE_URL) holds
the two tables the notebook defines. Every wrong answer below is a mistake the lesson warns
about; each must get its own hint.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import pytest_asyncio
from sqlalchemy import Numeric, String, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from helpers import open_database
from helpers.exercises import Status, nb07
from helpers.exercises.nb07 import check_add_users, check_transfer

Factory = async_sessionmaker[AsyncSession]


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(50))
    balance: Mapped[Decimal] = mapped_column(Numeric(12, 2))


class InsufficientFunds(Exception):
    def __init__(self, account_id: int, balance: Decimal, amount: Decimal) -> None:
        super().__init__(f"account {account_id} holds {balance}, cannot send {amount}")
        self.account_id, self.balance, self.amount = account_id, balance, amount


# One private database and one event loop for the module: an engine belongs to the loop it
# was first used on, and the checks reset the rows they use.
pytestmark = pytest.mark.asyncio(loop_scope="module")
GLOBAL: dict[str, Factory] = {}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def Session() -> AsyncIterator[Factory]:
    db = await open_database("test_nb07")
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        GLOBAL["Session"] = async_sessionmaker(db.engine, expire_on_commit=False)
        yield GLOBAL["Session"]
    finally:
        await db.close()


# 07.1 ------------------------------------------------------------------------------------------


async def good_transfer(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        source = await session.get(Account, from_id)
        target = await session.get(Account, to_id)
        if source is None or target is None:
            raise LookupError("no such account")
        if source.balance < amount:
            raise InsufficientFunds(from_id, source.balance, amount)
        source.balance -= amount
        target.balance += amount


async def check_07_1(Session: Factory, transfer) -> object:
    return await check_transfer(transfer, Session, Account, InsufficientFunds)


async def test_transfer_correct(Session: Factory) -> None:
    verdict = await check_07_1(Session, good_transfer)
    assert verdict.status is Status.CORRECT, verdict


async def test_transfer_correct_with_one_select_and_a_lock(Session: Factory) -> None:
    async def transfer(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
        async with Session.begin() as session:
            rows = await session.scalars(
                select(Account).where(Account.id.in_([from_id, to_id])).order_by(Account.id).with_for_update()
            )
            accounts = {account.id: account for account in rows}
            source, target = accounts[from_id], accounts[to_id]
            if source.balance < amount:
                raise InsufficientFunds(from_id, source.balance, amount)
            source.balance -= amount
            target.balance += amount

    verdict = await check_07_1(Session, transfer)
    assert verdict.status is Status.CORRECT, verdict


async def test_transfer_not_attempted(Session: Factory) -> None:
    async def placeholder(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
        raise NotImplementedError

    assert (await check_07_1(Session, placeholder)).status is Status.NOT_ATTEMPTED
    assert (await check_transfer(..., Session, Account, InsufficientFunds)).status is Status.NOT_ATTEMPTED


async def never_commits(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session() as session:
        source, target = await session.get(Account, from_id), await session.get(Account, to_id)
        source.balance -= amount
        target.balance += amount


async def backwards(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    await good_transfer(Session, to_id, from_id, amount)


async def two_transactions(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        source = await session.get(Account, from_id)
        if source.balance < amount:
            raise InsufficientFunds(from_id, source.balance, amount)
        source.balance -= amount
    async with Session.begin() as session:
        (await session.get(Account, to_id)).balance += amount


async def read_then_write(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session() as session:  # read, then the session closes: transaction one
        source, target = await session.get(Account, from_id), await session.get(Account, to_id)
        source_balance, target_balance = source.balance, target.balance
    if source_balance < amount:
        raise InsufficientFunds(from_id, source_balance, amount)
    async with Session.begin() as session:  # write: transaction two
        await session.execute(
            update(Account).where(Account.id == from_id).values(balance=source_balance - amount)
        )
        await session.execute(
            update(Account).where(Account.id == to_id).values(balance=target_balance + amount)
        )


async def float_amount(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        source, target = await session.get(Account, from_id), await session.get(Account, to_id)
        if source.balance < amount:
            raise InsufficientFunds(from_id, source.balance, amount)
        source.balance -= float(amount)
        target.balance += float(amount)


async def float_balance(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        source, target = await session.get(Account, from_id), await session.get(Account, to_id)
        if source.balance < amount:
            raise InsufficientFunds(from_id, source.balance, amount)
        source.balance = float(source.balance) - float(amount)
        target.balance = float(target.balance) + float(amount)


async def float_in_update(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        source = await session.get(Account, from_id)
        await session.get(Account, to_id)
        if source.balance < amount:
            raise InsufficientFunds(from_id, source.balance, amount)
        await session.execute(
            update(Account).where(Account.id == from_id).values(balance=Account.balance - float(amount))
        )
        await session.execute(
            update(Account).where(Account.id == to_id).values(balance=Account.balance + float(amount))
        )


async def strict_comparison(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        source, target = await session.get(Account, from_id), await session.get(Account, to_id)
        if source.balance <= amount:
            raise InsufficientFunds(from_id, source.balance, amount)
        source.balance -= amount
        target.balance += amount


async def value_error(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        source, target = await session.get(Account, from_id), await session.get(Account, to_id)
        if source.balance < amount:
            raise ValueError("insufficient funds")
        source.balance -= amount
        target.balance += amount


async def overdraws(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        source, target = await session.get(Account, from_id), await session.get(Account, to_id)
        source.balance -= amount
        target.balance += amount


async def commits_then_checks(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session() as session:
        source, target = await session.get(Account, from_id), await session.get(Account, to_id)
        source.balance -= amount
        target.balance += amount
        await session.commit()
        if source.balance < 0:
            raise InsufficientFunds(from_id, source.balance + amount, amount)


async def error_without_details(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        source, target = await session.get(Account, from_id), await session.get(Account, to_id)
        if source.balance < amount:
            raise InsufficientFunds()  # type: ignore[call-arg]
        source.balance -= amount
        target.balance += amount


async def error_with_wrong_details(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        source, target = await session.get(Account, from_id), await session.get(Account, to_id)
        if source.balance < amount:
            raise InsufficientFunds(to_id, target.balance, amount)
        source.balance -= amount
        target.balance += amount


async def catches_inside(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        source = await session.get(Account, from_id)
        if source.balance < amount:
            raise InsufficientFunds(from_id, source.balance, amount)
        source.balance -= amount
        try:
            target = await session.get(Account, to_id)
            target.balance += amount
        except Exception:
            pass  # "log it and carry on": the block then commits the debit


async def ignores_missing(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        source, target = await session.get(Account, from_id), await session.get(Account, to_id)
        if source is None or target is None:
            return
        if source.balance < amount:
            raise InsufficientFunds(from_id, source.balance, amount)
        source.balance -= amount
        target.balance += amount


async def own_factory(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    await good_transfer(GLOBAL["Session"], from_id, to_id, amount)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (never_commits, "did the transaction commit"),
        (backwards, "subtract from the source"),
        (two_transactions, "ran 2 transactions"),
        (read_then_write, "ran 2 transactions"),
        (float_amount, "mixed Decimal and float"),
        (float_balance, "a float reached balance"),
        (float_in_update, "keep money Decimal"),  # 2.0 evaluates it in Python: TypeError
        (strict_comparison, "whole balance"),
        (value_error, "raise the domain error InsufficientFunds"),
        (overdraws, "must be refused"),
        (commits_then_checks, "balances changed"),
        (error_without_details, "InsufficientFunds(account_id, balance, amount)"),
        (error_with_wrong_details, "the source account, its balance, the amount"),
        (catches_inside, "the block committed the half that had run"),
        (ignores_missing, "returned normally"),
        (own_factory, "session factory passed to your function"),
    ],
)
async def test_transfer_wrong(Session: Factory, answer, hint: str) -> None:
    verdict = await check_07_1(Session, answer)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict


async def two_sessions_one_row(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as outer:
        source = await outer.get(Account, from_id)
        source.balance -= amount
        await outer.flush()  # the row (PostgreSQL) or the database (SQLite) is now locked
        async with Session.begin() as inner:  # a second session: waits for the first one's lock
            (await inner.get(Account, from_id)).owner = "audited"
            await inner.flush()
        (await outer.get(Account, to_id)).balance += amount


async def test_transfer_waiting_for_its_own_lock_is_stopped(Session: Factory, monkeypatch) -> None:
    monkeypatch.setattr(nb07, "TIME_LIMIT", 1.0)
    verdict = await check_07_1(Session, two_sessions_one_row)
    assert verdict.status is Status.WRONG, verdict
    assert "one session and one transaction" in verdict.message, verdict


# 07.2 ------------------------------------------------------------------------------------------


async def good_add_users(Session: Factory, names: list[str]) -> list[str]:
    skipped = []
    async with Session.begin() as session:
        for name in names:
            try:
                async with session.begin_nested():
                    session.add(User(name=name))
            except IntegrityError:
                skipped.append(name)
    return skipped


async def check_07_2(Session: Factory, add_users) -> object:
    return await check_add_users(add_users, Session, User)


async def test_add_users_correct_and_leaves_nothing(Session: Factory) -> None:
    verdict = await check_07_2(Session, good_add_users)
    assert verdict.status is Status.CORRECT, verdict
    async with Session() as session:
        assert (await session.scalars(select(User.name).where(User.name.like("exercise-07-2-%")))).all() == []


async def test_add_users_correct_with_flush_and_a_look_first(Session: Factory) -> None:
    async def add_users(Session: Factory, names: list[str]) -> list[str]:
        skipped = []
        async with Session.begin() as session:
            existing = set(await session.scalars(select(User.name).where(User.name.in_(names))))
            for name in names:
                if name in existing:
                    skipped.append(name)
                    continue
                nested = await session.begin_nested()
                try:
                    session.add(User(name=name))
                    await session.flush()
                except IntegrityError:
                    await nested.rollback()
                    skipped.append(name)
                else:
                    await nested.commit()
        return skipped

    verdict = await check_07_2(Session, add_users)
    assert verdict.status is Status.CORRECT, verdict


async def test_add_users_not_attempted(Session: Factory) -> None:
    async def placeholder(Session: Factory, names: list[str]) -> list[str]:
        raise NotImplementedError

    assert (await check_07_2(Session, placeholder)).status is Status.NOT_ATTEMPTED


async def no_savepoint(Session: Factory, names: list[str]) -> list[str]:
    skipped = []
    async with Session.begin() as session:
        for name in names:
            session.add(User(name=name))
            try:
                await session.flush()
            except IntegrityError:
                skipped.append(name)
    return skipped


async def no_savepoint_commit_at_end(Session: Factory, names: list[str]) -> list[str]:
    skipped = []
    async with Session() as session:
        for name in names:
            session.add(User(name=name))
            try:
                await session.flush()
            except IntegrityError:
                skipped.append(name)
        await session.commit()
    return skipped


async def no_savepoint_swallowing(Session: Factory, names: list[str]) -> list[str]:
    skipped = []
    async with Session.begin() as session:
        for name in names:
            session.add(User(name=name))
            try:
                await session.flush()
            except Exception:
                skipped.append(name)
    return skipped


async def rollback_instead(Session: Factory, names: list[str]) -> list[str]:
    skipped = []
    async with Session() as session:
        for name in names:
            session.add(User(name=name))
            try:
                await session.flush()
            except IntegrityError:
                await session.rollback()
                skipped.append(name)
        await session.commit()
    return skipped


async def commit_each(Session: Factory, names: list[str]) -> list[str]:
    skipped = []
    for name in names:
        try:
            async with Session.begin() as session:
                session.add(User(name=name))
        except IntegrityError:
            skipped.append(name)
    return skipped


async def catch_everything(Session: Factory, names: list[str]) -> list[str]:
    skipped = []
    async with Session.begin() as session:
        for name in names:
            try:
                async with session.begin_nested():
                    session.add(User(name=name))
            except Exception:
                skipped.append(name)
    return skipped


async def try_inside_the_savepoint(Session: Factory, names: list[str]) -> list[str]:
    skipped = []
    async with Session.begin() as session:
        for name in names:
            async with session.begin_nested():
                try:
                    session.add(User(name=name))
                except IntegrityError:
                    skipped.append(name)
    return skipped


async def look_first(Session: Factory, names: list[str]) -> list[str]:
    async with Session.begin() as session:
        existing = set(await session.scalars(select(User.name).where(User.name.in_(names))))
        session.add_all([User(name=name) for name in names if name not in existing])
    return [name for name in names if name in existing]


async def returns_added(Session: Factory, names: list[str]) -> list[str]:
    added = []
    async with Session.begin() as session:
        for name in names:
            try:
                async with session.begin_nested():
                    session.add(User(name=name))
                added.append(name)
            except IntegrityError:
                pass
    return added


async def never_finishes(Session: Factory, names: list[str]) -> list[str]:
    async with Session.begin() as session:
        session.add(User(name=names[0]))
        await session.flush()
        await asyncio.Event().wait()  # stands in for a wait that never ends
    return []


async def test_add_users_that_never_finishes_is_stopped(Session: Factory, monkeypatch) -> None:
    monkeypatch.setattr(nb07, "TIME_LIMIT", 0.5)
    verdict = await check_07_2(Session, never_finishes)
    assert verdict.status is Status.WRONG, verdict
    assert "still running after" in verdict.message, verdict


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (no_savepoint, "a failed flush rolls back the whole transaction"),
        (no_savepoint_commit_at_end, "a failed flush rolls back the whole transaction"),
        (no_savepoint_swallowing, "no name of the batch was committed"),
        (rollback_instead, "undoes everything since the transaction began"),
        (commit_each, "ran 5 transactions"),
        (catch_everything, "catch only IntegrityError"),
        (try_inside_the_savepoint, "catch it around"),
        (look_first, "Looking first cannot prevent that"),
        (returns_added, "return the taken names in order"),
    ],
)
async def test_add_users_wrong(Session: Factory, answer, hint: str) -> None:
    verdict = await check_07_2(Session, answer)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict
