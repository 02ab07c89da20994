"""Unit tests for the self-checks of notebook 01: right, wrong and untouched answers.

Every wrong answer below is one a learner plausibly types, most of them a mistake the lesson
warns about; each must get its own hint.
"""

from __future__ import annotations

import gc
import warnings
from pathlib import Path, PureWindowsPath

import pytest
from sqlalchemy import URL, Column, Integer, MetaData, Table, Text, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine

from helpers.exercises import Status
from helpers.exercises.nb01 import NOTES, check_notes_url, check_save_note

# 01.1 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        lambda path: f"sqlite+aiosqlite:///{path}",
        lambda path: f"sqlite+aiosqlite:///{path.as_posix()}",  # the worked answer
        lambda path: URL.create("sqlite+aiosqlite", database=str(path)).render_as_string(),
    ],
)
async def test_notes_url_correct(answer) -> None:
    verdict = await check_notes_url(answer)
    assert verdict.status is Status.CORRECT, verdict


def test_paths_are_compared_as_paths_not_strings() -> None:
    # What the check relies on for Windows: as_posix() and str() name the same file.
    windows = PureWindowsPath(r"C:\Users\ada\notes.db")
    assert windows.as_posix() != str(windows)
    assert PureWindowsPath(windows.as_posix()) == windows


async def test_notes_url_not_attempted() -> None:
    def placeholder(path: Path) -> str:
        raise NotImplementedError

    assert (await check_notes_url(placeholder)).status is Status.NOT_ATTEMPTED
    assert (await check_notes_url(...)).status is Status.NOT_ATTEMPTED


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        # the lesson's first pitfall: '_' instead of '+'
        (lambda path: f"sqlite_aiosqlite:///{path}", "joined by '+'"),
        # the lesson's second pitfall: a synchronous driver
        (lambda path: f"sqlite:///{path}", "synchronous driver 'pysqlite'"),
        (lambda path: f"sqlite+pysqlite:///{path}", "synchronous driver 'pysqlite'"),
        (lambda path: "sqlite+aiosqlite:///:memory:", "in-memory"),
        (lambda path: "sqlite+aiosqlite://", "in-memory"),
        # one slash short: the absolute path becomes a relative one
        (lambda path: f"sqlite+aiosqlite://{path}", "relative path"),
        (lambda path: f"sqlite+aiosqlite:///{path.name}", "relative path"),
        (lambda path: f"postgresql+asyncpg://localhost/{path.name}", "wants SQLite"),
        (lambda path: "sqlite+aiosqlite:////elsewhere/notes.db", "not at the path"),
        (lambda path: str(path), "is not a URL"),
        (lambda path: path, "return the URL as a str"),
        (lambda path: URL.create("sqlite+aiosqlite", database=str(path)), "render_as_string"),
    ],
)
async def test_notes_url_wrong(answer, hint: str) -> None:
    verdict = await check_notes_url(answer)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message


# 01.2 ------------------------------------------------------------------------------------

INSERT = "INSERT INTO notes (body) VALUES (:body)"


async def test_save_note_correct_with_begin() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        async with engine.begin() as conn:
            await conn.execute(text(INSERT), {"body": body})

    verdict = await check_save_note(save_note)
    assert verdict.ok, verdict
    assert "bound parameter" in verdict.message


async def test_save_note_correct_with_commit() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        async with engine.connect() as conn:
            await conn.execute(text(INSERT), {"body": body})
            await conn.commit()

    assert (await check_save_note(save_note)).ok


async def test_save_note_correct_with_core_insert_and_driver_placeholders() -> None:
    notes = Table("notes", MetaData(), Column("id", Integer, primary_key=True), Column("body", Text))

    async def with_insert(engine: AsyncEngine, body: str) -> None:
        async with engine.begin() as conn:
            await conn.execute(insert(notes).values(body=body))

    async def with_driver_sql(engine: AsyncEngine, body: str) -> None:
        async with engine.begin() as conn:
            await conn.exec_driver_sql("INSERT INTO notes (body) VALUES (?)", (body,))

    assert (await check_save_note(with_insert)).ok
    assert (await check_save_note(with_driver_sql)).ok


def test_every_note_has_quotes_the_check_relies_on() -> None:
    assert "'" in NOTES[0] and '"' not in NOTES[0]
    assert '"' in NOTES[1] and "'" not in NOTES[1]


async def test_save_note_not_attempted() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        raise NotImplementedError

    assert (await check_save_note(save_note)).status is Status.NOT_ATTEMPTED


async def expect(save_note, hint: str) -> None:
    verdict = await check_save_note(save_note)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict


async def test_save_note_without_commit() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        async with engine.connect() as conn:
            await conn.execute(text(INSERT), {"body": body})

    await expect(save_note, "engine.connect() rolls back")


async def test_save_note_f_string_single_quotes() -> None:
    # the lesson's f-string pitfall: the apostrophe breaks the statement
    async def save_note(engine: AsyncEngine, body: str) -> None:
        async with engine.begin() as conn:
            await conn.execute(text(f"INSERT INTO notes (body) VALUES ('{body}')"))

    await expect(save_note, "its quotes broke the statement")


async def test_save_note_f_string_double_quotes() -> None:
    # SQLite reads "..." as a string when no column has that name: the apostrophe passes
    async def save_note(engine: AsyncEngine, body: str) -> None:
        async with engine.begin() as conn:
            await conn.execute(text(f'INSERT INTO notes (body) VALUES ("{body}")'))

    await expect(save_note, "part of your SQL string")


async def test_save_note_hand_escaped() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        escaped = body.replace("'", "''")
        async with engine.begin() as conn:
            await conn.execute(text(f"INSERT INTO notes (body) VALUES ('{escaped}')"))

    await expect(save_note, "part of your SQL string")


async def test_save_note_driver_sql_with_format() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        async with engine.begin() as conn:
            await conn.exec_driver_sql(f"INSERT INTO notes (body) VALUES ({body!r})")

    await expect(save_note, "part of your SQL string")


async def test_save_note_plain_string() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        async with engine.begin() as conn:
            await conn.execute(INSERT, {"body": body})  # type: ignore[call-overload]

    await expect(save_note, "wrap the SQL in text()")


async def test_save_note_forgotten_await() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        async with engine.begin() as conn:
            conn.execute(text(INSERT), {"body": body})  # the mistake under test: no await

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "coroutine ... was never awaited"
        await expect(save_note, "Is `await` missing")
        gc.collect()


async def test_save_note_twice() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        async with engine.begin() as conn:
            for _ in range(2):
                await conn.execute(text(INSERT), {"body": body})

    await expect(save_note, "2 rows")


async def test_save_note_changed_text() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        async with engine.begin() as conn:
            await conn.execute(text(INSERT), {"body": body.upper()})

    await expect(save_note, "unchanged as its parameter")


async def test_save_note_other_error_becomes_hint() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        raise ValueError("boom")

    await expect(save_note, "ValueError: boom")


async def test_save_note_wrong_table_is_reported_as_the_error() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO note (body) VALUES (:body)"), {"body": body})

    await expect(save_note, "no such table: note")
