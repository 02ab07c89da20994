"""The self-checks of notebook 06 accept right answers, reject wrong ones with a specific hint,
and report an untouched placeholder as not attempted. They run on the configured backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
from sqlalchemy import ForeignKey, String, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    joinedload,
    mapped_column,
    raiseload,
    relationship,
    selectinload,
    subqueryload,
)

from helpers import open_database
from helpers.exercises import Status
from helpers.exercises.nb06 import (
    check_authors_with_posts,
    check_post_cards,
    expected_cards,
    load_check_data,
)
from helpers.models import Post, Tag, User

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


async def test_expected_cards_follow_the_check_data() -> None:  # async: module loop mark
    cards = expected_cards()
    assert len(cards) == 10
    assert cards[0] == ("Priority scheduling", "margaret", [])  # post 1: the last sample post
    assert cards[1] == ("Software that must not fail", "margaret", ["async", "testing"])
    assert cards[8] == ("Loops before loops existed", "ada", ["orm", "sql"])


async def test_check_data_has_no_accidental_order(engine: AsyncEngine) -> None:
    """What the checks rely on: without ORDER BY the rows do not come back in id order."""
    await load_check_data(engine)
    async with AsyncSession(engine) as session:
        if engine.dialect.name == "sqlite":
            await session.execute(select(func.count()).select_from(User))  # begin, then the pragma
            await (await session.connection()).exec_driver_sql("PRAGMA reverse_unordered_selects = ON")
        user_ids = list((await session.scalars(select(User.id))).all())
        post_ids = list((await session.scalars(select(Post.id))).all())
        ada = await session.scalar(select(User).options(selectinload(User.posts)).where(User.id == 1))
        assert ada is not None
        ada_posts = [post.id for post in ada.posts]
        if engine.dialect.name == "sqlite":
            await (await session.connection()).exec_driver_sql("PRAGMA reverse_unordered_selects = OFF")
    assert user_ids == [4, 3, 2, 1] and post_ids == list(range(10, 0, -1))
    assert ada_posts == [8, 9, 10]  # the relationship's order_by still holds


# 06.1 ---------------------------------------------------------------------------------------


async def authors_selectin(session: AsyncSession) -> list[User]:
    statement = select(User).options(selectinload(User.posts)).order_by(User.id)
    return list((await session.scalars(statement)).all())


async def authors_joined(session: AsyncSession) -> list[User]:
    statement = select(User).options(joinedload(User.posts)).order_by(User.id)
    return list((await session.scalars(statement)).unique().all())


async def authors_subquery(session: AsyncSession) -> list[User]:
    statement = select(User).options(subqueryload(User.posts)).order_by(User.id)
    return list((await session.scalars(statement)).all())


async def authors_sorted_in_python(session: AsyncSession) -> list[User]:
    users = (await session.scalars(select(User).options(selectinload(User.posts)))).all()
    return sorted(users, key=lambda user: user.id)


async def authors_selectin_raiseload(session: AsyncSession) -> list[User]:
    statement = select(User).options(selectinload(User.posts), raiseload("*")).order_by(User.id)
    return list((await session.scalars(statement)).all())


@pytest.mark.parametrize(
    "answer",
    [
        authors_selectin,
        authors_joined,
        authors_subquery,
        authors_sorted_in_python,
        authors_selectin_raiseload,
    ],
)
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
    statement = select(User).options(selectinload(User.posts))  # no order_by
    return list((await session.scalars(statement)).all())


async def authors_joined_unordered(session: AsyncSession) -> list[User]:
    statement = select(User).options(joinedload(User.posts))  # ordered by the posts' ids only
    return list((await session.scalars(statement)).unique().all())


async def authors_by_name_desc(session: AsyncSession) -> list[User]:
    statement = select(User).options(selectinload(User.posts)).order_by(User.name.desc())
    return list((await session.scalars(statement)).all())


async def authors_refresh_loop(session: AsyncSession) -> list[User]:
    users = (await session.scalars(select(User).order_by(User.id))).all()
    for user in users:
        await session.refresh(user, ["posts"])
    return list(users)


async def authors_raiseload_only(session: AsyncSession) -> list[User]:
    users = (await session.scalars(select(User).options(raiseload("*")).order_by(User.id))).all()
    return [user for user in users if user.posts is not None]


class SelectinBase(DeclarativeBase):
    pass


class Author(SelectinBase):
    """The lesson's lazy="selectin" mapping of the users table."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    posts: Mapped[list[Article]] = relationship(lazy="selectin", order_by="Article.id")


class Article(SelectinBase):
    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id"))


async def authors_lazy_selectin_mapping(session: AsyncSession) -> list[Author]:
    return list((await session.scalars(select(Author).order_by(Author.id))).all())


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
        (authors_unordered, "add .order_by(User.id)"),
        (authors_joined_unordered, "add .order_by(User.id)"),
        (authors_by_name_desc, "add .order_by(User.id)"),
        (authors_refresh_loop, "N+1"),
        (authors_raiseload_only, "raiseload() (or lazy='raise') did its job: User.posts"),
        (authors_lazy_selectin_mapping, 'Author.posts is mapped with lazy="selectin"'),
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


async def cards_joined_both_unique(session: AsyncSession) -> list[PostCard]:
    statement = select(Post).options(joinedload(Post.author), joinedload(Post.tags)).order_by(Post.id)
    return cards_from((await session.scalars(statement)).unique().all())


@pytest.mark.parametrize("answer", [cards_joined_and_selectin, cards_selectin_both, cards_joined_both_unique])
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
    statement = select(Post).options(joinedload(Post.author), selectinload(Post.tags))  # no order_by
    return cards_from((await session.scalars(statement)).all())


async def cards_by_title(session: AsyncSession) -> list[PostCard]:
    return sorted(await cards_joined_and_selectin(session), key=lambda card: card.title)


async def cards_joined_tags_without_unique(session: AsyncSession) -> list[PostCard]:
    statement = select(Post).options(joinedload(Post.author), joinedload(Post.tags)).order_by(Post.id)
    return cards_from((await session.scalars(statement)).all())


async def cards_raiseload_forgot_tags(session: AsyncSession) -> list[PostCard]:
    statement = select(Post).options(joinedload(Post.author), raiseload("*")).order_by(Post.id)
    return cards_from((await session.scalars(statement)).all())


async def cards_dicts(session: AsyncSession) -> list[dict[str, object]]:
    return [vars(card) for card in await cards_joined_and_selectin(session)]


async def cards_tag_query_per_post(session: AsyncSession) -> list[PostCard]:
    statement = select(Post).options(joinedload(Post.author)).order_by(Post.id)
    cards = []
    for post in (await session.scalars(statement)).all():
        names = select(Tag.name).join(Tag.posts).where(Post.id == post.id).order_by(Tag.id)
        cards.append(PostCard(post.title, post.author.name, list((await session.scalars(names)).all())))
    return cards


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
        (cards_unordered, "add .order_by(Post.id)"),
        (cards_by_title, "add .order_by(Post.id)"),
        (cards_joined_tags_without_unique, ".unique()"),
        (cards_raiseload_forgot_tags, "raiseload() (or lazy='raise') did its job: Post.tags"),
        (cards_dicts, "not dicts"),
        (cards_tag_query_per_post, "N+1"),
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
