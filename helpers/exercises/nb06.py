"""Self-checks for the exercises of notebook 06 (lazy loading).

* 06.1 ``authors_with_posts(session)``: every user, ordered by id, with ``posts`` loaded, in
  at most two queries.
* 06.2 ``post_cards(session)``: one plain object per post (ordered by post id) with the
  post's ``title``, its author's name as ``author`` and its tag names as ``tags`` (in tag id
  order), built inside the session, in at most three queries.

Both checks reload the sample data of :mod:`helpers.sample_data` into the engine they get,
run the answer in a fresh session while counting its queries with
:class:`helpers.QueryRecorder`, and inspect the result after the session has closed.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.exc import InvalidRequestError, MissingGreenlet, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase

from helpers.exercises.base import Verdict, check, correct, wrong
from helpers.models import User
from helpers.queries import QueryRecorder
from helpers.sample_data import POSTS, TAGS, USERS, load_sample_data

__all__ = ["check_authors_with_posts", "check_post_cards", "expected_cards"]

Answer = Callable[[AsyncSession], Awaitable[Any]]
_COROUTINE_WARNING = "coroutine 'Connection.cursor' was never awaited"


def expected_cards() -> list[tuple[str, str, list[str]]]:
    """(title, author, tag names in tag id order) for every sample post, in post id order."""
    return [(title, author, sorted(tags, key=TAGS.index)) for author, title, tags in POSTS]


def _titles_by_author() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {name: [] for name, _ in USERS}
    for author, title, _ in POSTS:
        found[author].append(title)
    return found


def _is_missing_greenlet(exc: BaseException) -> bool:
    return isinstance(exc, MissingGreenlet) or (
        isinstance(exc, StatementError) and isinstance(exc.orig, MissingGreenlet)
    )


async def _run(answer: Answer, engine: AsyncEngine) -> tuple[Any, QueryRecorder, str | None]:
    """Run ``answer`` in a fresh session; return its result, its queries and a hint if it failed."""
    await load_sample_data(engine)
    hint = None
    result: Any = None
    with warnings.catch_warnings():
        # aiosqlite abandons the coroutine of a refused lazy load; Python would warn about it on
        # stderr whenever it is garbage-collected. Ignore that one warning and collect it here.
        warnings.filterwarnings("ignore", message=_COROUTINE_WARNING, category=RuntimeWarning)
        with QueryRecorder(engine) as queries:
            async with AsyncSession(engine) as session:
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
                    if "unique()" not in str(exc):
                        raise
                    hint = (
                        "joinedload() of a collection repeats each parent once per child row: call "
                        ".unique() on the result before .all(), or use selectinload() instead."
                    )
        if hint and hint.startswith("MissingGreenlet"):
            gc.collect()
    return result, queries, hint


def _queries(count: int) -> str:
    return f"{count} query" if count == 1 else f"{count} queries"


def _as_list(exercise: str, result: Any) -> tuple[list[Any] | None, Verdict | None]:
    if not isinstance(result, Sequence) or isinstance(result, str | bytes):
        kind = type(result).__name__
        return None, wrong(exercise, f"return a list (e.g. (await session.scalars(...)).all()), not {kind}.")
    return list(result), None


@check("06.1")
async def check_authors_with_posts(authors_with_posts: Answer, engine: AsyncEngine) -> Verdict:
    """Every user by id, ``posts`` loaded before the session closed, at most two queries."""
    result, queries, hint = await _run(authors_with_posts, engine)
    if hint:
        return wrong("06.1", hint)
    users, problem = _as_list("06.1", result)
    if problem or users is None:
        return problem or wrong("06.1", "return a list of User objects.")
    if not all(isinstance(u, User) for u in users):
        return wrong("06.1", "return User objects (select(User)), not rows, names or other values.")
    expected = _titles_by_author()
    names = [u.__dict__.get("name") for u in users]
    if sorted(map(str, names)) != sorted(expected):
        return wrong("06.1", f"expected the {len(expected)} users {sorted(expected)}, got {names}.")
    if names != list(expected):
        return wrong("06.1", "the users are not in id order: add .order_by(User.id).")
    not_loaded = [u.name for u in users if "posts" in inspect(u).unloaded]
    if not_loaded:
        return wrong(
            "06.1",
            f"posts were not loaded for {not_loaded}: after the session closes they cannot be "
            "loaded any more; add .options(selectinload(User.posts)) to the query.",
        )
    if queries.count > 2:
        return wrong(
            "06.1",
            f"your function ran {queries.count} queries, one per user for the posts (N+1); "
            "selectinload(User.posts) loads them all in one extra query.",
        )
    titles = {u.name: [p.title for p in u.posts] for u in users}
    if titles != expected:
        return wrong("06.1", "the posts loaded for some users are not theirs, or not in id order.")
    return correct("06.1", f"{len(users)} users with their posts in {_queries(queries.count)}.")


@check("06.2")
async def check_post_cards(post_cards: Answer, engine: AsyncEngine) -> Verdict:
    """One plain card per post, by post id, with author name and tag names, in at most 3 queries."""
    result, queries, hint = await _run(post_cards, engine)
    if hint:
        return wrong("06.2", hint)
    cards, problem = _as_list("06.2", result)
    if problem or cards is None:
        return problem or wrong("06.2", "return a list of PostCard objects.")
    if any(isinstance(c, DeclarativeBase) for c in cards):
        return wrong(
            "06.2",
            "you returned ORM objects; build a PostCard from each post inside the session and "
            "return those plain objects.",
        )
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
        return wrong("06.2", "the cards are not in post id order: add .order_by(Post.id).")
    if [card[0] for card in got] != [card[0] for card in expected]:
        return wrong("06.2", "the titles do not match the posts in id order.")
    if [card[1] for card in got] != [card[1] for card in expected]:
        return wrong("06.2", "some authors are wrong: author is post.author.name.")
    if got != expected:
        return wrong("06.2", "some tag lists are wrong: list the names of post.tags, in their loaded order.")
    if queries.count > 3:
        return wrong(
            "06.2",
            f"your function ran {queries.count} queries: the authors or tags were loaded one post at a "
            "time (N+1). Load both in the query: joinedload(Post.author), selectinload(Post.tags).",
        )
    return correct("06.2", f"{len(cards)} plain cards built inside the session in {_queries(queries.count)}.")
