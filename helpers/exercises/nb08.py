"""Self-checks for the exercises of the locking and isolation lesson (notebook 08).

* 08.1 ``transfer(Session, from_id, to_id, amount)``: everything exercise 07.1 asks, and both
  rows locked with ``with_for_update()`` in id order, in the transaction that writes them.
* 08.2 ``run_with_retry(Session, work, attempts)``: each attempt in a new transaction, only
  errors ``retryable()`` accepts retried, at most ``attempts`` calls, the last error re-raised.

As in ``nb07``, the checks reset only the rows they use and watch the learner's sessions
through a private session class.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.sql import Select

from helpers.exercises.base import Verdict, check, correct, wrong
from helpers.exercises.nb07 import (
    StillWaiting,
    Transfer,
    Watch,
    balances,
    is_busy,
    locked_out,
    reset_accounts,
    still_waiting,
    transfer_verdict,
)

__all__ = ["SimulatedDeadlock", "check_locked_transfer", "check_retry"]


# 08.1 ------------------------------------------------------------------------------------------


def _lock_clause(statement: Any) -> str | None:
    """The row-lock clause PostgreSQL would get for this SELECT ("FOR UPDATE", ...), or None."""
    if not isinstance(statement, Select):
        return None
    sql = str(statement.compile(dialect=postgresql.dialect()))
    for clause in ("FOR NO KEY UPDATE", "FOR UPDATE", "FOR KEY SHARE", "FOR SHARE"):
        if f" {clause}" in sql:
            return clause + (" SKIP LOCKED" if "SKIP LOCKED" in sql else "")
    return None


def _row_ids(row: Any, account_class: type) -> list[int]:
    ids = [element.id for element in row if isinstance(element, account_class)]
    if not ids and "id" in row._mapping:
        ids = [row._mapping["id"]]
    return ids


class LockWatch(Watch):
    """A :class:`Watch` that also records which account ids each locking SELECT returned."""

    def __init__(self, Session: async_sessionmaker[AsyncSession], account_class: type) -> None:
        super().__init__(Session)
        self.locked: list[tuple[str, list[int]]] = []  # (clause, ids in the order returned)
        self.unordered_multi_row = False
        watch = self

        @event.listens_for(self.session_class, "do_orm_execute")
        def record(state: ORMExecuteState) -> Any:
            clause = _lock_clause(state.statement)
            if clause is None:
                return None
            frozen = state.invoke_statement().freeze()
            ids = [i for row in frozen().all() for i in _row_ids(row, account_class)]
            watch.locked.append((clause, ids))
            if len(ids) > 1 and " ORDER BY " not in str(
                state.statement.compile(dialect=postgresql.dialect())
            ):
                watch.unordered_multi_row = True
            return frozen()

    @property
    def order(self) -> list[int]:
        return [i for _, ids in self.locked for i in ids]

    def verdict(self) -> Verdict | None:
        """Checked after transfer(2 → 1): both rows locked for update, in id order."""
        shared = [clause for clause, _ in self.locked if "SHARE" in clause]
        if shared:
            return wrong(
                "08.1",
                f"with_for_update(read=True) renders {shared[0]}: both transfers may hold it at once, "
                "then each waits for the other to release it before writing (a deadlock). Lock for "
                "writing: with_for_update().",
            )
        if any("SKIP LOCKED" in clause for clause, _ in self.locked):
            return wrong(
                "08.1",
                "skip_locked=True leaves out rows another transaction holds, so a busy account would "
                "look missing: wait for the lock instead (plain with_for_update()).",
            )
        if not self.locked:
            return wrong(
                "08.1",
                "the balances are right, but no SELECT locked the rows: without a lock, two transfers "
                "can both read the old balance and one update is lost. Read both accounts with "
                ".with_for_update() (or session.get(..., with_for_update=True)) before changing them.",
            )
        if sorted(set(self.order)) != [1, 2]:
            return wrong("08.1", f"your locking SELECTs returned accounts {self.order}; lock both 1 and 2.")
        if self.order != sorted(self.order):
            return wrong(
                "08.1",
                f"for a transfer from 2 to 1 you locked the rows in the order {self.order}: lock in "
                "id order whatever the direction, or two opposite transfers can deadlock.",
            )
        if self.unordered_multi_row:
            return wrong(
                "08.1",
                "one SELECT ... FOR UPDATE locks several rows without ORDER BY: the database locks "
                "them in whatever order it reads them. Add .order_by(Account.id).",
            )
        return None


@check("08.1")
async def check_locked_transfer(
    transfer: Transfer,
    Session: async_sessionmaker[AsyncSession],
    account_class: Any,
    insufficient_funds: type[Exception],
) -> Verdict:
    """Exercise 07.1's checks, plus the row locks, on accounts 1, 2, 3 (100.00, 50.00, 0.00)."""
    watch = LockWatch(Session, account_class)
    try:
        with watch.floats_assigned_to(account_class.balance):
            return await transfer_verdict(
                "08.1",
                transfer,
                Session,
                watch,
                account_class,
                insufficient_funds,
                first_transfer=watch.verdict,
            )
    except StillWaiting:
        return still_waiting("08.1")
    except DBAPIError as exc:
        if is_busy(exc):
            return locked_out("08.1")
        raise


