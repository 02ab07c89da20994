"""Unit tests for the self-checks of the migrations lesson (notebook 13).

The checks make their own private database (SQLite by default, PostgreSQL with DATABASE_URL)
and, for 13.1, their own Alembic project. Every wrong answer below is a mistake the lesson
warns about, or one a learner is likely to make; each must get its own hint.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command, op
from alembic.config import Config
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from helpers.exercises import Status
from helpers.exercises.nb13 import check_add_column, check_migrate

# 13.1 ------------------------------------------------------------------------------------------


def upgrade_on(connection: Connection, config: Config, revision: str) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def good_migrate(engine: AsyncEngine, config: Config, revision: str = "head") -> None:
    async with engine.begin() as conn:
        await conn.run_sync(upgrade_on, config, revision)


async def test_migrate_correct() -> None:
    verdict = await check_migrate(good_migrate)
    assert verdict.status is Status.CORRECT, verdict


async def test_migrate_correct_with_connect_and_a_lambda() -> None:
    async def migrate(engine: AsyncEngine, config: Config, revision: str = "head") -> None:
        async with engine.connect() as conn:  # Alembic begins and commits the transaction itself
            await conn.run_sync(lambda sync_conn: upgrade_on(sync_conn, config, revision))

    verdict = await check_migrate(migrate)
    assert verdict.status is Status.CORRECT, verdict


async def test_migrate_not_attempted() -> None:
    async def placeholder(engine: AsyncEngine, config: Config, revision: str = "head") -> None:
        raise NotImplementedError

    assert (await check_migrate(placeholder)).status is Status.NOT_ATTEMPTED


async def straight_from_the_loop(engine: AsyncEngine, config: Config, revision: str = "head") -> None:
    command.upgrade(config, revision)


async def run_sync_without_the_connection(
    engine: AsyncEngine, config: Config, revision: str = "head"
) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(lambda _: command.upgrade(config, revision))


async def in_a_thread(engine: AsyncEngine, config: Config, revision: str = "head") -> None:
    await asyncio.to_thread(command.upgrade, config, revision)


async def the_async_connection(engine: AsyncEngine, config: Config, revision: str = "head") -> None:
    async with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


async def sync_connection_outside_run_sync(
    engine: AsyncEngine, config: Config, revision: str = "head"
) -> None:
    async with engine.begin() as conn:
        config.attributes["connection"] = conn.sync_connection
        command.upgrade(config, revision)


async def an_engine_of_its_own(engine: AsyncEngine, config: Config, revision: str = "head") -> None:
    own = create_async_engine(engine.url)
    try:
        async with own.begin() as conn:
            await conn.run_sync(upgrade_on, config, revision)
    finally:
        await own.dispose()


async def always_head(engine: AsyncEngine, config: Config, revision: str = "head") -> None:
    async with engine.begin() as conn:
        await conn.run_sync(upgrade_on, config, "head")


async def connection_already_in_a_transaction(
    engine: AsyncEngine, config: Config, revision: str = "head"
) -> None:
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1"))  # autobegins: Alembic then leaves the commit to us
        await conn.run_sync(upgrade_on, config, revision)
    # leaving connect() without commit() rolls everything back


@pytest.mark.parametrize(
    ("answer", "hint"),
    [
        (straight_from_the_loop, "inside the notebook's running event loop"),
        (run_sync_without_the_connection, "was not set, so env.py fell back to asyncio.run()"),
        (in_a_thread, "env.py got no connection"),
        (the_async_connection, "held the AsyncConnection"),
        (sync_connection_outside_run_sync, "MissingGreenlet"),
        (an_engine_of_its_own, "a connection of another engine"),
        (always_head, "pass `revision` to command.upgrade()"),
        (connection_already_in_a_transaction, "nothing was committed"),
    ],
)
async def test_migrate_wrong(answer: Any, hint: str) -> None:
    verdict = await check_migrate(answer)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
async def test_migrate_wrong_without_await() -> None:
    async def migrate(engine: AsyncEngine, config: Config, revision: str = "head") -> None:
        async with engine.begin() as conn:
            conn.run_sync(upgrade_on, config, revision)  # type: ignore[unused-coroutine]

    verdict = await check_migrate(migrate)
    assert verdict.status is Status.WRONG, verdict
    assert "Await run_sync()" in verdict.message, verdict


# 13.2 ------------------------------------------------------------------------------------------


def good_upgrade() -> None:
    op.add_column("posts", sa.Column("published", sa.Boolean(), nullable=False, server_default=sa.false()))


def good_downgrade() -> None:
    op.drop_column("posts", "published")


async def test_add_column_correct() -> None:
    verdict = await check_add_column(good_upgrade, good_downgrade)
    assert verdict.status is Status.CORRECT, verdict


async def test_add_column_not_attempted() -> None:
    def placeholder() -> None:
        raise NotImplementedError

    assert (await check_add_column(placeholder, placeholder)).status is Status.NOT_ATTEMPTED


def not_null_without_default() -> None:
    op.add_column("posts", sa.Column("published", sa.Boolean(), nullable=False))


def nullable() -> None:
    op.add_column("posts", sa.Column("published", sa.Boolean(), server_default=sa.false()))


def true_by_default() -> None:
    op.add_column("posts", sa.Column("published", sa.Boolean(), nullable=False, server_default=sa.true()))


def an_integer() -> None:
    op.add_column("posts", sa.Column("published", sa.Integer(), nullable=False, server_default="0"))


def another_name() -> None:
    op.add_column("posts", sa.Column("is_published", sa.Boolean(), nullable=False, server_default=sa.false()))


def keeps_the_column() -> None:
    pass


def drops_the_table() -> None:
    op.drop_table("post_tags")
    op.drop_table("posts")


def downgrade_placeholder() -> None:
    raise NotImplementedError


@pytest.mark.parametrize(
    ("upgrade", "downgrade", "hint"),
    [
        (not_null_without_default, good_downgrade, "posts already has rows"),
        (nullable, good_downgrade, "published accepts NULL"),
        (true_by_default, good_downgrade, "must count as not published"),
        (an_integer, good_downgrade, "make it sa.Boolean()"),
        (another_name, good_downgrade, "no column 'published'"),
        (good_upgrade, keeps_the_column, "still has the column published"),
        (good_upgrade, drops_the_table, "dropped the posts table"),
        (good_upgrade, downgrade_placeholder, "now replace the placeholder in downgrade()"),
    ],
)
async def test_add_column_wrong(upgrade: Any, downgrade: Any, hint: str) -> None:
    verdict = await check_add_column(upgrade, downgrade)
    assert verdict.status is Status.WRONG, verdict
    assert hint in verdict.message, verdict


async def test_add_column_then_alter_needs_batch_mode_on_sqlite_only() -> None:
    """Add it nullable, then make it NOT NULL: PostgreSQL can ALTER the column, SQLite cannot."""

    def upgrade() -> None:
        op.add_column("posts", sa.Column("published", sa.Boolean(), server_default=sa.false()))
        op.alter_column("posts", "published", nullable=False)

    verdict = await check_add_column(upgrade, good_downgrade)
    from helpers.database import configured_url

    url = configured_url()
    if url is None or url.get_backend_name() == "sqlite":
        assert verdict.status is Status.WRONG, verdict
        assert "SQLite cannot change the NULL constraint" in verdict.message, verdict
    else:
        assert verdict.status is Status.CORRECT, verdict
