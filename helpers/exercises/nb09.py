"""Self-checks for notebook 09 (FastAPI).

* 09.1 :func:`check_rename_user`: a service function that owns its transaction, returns a
  response model and raises the notebook's domain errors.
* 09.2 :func:`check_committing_session`: a session dependency whose commit happens before the
  response is sent, so a failed commit is not reported to the client as a success.

Both checks reload the sample data (:func:`helpers.sample_data.load_sample_data`) into the
engine they are given, so they start from the same rows every time.
"""

import typing
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import DeclarativeBase

from helpers.exercises.base import Verdict, check, correct, wrong
from helpers.models import Tag, User
from helpers.sample_data import load_sample_data

__all__ = ["check_committing_session", "check_rename_user"]


async def _name_of(engine: AsyncEngine, user_id: int) -> str | None:
    async with AsyncSession(engine) as session:
        return await session.scalar(select(User.name).where(User.id == user_id))


@check("09.1")
async def check_rename_user(
    rename_user: Callable[[AsyncSession, int, str], Awaitable[Any]],
    engine: AsyncEngine,
    *,
    not_found: type[Exception],
    conflict: type[Exception],
) -> Verdict:
    """Rename grace (id 2), then try an unknown id and a taken name, each in a fresh session."""
    exercise = "09.1"
    await load_sample_data(engine)

    async with AsyncSession(engine) as session:
        result = await rename_user(session, 2, "grace hopper")
    if result is None:
        return wrong(exercise, "return the renamed user as a UserOut, built inside the transaction.")
    if isinstance(result, DeclarativeBase):
        return wrong(
            exercise,
            "you returned the ORM object; return UserOut.model_validate(user), built before the "
            "transaction ends, so the response never touches the session again.",
        )
    if getattr(result, "id", None) != 2 or getattr(result, "name", None) != "grace hopper":
        return wrong(exercise, f"expected a UserOut with id 2 and the new name, got {result!r}.")
    if await _name_of(engine, 2) != "grace hopper":
        return wrong(
            exercise,
            "another session does not see the new name: the change was never committed. Wrap the "
            "work in `async with session.begin():`.",
        )

    async with AsyncSession(engine) as session:
        try:
            await rename_user(session, 999, "nobody")
        except not_found:
            pass
        else:
            return wrong(exercise, f"user 999 does not exist: raise {not_found.__name__}(user_id).")

    async with AsyncSession(engine) as session:
        try:
            await rename_user(session, 3, "ada")
        except conflict:
            pass
        except Exception as exc:
            return wrong(
                exercise,
                f"renaming to a taken name raised {type(exc).__name__}; catch IntegrityError around "
                f"the transaction and raise {conflict.__name__} from it.",
            )
        else:
            return wrong(exercise, f"'ada' is taken: the rename must fail with {conflict.__name__}.")
    if await _name_of(engine, 3) != "linus":
        return wrong(exercise, "a failed rename must leave the user unchanged: roll back.")
    return correct(exercise, "committed before returning, and both domain errors are raised.")


def _dependency_of(annotated: Any) -> Any | None:
    """The ``Depends(...)`` object inside ``Annotated[AsyncSession, Depends(...)]``, if any."""
    from fastapi import params

    if typing.get_origin(annotated) is not typing.Annotated:
        return None
    return next((m for m in annotated.__metadata__ if isinstance(m, params.Depends)), None)


@check("09.2")
async def check_committing_session(session_type: Any, engine: AsyncEngine) -> Verdict:
    """Plug the learner's dependency into an app whose route adds a Tag; post a new and a taken name."""
    from fastapi import FastAPI
    from httpx import ASGITransport, AsyncClient

    exercise = "09.2"
    if _dependency_of(session_type) is None:
        return wrong(
            exercise,
            "CommittingSession must be an annotated type: "
            "Annotated[AsyncSession, Depends(your_dependency, ...)].",
        )
    await load_sample_data(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.sessions = async_sessionmaker(engine)
        yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/tags/{name}", status_code=201)
    # No `from __future__ import annotations` in this module: FastAPI must see the real type.
    async def add_tag(name: str, session: session_type) -> dict[str, str]:  # type: ignore[valid-type]
        session.add(Tag(name=name))
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
        if new.status_code != 201:
            return wrong(exercise, f"adding a new tag answered {new.status_code}: {new.text[:120]}")
        if await count("databases") != 1:
            return wrong(exercise, "the new tag is not in the database: commit after the `yield`.")
        taken = await client.post("/tags/async")  # 'async' exists: the INSERT fails at commit
        if taken.is_success:
            return wrong(
                exercise,
                f"a tag that violates the unique constraint still answered {taken.status_code}: the "
                'commit ran after the response was sent. Use Depends(your_dependency, scope="function").',
            )
    return correct(exercise, f"the failed commit reached the client as {taken.status_code}.")
