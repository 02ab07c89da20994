"""The self-checks of notebook 06 accept right answers, reject wrong ones with a specific hint,
and report an untouched placeholder as not attempted. They run on the configured backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from helpers import open_database
from helpers.exercises import Status
from helpers.exercises.nb06 import check_authors_with_posts, check_post_cards, expected_cards
from helpers.models import Post, User

pytestmark = [
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.filterwarnings("ignore:coroutine 'Connection.cursor' was never awaited:RuntimeWarning"),
]


# One private database and one event loop for the whole module: creating a database per test
# costs about 0.15 s on PostgreSQL, and an engine belongs to the loop it was first used on.
@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[AsyncEngine]:
    db = await open_database("test_nb06")
    try:
        yield db.engine
    finally:
        await db.close()


async def test_expected_cards_follow_the_sample_data() -> None:  # async: module loop mark
    cards = expected_cards()
    assert len(cards) == 10
    assert cards[1] == ("Loops before loops existed", "ada", ["orm", "sql"])
    assert cards[8] == ("Software that must not fail", "margaret", ["async", "testing"])


# 06.1 ---------------------------------------------------------------------------------------


async def authors_selectin(session: AsyncSession) -> list[User]:
    statement = select(User).options(selectinload(User.posts)).order_by(User.id)
    return list((await session.scalars(statement)).all())


async def authors_joined(session: AsyncSession) -> list[User]:
    statement = select(User).options(joinedload(User.posts)).order_by(User.id)
    return list((await session.scalars(statement)).unique().all())


@pytest.mark.parametrize("answer", [authors_selectin, authors_joined])
async def test_authors_accepts_eager_loading(engine: AsyncEngine, answer) -> None:
    verdict = await check_authors_with_posts(answer, engine)
    assert verdict.status is Status.CORRECT, verdict


async def authors_lazy(session: AsyncSession) -> list[User]:
    users = (await session.scalars(select(User).order_by(User.id))).all()
    for user in users:
        user.posts  # noqa: B018 - an implicit lazy load: MissingGreenlet
    return list(users)


async def authors_not_loaded(session: AsyncSession) -> list[User]:
    return list((await session.scalars(select(User).order_by(User.id))).all())


async def authors_n_plus_one(session: AsyncSession) -> list[User]:
    users = (await session.scalars(select(User).order_by(User.id))).all()
    for user in users:
        await user.awaitable_attrs.posts
    return list(users)


async def authors_joined_without_unique(session: AsyncSession) -> list[User]:
    statement = select(User).options(joinedload(User.posts)).order_by(User.id)
    return list((await session.scalars(statement)).all())


async def authors_unordered(session: AsyncSession) -> list[User]:
    statement = select(User).options(selectinload(User.posts)).order_by(User.name.desc())
    return list((await session.scalars(statement)).all())


async def authors_names_only(session: AsyncSession) -> list[str]:
    return list((await session.scalars(select(User.name).order_by(User.id))).all())


async def authors_first_only(session: AsyncSession) -> list[User]:
    statement = select(User).options(selectinload(User.posts)).order_by(User.id).limit(1)
    return list((await session.scalars(statement)).all())


async def authors_scalar_result(session: AsyncSession):
    return await session.scalars(select(User).options(selectinload(User.posts)).order_by(User.id))


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (authors_lazy, "MissingGreenlet: your code touched a relationship"),
        (authors_not_loaded, "posts were not loaded"),
        (authors_n_plus_one, "N+1"),
        (authors_joined_without_unique, ".unique()"),
        (authors_unordered, "order_by(User.id)"),
        (authors_names_only, "return User objects"),
        (authors_first_only, "expected the 4 users"),
        (authors_scalar_result, "return a list"),
    ],
)
async def test_authors_rejects_wrong_answers(engine: AsyncEngine, answer, hint: str) -> None:
    verdict = await check_authors_with_posts(answer, engine)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message


async def test_authors_placeholder_is_not_attempted(engine: AsyncEngine) -> None:
    async def placeholder(session: AsyncSession) -> list[User]:
        raise NotImplementedError

    verdict = await check_authors_with_posts(placeholder, engine)
    assert verdict.status is Status.NOT_ATTEMPTED
    assert str(verdict).startswith("Exercise 06.1: not attempted yet")


# 06.2 ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostCard:
    title: str
    author: str
    tags: list[str]


def cards_from(posts) -> list[PostCard]:
    return [PostCard(p.title, p.author.name, [t.name for t in p.tags]) for p in posts]


async def cards_joined_and_selectin(session: AsyncSession) -> list[PostCard]:
    statement = select(Post).options(joinedload(Post.author), selectinload(Post.tags)).order_by(Post.id)
    return cards_from((await session.scalars(statement)).all())


async def cards_selectin_both(session: AsyncSession) -> list[PostCard]:
    statement = select(Post).options(selectinload(Post.author), selectinload(Post.tags)).order_by(Post.id)
    return cards_from((await session.scalars(statement)).all())


@pytest.mark.parametrize("answer", [cards_joined_and_selectin, cards_selectin_both])
async def test_cards_accepts_eager_loading(engine: AsyncEngine, answer) -> None:
    verdict = await check_post_cards(answer, engine)
    assert verdict.status is Status.CORRECT, verdict


async def cards_lazy(session: AsyncSession) -> list[PostCard]:
    return cards_from((await session.scalars(select(Post).order_by(Post.id))).all())


async def cards_n_plus_one(session: AsyncSession) -> list[PostCard]:
    posts = (await session.scalars(select(Post).order_by(Post.id))).all()
    cards = []
    for post in posts:
        author = await post.awaitable_attrs.author
        tags = await post.awaitable_attrs.tags
        cards.append(PostCard(post.title, author.name, [t.name for t in tags]))
    return cards


async def cards_orm_objects(session: AsyncSession) -> list[Post]:
    statement = select(Post).options(joinedload(Post.author), selectinload(Post.tags)).order_by(Post.id)
    return list((await session.scalars(statement)).all())


async def cards_unordered(session: AsyncSession) -> list[PostCard]:
    return sorted(await cards_joined_and_selectin(session), key=lambda card: card.title)


async def cards_author_objects(session: AsyncSession) -> list[PostCard]:
    statement = select(Post).options(joinedload(Post.author), selectinload(Post.tags)).order_by(Post.id)
    posts = (await session.scalars(statement)).all()
    return [PostCard(p.title, p.author, [t.name for t in p.tags]) for p in posts]  # type: ignore[arg-type]


async def cards_tag_objects(session: AsyncSession) -> list[PostCard]:
    statement = select(Post).options(joinedload(Post.author), selectinload(Post.tags)).order_by(Post.id)
    posts = (await session.scalars(statement)).all()
    return [PostCard(p.title, p.author.name, list(p.tags)) for p in posts]  # type: ignore[arg-type]


async def cards_reversed_tags(session: AsyncSession) -> list[PostCard]:
    cards = await cards_joined_and_selectin(session)
    return [PostCard(c.title, c.author, list(reversed(c.tags))) for c in cards]


async def cards_missing_tags(session: AsyncSession) -> list[tuple[str, str]]:
    statement = select(Post).options(joinedload(Post.author)).order_by(Post.id)
    posts = (await session.scalars(statement)).all()
    return [(p.title, p.author.name) for p in posts]


async def cards_first_five(session: AsyncSession) -> list[PostCard]:
    return (await cards_joined_and_selectin(session))[:5]


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (cards_lazy, "MissingGreenlet: your code touched a relationship"),
        (cards_n_plus_one, "N+1"),
        (cards_orm_objects, "you returned ORM objects"),
        (cards_unordered, "post id order"),
        (cards_author_objects, "author must be the author's name"),
        (cards_tag_objects, "tags must be a list of tag names"),
        (cards_reversed_tags, "some tag lists are wrong"),
        (cards_missing_tags, "needs the attributes title, author and tags"),
        (cards_first_five, "expected 10 cards"),
    ],
)
async def test_cards_rejects_wrong_answers(engine: AsyncEngine, answer, hint: str) -> None:
    verdict = await check_post_cards(answer, engine)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message


async def test_cards_placeholder_is_not_attempted(engine: AsyncEngine) -> None:
    verdict = await check_post_cards(..., engine)
    assert verdict.status is Status.NOT_ATTEMPTED