# 08.2 ------------------------------------------------------------------------------------------

Work = Callable[[AsyncSession], Awaitable[Any]]
RunWithRetry = Callable[..., Awaitable[Any]]
TIME_LIMIT = 20.0  # seconds for one call of the learner's function (backoff sleeps included)
RUNAWAY = 12  # calls of work after which the check stops a loop that never gives up


class SimulatedDeadlock(Exception):
    """Stands in for the driver's error: what retryable() looks at, as a real deadlock has it."""

    sqlstate = "40P01"  # PostgreSQL: deadlock_detected
    sqlite_errorname = "SQLITE_BUSY"  # SQLite: database is locked


class SimulatedUniqueViolation(Exception):
    """A driver error no retry can cure: a unique constraint refused the row."""

    sqlstate = "23505"  # PostgreSQL: unique_violation
    sqlite_errorname = "SQLITE_CONSTRAINT_UNIQUE"


class _Runaway(BaseException):
    """Raised by the check's work when the learner's loop has called it far too often."""


def _driver_error(orig: Exception) -> DBAPIError:
    return DBAPIError("UPDATE accounts SET balance=... (simulated by the check)", None, orig)


class _Work:
    """The check's unit of work: add 1.00 to account 1, then fail as scripted."""

    def __init__(self, account_class: Any, failures: list[BaseException | None]) -> None:
        self.account_class = account_class
        self.failures = failures  # what call n raises (None: succeed); the last entry repeats
        self.calls = 0

    async def __call__(self, session: AsyncSession) -> str:
        self.calls += 1
        if self.calls > RUNAWAY:
            raise _Runaway
        account = await session.get(self.account_class, 1)
        if account is None:
            raise LookupError("account 1 is missing")
        account.balance += Decimal("1.00")
        await session.flush()  # the write reaches the database before the failure
        failure = self.failures[min(self.calls, len(self.failures)) - 1]
        if failure is not None:
            raise failure
        return "done"


async def _call(run_with_retry: RunWithRetry, Session: Any, work: _Work, attempts: int) -> Any:
    async with asyncio.timeout(TIME_LIMIT):
        return await run_with_retry(Session, work, attempts)


@check("08.2")
async def check_retry(
    run_with_retry: RunWithRetry, Session: async_sessionmaker[AsyncSession], account_class: Any
) -> Verdict:
    """Script failures for the learner's retry loop and count what it does."""
    try:
        return await _check_retry(run_with_retry, Session, account_class)
    except _Runaway:
        return wrong(
            "08.2",
            f"your loop called work {RUNAWAY} times and would not stop: give up after `attempts` "
            "calls and re-raise the last error.",
        )
    except TimeoutError:
        return wrong("08.2", f"your function was still running after {TIME_LIMIT:.0f} s: bound the retries.")


