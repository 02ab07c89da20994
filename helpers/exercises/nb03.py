"""Self-checks for the exercises of notebook 03 (session factories).

* 03.1 ``make_session_factory(engine)``: an ``async_sessionmaker`` bound to ``engine`` with
  ``expire_on_commit=False`` and every other option at its default.
* 03.2 ``get_session(factory)``: a dependency that yields one session made by ``factory`` and
  closes it when the generator is resumed after the request, or when the request's exception
  is thrown into it; it neither commits nor claims to return an ``AsyncSession``.

Both checks only run ``SELECT 1`` on the engine they get: they need no tables or rows.
"""

from __future__ import annotations

import asyncio
import collections.abc
import contextlib
import inspect
import typing
from collections.abc import AsyncGenerator, Callable
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from helpers.exercises.base import Verdict, check, correct, wrong

__all__ = ["check_get_session", "check_session_factory"]

#: How long a learner's generator may take to reach ``yield`` or to finish (rule: nothing hangs).
STEP_TIMEOUT = 10.0
#: Put in ``session.info`` by the check's own factory, to recognise its sessions.
_TOKEN = "made by the 03.2 check"
_ASYNC_ITERATORS = {
    collections.abc.AsyncIterator,
    collections.abc.AsyncGenerator,
    collections.abc.AsyncIterable,
}


def _session_defaults() -> dict[str, Any]:
    """``Session.__init__``'s keyword defaults: the options 03.1 must leave alone."""
    parameters = inspect.signature(Session.__init__).parameters
    return {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}


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
        return wrong(
            "03.1",
            "make_session_factory should be a plain def returning the factory: creating one does no I/O.",
        )
    if isinstance(factory, AsyncSession):
        await factory.close()
        return wrong(
            "03.1", "you returned a session; return the factory that makes them (async_sessionmaker)."
        )
    if isinstance(factory, sessionmaker):
        if issubclass(factory.class_, AsyncSession):
            return wrong(
                "03.1",
                "sessionmaker(class_=AsyncSession) runs, but it is the untyped 1.4 spelling: mypy rejects "
                "the call and then knows nothing about the sessions. Use async_sessionmaker(engine, ...).",
            )
        return wrong(
            "03.1",
            f"sessionmaker makes synchronous {factory.class_.__name__} objects; use "
            "async_sessionmaker(engine, ...).",
        )
    if not isinstance(factory, async_sessionmaker):
        return wrong(
            "03.1",
            f"expected an async_sessionmaker, got {type(factory).__name__}: async_sessionmaker(engine, ...) "
            "is the typed factory for AsyncSession (with a .begin() shortcut).",
        )
    options = dict(factory.kw)
    bind = options.pop("bind", None)
    if bind is None:
        return wrong("03.1", "your factory is not bound to an engine: async_sessionmaker(engine, ...).")
    if bind is not engine:
        what = "another engine" if isinstance(bind, AsyncEngine) else f"a {type(bind).__name__}"
        return wrong(
            "03.1",
            f"your factory is bound to {what}, not to the engine passed to make_session_factory; "
            "an application creates one engine and binds its factory to it.",
        )
    if factory.class_ is not AsyncSession:
        return wrong(
            "03.1",
            f"your factory makes {factory.class_.__name__}; leave class_ at its default, AsyncSession.",
        )
    if options.pop("expire_on_commit", True):
        return wrong("03.1", "attributes are still expired on commit: pass expire_on_commit=False.")
    if not options.pop("autoflush", True):
        return wrong(
            "03.1",
            "leave autoflush at its default (True): with autoflush=False every query of the application "
            "ignores pending changes. Change only expire_on_commit.",
        )
    defaults = _session_defaults()
    changed = sorted(name for name, value in options.items() if defaults.get(name, object()) != value)
    if changed:
        return wrong("03.1", f"leave {', '.join(changed)} at the default; change only expire_on_commit.")
    async with factory() as session:
        if await session.scalar(select(1)) != 1:
            return wrong("03.1", "a session from your factory could not run a simple query.")
    return correct("03.1", "a typed factory whose sessions keep attributes after commit.")


def _annotation_hint(get_session: Callable[..., Any]) -> str | None:
    """A hint if ``get_session``'s return annotation is not an async iterator of sessions."""
    try:
        annotation = inspect.signature(get_session).return_annotation
    except (TypeError, ValueError):
        return None
    if annotation is inspect.Signature.empty:
        return None
    if isinstance(annotation, str):  # `from __future__ import annotations`
        fine = any(name in annotation for name in ("AsyncIterator", "AsyncGenerator", "AsyncIterable"))
    else:
        fine = typing.get_origin(annotation) in _ASYNC_ITERATORS or annotation in _ASYNC_ITERATORS
    if fine:
        return None
    shown = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", repr(annotation))
    return (
        f"the code works, but the annotation `-> {shown}` is false: get_session yields, so calling it "
        "returns an async generator. Write `-> AsyncIterator[AsyncSession]`; FastAPI never reads it, "
        "but type checkers and anyone calling get_session() directly trust it."
    )


