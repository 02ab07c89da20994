"""Self-checks for the exercises of notebook 07 (transactions).

* 07.1 ``transfer(Session, from_id, to_id, amount)``: one transaction, both rows locked with
  ``with_for_update()`` in id order, ``InsufficientFunds`` for an overdraft, exact ``Decimal``.
* 07.2 ``signup(Session, name) -> str``: a user and an API key created atomically, only the
  key's prefix and SHA-256 digest stored, the raw key returned.

Both checks take the notebook's session factory and models, reset the rows they use, and
watch the learner's code through a private session class (statements and rows it locked) or
an engine listener (a forced failure), removed again before they return.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, event, func, insert, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.orm import Session as SyncSession
from sqlalchemy.sql import Select

from helpers.exercises.base import Verdict, check, correct, wrong

__all__ = ["PREFIX_LENGTH", "SimulatedFailure", "check_create_user_with_key", "check_transfer"]

PREFIX_LENGTH = 8
START = {1: Decimal("100.00"), 2: Decimal("50.00"), 3: Decimal("0.00")}

Transfer = Callable[[async_sessionmaker[AsyncSession], int, int, Decimal], Awaitable[Any]]
Signup = Callable[[async_sessionmaker[AsyncSession], str], Awaitable[Any]]


class SimulatedFailure(RuntimeError):
    """Raised by check 07.2 in place of the API key INSERT."""


def _locks(statement: Any) -> tuple[bool, bool]:
    """(renders FOR UPDATE on PostgreSQL, has ORDER BY) for a SELECT statement."""
    if not isinstance(statement, Select):
        return False, False
    sql = str(statement.compile(dialect=postgresql.dialect()))
    return " FOR UPDATE" in sql or " FOR NO KEY UPDATE" in sql, " ORDER BY " in sql


def _row_ids(row: Any, account_class: type) -> list[int]:
    ids = [element.id for element in row if isinstance(element, account_class)]
    if not ids and "id" in row._mapping:
        ids = [row._mapping["id"]]
    return ids


class _LockWatch:
    """A session factory like the learner's, which records what each locking SELECT returned."""

    def __init__(self, Session: async_sessionmaker[AsyncSession], account_class: type) -> None:
        self.locked: list[list[int]] = []  # ids per locking statement, in the order returned
        self.unordered_multi_row = False
        watch = self

        class WatchedSession(Session.kw.get("sync_session_class", SyncSession)):  # type: ignore[misc]
            pass

        @event.listens_for(WatchedSession, "do_orm_execute")
        def record(state: ORMExecuteState) -> Any:
            if not state.is_select:
                return None
            for_update, ordered = _locks(state.statement)
            if not for_update:
                return None
            frozen = state.invoke_statement().freeze()
            ids = [i for row in frozen().all() for i in _row_ids(row, account_class)]
            watch.locked.append(ids)
            if len(ids) > 1 and not ordered:
                watch.unordered_multi_row = True
            return frozen()

        self.factory: async_sessionmaker[AsyncSession] = async_sessionmaker(
            **{**Session.kw, "sync_session_class": WatchedSession}, class_=Session.class_
        )

    @property
    def order(self) -> list[int]:
        return [i for ids in self.locked for i in ids]


async def _reset_accounts(Session: async_sessionmaker[AsyncSession], account_class: Any) -> None:
    table = account_class.__table__
    async with Session.begin() as session:
        await session.execute(delete(table))
        await session.execute(
            insert(table), [{"id": i, "owner": f"owner {i}", "balance": b} for i, b in START.items()]
        )


async def _balances(Session: async_sessionmaker[AsyncSession], account_class: Any) -> dict[int, Decimal]:
    async with Session() as session:
        rows = await session.execute(
            select(account_class.id, account_class.balance).order_by(account_class.id)
        )
        return {account_id: balance for account_id, balance in rows}


