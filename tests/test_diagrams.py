"""helpers.diagrams: each diagram draws, is 900 px wide, says what it should, and stays true."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlalchemy.orm import joinedload, selectinload

from helpers import QueryRecorder
from helpers.database import NotebookDatabase, open_database
from helpers.diagrams import (
    DEFAULT_TIMELINES,
    DIAGRAMS,
    Diagram,
    main,
    n_plus_one_timeline,
    object_states,
    save_all,
    session_lifecycle,
)
from helpers.models import User
from helpers.sample_data import load_sample_data


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def texts(figure: Figure) -> str:
    return "\n".join(t.get_text() for ax in figure.axes for t in ax.texts)


@pytest.mark.parametrize("name", list(DIAGRAMS))
def test_each_diagram_is_a_figure_900_px_wide(name: str) -> None:
    figure = DIAGRAMS[name]()
    assert isinstance(figure, Figure) and isinstance(figure, Diagram)
    width, height = png_size(figure._repr_png_())
    assert width == 900 and 350 <= height <= 700
    assert repr(figure).startswith("<diagram: ") and " at 0x" not in repr(figure)


def test_object_states_names_every_state_and_call() -> None:
    shown = texts(object_states())
    for state in ("transient", "pending", "persistent", "expired", "detached", "deleted"):
        assert state in shown
    for call in (
        "session.add(obj)",
        "await session.flush()",
        "await session.commit()",
        "session.expire(obj)",
        "await session.refresh(obj)",
        "await session.close()",
        "await session.delete(obj)",
        "MissingGreenlet",
        "DetachedInstanceError",
    ):
        assert call in shown, call


def test_session_lifecycle_shows_checkout_and_checkin() -> None:
    shown = texts(session_lifecycle())
    for word in (
        "request",
        "AsyncSession",
        "connection",
        "pool",
        "checkout",
        "checkin",
        "COMMIT",
        "pool_timeout",
    ):
        assert word in shown, word


def test_timeline_accepts_recorded_statements() -> None:
    figure = n_plus_one_timeline({"mine": ["SELECT users.id FROM users", "SELECT posts.id FROM posts"]})
    shown = texts(figure)
    assert "mine" in shown and "2 queries" in shown


def test_rendering_is_repeatable() -> None:
    assert object_states().png() == object_states().png()


def test_save_all_and_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = save_all(tmp_path / "a")
    assert sorted(p.name for p in paths) == sorted(f"{name}.png" for name in DIAGRAMS)
    assert main(["--out", str(tmp_path / "b")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == len(DIAGRAMS)
    assert (tmp_path / "a" / "object_states.png").read_bytes() == (
        tmp_path / "b" / "object_states.png"
    ).read_bytes()


@pytest.fixture
async def db() -> AsyncIterator[NotebookDatabase]:
    database = await open_database("test_diagrams")
    try:
        await load_sample_data(database.engine)
        yield database
    finally:
        await database.close()


async def test_default_timeline_matches_a_real_run(db: NotebookDatabase) -> None:
    """The default picture's query counts are what the sample data really needs."""
    factory = async_sessionmaker(db.engine, expire_on_commit=False)
    counts = []
    async with factory() as session:
        with QueryRecorder(db.engine) as queries:
            users = (await session.scalars(select(User).order_by(User.id))).all()
            for user in users:
                await user.awaitable_attrs.posts
        counts.append(queries.verbs().count("SELECT"))  # not the SQLite recipe's BEGIN
    for option in (selectinload(User.posts), joinedload(User.posts)):
        async with factory() as session:
            with QueryRecorder(db.engine) as queries:
                (await session.scalars(select(User).options(option).order_by(User.id))).unique().all()
            counts.append(queries.verbs().count("SELECT"))
    assert counts == [len(v) for v in DEFAULT_TIMELINES.values()] == [5, 2, 1]
