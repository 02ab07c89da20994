"""Self-checks for the exercises of notebook 07 (transactions and savepoints).

* 07.1 ``transfer(Session, from_id, to_id, amount)``: one transaction, exact ``Decimal``,
  ``InsufficientFunds`` raised inside the transaction for an overdraft, nothing changed when
  any step fails.
* 07.2 ``add_users(Session, names) -> list[str]``: one transaction for the batch, each
  INSERT in a savepoint, taken names skipped and returned, any other error rolls back all.

The checks take the notebook's session factory and models, reset only the rows they use, and
watch the learner's code through a private session class (transactions begun, balances
assigned, statements run), removed again before they return.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, event, insert, select
from sqlalchemy.exc import DBAPIError, IntegrityError, InvalidRequestError, StatementError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import ORMExecuteState, SessionTransaction
from sqlalchemy.orm import Session as SyncSession
from sqlalchemy.sql import Select

from helpers.exercises.base import Verdict, check, correct, wrong

__all__ = [
    "SimulatedFailure",
    "StillWaiting",
    "Watch",
    "balances",
    "bounded",
    "check_add_users",
    "check_transfer",
    "is_busy",
    "locked_out",
    "reset_accounts",
    "still_waiting",
    "transfer_verdict",
]

START = {1: Decimal("100.00"), 2: Decimal("50.00"), 3: Decimal("0.00")}
TIME_LIMIT = 10.0  # seconds for one call of the learner's function; tests lower it

Transfer = Callable[[async_sessionmaker[AsyncSession], int, int, Decimal], Awaitable[Any]]
AddUsers = Callable[[async_sessionmaker[AsyncSession], list[str]], Awaitable[Any]]


class SimulatedFailure(RuntimeError):
    """Raised by check 07.2 in place of one INSERT: an error that is not a taken name."""


class StillWaiting(Exception):
    """The learner's function ran longer than TIME_LIMIT (and was cancelled)."""


async def bounded(awaitable: Awaitable[Any]) -> Any:
    """Await the learner's code for at most TIME_LIMIT seconds, then raise StillWaiting."""
    try:
        async with asyncio.timeout(TIME_LIMIT):
            return await awaitable
    except TimeoutError:
        raise StillWaiting from None


def still_waiting(exercise: str) -> Verdict:
    return wrong(
        exercise,
        f"your code was still running after {TIME_LIMIT:.0f} s, so the check stopped it. Most likely "
        "one of its sessions was waiting for a lock that another of its own sessions held (on "
        "PostgreSQL that wait never ends): do all the work in one session and one transaction.",
    )


def is_busy(exc: BaseException) -> bool:
    """SQLite's "database is locked": in a check, only the learner's own sessions hold locks."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlite_errorname", None) == "SQLITE_BUSY"


def locked_out(exercise: str) -> Verdict:
    return wrong(
        exercise,
        "SQLite said 'database is locked': two of your own sessions wanted to write at the same "
        "time, and SQLite allows one writer. Do all the work in one session and one transaction.",
    )


class Watch:
    """A session factory like the learner's, whose sessions report what they do.

    Records the root transactions begun (savepoints not counted), whether a float was
    assigned to a watched attribute, and the SELECT statements run. ``hide`` optionally
    rewrites each SELECT (check 07.2 uses it to stage a concurrent INSERT).
    """

    def __init__(
        self,
        Session: async_sessionmaker[AsyncSession],
        hide: Callable[[Select[Any]], Select[Any] | None] | None = None,
    ) -> None:
        self.transactions: list[SessionTransaction] = []  # kept alive: ids are never reused
        self.selects: list[Select[Any]] = []
        self.floats: list[str] = []
        watch = self

        class WatchedSession(Session.kw.get("sync_session_class", SyncSession)):  # type: ignore[misc]
            pass

        @event.listens_for(WatchedSession, "after_begin")
        def began(session: Any, transaction: SessionTransaction, connection: Any) -> None:
            if not transaction.nested and transaction.parent is None:
                watch.transactions.append(transaction)

        @event.listens_for(WatchedSession, "do_orm_execute")
        def executed(state: ORMExecuteState) -> None:
            statement = state.statement
            if isinstance(statement, Select):
                watch.selects.append(statement)
                if hide is not None and (changed := hide(statement)) is not None:
                    state.statement = changed
            elif not state.is_select:
                try:
                    params = statement.compile().params
                except Exception:  # not compilable without a dialect: nothing to learn from it
                    params = {}
                watch.floats += [name for name, value in params.items() if isinstance(value, float)]

        self.session_class = WatchedSession
        self.factory: async_sessionmaker[AsyncSession] = async_sessionmaker(
            **{**Session.kw, "sync_session_class": WatchedSession}, class_=Session.class_
        )

    @contextmanager
    def floats_assigned_to(self, attribute: Any) -> Iterator[None]:
        """Record a float assigned to ``attribute`` (e.g. ``Account.balance``) while the block runs."""

        def on_set(target: Any, value: Any, old: Any, initiator: Any) -> Any:
            if isinstance(value, float):
                self.floats.append(attribute.key)
            return value

        event.listen(attribute, "set", on_set, retval=True)
        try:
            yield
        finally:
            event.remove(attribute, "set", on_set)

    def reset(self) -> None:
        self.transactions.clear()
        self.selects.clear()
        self.floats.clear()


async def reset_accounts(
    Session: async_sessionmaker[AsyncSession], account_class: Any, start: dict[int, Decimal] = START
) -> None:
    """Replace every row of the accounts table with the check's accounts."""
    table = account_class.__table__
    async with Session.begin() as session:
        await session.execute(delete(table))
        await session.execute(
            insert(table), [{"id": i, "owner": f"owner {i}", "balance": b} for i, b in start.items()]
        )


