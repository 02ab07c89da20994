"""Unit tests for the self-checks of notebook 01: right, wrong and untouched answers."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from helpers.exercises import Status
from helpers.exercises.nb01 import check_notes_url, check_save_note

# 01.1 ------------------------------------------------------------------------------------


async def test_notes_url_correct() -> None:
    verdict = await check_notes_url(lambda path: f"sqlite+aiosqlite:///{path}")
    assert verdict.status is Status.CORRECT, verdict


async def test_notes_url_not_attempted() -> None:
    def placeholder(path: Path) -> str:
        raise NotImplementedError

    assert (await check_notes_url(placeholder)).status is Status.NOT_ATTEMPTED
    assert (await check_notes_url(...)).status is Status.NOT_ATTEMPTED


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (lambda path: f"sqlite_aiosqlite:///{path}", "joined by '+'"),
        (lambda path: f"sqlite:///{path}", "synchronous driver 'pysqlite'"),
        (lambda path: "sqlite+aiosqlite:///:memory:", "in-memory"),
        (lambda path: "sqlite+aiosqlite://", "in-memory"),
        (lambda path: f"sqlite+aiosqlite://{path}", "four slashes"),
        (lambda path: f"postgresql+asyncpg://localhost/{path.name}", "wants SQLite"),
        (lambda path: "sqlite+aiosqlite:////elsewhere/notes.db", "not at the path"),
        (lambda path: "not a url", "is not a URL"),
        (lambda path: path, "return the URL as a str"),
    ],
)
async def test_notes_url_wrong(answer, hint: str) -> None:
    verdict = await check_notes_url(answer)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message


# 01.2 ------------------------------------------------------------------------------------


async def test_save_note_correct_with_begin() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body})

    assert (await check_save_note(save_note)).ok


async def test_save_note_correct_with_commit() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        async with engine.connect() as conn:
            await conn.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body})
            await conn.commit()

    assert (await check_save_note(save_note)).ok


async def test_save_note_not_attempted() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        raise NotImplementedError

    assert (await check_save_note(save_note)).status is Status.NOT_ATTEMPTED


async def test_save_note_without_commit() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        async with engine.connect() as conn:
            await conn.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body})

    verdict = await check_save_note(save_note)
    assert verdict.status is Status.WRONG
    assert "engine.begin()" in verdict.message


async def test_save_note_f_string() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        async with engine.begin() as conn:
            await conn.execute(text(f"INSERT INTO notes (body) VALUES ('{body}')"))

    verdict = await check_save_note(save_note)
    assert verdict.status is Status.WRONG
    assert "apostrophe" in verdict.message


async def test_save_note_twice() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        async with engine.begin() as conn:
            for _ in range(2):
                await conn.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body})

    verdict = await check_save_note(save_note)
    assert verdict.status is Status.WRONG
    assert "2 rows" in verdict.message


async def test_save_note_changed_text() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        async with engine.begin() as conn:
            await conn.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body.upper()})

    verdict = await check_save_note(save_note)
    assert verdict.status is Status.WRONG
    assert "unchanged" in verdict.message


async def test_save_note_other_error_becomes_hint() -> None:
    async def save_note(engine: AsyncEngine, body: str) -> None:
        raise ValueError("boom")

    verdict = await check_save_note(save_note)
    assert verdict.status is Status.WRONG
    assert "ValueError: boom" in verdict.message
