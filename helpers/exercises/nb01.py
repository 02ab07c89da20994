"""Self-checks for the exercises of notebook 01 (engine set-up).

* 01.1 ``notes_url(path)``: the async SQLite URL of a database file at an absolute path.
* 01.2 ``save_note(engine, body)``: insert one row with a bound parameter, and commit it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from sqlalchemy import URL, event, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, ObjectNotExecutableError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from helpers.exercises.base import Verdict, check, correct, wrong

__all__ = ["NOTES", "check_notes_url", "check_save_note"]


@check("01.1")
async def check_notes_url(notes_url: Callable[[Path], str]) -> Verdict:
    """``notes_url(path)`` must return ``sqlite+aiosqlite:///`` followed by the absolute path.

    Paths are compared as :class:`~pathlib.Path` objects, so ``path.as_posix()`` and ``str(path)``
    are both right on Windows too. Only the URL is analysed until it is known to point at the
    temporary directory, so a wrong answer never creates a database file anywhere else.
    """
    with tempfile.TemporaryDirectory(prefix="exercise-01-1-") as directory:
        path = Path(directory) / "notes.db"
        raw = notes_url(path)
        if isinstance(raw, URL):
            return wrong(
                "01.1",
                "you returned a URL object; the function promises a str: return "
                "url.render_as_string(hide_password=False).",
            )
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
        named = Path(url.database)
        if not named.is_absolute():
            return wrong(
                "01.1",
                f"your URL names the relative path {url.database!r}, which SQLite would look up "
                "from the working directory. After 'sqlite+aiosqlite:///' comes the absolute path "
                "itself, its leading '/' included (four slashes in all on Linux and macOS).",
            )
        if named != path:
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


#: The notes 01.2 saves, one per fresh table: an apostrophe, then double quotes, then both
#: with a semicolon. Each has a word ("Brien", "Hoare", "Lovelace") that cannot vanish by
#: escaping, so a value pasted into the SQL is found in the statement text.
NOTES = (
    "O'Brien's note",
    'Tony Hoare said "null was my billion-dollar mistake"',
    'Ada Lovelace\'s "first program"; no second one',
)
_MARKERS = ("Brien", "Hoare", "Lovelace")
_BIND = "text('INSERT INTO notes (body) VALUES (:body)') with {'body': body}"


async def _notes_table() -> AsyncEngine:
    engine = create_async_engine("sqlite+aiosqlite:///:memory:")
    async with engine.begin() as conn:
        await conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL)"))
    return engine


def _contains(parameters: Any, body: str) -> bool:
    """Whether ``body`` is among the bound values (a dict, a tuple, or a list of either)."""
    if isinstance(parameters, dict):
        return body in parameters.values()
    if isinstance(parameters, (list, tuple)):
        return any(value == body or _contains(value, body) for value in parameters)
    return False


async def _save_one(
    save_note: Callable[[AsyncEngine, str], Awaitable[None]], body: str, marker: str
) -> Verdict | None:
    """Run the answer once on a fresh table; a hint if anything is wrong, else ``None``."""
    engine = await _notes_table()
    sent: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        sent.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        try:
            await save_note(engine, body)
        except ObjectNotExecutableError:
            return wrong(
                "01.2",
                "conn.execute() takes a statement object, not a plain string: wrap the SQL in "
                f"text(), as in {_BIND}.",
            )
        except DBAPIError as exc:
            if any(marker in statement for statement, _ in sent):
                return wrong(
                    "01.2",
                    f"the database rejected your SQL ({type(exc.orig).__name__}) because the note "
                    "was pasted into it and its quotes broke the statement. Never build SQL from "
                    f"values: write {_BIND}.",
                )
            raise
        async with engine.connect() as conn:
            rows = (await conn.execute(text("SELECT body FROM notes ORDER BY id"))).scalars().all()
    finally:
        await engine.dispose()
    inserts = [(s, p) for s, p in sent if s.lstrip().upper().startswith("INSERT")]
    if not inserts:
        return wrong(
            "01.2",
            "no INSERT reached the database. Is `await` missing before conn.execute(...)? "
            "Without it the statement is never run.",
        )
    if any(marker in statement for statement, _ in inserts):
        return wrong(
            "01.2",
            "the note's text is part of your SQL string (an f-string, format() or hand-made "
            "escaping). It may run for this note, but another one can break or rewrite the "
            f"statement. Send the value as a bound parameter: {_BIND}.",
        )
    if not any(_contains(parameters, body) for _, parameters in inserts):
        return wrong("01.2", f"the INSERT did not send the note {body!r} unchanged as its parameter.")
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
    return None


@check("01.2")
async def check_save_note(save_note: Callable[[AsyncEngine, str], Awaitable[None]]) -> Verdict:
    """``save_note(engine, body)`` must store ``body`` unchanged, committed, exactly once, and
    send it as a bound parameter: the note's text must not appear in any INSERT statement."""
    for body, marker in zip(NOTES, _MARKERS, strict=True):
        if (verdict := await _save_one(save_note, body, marker)) is not None:
            return verdict
    return correct("01.2", "one committed row per call, the note sent as a bound parameter.")