async def _step(awaitable: Any, what: str) -> Any:
    try:
        async with asyncio.timeout(STEP_TIMEOUT):
            return await awaitable
    except TimeoutError:
        raise TimeoutError(f"get_session did not {what} within {STEP_TIMEOUT:.0f} s") from None


@check("03.2")
async def check_get_session(
    get_session: Callable[[async_sessionmaker[AsyncSession]], Any], engine: AsyncEngine
) -> Verdict:
    """``get_session(factory)`` must be an async generator that yields one session from
    ``factory`` and closes it (connection back in the pool) when it is resumed, and also when
    an exception is thrown into it; it must not commit."""
    factory = async_sessionmaker(engine, info={_TOKEN: True})
    baseline = engine.pool.checkedout()
    sessions: list[AsyncSession] = []
    generators: list[AsyncGenerator[Any, None]] = []
    commits: list[str] = []

    async def open_request() -> tuple[AsyncGenerator[Any, None] | None, Any]:
        """Call get_session and run it up to its yield, as a framework does before the endpoint."""
        produced = get_session(factory)
        if inspect.iscoroutine(produced):
            returned = await _step(produced, "return")
            if isinstance(returned, AsyncSession):
                sessions.append(returned)
            return None, returned
        if isinstance(produced, AsyncSession):
            sessions.append(produced)
            return None, produced
        if inspect.isgenerator(produced):
            produced.close()
            return None, produced
        if not inspect.isasyncgen(produced):
            return None, produced
        generators.append(produced)
        session = await _step(anext(produced, None), "reach its yield")
        if isinstance(session, AsyncSession):
            sessions.append(session)
            event.listen(session.sync_session, "after_commit", lambda _s: commits.append("commit"))
        return produced, session

    try:
        agen, session = await open_request()
        if agen is None:
            if isinstance(session, AsyncSession):
                return wrong(
                    "03.2",
                    "get_session returned the session; make it `async def` and `yield` the session inside "
                    "`async with factory() as session:`, so the code after the request can close it.",
                )
            if inspect.isgenerator(session):
                return wrong(
                    "03.2",
                    "get_session is a plain generator (def); make it `async def` so it can use async with.",
                )
            return wrong("03.2", "get_session must be an async generator: `async def` with `yield session`.")
        if session is None:
            return wrong("03.2", "get_session finished without yielding anything; yield the session.")
        if not isinstance(session, AsyncSession):
            return wrong("03.2", f"get_session yielded {type(session).__name__}; yield a session: factory().")
        if not session.info.get(_TOKEN):
            return wrong(
                "03.2",
                "the session did not come from the factory passed to get_session: call factory(), not a "
                "global Session, AsyncSession(...) or a new async_sessionmaker.",
            )
        await session.scalar(select(1))  # the endpoint's work
        leftover = await _step(anext(agen, None), "finish after its yield")  # after the response
        if leftover is not None:
            return wrong(
                "03.2", "get_session yielded more than once; a dependency yields exactly one session."
            )
        if commits:
            return wrong(
                "03.2",
                "get_session committed after the yield (await session.commit(), or factory.begin()). In "
                "FastAPI that code runs after the response has been sent, so a failed commit still answers "
                "200 (notebook 10): commit in the endpoint, and let get_session only open and close the "
                "session.",
            )
        if engine.pool.checkedout() != baseline:
            return wrong(
                "03.2",
                "after the request the session still holds its connection: open it with "
                "`async with factory() as session:` around the yield.",
            )

        # The endpoint raises: the framework throws its exception into the generator at `yield`.
        agen, session = await open_request()
        assert agen is not None and isinstance(session, AsyncSession)
        await session.scalar(select(1))
        failure = RuntimeError("the endpoint failed")
        try:
            await _step(agen.athrow(failure), "finish after the exception was thrown into it")
        except RuntimeError as exc:
            if exc is not failure:
                raise
        except StopAsyncIteration:
            return wrong(
                "03.2",
                "get_session swallowed the endpoint's exception (thrown into it at `yield`); let it "
                "propagate: FastAPI then reports only 'Response not awaited', and the real error is lost.",
            )
        else:
            return wrong("03.2", "get_session yielded again after the endpoint failed; yield exactly once.")
        if engine.pool.checkedout() != baseline:
            return wrong(
                "03.2",
                "the session is closed after a successful request but not when the endpoint raises (the "
                "exception arrives at `yield`): use `async with factory() as session:` (or try/finally).",
            )
        hint = _annotation_hint(get_session)
        if hint:
            return wrong("03.2", hint)
        return correct(
            "03.2", "one session per request, closed when the request is done, even after an error."
        )
    finally:
        for agen in generators:
            # a generator that misbehaves on close has had its hint already
            with contextlib.suppress(Exception):
                await _step(agen.aclose(), "close")
        for session in sessions:
            await session.close()
