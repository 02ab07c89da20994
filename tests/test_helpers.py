"""helpers.queries, helpers.display, helpers.sample_data and helpers.exercises.base."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import selectinload

from helpers.display import NOT_LOADED, loaded_columns, show, table
from helpers.exercises import Status, check, correct, wrong
from helpers.models import Post, User
from helpers.queries import QueryRecorder
from helpers.sample_data import POSTS, USERS, load_sample_data


@pytest.fixture
async def engine() -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine("sqlite+aiosqlite://")
    counts = await load_sample_data(engine)
    assert (counts.users, counts.posts) == (len(USERS), len(POSTS))
    yield engine
    await engine.dispose()


async def test_sample_data_is_the_same_every_time(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        posts = (await session.scalars(select(Post).options(selectinload(Post.tags)).order_by(Post.id))).all()
        authors = (await session.scalars(select(User.name).order_by(User.id))).all()
    assert authors == [name for name, _ in USERS]
    assert [(p.id, p.title, tuple(t.name for t in p.tags)) for p in posts] == [
        (i, title, tuple(sorted(tags, key=["async", "orm", "sql", "testing"].index)))
        for i, (_, title, tags) in enumerate(POSTS, 1)
    ]


async def test_recorder_counts_n_plus_one_against_selectinload(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        with QueryRecorder(engine) as lazy:
            users = (await session.scalars(select(User).order_by(User.id))).all()
            for user in users:
                await user.awaitable_attrs.posts
    async with AsyncSession(engine) as session:
        with QueryRecorder(engine) as eager:
            (await session.scalars(select(User).options(selectinload(User.posts)))).all()
    assert lazy.count == 1 + len(USERS)
    assert eager.count == 2 and eager.verbs() == ["SELECT", "SELECT"]


async def test_recorder_stops_listening_and_resets(engine: AsyncEngine) -> None:
    with QueryRecorder(engine) as queries:
        async with engine.connect() as conn:
            await conn.scalar(select(User.id).limit(1))
    async with engine.connect() as conn:  # after the block: not recorded
        await conn.scalar(select(User.id).limit(1))
    assert queries.count == 1
    queries.reset()
    assert queries.count == 0


async def test_recorder_show_prints_numbered_statements(engine: AsyncEngine, capsys) -> None:
    with QueryRecorder(engine) as queries:
        async with engine.connect() as conn:
            await conn.execute(select(User.name).where(User.id == 1))
    queries.show(width=30, parameters=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "1 statement"
    assert lines[1].startswith("  1. SELECT users.name") and lines[1].endswith("...")
    assert len(lines[1]) == len("  1. ") + 30
    assert lines[2].strip().startswith("parameters:")


async def test_show_never_loads_anything(engine: AsyncEngine, capsys) -> None:
    async with AsyncSession(engine) as session:
        user = await session.get(User, 1)
        assert user is not None
        session.expire(user, ["email"])
        with QueryRecorder(engine) as queries:
            show([user], columns=["id", "name", "email"])
        assert queries.count == 0
        assert loaded_columns(user)["email"] == NOT_LOADED
    out = capsys.readouterr().out
    assert "ada" in out and NOT_LOADED in out and out.rstrip().endswith("(1 row)")


def test_table_formats_values_and_rows() -> None:
    rendered = table(
        [{"when": datetime(2024, 1, 2, 3, 4), "price": Decimal("1.10"), "tags": ["a", "b"]}],
    )
    assert rendered.splitlines() == [
        "when                | price | tags",
        "--------------------+-------+-------",
        "2024-01-02 03:04:00 | 1.10  | [a, b]",
    ]
    assert table([]) == "(no rows)"
    assert table([(1, "x")]).splitlines()[0] == "0 | 1"
    assert "..." in table([{"v": "x" * 50}], max_width=10)


def test_show_accepts_single_values(capsys) -> None:
    show("one")
    assert capsys.readouterr().out.splitlines() == ["value", "-----", "one", "(1 row)"]


@check("T.1")
async def sample_check(answer) -> object:
    value = await answer()
    return correct("T.1") if value == 42 else wrong("T.1", f"expected the answer, got {value!r}")


async def test_check_distinguishes_correct_wrong_and_untouched() -> None:
    async def right() -> int:
        return 42

    async def off() -> int:
        return 41

    async def untouched() -> int:
        raise NotImplementedError

    async def broken() -> int:
        raise ValueError("boom")

    assert (await sample_check(right)).status is Status.CORRECT
    assert str(await sample_check(off)) == "Exercise T.1: not yet: expected the answer, got 41"
    assert (await sample_check(untouched)).status is Status.NOT_ATTEMPTED
    assert (await sample_check(...)).status is Status.NOT_ATTEMPTED
    verdict = await sample_check(broken)
    assert verdict.status is Status.WRONG and "raised ValueError: boom" in verdict.message
    assert not verdict.ok and repr(verdict) == str(verdict)
