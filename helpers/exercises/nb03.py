"""Self-checks for the exercises of notebook 03 (session factories)."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import sessionmaker

from helpers.exercises.base import Verdict, check, correct, wrong

__all__ = ["check_get_session", "check_session_factory"]


@check("03.1")
async def check_session_factory(
    make_session_factory: Callable[[AsyncEngine], Any], engine: AsyncEngine
) -> Verdict:
    """``make_session_factory(engine)`` must return an ``async_sessionmaker`` for ``engine``
    with ``expire_on_commit=False`` and the other options at their defaults."""
    factory = make_session_factory(engine)
    if inspect.isawaitable(factory):
        if inspect.iscoroutine(factory):
            factory.close()
        return wrong("03.1", "make_session_factory should be a plain def returning the factory; no await.")
    if isinstance(factory, AsyncSession):
        await factory.close()
        return wrong(
            "03.1", "you returned a session; return the factory that makes them (async_sessionmaker)."
        )
    if isinstance(factory, sessionmaker):
        return wrong(
            "03.1",
            "sessionmaker(class_=AsyncSession) is the untyped 1.4 spelling; use "
            "async_sessionmaker(engine, ...).",
        )
    if not isinstance(factory, async_sessionmaker):
        return wrong("03.1", f"expected an async_sessionmaker, got {type(factory).__name__}.")
    session = factory()
    try:
        if not isinstance(session, AsyncSession):
            return wrong("03.1", f"the factory makes {type(session).__name__}, not AsyncSession.")
        if session.sync_session.bind is not engine.sync_engine:
            return wrong("03.1", "the factory's sessions are not bound to the engine you were given.")
        if session.sync_session.expire_on_commit:
            return wrong("03.1", "attributes are still expired on commit: pass expire_on_commit=False.")
        if not session.sync_session.autoflush:
            return wrong("03.1", "leave autoflush at its default (True); change only expire_on_commit.")
        if await session.scalar(select(1)) != 1:
            return wrong("03.1", "a session from your factory could not run a simple query.")
    finally:
        await session.close()
    return correct("03.1", "a typed factory whose sessions keep attributes after commit.")


@check("03.2")
async def check_get_session(
    get_session: Callable[[async_sessionmaker[AsyncSession]], Any], engine: AsyncEngine
) -> Verdict:
    """``get_session(factory)`` must be an async generator that yields one session from
    ``factory`` and closes it (connection back in the pool) when it is resumed."""
    factory = async_sessionmaker(engine)
    baseline = engine.pool.checkedout()
    produced = get_session(factory)
    if inspect.iscoroutine(produced):
        returned = await produced  # a placeholder raises NotImplementedError here
        if isinstance(returned, AsyncSession):
            await returned.close()
            return wrong(
                "03.2",
                "get_session returned the session; yield it instead (inside `async with factory() as "
                "session:`) so the code after the request can close it.",
            )
        return wrong("03.2", "get_session must be an async generator: `async def` with `yield session`.")
    if isinstance(produced, AsyncSession):
        await produced.close()
        return wrong("03.2", "get_session returned the session; make it `async def` and `yield` the session.")
    if not inspect.isasyncgen(produced):
        return wrong("03.2", "get_session must be an async generator: `async def` with `yield session`.")
    agen: AsyncIterator[Any] = produced
    session = await anext(agen)
    if not isinstance(session, AsyncSession):
        await agen.aclose()  # type: ignore[attr-defined]
        return wrong("03.2", f"get_session yielded {type(session).__name__}; yield a session: factory().")
    if session.sync_session.bind is not engine.sync_engine:
        await session.close()
        await agen.aclose()  # type: ignore[attr-defined]
        return wrong("03.2", "the session did not come from the factory passed to get_session.")
    await session.scalar(select(1))
    if engine.pool.checkedout() != baseline + 1:
        await session.close()
        await agen.aclose()  # type: ignore[attr-defined]
        return wrong("03.2", "the yielded session did not use the factory's engine.")
    leftover = await anext(agen, None)
    if leftover is not None:
        await agen.aclose()  # type: ignore[attr-defined]
        await session.close()
        return wrong("03.2", "get_session yielded more than once; a dependency yields exactly one session.")
    if engine.pool.checkedout() != baseline:
        await session.close()
        return wrong(
            "03.2",
            "after the request the session still holds its connection: open it with "
            "`async with factory() as session:` around the yield.",
        )
    return correct("03.2", "one session per request, closed when the request is done.")