@check("07.1")
async def check_transfer(
    transfer: Transfer,
    Session: async_sessionmaker[AsyncSession],
    account_class: type,
    insufficient_funds: type[Exception],
) -> Verdict:
    """Run the learner's transfer on accounts 1, 2, 3 holding 100.00, 50.00 and 0.00."""
    await _reset_accounts(Session, account_class)

    watch = _LockWatch(Session, account_class)
    await transfer(watch.factory, 2, 1, Decimal("20.05"))
    after = await _balances(Session, account_class)
    if after == START:
        return wrong("07.1", "transfer(2 → 1, 20.05) changed no balance: did the transaction commit?")
    if after[1] + after[2] + after[3] != sum(START.values()):
        return wrong("07.1", f"money appeared or vanished: the total is {sum(after.values())}, not 150.00.")
    if (after[1], after[2]) != (Decimal("120.05"), Decimal("29.95")):
        return wrong(
            "07.1",
            f"after moving 20.05 from account 2 to account 1 the balances are {after[1]} and "
            f"{after[2]}; expected 120.05 and 29.95 (subtract from the source, add to the target).",
        )
    if not watch.locked:
        return wrong(
            "07.1",
            "the balances are right, but no SELECT locked the rows: read both accounts with "
            ".with_for_update() (or session.get(..., with_for_update=True)) before changing them.",
        )
    if sorted(set(watch.order)) != [1, 2]:
        return wrong("07.1", f"your locking SELECTs returned accounts {watch.order}; lock both 1 and 2.")
    if watch.order != sorted(watch.order):
        return wrong(
            "07.1",
            f"for a transfer from 2 to 1 you locked the rows in the order {watch.order}: lock in "
            "id order whatever the direction, or two opposite transfers can deadlock.",
        )
    if watch.unordered_multi_row:
        return wrong(
            "07.1",
            "one SELECT ... FOR UPDATE locks several rows without ORDER BY: add .order_by(Account.id) "
            "so the lock order is fixed.",
        )

    for _ in range(10):
        await transfer(Session, 1, 3, Decimal("0.10"))
    after = await _balances(Session, account_class)
    if after[3] != Decimal("1.00") or after[1] != Decimal("119.05"):
        return wrong(
            "07.1",
            f"ten transfers of 0.10 from account 1 to 3 left {after[1]} and {after[3]}, not 119.05 "
            "and 1.00: keep amounts Decimal, never float.",
        )

    whole = wrong("07.1", "sending an account's whole balance (29.95 of 29.95) must be allowed.")
    try:
        await transfer(Session, 2, 3, Decimal("29.95"))
    except insufficient_funds:
        return whole
    if (await _balances(Session, account_class))[2] != Decimal("0.00"):
        return whole
    after = await _balances(Session, account_class)

    before = after
    try:
        await transfer(Session, 2, 1, Decimal("0.01"))
    except insufficient_funds:
        pass
    except Exception as exc:
        return wrong(
            "07.1",
            f"an overdraft raised {type(exc).__name__}: {exc}; raise the domain error "
            f"{insufficient_funds.__name__} instead.",
        )
    else:
        if (await _balances(Session, account_class))[2] < 0:
            return wrong("07.1", "account 2 holds 0.00 and sent 0.01: an overdraft must be refused.")
        return wrong(
            "07.1", f"an overdraft of 0.01 from an empty account must raise {insufficient_funds.__name__}."
        )
    if await _balances(Session, account_class) != before:
        return wrong(
            "07.1",
            "the overdraft raised the right error but balances changed: raise it inside the "
            "transaction, before anything is committed.",
        )
    return correct("07.1", "exact, locked in id order, and an overdraft changes nothing.")


