"""Deterministic sample data for the shared blog schema in :mod:`helpers.models`.

The same rows, in the same order, with the same primary keys, on every run and every
backend, so stored notebook outputs stay valid:

* 4 users: ada, grace, linus, margaret (ids 1-4);
* 10 posts: ada 3, grace 3, linus 2, margaret 2 (ids 1-10, in that order);
* 4 tags: async, orm, sql, testing (ids 1-4), attached to posts in a fixed pattern.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from helpers.models import Base, Post, Tag, User

__all__ = ["POSTS", "TAGS", "USERS", "SampleCounts", "create_schema", "load_sample_data"]

USERS: list[tuple[str, str]] = [
    ("ada", "ada@example.com"),
    ("grace", "grace@example.com"),
    ("linus", "linus@example.com"),
    ("margaret", "margaret@example.com"),
]
TAGS: list[str] = ["async", "orm", "sql", "testing"]
#: (author name, title, tag names)
POSTS: list[tuple[str, str, tuple[str, ...]]] = [
    ("ada", "Notes on the analytical engine", ("sql",)),
    ("ada", "Loops before loops existed", ("orm", "sql")),
    ("ada", "Why await matters", ("async",)),
    ("grace", "Compilers for everyone", ("orm",)),
    ("grace", "Finding the first bug", ("testing",)),
    ("grace", "Nanoseconds on a wire", ("async", "sql")),
    ("linus", "Small patches, often", ("testing",)),
    ("linus", "Sessions are not threads", ("async", "orm")),
    ("margaret", "Software that must not fail", ("testing", "async")),
    ("margaret", "Priority scheduling", ()),
]


@dataclass(frozen=True)
class SampleCounts:
    users: int
    posts: int
    tags: int

    def __str__(self) -> str:
        return f"{self.users} users, {self.posts} posts, {self.tags} tags"


async def create_schema(engine: AsyncEngine) -> None:
    """Drop and create the tables of :mod:`helpers.models` (``metadata.create_all`` via ``run_sync``)."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)


async def load_sample_data(engine: AsyncEngine) -> SampleCounts:
    """Create the schema and insert the sample rows in one transaction; return the counts."""
    await create_schema(engine)
    async with AsyncSession(engine) as session, session.begin():
        users = {name: User(name=name, email=email) for name, email in USERS}
        session.add_all(users.values())
        await session.flush()  # users get ids 1..4 in list order
        tags = {name: Tag(name=name) for name in TAGS}
        session.add_all(tags.values())
        await session.flush()
        for author, title, tag_names in POSTS:
            post = Post(title=title, author=users[author], tags=[tags[t] for t in tag_names])
            session.add(post)
            await session.flush()  # one at a time keeps post ids in list order on every backend
    return SampleCounts(len(USERS), len(POSTS), len(TAGS))