async def _balance(Session: async_sessionmaker[AsyncSession], account_class: Any) -> Decimal:
    return (await balances(Session, account_class))[1]


async def _check_retry(
    run_with_retry: RunWithRetry, Session: async_sessionmaker[AsyncSession], account_class: Any
) -> Verdict:
    start = {1: Decimal("100.00")}
    # 1. Two deadlocks, then success.
    await reset_accounts(Session, account_class, start)
    watch = Watch(Session)
    deadlock = _driver_error(SimulatedDeadlock("deadlock detected"))
    work = _Work(account_class, [deadlock, deadlock, None])
    try:
        result = await _call(run_with_retry, watch.factory, work, 3)
    except DBAPIError:
        return wrong(
            "08.2",
            f"a deadlock on call {work.calls} of 3 reached the caller: catch DBAPIError (asyncpg "
            "raises a deadlock as a plain DBAPIError, psycopg as an OperationalError, which is a "
            "DBAPIError too) and retry when retryable(exc) is true.",
        )
    added = await _balance(Session, account_class) - start[1]
    if work.calls and not watch.transactions:
        return wrong(
            "08.2", "open the sessions from the factory passed to your function (its first argument)."
        )
    if work.calls < 3:
        return wrong(
            "08.2",
            f"work failed twice with a deadlock and your function called it only {work.calls} time(s): "
            "retry while retryable(exc) is true and attempts remain.",
        )
    if work.calls > 3:
        return wrong("08.2", f"work succeeded on call 3, yet your function called it {work.calls} times.")
    if added != Decimal("1.00"):
        return wrong(
            "08.2",
            f"three attempts of a unit of work that adds 1.00 added {added}: the failed attempts' "
            "writes were kept. Run each attempt in a new transaction (a new `async with "
            "Session.begin()`), so a failed one is rolled back; after a real deadlock the old "
            "transaction cannot even be used any more.",
        )
    if result != "done":
        return wrong("08.2", f"return what work returned ('done'), not {result!r}.")

    # 2. Deadlocks every time: give up after `attempts` calls, with the error.
    await reset_accounts(Session, account_class, start)
    deadlock = _driver_error(SimulatedDeadlock("deadlock detected"))
    work = _Work(account_class, [deadlock])
    try:
        returned = await _call(run_with_retry, Session, work, 4)
    except DBAPIError as exc:
        if work.calls != 4:
            return wrong(
                "08.2",
                f"with attempts=4 and work failing every time your function called it {work.calls} "
                "times: attempts counts every call, the first one included.",
            )
        if exc.orig is not deadlock.orig:
            return wrong("08.2", "re-raise the last error itself (a bare `raise`), not a new one.")
    except Exception as exc:
        return wrong(
            "08.2",
            f"when the attempts ran out your function raised {type(exc).__name__}: re-raise the last "
            "error itself (a bare `raise`), so the caller can still tell a deadlock from other failures.",
        )
    else:
        return wrong(
            "08.2",
            f"work failed on every attempt and your function returned {returned!r}: re-raise the last "
            "error, or the caller believes the work was done.",
        )
    if await _balance(Session, account_class) != start[1]:
        return wrong("08.2", "every attempt failed, yet some of their writes were committed.")

    # 3. An error that is not retryable: the domain error, and a unique violation.
    for label, error in (
        ("ValueError('insufficient funds')", ValueError("insufficient funds")),
        (
            "a unique violation (a DBAPIError that retryable() rejects)",
            _driver_error(SimulatedUniqueViolation()),
        ),
    ):
        work = _Work(account_class, [error, None])
        try:
            await _call(run_with_retry, Session, work, 3)
        except type(error):
            if work.calls == 1:
                continue
        except Exception as exc:
            return wrong("08.2", f"for {label} your function raised {type(exc).__name__}; let it propagate.")
        return wrong(
            "08.2",
            f"work raised {label} and your function called it {work.calls} times: retry only when "
            "retryable(exc) is true; another run cannot fix this error, so raise it at once.",
        )
    return correct(
        "08.2", "a new transaction per attempt, only retryable errors retried, the last one re-raised."
    )