async def balances(Session: async_sessionmaker[AsyncSession], account_class: Any) -> dict[int, Decimal]:
    async with Session() as session:
        rows = await session.execute(
            select(account_class.id, account_class.balance).order_by(account_class.id)
        )
        return {account_id: balance for account_id, balance in rows}


def _mixes_float(exc: BaseException) -> bool:
    return isinstance(exc, TypeError) and "float" in str(exc) and "Decimal" in str(exc)


FLOAT_HINT = (
    "keep money Decimal from end to end: a float cannot hold 0.10 exactly, so never convert an "
    "amount or a balance with float()."
)


@check("07.1")
async def check_transfer(
    transfer: Transfer,
    Session: async_sessionmaker[AsyncSession],
    account_class: Any,
    insufficient_funds: type[Exception],
) -> Verdict:
    """Run the learner's transfer on accounts 1, 2, 3 holding 100.00, 50.00 and 0.00."""
    watch = Watch(Session)
    try:
        with watch.floats_assigned_to(account_class.balance):
            return await transfer_verdict("07.1", transfer, Session, watch, account_class, insufficient_funds)
    except StillWaiting:
        return still_waiting("07.1")
    except DBAPIError as exc:
        if is_busy(exc):
            return locked_out("07.1")
        raise


async def transfer_verdict(
    exercise: str,
    transfer: Transfer,
    Session: async_sessionmaker[AsyncSession],
    watch: Watch,
    account_class: Any,
    insufficient_funds: type[Exception],
    first_transfer: Callable[[], Verdict | None] | None = None,
) -> Verdict:
    """The checks of an all-or-nothing transfer; ``first_transfer`` adds checks on the first call.

    Exercise 07.1 uses it as it is; exercise 08.1 (notebook 08) adds its lock checks.
    """
    await reset_accounts(Session, account_class)
    try:
        await bounded(transfer(watch.factory, 2, 1, Decimal("20.05")))
    except TypeError as exc:
        if _mixes_float(exc):
            return wrong(exercise, f"your code mixed Decimal and float ({exc}): {FLOAT_HINT}")
        raise
    after = await balances(Session, account_class)
    if watch.floats:
        return wrong(exercise, f"a float reached {watch.floats[0]}: {FLOAT_HINT}")
    if after == START:
        if not watch.transactions:
            return wrong(exercise, "use the session factory passed to your function (its first argument).")
        return wrong(exercise, "transfer(2 → 1, 20.05) changed no balance: did the transaction commit?")
    if sum(after.values()) != sum(START.values()):
        return wrong(exercise, f"money appeared or vanished: the total is {sum(after.values())}, not 150.00.")
    if (after[1], after[2]) != (Decimal("120.05"), Decimal("29.95")):
        return wrong(
            exercise,
            f"after moving 20.05 from account 2 to account 1 the balances are {after[1]} and "
            f"{after[2]}; expected 120.05 and 29.95 (subtract from the source, add to the target).",
        )
    if not watch.transactions:
        return wrong(exercise, "use the session factory passed to your function (its first argument).")
    if len(watch.transactions) > 1:
        return wrong(
            exercise,
            f"one transfer ran {len(watch.transactions)} transactions: read, check and write both "
            "balances inside one `async with Session.begin()` block, so they commit together or not at all.",
        )
    if first_transfer is not None and (verdict := first_transfer()) is not None:
        return verdict

    whole = wrong(exercise, "sending an account's whole balance (29.95 of 29.95) must be allowed.")
    try:
        await bounded(transfer(watch.factory, 2, 3, Decimal("29.95")))
    except insufficient_funds:
        return whole
    if (await balances(Session, account_class))[2] != Decimal("0.00"):
        return whole

    before = await balances(Session, account_class)
    try:
        await bounded(transfer(watch.factory, 2, 1, Decimal("0.01")))
    except insufficient_funds as exc:
        raised: Exception = exc
    except StillWaiting:
        raise
    except TypeError as exc:
        if insufficient_funds.__name__ not in str(exc):
            raise
        return wrong(
            exercise,
            f"creating the domain error failed ({exc}): raise it as "
            f"{insufficient_funds.__name__}(account_id, balance, amount).",
        )
    except Exception as exc:
        return wrong(
            exercise,
            f"an overdraft raised {type(exc).__name__}: {exc}; raise the domain error "
            f"{insufficient_funds.__name__} instead.",
        )
    else:
        if (await balances(Session, account_class))[2] < 0:
            return wrong(exercise, "account 2 holds 0.00 and sent 0.01: an overdraft must be refused.")
        return wrong(
            exercise, f"an overdraft of 0.01 from an empty account must raise {insufficient_funds.__name__}."
        )
    if await balances(Session, account_class) != before:
        return wrong(
            exercise,
            "the overdraft raised the right error but balances changed: raise it inside the "
            "transaction, before anything is committed.",
        )
    details = {name: getattr(raised, name, None) for name in ("account_id", "balance", "amount")}
    expected = {"account_id": 2, "balance": Decimal("0.00"), "amount": Decimal("0.01")}
    if any(hasattr(raised, name) for name in details) and details != expected:
        return wrong(
            exercise,
            f"{insufficient_funds.__name__} carried {details}; expected {expected} (the source "
            "account, its balance, the amount).",
        )

    missing = 99
    try:
        await bounded(transfer(watch.factory, 1, missing, Decimal("1.00")))
    except StillWaiting:
        raise
    except Exception:
        pass
    else:
        if await balances(Session, account_class) != before:
            return wrong(
                exercise,
                f"1.00 left account 1 for account {missing}, which does not exist, and the change "
                "was committed: an error inside the transaction was caught, so the block committed "
                "the half that had run. Let it propagate: session.begin() then rolls back.",
            )
        return wrong(
            exercise,
            f"a transfer to account {missing}, which does not exist, returned normally: raise an "
            "error so the caller knows nothing was sent.",
        )
    if await balances(Session, account_class) != before:
        return wrong(
            exercise,
            f"a transfer to the missing account {missing} failed, but account 1 was debited anyway: "
            "debit and credit must be in one transaction.",
        )
    return correct(
        exercise,
        "one transaction, exact Decimal, and a failed transfer changes nothing."
        if first_transfer is None
        else "one transaction, rows locked in id order, and a failed transfer changes nothing.",
    )


