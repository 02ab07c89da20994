"""Self-checks for notebook 10 (FastAPI).

* 09.1 :func:`check_rename_user`: a service function that ends its own write with a commit,
  also when something used the session before it, returns a response model and raises the
  notebook's domain errors.
* 09.2 :func:`check_committing_session`: a session dependency whose commit happens before the
  response is sent, so a failed commit is not reported to the client as a success, and which
  commits nothing when the route fails.

Both checks reload the sample data (:func:`helpers.sample_data.load_sample_data`) into the
engine they are given, so they start from the same rows every time.
"""

import inspect
import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.exc import InvalidRequestError, MissingGreenlet, PendingRollbackError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase

from helpers.exercises.base import Verdict, check, correct, wrong
from helpers.models import Tag, User
from helpers.queries import QueryRecorder
from helpers.sample_data import load_sample_data

__all__ = ["check_committing_session", "check_rename_user"]


async def _name_of(engine: AsyncEngine, user_id: int) -> str | None:
    async with AsyncSession(engine) as session:
        return await session.scalar(select(User.name).where(User.id == user_id))


def _is_missing_greenlet(exc: BaseException) -> bool:
    """A refused lazy load: MissingGreenlet itself (asyncpg; SQLAlchemy 2.0), wrapped in a
    StatementError (aiosqlite and psycopg under 2.1), or reported by pydantic reading an
    attribute (model_validate)."""
    if isinstance(exc, MissingGreenlet):
        return True
    if isinstance(exc, StatementError):
        return isinstance(exc.orig, MissingGreenlet)
    if isinstance(exc, ValidationError):
        return any("MissingGreenlet" in str(error.get("msg", "")) for error in exc.errors())
    return False


_BUILT_AFTER_COMMIT = (
    "reading the user after commit() needed a query (MissingGreenlet): commit expires loaded "
    "objects. Build the UserOut before you commit."
)


@check("10.1")
async def check_rename_user(
    rename_user: Callable[[AsyncSession, int, str], Awaitable[Any]],
    engine: AsyncEngine,
    *,
    not_found: type[Exception],
    conflict: type[Exception],
) -> Verdict:
    """Rename grace (id 2) in a fresh session and in one a dependency already used, then try an
    unknown id and a taken name."""
    exercise = "10.1"
    await load_sample_data(engine)

    # 1. A fresh session, as a route with no other dependency gives it.
    async with AsyncSession(engine) as session:
        try:
            result = await rename_user(session, 2, "grace hopper")
        except (MissingGreenlet, StatementError, ValidationError) as exc:
            if _is_missing_greenlet(exc):
                return wrong(exercise, _BUILT_AFTER_COMMIT)
            raise
    if result is None:
        return wrong(exercise, "return the renamed user as a UserOut, built before the commit.")
    if isinstance(result, DeclarativeBase):
        return wrong(
            exercise,
            "you returned the ORM object; return UserOut.model_validate(user), built before the "
            "commit, so the response never touches the session again.",
        )
    if getattr(result, "id", None) != 2 or getattr(result, "name", None) != "grace hopper":
        return wrong(exercise, f"expected a UserOut with id 2 and the new name, got {result!r}.")
    if await _name_of(engine, 2) != "grace hopper":
        return wrong(
            exercise,
            "another session does not see the new name: the change was never committed. End the "
            "write with `await session.commit()`.",
        )

    # 2. A session a dependency already used (say, to load the calling user): autobegin.
    async with AsyncSession(engine) as session:
        await session.get(User, 1)
        try:
            await rename_user(session, 2, "amazing grace")
        except InvalidRequestError as exc:
            if "already begun" not in str(exc):
                raise
            return wrong(
                exercise,
                "`session.begin()` failed: something used the session before your function, so its "
                "transaction had already begun (autobegin). Do not open the transaction yourself: "
                "end the write with `await session.commit()`, which commits whatever began it.",
            )
        left_open = session.in_transaction()
    if await _name_of(engine, 2) != "amazing grace":
        hint = (
            "when the session was already in a transaction, your rename was left uncommitted"
            + (" (the transaction was still open when your function returned)" if left_open else "")
            + ": a guarded `begin()` skips its commit then. End the write with "
            "`await session.commit()`, whoever began the transaction."
        )
        return wrong(exercise, hint)

    # 3. An unknown id.
    async with AsyncSession(engine) as session:
        try:
            await rename_user(session, 999, "nobody")
        except not_found:
            pass
        except conflict:
            return wrong(
                exercise,
                f"an unknown id raised {conflict.__name__}: catch only IntegrityError, and raise "
                f"{not_found.__name__}(user_id) when get() returns None.",
            )
        else:
            return wrong(exercise, f"user 999 does not exist: raise {not_found.__name__}(user_id).")

    # 4. A taken name: the unique constraint must decide, and the session must stay usable.
    async with AsyncSession(engine) as session:
        with QueryRecorder(engine) as queries:
            try:
                await rename_user(session, 3, "ada")
            except conflict as exc:
                message = str(exc)
            except Exception as exc:
                return wrong(
                    exercise,
                    f"renaming to a taken name raised {type(exc).__name__}; catch IntegrityError, "
                    f"roll back, and raise {conflict.__name__} from it.",
                )
            else:
                return wrong(exercise, f"'ada' is taken: the rename must fail with {conflict.__name__}.")
        if any("users.name =" in q.sql and q.verb == "SELECT" for q in queries.statements):
            return wrong(
                exercise,
                "you looked the name up with a SELECT before writing: a concurrent request can take the "
                "name between the two statements. Let the unique constraint decide: flush, and catch "
                "IntegrityError.",
            )
        try:
            await session.scalar(select(func.count()).select_from(User))
        except PendingRollbackError:
            return wrong(
                exercise,
                "after the IntegrityError the session is unusable until it is rolled back "
                "(PendingRollbackError): call `await session.rollback()` before raising the domain error.",
            )
    if "''" in message or '""' in message:
        return wrong(
            exercise,
            f"the error says {message!r}: an empty value tells the client nothing. Name only what is "
            f"taken, e.g. {conflict.__name__}(name=new_name).",
        )
    if "ada" not in message:
        return wrong(exercise, f"the error says {message!r}: name the taken name, 'ada'.")
    if await _name_of(engine, 3) != "linus":
        return wrong(exercise, "a failed rename must leave the user unchanged: roll back.")
    return correct(exercise, "committed whoever began the transaction, and both domain errors are raised.")


