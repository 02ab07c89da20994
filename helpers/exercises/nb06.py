"""Self-checks for the exercises of notebook 06 (lazy loading).

* 06.1 ``authors_with_posts(session)``: every user, ordered by id, with ``posts`` loaded, in
  at most two queries.
* 06.2 ``post_cards(session)``: one plain object per post (ordered by post id) with the
  post's ``title``, its author's name as ``author`` and its tag names as ``tags`` (in tag id
  order), built inside the session, in at most three queries.

Each check runs the answer on its own copy of the sample rows (:func:`load_check_data`),
numbered so that no order comes out right by accident: the rows are stored in reverse id
order, posts are numbered from the last author to the first, and on SQLite the learner's
connection returns rows of a query without ``ORDER BY`` in reverse (``PRAGMA
reverse_unordered_selects``). A query that forgets ``order_by`` therefore gives a wrong
order on both backends. The answer runs in a fresh session while
:class:`helpers.QueryRecorder` counts its queries; the result is inspected after the session
has closed; then the standard sample data is loaded again, so the lesson's cells still work.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, inspect
from sqlalchemy.exc import InvalidRequestError, MissingGreenlet, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase

from helpers.exercises.base import Verdict, check, correct, wrong
from helpers.models import Post, Tag, User, post_tags
from helpers.queries import QueryRecorder
from helpers.sample_data import POSTS, TAGS, USERS, create_schema, load_sample_data

__all__ = ["check_authors_with_posts", "check_post_cards", "expected_cards", "load_check_data"]

Answer = Callable[[AsyncSession], Awaitable[Any]]
_COROUTINE_WARNING = "coroutine 'Connection.cursor' was never awaited"
_TRANSACTION_CONTROL = {"BEGIN", "COMMIT", "ROLLBACK"}

#: The check's posts, numbered 1..10 from the last sample post to the first: the id order of
#: the posts is not the id order of their authors (margaret's posts are 1 and 2).
CHECK_POSTS: list[tuple[int, str, str, tuple[str, ...]]] = [
    (number, author, title, tags) for number, (author, title, tags) in enumerate(reversed(POSTS), 1)
]


async def load_check_data(engine: AsyncEngine) -> None:
    """The sample users, tags and posts (ids as in :data:`CHECK_POSTS`), stored last id first."""
    await create_schema(engine)
    user_ids = {name: number for number, (name, _) in enumerate(USERS, 1)}
    tag_ids = {name: number for number, name in enumerate(TAGS, 1)}
    async with engine.begin() as conn:
        for name, email in reversed(USERS):  # one INSERT per row: the table keeps this order
            await conn.execute(insert(User).values(id=user_ids[name], name=name, email=email))
        for name in reversed(TAGS):
            await conn.execute(insert(Tag).values(id=tag_ids[name], name=name))
        for number, author, title, tags in reversed(CHECK_POSTS):
            await conn.execute(insert(Post).values(id=number, title=title, author_id=user_ids[author]))
            for tag in tags:
                await conn.execute(insert(post_tags).values(post_id=number, tag_id=tag_ids[tag]))


def expected_cards() -> list[tuple[str, str, list[str]]]:
    """(title, author, tag names in tag id order) for every post of the check, in post id order."""
    return [(title, author, sorted(tags, key=TAGS.index)) for _, author, title, tags in CHECK_POSTS]


def _titles_by_author() -> dict[str, list[str]]:
    """Each user's post titles in post id order, users in id order."""
    found: dict[str, list[str]] = {name: [] for name, _ in USERS}
    for _, author, title, _ in CHECK_POSTS:
        found[author].append(title)
    return found


def _is_missing_greenlet(exc: BaseException) -> bool:
    """MissingGreenlet itself (asyncpg; SQLAlchemy 2.0), or wrapped in a StatementError (aiosqlite
    and psycopg under 2.1)."""
    return isinstance(exc, MissingGreenlet) or (
        isinstance(exc, StatementError) and isinstance(exc.orig, MissingGreenlet)
    )


@dataclass
class _Outcome:
    result: Any
    queries: int  # statements the answer sent, transaction control not counted
    hint: str | None  # set when the answer raised one of the errors the lesson teaches