# 07.2 ------------------------------------------------------------------------------------------

PREFIX = "exercise-07-2-"
TAKEN, RACER, BOOM = f"{PREFIX}taken", f"{PREFIX}racer", f"{PREFIX}boom"


@contextmanager
def _failing_insert_of(Session: async_sessionmaker[AsyncSession], value: str) -> Iterator[None]:
    """Make the INSERT whose parameters contain ``value`` raise SimulatedFailure."""
    bind = Session.kw.get("bind")
    engine = bind.sync_engine if hasattr(bind, "sync_engine") else bind

    def refuse(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        rows = parameters if isinstance(parameters, list) else [parameters]
        flat = [v for row in rows for v in (row.values() if isinstance(row, dict) else row or ())]
        if statement.lstrip().upper().startswith("INSERT") and value in flat:
            raise SimulatedFailure(f"simulated failure while inserting {value!r}")

    event.listen(engine, "before_cursor_execute", refuse)
    try:
        yield
    finally:
        event.remove(engine, "before_cursor_execute", refuse)


async def _names(Session: async_sessionmaker[AsyncSession], user_class: Any) -> set[str]:
    async with Session() as session:
        return set(await session.scalars(select(user_class.name).where(user_class.name.startswith(PREFIX))))


async def _forget(Session: async_sessionmaker[AsyncSession], user_class: Any) -> None:
    table = user_class.__table__
    async with Session.begin() as session:
        await session.execute(delete(table).where(table.c.name.startswith(PREFIX)))


@check("07.2")
async def check_add_users(
    add_users: AddUsers, Session: async_sessionmaker[AsyncSession], user_class: Any
) -> Verdict:
    """Import a batch with a taken name and a name "another transaction" inserts meanwhile."""
    await _forget(Session, user_class)
    try:
        return await _check_add_users(add_users, Session, user_class)
    except StillWaiting:
        return still_waiting("07.2")
    except DBAPIError as exc:
        if is_busy(exc):
            return locked_out("07.2")
        raise
    finally:
        await _forget(Session, user_class)


def _hide_racer(user_class: Any) -> Callable[[Select[Any]], Select[Any] | None]:
    """SELECTs on the users table do not see RACER: as if another transaction inserted it
    after the learner's SELECT and before the learner's INSERT."""
    table = user_class.__table__

    def hide(statement: Select[Any]) -> Select[Any] | None:
        if _is_users_select(statement, user_class):
            return statement.where(table.c.name != RACER)
        return None

    return hide


def _is_users_select(statement: Select[Any], user_class: Any) -> bool:
    return any(f.is_derived_from(user_class.__table__) for f in statement.get_final_froms())


async def _check_add_users(
    add_users: AddUsers, Session: async_sessionmaker[AsyncSession], user_class: Any
) -> Verdict:
    async with Session.begin() as session:
        session.add_all([user_class(name=TAKEN), user_class(name=RACER)])
    a, b, c = (f"{PREFIX}{x}" for x in "abc")
    batch = [a, TAKEN, b, RACER, c]
    watch = Watch(Session, hide=_hide_racer(user_class))
    try:
        skipped = await bounded(add_users(watch.factory, list(batch)))
    except IntegrityError as exc:
        looked_first = any(_is_users_select(s, user_class) for s in watch.selects)
        if looked_first and RACER in str(exc):
            return wrong(
                "07.2",
                f"your SELECT did not find {RACER!r}, but another transaction inserted it before your "
                "INSERT, and the batch failed with IntegrityError. Looking first cannot prevent that: "
                "try each INSERT inside session.begin_nested() and catch IntegrityError.",
            )
        return wrong(
            "07.2",
            "a taken name made add_users raise IntegrityError: catch it around the "
            "`async with session.begin_nested():` block (the INSERT is sent when that block ends, or "
            "at your flush() inside it).",
        )
    except InvalidRequestError as exc:  # PendingRollbackError is one
        return wrong(
            "07.2",
            f"after the first taken name your code raised {type(exc).__name__}: a failed flush rolls back "
            "the whole transaction, and catching IntegrityError does not bring it back. Put each "
            "INSERT in session.begin_nested(), so only that savepoint is rolled back.",
        )
    stored = await _names(Session, user_class)
    new = {a, b, c}
    if not watch.transactions:
        return wrong("07.2", "use the session factory passed to your function (its first argument).")
    if not stored & new:
        return wrong(
            "07.2",
            "no name of the batch was committed: after the first taken name the whole transaction "
            "was rolled back (a failed flush ends it, even when you catch the IntegrityError). Put "
            "each INSERT in session.begin_nested().",
        )
    if stored & new != new:
        lost = sorted(new - stored)
        return wrong(
            "07.2",
            f"{lost} were not committed. A rollback (session.rollback(), or a failed flush without a "
            "savepoint) undoes everything since the transaction began, not just the failed INSERT: "
            "roll back only a savepoint, with session.begin_nested().",
        )
    if skipped != [TAKEN, RACER]:
        return wrong(
            "07.2",
            f"for the batch {batch} return the taken names in order, {[TAKEN, RACER]}, not {skipped!r}.",
        )
    if len(watch.transactions) > 1:
        return wrong(
            "07.2",
            f"one batch ran {len(watch.transactions)} transactions: use one `async with Session.begin()` "
            "for the whole batch and a savepoint (session.begin_nested()) per name.",
        )

    await _forget(Session, user_class)
    d, e = f"{PREFIX}d", f"{PREFIX}e"
    watch.reset()
    try:
        with _failing_insert_of(Session, BOOM):
            await bounded(add_users(watch.factory, [d, e, BOOM]))
    except (SimulatedFailure, StatementError) as exc:
        if isinstance(exc, StatementError) and not isinstance(exc.orig, SimulatedFailure):
            raise
    except StillWaiting:
        raise
    except Exception as exc:
        return wrong(
            "07.2",
            f"when an INSERT failed for another reason than a taken name, your code raised "
            f"{type(exc).__name__} instead of letting the original error propagate.",
        )
    else:
        return wrong(
            "07.2",
            "the check made one INSERT fail with an error that is not a taken name, and add_users "
            "returned normally: catch only IntegrityError; any other error must leave the "
            "transaction block, so the whole batch is rolled back and the caller knows.",
        )
    if await _names(Session, user_class):
        return wrong(
            "07.2",
            "the batch failed on its last name, yet the names before it were committed: add the whole "
            "batch in one transaction, so a failure rolls all of it back.",
        )
    return correct("07.2", "one transaction, a savepoint per name, and a real failure rolls back the batch.")
