"""Tests for the example app: HTTP behaviour, isolation between tests, and the lifespan.

No markers: pyproject.toml puts every test and fixture on the session's event loop.
"""

import pytest
from httpx import ASGITransport, AsyncClient
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from example_app.app import create_app
from helpers import NotebookDatabase
from helpers.models import Post, Tag, User


async def test_register_then_read(client: AsyncClient) -> None:
    created = await client.post(
        "/users", json={"name": "zoe", "email": "zoe@example.com"}, params={"first_post": "Hello"}
    )
    assert created.status_code == 201
    user_id = created.json()["id"]

    read = await client.get(f"/users/{user_id}")
    assert read.status_code == 200
    assert read.json()["posts"] == [{"id": read.json()["posts"][0]["id"], "title": "Hello"}]


async def test_duplicate_email_is_409_and_writes_nothing(client: AsyncClient, session: AsyncSession) -> None:
    first = await client.post("/users", json={"name": "zoe", "email": "zoe@example.com"})
    second = await client.post("/users", json={"name": "zoe2", "email": "zoe@example.com"})
    assert (first.status_code, second.status_code) == (201, 409)
    assert await session.scalar(select(func.count()).select_from(User)) == 1


async def test_unknown_user_is_404(client: AsyncClient) -> None:
    response = await client.get("/users/999")
    assert response.status_code == 404
    assert response.json() == {"detail": "user 999 does not exist"}


async def test_every_test_starts_empty(session: AsyncSession) -> None:
    # zoe was committed (as a savepoint) by the tests above; their rollback removed her.
    assert await session.scalar(select(func.count()).select_from(User)) == 0


async def test_read_what_the_test_seeded(client: AsyncClient, session: AsyncSession) -> None:
    session.add(User(name="yves", email="yves@example.com", posts=[Post(title="Seeded")]))
    await session.flush()  # the seed is visible to the app; the session's transaction has begun
    user_id = await session.scalar(select(User.id).where(User.name == "yves"))

    response = await client.get(f"/users/{user_id}")
    assert response.status_code == 200
    assert [post["title"] for post in response.json()["posts"]] == ["Seeded"]


async def test_register_after_seeding_conflicts(client: AsyncClient, session: AsyncSession) -> None:
    session.add(User(name="yves", email="yves@example.com"))
    await session.commit()  # a savepoint: the seed survives the rollback the app does on 409

    response = await client.post("/users", json={"name": "yves", "email": "other@example.com"})
    assert response.status_code == 409  # the service commits, it does not call session.begin()
    assert await session.scalar(select(func.count()).select_from(User)) == 1


async def test_rollback_inside_a_test_keeps_the_earlier_work(session: AsyncSession) -> None:
    session.add(Tag(name="kept"))
    await session.commit()  # create_savepoint: RELEASE SAVEPOINT, not a real COMMIT
    session.add(Tag(name="kept"))  # violates the unique constraint
    with pytest.raises(IntegrityError):
        await session.commit()
    await session.rollback()  # rolls back to the savepoint, not the test's transaction
    assert await session.scalar(select(func.count()).select_from(Tag)) == 1


async def test_lifespan_creates_and_disposes_the_engine(database: NotebookDatabase) -> None:
    app = create_app(database.url)
    async with (
        app.router.lifespan_context(app),
        AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as client,
    ):
        assert (await client.get("/users/1")).status_code == 404  # tables exist, no rows
        engine = app.state.engine
        assert engine.pool.checkedin() == 1  # the request's connection went back to the pool
    assert engine.pool.checkedin() == 0  # shutdown disposed the engine