async def _run(answer: Answer, engine: AsyncEngine) -> _Outcome:
    """Run ``answer`` in a fresh session on the check's data; then restore the sample data."""
    await load_check_data(engine)
    try:
        return await _run_in_session(answer, engine)
    finally:
        await load_sample_data(engine)


async def _run_in_session(answer: Answer, engine: AsyncEngine) -> _Outcome:
    hint = None
    result: Any = None
    with warnings.catch_warnings():
        # aiosqlite abandons the coroutine of a refused lazy load; Python would warn about it on
        # stderr whenever it is garbage-collected. Ignore that one warning and collect it here.
        warnings.filterwarnings("ignore", message=_COROUTINE_WARNING, category=RuntimeWarning)
        async with AsyncSession(engine) as session:
            connection = await session.connection()
            if engine.dialect.name == "sqlite":  # rows of an unordered SELECT come back reversed
                await connection.exec_driver_sql("PRAGMA reverse_unordered_selects = ON")
            with QueryRecorder(engine) as queries:
                try:
                    result = await answer(session)
                except (MissingGreenlet, StatementError) as exc:
                    if not _is_missing_greenlet(exc):
                        raise
                    hint = (
                        "MissingGreenlet: your code touched a relationship that was not loaded (a "
                        "lazy load); load it in the query with .options(selectinload(...)) or "
                        "joinedload(...)."
                    )
                except InvalidRequestError as exc:
                    message = str(exc)
                    if "unique()" in message:
                        hint = (
                            "joinedload() of a collection repeats each parent once per child row: call "
                            ".unique() on the result before .all(), or use selectinload() instead."
                        )
                    elif "lazy='raise'" in message:
                        attribute = message.split("'")[1]
                        hint = (
                            f"raiseload() (or lazy='raise') did its job: {attribute} was read but the "
                            "query did not load it. Name it in the query's options: "
                            "selectinload(...) or joinedload(...)."
                        )
                    else:
                        raise
            if engine.dialect.name == "sqlite":
                try:
                    await connection.exec_driver_sql("PRAGMA reverse_unordered_selects = OFF")
                except Exception:  # the answer broke this connection: do not pool it
                    await connection.invalidate()
        gc.collect()
    sent = [verb for verb in queries.verbs() if verb not in _TRANSACTION_CONTROL]
    return _Outcome(result, len(sent), hint)


def _queries(count: int) -> str:
    return f"{count} query" if count == 1 else f"{count} queries"


def _as_list(exercise: str, result: Any) -> tuple[list[Any] | None, Verdict | None]:
    if not isinstance(result, Sequence) or isinstance(result, str | bytes):
        kind = type(result).__name__
        return None, wrong(exercise, f"return a list (e.g. (await session.scalars(...)).all()), not {kind}.")
    return list(result), None


def _loads_posts_eagerly(obj: Any) -> bool:
    """Whether ``obj`` is mapped with a ``posts`` relationship whose lazy= is an eager strategy."""
    mapper = inspect(type(obj), raiseerr=False)
    posts = mapper.relationships.get("posts") if mapper is not None else None
    return posts is not None and posts.lazy in ("selectin", "joined", "subquery", "immediate")