def _dependency_of(annotated: Any) -> Any | None:
    """The ``Depends(...)`` object inside ``Annotated[AsyncSession, Depends(...)]``, if any."""
    from fastapi import params

    if typing.get_origin(annotated) is not typing.Annotated:
        return None
    return next((m for m in annotated.__metadata__ if isinstance(m, params.Depends)), None)


@check("10.2")
async def check_committing_session(session_type: Any, engine: AsyncEngine) -> Verdict:
    """Plug the learner's dependency into an app whose routes add a Tag: post a new name, a taken
    one, and one whose route fails after adding it."""
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.responses import JSONResponse
    from httpx import ASGITransport, AsyncClient

    exercise = "10.2"
    dependency = _dependency_of(session_type)
    if dependency is None:
        return wrong(
            exercise,
            "CommittingSession must be an annotated type: "
            "Annotated[AsyncSession, Depends(your_dependency, ...)].",
        )
    function = dependency.dependency
    if not inspect.isasyncgenfunction(function):
        return wrong(
            exercise,
            "write the dependency as `async def ...: ... yield session ...`: FastAPI runs a plain `def` "
            "dependency in a worker thread, where it cannot `await session.commit()`, and only a "
            "generator gets control back after the route.",
        )
    await load_sample_data(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.sessions = async_sessionmaker(engine)
        yield

    app = FastAPI(lifespan=lifespan)
    placeholder: list[NotImplementedError] = []

    @app.exception_handler(NotImplementedError)
    async def not_attempted(request: Request, exc: NotImplementedError) -> JSONResponse:
        placeholder.append(exc)
        return JSONResponse(status_code=501, content={"detail": "not implemented"})

    @app.post("/tags/{name}", status_code=201)
    # No `from __future__ import annotations` in this module: FastAPI must see the real type.
    async def add_tag(name: str, session: session_type, fail: bool = False) -> dict[str, str]:  # type: ignore[valid-type]
        session.add(Tag(name=name))
        if fail:
            raise HTTPException(400, "the route failed after adding the tag")
        return {"name": name}

    async def count(name: str) -> int:
        async with AsyncSession(engine) as session:
            return await session.scalar(select(func.count()).select_from(Tag).where(Tag.name == name)) or 0

    transport = ASGITransport(app=app, raise_app_exceptions=False)  # what a real server does
    async with (
        app.router.lifespan_context(app),
        AsyncClient(transport=transport, base_url="http://t") as client,
    ):
        new = await client.post("/tags/databases")
        if placeholder:
            raise placeholder[0]
        if new.status_code != 201:
            return wrong(exercise, f"adding a new tag answered {new.status_code}: {new.text[:120]}")
        if await count("databases") != 1:
            return wrong(exercise, "the new tag is not in the database: commit after the `yield`.")
        failed = await client.post("/tags/half-done", params={"fail": True})
        if await count("half-done") != 0:
            return wrong(
                exercise,
                f"the route failed ({failed.status_code}) yet its tag was committed: commit only when "
                "the route returned normally (not in `finally:`); on an exception, let the session "
                "close, which rolls back.",
            )
        taken = await client.post("/tags/async")  # 'async' exists: the INSERT fails at commit
        if taken.is_success:
            if dependency.scope == "function":
                return wrong(
                    exercise,
                    f"the failed commit still answered {taken.status_code}: your dependency caught the "
                    "IntegrityError and did not raise it again. Roll back if you like, then `raise`.",
                )
            return wrong(
                exercise,
                f"a tag that violates the unique constraint still answered {taken.status_code}: the "
                'commit ran after the response was sent. Use Depends(your_dependency, scope="function").',
            )
    return correct(exercise, f"the failed commit reached the client as {taken.status_code}.")