@contextmanager
def _failing_api_key_insert(Session: async_sessionmaker[AsyncSession], table_name: str) -> Iterator[None]:
    """Make every INSERT into the API key table raise SimulatedFailure while the block runs."""
    bind = Session.kw.get("bind")
    engine = bind.sync_engine if hasattr(bind, "sync_engine") else bind

    def refuse(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(f"INSERT INTO {table_name.upper()}"):
            raise SimulatedFailure("simulated failure of the API key INSERT")

    event.listen(engine, "before_cursor_execute", refuse)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", refuse)


NAMES = ("exercise-07-2-a", "exercise-07-2-b", "exercise-07-2-fail")


async def _forget_users(Session: async_sessionmaker[AsyncSession], user_class: Any, key_class: Any) -> None:
    async with Session.begin() as session:
        ids = select(user_class.id).where(user_class.name.in_(NAMES))
        await session.execute(delete(key_class.__table__).where(key_class.__table__.c.user_id.in_(ids)))
        await session.execute(delete(user_class.__table__).where(user_class.__table__.c.name.in_(NAMES)))


@check("07.2")
async def check_create_user_with_key(
    signup: Signup, Session: async_sessionmaker[AsyncSession], user_class: Any, key_class: Any
) -> Verdict:
    """Sign up two users, inspect what was stored, then force the key INSERT to fail once."""
    await _forget_users(Session, user_class, key_class)
    try:
        return await _check_signup(signup, Session, user_class, key_class)
    finally:
        await _forget_users(Session, user_class, key_class)


async def _check_signup(
    signup: Signup, Session: async_sessionmaker[AsyncSession], user_class: Any, key_class: Any
) -> Verdict:
    raw = await signup(Session, NAMES[0])
    if not isinstance(raw, str):
        return wrong("07.2", f"return the raw key as a str, not {type(raw).__name__}.")
    async with Session() as session:
        rows = (
            (
                await session.execute(
                    select(key_class)
                    .join(user_class, key_class.user_id == user_class.id)
                    .where(user_class.name == NAMES[0])
                )
            )
            .scalars()
            .all()
        )
    if not rows:
        return wrong(
            "07.2", "no ApiKey row was committed for the new user (set user_id from the flushed user)."
        )
    if len(rows) > 1:
        return wrong("07.2", f"{len(rows)} API keys were stored for one signup; store exactly one.")
    if len(raw) < 32:
        return wrong("07.2", f"a {len(raw)}-character key is guessable; use e.g. secrets.token_urlsafe(32).")
    stored = rows[0]
    stored_text = [str(v) for v in (stored.prefix, stored.key_hash)]
    if any(raw in value for value in stored_text):
        return wrong("07.2", "the raw key is stored in the database: store only its prefix and its hash.")
    digest = hashlib.sha256(raw.encode()).hexdigest()
    if stored.key_hash != digest:
        return wrong(
            "07.2", "key_hash must be hashlib.sha256(raw_key.encode()).hexdigest() of the key you return."
        )
    if stored.prefix != raw[:PREFIX_LENGTH]:
        return wrong("07.2", f"prefix must be the first {PREFIX_LENGTH} characters of the raw key.")
    second = await signup(Session, NAMES[1])
    if second == raw:
        return wrong("07.2", "two signups returned the same key: generate a new one each time with secrets.")

    try:
        with _failing_api_key_insert(Session, key_class.__tablename__):
            await signup(Session, NAMES[2])
    except SimulatedFailure:
        pass
    except Exception as exc:  # e.g. PendingRollbackError after swallowing the failure
        return wrong(
            "07.2",
            f"after the simulated key INSERT failure your code raised {type(exc).__name__}; let "
            "the original error propagate out of the transaction block.",
        )
    else:
        return wrong(
            "07.2",
            "the check made the ApiKey INSERT fail, yet signup returned normally: do not swallow "
            "the error, the caller must know there is no key.",
        )
    async with Session() as session:
        left = await session.scalar(
            select(func.count()).select_from(user_class).where(user_class.name == NAMES[2])
        )
    if left:
        return wrong(
            "07.2",
            "the API key INSERT failed but the user row was committed: create both in one "
            "transaction (one `async with Session.begin()` block), with no commit in between.",
        )
    return correct("07.2", "both rows or neither, and only the hash and prefix are stored.")