@check("06.1")
async def check_authors_with_posts(authors_with_posts: Answer, engine: AsyncEngine) -> Verdict:
    """Every user by id, ``posts`` loaded before the session closed, at most two queries."""
    outcome = await _run(authors_with_posts, engine)
    if outcome.hint:
        return wrong("06.1", outcome.hint)
    users, problem = _as_list("06.1", outcome.result)
    if problem or users is None:
        return problem or wrong("06.1", "return a list of User objects.")
    if users and all(_loads_posts_eagerly(u) for u in users) and not isinstance(users[0], User):
        lazy = inspect(type(users[0])).relationships["posts"].lazy
        return wrong(
            "06.1",
            f'{type(users[0]).__name__}.posts is mapped with lazy="{lazy}", so every query for '
            f"{type(users[0]).__name__} loads the posts, needed or not. Keep User and say what this "
            "query needs: select(User).options(selectinload(User.posts)).",
        )
    if not all(isinstance(u, User) for u in users):
        return wrong("06.1", "return User objects (select(User)), not rows, names or other values.")
    expected = _titles_by_author()
    names = [u.__dict__.get("name") for u in users]
    if sorted(map(str, names)) != sorted(expected):
        return wrong("06.1", f"expected the {len(expected)} users {sorted(expected)}, got {names}.")
    if names != list(expected):
        return wrong(
            "06.1",
            "the users are not in id order. Without ORDER BY the database returns rows in any order "
            "it likes (the check's data makes that visible): add .order_by(User.id).",
        )
    not_loaded = [u.name for u in users if "posts" in inspect(u).unloaded]
    if not_loaded:
        return wrong(
            "06.1",
            f"posts were not loaded for {not_loaded}: after the session closes they cannot be "
            "loaded any more; add .options(selectinload(User.posts)) to the query.",
        )
    if outcome.queries > 2:
        return wrong(
            "06.1",
            f"your function ran {outcome.queries} queries, one per user for the posts (N+1); "
            "selectinload(User.posts) loads them all in one extra query.",
        )
    titles = {u.name: [p.title for p in u.posts] for u in users}
    if titles != expected:
        return wrong("06.1", "the posts loaded for some users are not theirs, or not in id order.")
    return correct("06.1", f"{len(users)} users with their posts in {_queries(outcome.queries)}.")


@check("06.2")
async def check_post_cards(post_cards: Answer, engine: AsyncEngine) -> Verdict:
    """One plain card per post, by post id, with author name and tag names, in at most 3 queries."""
    outcome = await _run(post_cards, engine)
    if outcome.hint:
        return wrong("06.2", outcome.hint)
    cards, problem = _as_list("06.2", outcome.result)
    if problem or cards is None:
        return problem or wrong("06.2", "return a list of PostCard objects.")
    if any(isinstance(c, DeclarativeBase) for c in cards):
        return wrong(
            "06.2",
            "you returned ORM objects; build a PostCard from each post inside the session and "
            "return those plain objects.",
        )
    if cards and isinstance(cards[0], dict):
        return wrong("06.2", "return PostCard objects, PostCard(title, author, tags), not dicts.")
    missing = [f for f in ("title", "author", "tags") if cards and not hasattr(cards[0], f)]
    if missing:
        return wrong("06.2", f"each card needs the attributes title, author and tags; missing {missing}.")
    expected = expected_cards()
    got = [(c.title, c.author, c.tags) for c in cards]
    if len(got) != len(expected):
        return wrong("06.2", f"expected {len(expected)} cards, one per post; got {len(got)}.")
    if any(isinstance(author, DeclarativeBase) for _, author, _ in got):
        return wrong("06.2", "author must be the author's name (post.author.name), not the User object.")
    if any(not isinstance(tags, list) or any(not isinstance(t, str) for t in tags) for _, _, tags in got):
        return wrong("06.2", "tags must be a list of tag names (str), e.g. [tag.name for tag in post.tags].")
    by_title = sorted(expected, key=lambda card: card[0])
    if sorted(got, key=lambda card: card[0]) == by_title and got != expected:
        return wrong(
            "06.2",
            "the cards are not in post id order. Without ORDER BY the database returns rows in any "
            "order it likes (the check's data makes that visible): add .order_by(Post.id).",
        )
    if [card[0] for card in got] != [card[0] for card in expected]:
        return wrong("06.2", "the titles do not match the posts in id order.")
    if [card[1] for card in got] != [card[1] for card in expected]:
        return wrong("06.2", "some authors are wrong: author is post.author.name.")
    if got != expected:
        return wrong("06.2", "some tag lists are wrong: list the names of post.tags, in their loaded order.")
    if outcome.queries > 3:
        return wrong(
            "06.2",
            f"your function ran {outcome.queries} queries: the authors or tags were loaded one post at a "
            "time (N+1). Load both in the query: joinedload(Post.author), selectinload(Post.tags).",
        )
    count = _queries(outcome.queries)
    return correct("06.2", f"{len(cards)} plain cards built inside the session in {count}.")
