"""Unit tests for the self-checks of notebook 07: right, wrong and untouched answers.

Each test gets a private database (SQLite by default, PostgreSQL with DATABASE_URL) holding
the same three tables the notebook defines.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import pytest_asyncio
from sqlalchemy import ForeignKey, Numeric, String, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from helpers import open_database
from helpers.exercises import Status
from helpers.exercises.nb07 import check_create_user_with_key, check_transfer

Factory = async_sessionmaker[AsyncSession]


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50), unique=True)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    prefix: Mapped[str] = mapped_column(String(12))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(primary_key=True)
    owner: Mapped[str] = mapped_column(String(50))
    balance: Mapped[Decimal] = mapped_column(Numeric(12, 2))


class InsufficientFunds(Exception):
    pass


# One private database for the module (the checks reset the rows they use), and one event
# loop for the module, since an engine belongs to the loop it was first used on.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def Session() -> AsyncIterator[Factory]:
    db = await open_database("test_nb07")
    try:
        async with db.engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        yield async_sessionmaker(db.engine, expire_on_commit=False)
    finally:
        await db.close()


def locking_select(*ids: int):
    return select(Account).where(Account.id.in_(ids)).order_by(Account.id).with_for_update()


# 07.1 ------------------------------------------------------------------------------------


async def good_transfer(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        accounts = {a.id: a for a in await session.scalars(locking_select(from_id, to_id))}
        if accounts[from_id].balance < amount:
            raise InsufficientFunds
        accounts[from_id].balance -= amount
        accounts[to_id].balance += amount


async def check_07_1(Session: Factory, transfer) -> object:
    return await check_transfer(transfer, Session, Account, InsufficientFunds)


async def test_transfer_correct(Session: Factory) -> None:
    verdict = await check_07_1(Session, good_transfer)
    assert verdict.status is Status.CORRECT, verdict


async def test_transfer_correct_with_two_ordered_gets(Session: Factory) -> None:
    async def transfer(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
        async with Session.begin() as session:
            first, second = sorted((from_id, to_id))
            locked = {i: await session.get(Account, i, with_for_update=True) for i in (first, second)}
            if locked[from_id].balance < amount:
                raise InsufficientFunds
            locked[from_id].balance -= amount
            locked[to_id].balance += amount

    verdict = await check_07_1(Session, transfer)
    assert verdict.status is Status.CORRECT, verdict


async def test_transfer_not_attempted(Session: Factory) -> None:
    async def placeholder(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
        raise NotImplementedError

    assert (await check_07_1(Session, placeholder)).status is Status.NOT_ATTEMPTED
    assert (await check_transfer(..., Session, Account, InsufficientFunds)).status is Status.NOT_ATTEMPTED


async def no_lock(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        source, target = await session.get(Account, from_id), await session.get(Account, to_id)
        if source.balance < amount:
            raise InsufficientFunds
        source.balance -= amount
        target.balance += amount


async def source_first(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        source = await session.get(Account, from_id, with_for_update=True)
        target = await session.get(Account, to_id, with_for_update=True)
        if source.balance < amount:
            raise InsufficientFunds
        source.balance -= amount
        target.balance += amount


async def unordered(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        stmt = select(Account).where(Account.id.in_([from_id, to_id])).with_for_update()
        accounts = {a.id: a for a in await session.scalars(stmt)}
        if accounts[from_id].balance < amount:
            raise InsufficientFunds
        accounts[from_id].balance -= amount
        accounts[to_id].balance += amount


async def value_error(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        accounts = {a.id: a for a in await session.scalars(locking_select(from_id, to_id))}
        if accounts[from_id].balance < amount:
            raise ValueError("insufficient funds")
        accounts[from_id].balance -= amount
        accounts[to_id].balance += amount


async def overdraws(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        accounts = {a.id: a for a in await session.scalars(locking_select(from_id, to_id))}
        accounts[from_id].balance -= amount
        accounts[to_id].balance += amount


async def commits_then_checks(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session() as session:
        accounts = {a.id: a for a in await session.scalars(locking_select(from_id, to_id))}
        accounts[from_id].balance -= amount
        accounts[to_id].balance += amount
        await session.commit()
        if accounts[from_id].balance < 0:
            raise InsufficientFunds


async def never_commits(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session() as session:
        accounts = {a.id: a for a in await session.scalars(locking_select(from_id, to_id))}
        accounts[from_id].balance -= amount
        accounts[to_id].balance += amount


async def strict_comparison(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        accounts = {a.id: a for a in await session.scalars(locking_select(from_id, to_id))}
        if accounts[from_id].balance <= amount:
            raise InsufficientFunds
        accounts[from_id].balance -= amount
        accounts[to_id].balance += amount


async def backwards(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    await good_transfer(Session, to_id, from_id, amount)


async def float_amount(Session: Factory, from_id: int, to_id: int, amount: Decimal) -> None:
    async with Session.begin() as session:
        accounts = {a.id: a for a in await session.scalars(locking_select(from_id, to_id))}
        accounts[from_id].balance -= float(amount)
        accounts[to_id].balance += float(amount)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (no_lock, "no SELECT locked the rows"),
        (source_first, "lock in id order"),
        (unordered, "without ORDER BY"),
        (value_error, "raise the domain error InsufficientFunds"),
        (overdraws, "must be refused"),
        (commits_then_checks, "balances changed"),
        (never_commits, "did the transaction commit"),
        (strict_comparison, "whole balance"),
        (backwards, "subtract from the source"),
        (float_amount, "raised TypeError"),
    ],
)
async def test_transfer_wrong(Session: Factory, answer, hint: str) -> None:
    verdict = await check_07_1(Session, answer)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict


# 07.2 ------------------------------------------------------------------------------------


def new_key() -> tuple[str, str, str]:
    raw = "sk_" + secrets.token_urlsafe(32)
    return raw, raw[:8], hashlib.sha256(raw.encode()).hexdigest()


async def good_signup(Session: Factory, name: str) -> str:
    raw, prefix, digest = new_key()
    async with Session.begin() as session:
        user = User(name=name)
        session.add(user)
        await session.flush()
        session.add(ApiKey(user_id=user.id, prefix=prefix, key_hash=digest))
    return raw


async def check_07_2(Session: Factory, signup) -> object:
    return await check_create_user_with_key(signup, Session, User, ApiKey)


async def test_signup_correct_and_leaves_nothing(Session: Factory) -> None:
    verdict = await check_07_2(Session, good_signup)
    assert verdict.status is Status.CORRECT, verdict
    async with Session() as session:
        assert (await session.scalars(select(User.name).where(User.name.like("exercise-07-2-%")))).all() == []


async def test_signup_not_attempted(Session: Factory) -> None:
    async def placeholder(Session: Factory, name: str) -> str:
        raise NotImplementedError

    assert (await check_07_2(Session, placeholder)).status is Status.NOT_ATTEMPTED


async def stores_raw(Session: Factory, name: str) -> str:
    raw, prefix, _ = new_key()
    async with Session.begin() as session:
        user = User(name=name)
        session.add(user)
        await session.flush()
        session.add(ApiKey(user_id=user.id, prefix=prefix, key_hash=raw[:64]))
    return raw


async def md5_hash(Session: Factory, name: str) -> str:
    raw, prefix, _ = new_key()
    async with Session.begin() as session:
        user = User(name=name)
        session.add(user)
        await session.flush()
        session.add(ApiKey(user_id=user.id, prefix=prefix, key_hash=hashlib.md5(raw.encode()).hexdigest()))
    return raw


async def short_prefix(Session: Factory, name: str) -> str:
    raw, _, digest = new_key()
    async with Session.begin() as session:
        user = User(name=name)
        session.add(user)
        await session.flush()
        session.add(ApiKey(user_id=user.id, prefix=raw[:6], key_hash=digest))
    return raw


async def two_transactions(Session: Factory, name: str) -> str:
    raw, prefix, digest = new_key()
    async with Session.begin() as session:
        user = User(name=name)
        session.add(user)
    async with Session.begin() as session:
        session.add(ApiKey(user_id=user.id, prefix=prefix, key_hash=digest))
    return raw


async def swallows(Session: Factory, name: str) -> str:
    try:
        return await good_signup(Session, name)
    except Exception:
        return "sk_" + secrets.token_urlsafe(32)


async def constant_key(Session: Factory, name: str) -> str:
    raw = "sk_" + "x" * 40
    async with Session.begin() as session:
        user = User(name=name)
        session.add(user)
        await session.flush()
        digest = hashlib.sha256((raw + name).encode()).hexdigest()  # unique, but not of the key
        session.add(ApiKey(user_id=user.id, prefix=raw[:8], key_hash=digest))
    return raw


async def short_key(Session: Factory, name: str) -> str:
    raw = secrets.token_hex(4)
    async with Session.begin() as session:
        user = User(name=name)
        session.add(user)
        await session.flush()
        session.add(
            ApiKey(user_id=user.id, prefix=raw[:8], key_hash=hashlib.sha256(raw.encode()).hexdigest())
        )
    return raw


async def returns_nothing(Session: Factory, name: str) -> None:
    await good_signup(Session, name)


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (stores_raw, "raw key is stored"),
        (md5_hash, "hashlib.sha256"),
        (short_prefix, "first 8 characters"),
        (two_transactions, "user row was committed"),
        (swallows, "do not swallow"),
        (constant_key, "hashlib.sha256"),
        (short_key, "guessable"),
        (returns_nothing, "as a str"),
    ],
)
async def test_signup_wrong(Session: Factory, answer, hint: str) -> None:
    verdict = await check_07_2(Session, answer)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict


async def test_signup_same_key_twice_is_rejected(Session: Factory) -> None:
    fixed = "sk_" + secrets.token_urlsafe(32)
    calls = 0

    async def same_key(Session: Factory, name: str) -> str:
        nonlocal calls
        calls += 1
        async with Session.begin() as session:
            user = User(name=name)
            session.add(user)
            await session.flush()
            # a different hash per row keeps the unique constraint quiet; the key repeats
            digest = hashlib.sha256(fixed.encode()).hexdigest() if calls == 1 else "0" * 64
            session.add(ApiKey(user_id=user.id, prefix=fixed[:8], key_hash=digest))
        return fixed

    verdict = await check_07_2(Session, same_key)
    assert verdict.status is Status.WRONG, verdict
    assert "same key" in verdict.message
