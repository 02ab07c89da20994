"""Self-checks for the exercises of notebook 01 (engine set-up).

* 01.1 ``notes_url(path)``: the async SQLite URL of a database file at an absolute path.
* 01.2 ``save_note(engine, body)``: insert one row with a bound parameter, and commit it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

from sqlalchemy import make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from helpers.exercises.base import Verdict, check, correct, wrong

__all__ = ["check_notes_url", "check_save_note"]


@check("01.1")
async def check_notes_url(notes_url: Callable[[Path], str]) -> Verdict:
    """``notes_url(path)`` must return ``sqlite+aiosqlite:///`` followed by the absolute path.

    Only the URL is analysed until it is known to point at the temporary directory, so a
    wrong answer never creates a database file anywhere else.
    """
    with tempfile.TemporaryDirectory(prefix="exercise-01-1-") as directory:
        path = Path(directory) / "notes.db"
        raw = notes_url(path)
        if not isinstance(raw, str):
            return wrong("01.1", f"return the URL as a str, not {type(raw).__name__}.")
        try:
            url = make_url(raw)
            dialect = url.get_dialect()
        except NoSuchModuleError:
            return wrong(
                "01.1",
                f"SQLAlchemy has no dialect {url.drivername!r}: dialect and driver are joined "
                "by '+', as in 'sqlite+aiosqlite'.",
            )
        except ArgumentError:  # after NoSuchModuleError, its subclass
            return wrong("01.1", f"{raw!r} is not a URL; it starts with 'dialect+driver://'.")
        if url.get_backend_name() != "sqlite":
            return wrong("01.1", f"the URL selects {url.get_backend_name()!r}; the exercise wants SQLite.")
        if not dialect.is_async:
            return wrong(
                "01.1",
                f"{url.drivername!r} selects the synchronous driver {dialect.driver!r}; "
                "create_async_engine() needs 'sqlite+aiosqlite'.",
            )
        if url.database in (None, "", ":memory:"):
            return wrong("01.1", "that URL is an in-memory database; the exercise wants a file at `path`.")
        if url.database != str(path):
            if url.database == str(path).lstrip("/"):
                return wrong(
                    "01.1",
                    "your URL names a relative path: an absolute path needs four slashes in "
                    "total, 'sqlite+aiosqlite:////abs/file.db' (three, then the path's own '/').",
                )
            return wrong("01.1", f"the URL points at {url.database!r}, not at the path it was given.")
        engine = create_async_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE probe (id INTEGER PRIMARY KEY)"))
        finally:
            await engine.dispose()
        if not path.exists():  # pragma: no cover - would be a SQLAlchemy bug
            return wrong("01.1", "no database file appeared at the path.")
    return correct("01.1", "an async SQLite URL for a file, and the file appears where it should.")


async def _notes_table() -> AsyncEngine:
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"))
    return engine


@check("01.2")
async def check_save_note(save_note: Callable[[AsyncEngine, str], Awaitable[None]]) -> Verdict:
    """``save_note(engine, body)`` must store ``body`` unchanged, committed, exactly once."""
    body = "O'Brien's note; it has quotes"
    engine = await _notes_table()
    try:
        try:
            await save_note(engine, body)
        except DBAPIError as exc:
            return wrong(
                "01.2",
                "the database rejected your SQL "
                f"({type(exc.orig).__name__}): the apostrophe in the note broke it. Write "
                "text('INSERT INTO notes (body) VALUES (:body)') and pass {'body': body}.",
            )
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT body FROM notes ORDER BY id"))).scalars().all()
    finally:
        await engine.dispose()
    if not rows:
        return wrong(
            "01.2",
            "no row is left after your function returned: engine.connect() rolls back when the "
            "block ends; use engine.begin() or call await conn.commit().",
        )
    if len(rows) > 1:
        return wrong("01.2", f"{len(rows)} rows were saved; one call must insert exactly one.")
    if rows[0] != body:
        return wrong("01.2", f"the saved note is {rows[0]!r}, expected {body!r} unchanged.")
    return correct("01.2", "one committed row, sent as a bound parameter.")
