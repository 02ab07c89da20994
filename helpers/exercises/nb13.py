"""Self-checks for the exercises of the migrations lesson (notebook 13).

* 13.1 ``migrate(engine, config, revision)``: run ``alembic upgrade <revision>`` from the
  notebook's running event loop, on a connection of ``engine`` (Alembic's connection sharing:
  ``config.attributes["connection"]`` set inside ``AsyncConnection.run_sync()``).
* 13.2 ``upgrade()`` and ``downgrade()`` of a revision that adds ``posts.published``: a
  Boolean, NOT NULL, false for existing posts and for new posts inserted without a value; the
  downgrade removes the column and nothing else.

Each check works in a private database of its own (``open_database``; SQLite or PostgreSQL as
``DATABASE_URL`` says) and, for 13.1, a temporary Alembic project whose env.py reports what the
learner's code handed it. Both are removed before the check returns.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.operations import Operations
from sqlalchemy import Boolean, Connection, func, insert, inspect, select
from sqlalchemy.engine.interfaces import ReflectedColumn
from sqlalchemy.exc import DBAPIError, MissingGreenlet, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from helpers.database import NotebookDatabase, open_database
from helpers.exercises.base import Verdict, check, correct, wrong
from helpers.models import Base, Post, User

__all__ = ["AsyncConnectionGiven", "NoConnectionGiven", "check_add_column", "check_migrate"]

TIME_LIMIT = 30.0  # seconds for one call of the learner's code; tests may lower it

Migrate = Callable[[AsyncEngine, Config, str], Awaitable[Any]]


class NoConnectionGiven(Exception):
    """Raised by the check's env.py when it has to make an engine of its own."""


class AsyncConnectionGiven(TypeError):
    """Raised by the check's env.py when config.attributes["connection"] is an AsyncConnection."""


@asynccontextmanager
async def _private_database(label: str) -> AsyncIterator[NotebookDatabase]:
    db = await open_database(label)
    try:
        yield db
    finally:
        await db.close()


# 13.1 ------------------------------------------------------------------------------------------

# The check's env.py: the async template's logic, except that it has no URL to make an engine
# from, and it records in config.attributes["seen"] how it was run.
_ENV_PY = """
import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.util.concurrency import in_greenlet

from helpers.exercises.nb13 import AsyncConnectionGiven, NoConnectionGiven

config = context.config
seen = config.attributes.setdefault("seen", [])


def do_run_migrations(connection):
    seen.append(("connection", connection))
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations():
    raise NoConnectionGiven("config.attributes has no connection, and the check's env.py has no URL")


def run_migrations_online():
    connection = config.attributes.get("connection")
    if connection is None:
        seen.append(("asyncio.run", in_greenlet()))
        coroutine = run_async_migrations()
        try:
            asyncio.run(coroutine)  # as the template does
        finally:
            coroutine.close()  # no "never awaited" warning when asyncio.run() refused it
    elif isinstance(connection, AsyncConnection):
        raise AsyncConnectionGiven("config.attributes['connection'] is an AsyncConnection")
    else:
        do_run_migrations(connection)


run_migrations_online()
"""

_REVISIONS = {
    "0001_create_notes.py": """
        revision = "0001"
        down_revision = None

        import sqlalchemy as sa
        from alembic import op


        def upgrade():
            op.create_table(
                "notes", sa.Column("id", sa.Integer, primary_key=True), sa.Column("text", sa.Text)
            )


        def downgrade():
            op.drop_table("notes")
        """,
    "0002_add_notes_done.py": """
        revision = "0002"
        down_revision = "0001"

        import sqlalchemy as sa
        from alembic import op


        def upgrade():
            op.add_column("notes", sa.Column("done", sa.Boolean, nullable=True))


        def downgrade():
            op.drop_column("notes", "done")
        """,
}


def _project(directory: Path) -> Config:
    """Write the check's Alembic project into ``directory``; return a Config for it (no URL)."""
    versions = directory / "versions"
    versions.mkdir(parents=True)
    (directory / "env.py").write_text(_ENV_PY)
    for name, source in _REVISIONS.items():
        (versions / name).write_text(textwrap.dedent(source))
    config = Config()
    config.set_main_option("script_location", str(directory))
    return config


def _state(connection: Connection) -> tuple[str | None, set[str]]:
    """The database's Alembic revision and the columns of ``notes`` (empty when it is missing)."""
    revision = MigrationContext.configure(connection).get_current_revision()
    inspector = inspect(connection)
    columns = {c["name"] for c in inspector.get_columns("notes")} if inspector.has_table("notes") else set()
    return revision, columns


@check("13.1")
async def check_migrate(migrate: Migrate) -> Verdict:
    """Call ``migrate(engine, config, "0001")``, then ``(..., "head")``, on a fresh database."""
    directory = Path(tempfile.mkdtemp(prefix="asqla-check13-"))
    try:
        async with _private_database("13_check_migrate") as db:
            return await _check_migrate(migrate, db, directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


async def _check_migrate(migrate: Migrate, db: NotebookDatabase, directory: Path) -> Verdict:
    engine = db.create_engine()
    for revision, wanted in (("0001", {"id", "text"}), ("head", {"id", "text", "done"})):
        config = _project(directory / revision)
        try:
            async with asyncio.timeout(TIME_LIMIT):
                await migrate(engine, config, revision)
        except TimeoutError:
            return wrong("13.1", f"migrate() was still running after {TIME_LIMIT:.0f} s.")
        except RuntimeError as exc:
            if "asyncio.run() cannot be called" not in str(exc):
                raise
            inside_run_sync = ("asyncio.run", True) in config.attributes.get("seen", [])
            return wrong(
                "13.1",
                (
                    "you called the command inside run_sync(), but config.attributes['connection'] was "
                    "not set, so env.py fell back to asyncio.run(), which cannot start a loop inside "
                    "the running one: set it to the connection run_sync() passes to your function."
                )
                if inside_run_sync
                else (
                    "command.upgrade() ran env.py's asyncio.run() inside the notebook's running event "
                    "loop. Call it inside `await conn.run_sync(...)`, with config.attributes['connection'] "
                    "set to the connection run_sync() passes to your function."
                ),
            )
        except NoConnectionGiven:
            return wrong(
                "13.1",
                "env.py got no connection, so it would have made an engine of its own (in a worker "
                "thread that works, but on whatever sqlalchemy.url says, not on the engine you were "
                "given): set config.attributes['connection'] inside `await conn.run_sync(...)`.",
            )
        except AsyncConnectionGiven:
            return wrong(
                "13.1",
                "config.attributes['connection'] held the AsyncConnection. Alembic's code is "
                "synchronous: give it the sync Connection that run_sync() passes to your function, "
                "and call the command from inside that function.",
            )
        except MissingGreenlet:
            return wrong(
                "13.1",
                "MissingGreenlet: the migrations used the sync connection outside run_sync(), where "
                "it cannot wait for the async driver. Call command.upgrade() inside the function you "
                "pass to `await conn.run_sync(...)`.",
            )
        used = [value for kind, value in config.attributes.get("seen", []) if kind == "connection"]
        if used and used[-1].engine is not engine.sync_engine:
            return wrong(
                "13.1",
                "the migrations ran on a connection of another engine: use the engine passed to "
                "migrate(), so they run in its pool, and nothing is left for you to dispose.",
            )
        async with engine.connect() as conn:
            current, columns = await conn.run_sync(_state)
        expected = "0002" if revision == "head" else revision
        if current is None:
            return wrong(
                "13.1",
                f"after migrate(engine, config, {revision!r}) the database has no revision: nothing "
                "was committed. Await run_sync(), and use `async with engine.begin()`, which commits.",
            )
        if current != expected:
            return wrong(
                "13.1",
                f"after migrate(engine, config, {revision!r}) the database is at revision {current!r}, "
                f"not {expected!r}: pass `revision` to command.upgrade().",
            )
        if columns != wanted:
            return wrong(
                "13.1",
                f"the database says revision {current!r}, but the table it creates is not there: was "
                "the transaction rolled back? Use `async with engine.begin()` (it commits).",
            )
    return correct(
        "13.1",
        "command.upgrade() runs inside run_sync(), on a connection of your engine, in the running loop.",
    )


# 13.2 ------------------------------------------------------------------------------------------

Step = Callable[[], Any]
AUTHOR = 1  # the id of the one user the check's database holds


class _Failed(Exception):
    """The learner's upgrade() or downgrade() raised; carries the verdict."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


def _apply(connection: Connection, step: Step) -> None:
    """Run one of the learner's functions as Alembic runs a revision: with ``op`` bound."""
    with Operations.context(MigrationContext.configure(connection)):
        step()


def _posts_columns(connection: Connection) -> dict[str, ReflectedColumn]:
    inspector = inspect(connection)
    if not inspector.has_table("posts"):
        return {}
    return {c["name"]: c for c in inspector.get_columns("posts")}


def _rows(connection: Connection) -> tuple[int, int]:
    users = connection.scalar(select(func.count()).select_from(User))
    posts = connection.scalar(select(func.count()).select_from(Post))
    return int(users or 0), int(posts or 0)


def _published(connection: Connection) -> list[Any]:
    return list(connection.exec_driver_sql("SELECT published FROM posts ORDER BY id").scalars())


def _insert_without_published(connection: Connection) -> None:
    connection.execute(insert(Post).values(title="new", body="", author_id=AUTHOR))


async def _run(engine: AsyncEngine, step: Step, name: str) -> None:
    """Apply ``step`` in one transaction; turn its failures into verdicts."""
    try:
        async with asyncio.timeout(TIME_LIMIT), engine.begin() as conn:
            await conn.run_sync(_apply, step)
    except NotImplementedError as exc:
        if not str(exc):  # the placeholder
            if name == "upgrade()":
                raise
            raise _Failed(
                wrong("13.2", "upgrade() works; now replace the placeholder in downgrade() too.")
            ) from None
        raise _Failed(
            wrong(
                "13.2",
                f"{name} raised NotImplementedError: {exc} Here one add_column with a server_default "
                "does the whole upgrade, and drop_column the downgrade.",
            )
        ) from None
    except DBAPIError as exc:
        if name == "upgrade()" and "null" in str(exc.orig).lower():
            raise _Failed(
                wrong(
                    "13.2",
                    "adding a NOT NULL column failed because posts already has rows, and they would "
                    "hold NULL: give the column a server_default (sa.false()), which fills them.",
                )
            ) from None
        if 'near "ALTER"' in str(exc.orig):
            raise _Failed(
                wrong(
                    "13.2",
                    f"{name} failed on SQLite: {exc.orig}. SQLite cannot change the NULL constraint of a "
                    "column (Alembic's batch mode rebuilds the table instead); here one add_column with "
                    "nullable=False and server_default=sa.false() needs no ALTER COLUMN at all.",
                )
            ) from None
        raise _Failed(wrong("13.2", f"{name} failed on the database: {exc.orig}")) from None
    except (SQLAlchemyError, TypeError, AttributeError, KeyError, ValueError) as exc:
        raise _Failed(wrong("13.2", f"{name} raised {type(exc).__name__}: {exc}")) from None
    except TimeoutError:
        raise _Failed(wrong("13.2", f"{name} was still running after {TIME_LIMIT:.0f} s.")) from None


@check("13.2")
async def check_add_column(upgrade: Step, downgrade: Step) -> Verdict:
    """Apply the learner's revision to a blog database with rows: up, down, and up again."""
    async with _private_database("13_check_add_column") as db:
        try:
            return await _check_add_column(upgrade, downgrade, db.create_engine())
        except _Failed as failed:
            return failed.verdict


async def _seed(engine: AsyncEngine) -> None:
    """The schema of revision 0001 (helpers.models), one user and two posts."""
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(insert(User).values(id=AUTHOR, name="ada", email="ada@example.com"))
        await conn.execute(
            insert(Post), [{"title": t, "body": "", "author_id": AUTHOR} for t in ("one", "two")]
        )


async def _check_add_column(upgrade: Step, downgrade: Step, engine: AsyncEngine) -> Verdict:
    await _seed(engine)
    await _run(engine, upgrade, "upgrade()")
    async with engine.connect() as conn:
        columns = await conn.run_sync(_posts_columns)
    if not columns:
        return wrong(
            "13.2", "after upgrade() the posts table is gone: add a column, do not replace the table."
        )
    if "published" not in columns:
        return wrong("13.2", f"after upgrade() posts has no column 'published' (it has {sorted(columns)}).")
    column = columns["published"]
    if not isinstance(column["type"], Boolean):
        return wrong("13.2", f"published is {column['type']!r}: make it sa.Boolean().")
    if column["nullable"]:
        return wrong(
            "13.2",
            "published accepts NULL: add it with nullable=False (and a server_default, so the "
            "existing rows get a value).",
        )
    async with engine.connect() as conn:
        existing = await conn.run_sync(_published)
    if any(existing):
        return wrong(
            "13.2",
            f"the existing posts now read published={existing}: they must count as not published. "
            "Use server_default=sa.false().",
        )
    try:
        async with engine.begin() as conn:
            await conn.run_sync(_insert_without_published)
            new = (await conn.run_sync(_published))[-1]
    except DBAPIError:
        return wrong(
            "13.2",
            "inserting a post without a value for published fails: keep the server_default on the "
            "column, so new posts get false from the database.",
        )
    if new:
        return wrong("13.2", "a post inserted without a value reads published=true: default to false.")

    await _run(engine, downgrade, "downgrade()")
    async with engine.connect() as conn:
        columns = await conn.run_sync(_posts_columns)
        rows = await conn.run_sync(_rows) if columns else None
    if not columns:
        return wrong(
            "13.2",
            "downgrade() dropped the posts table, and every post with it: drop only the column "
            "(op.drop_column('posts', 'published')).",
        )
    if "published" in columns:
        return wrong(
            "13.2",
            "after downgrade() posts still has the column published: the downgrade must undo the "
            "upgrade (op.drop_column).",
        )
    if rows != (1, 3):
        return wrong("13.2", f"downgrade() should keep every row; (users, posts) went from (1, 3) to {rows}.")
    await _run(engine, upgrade, "upgrade() after downgrade()")
    return correct(
        "13.2",
        "the column arrives NOT NULL with false for old and new rows, and the downgrade removes "
        "only it; up, down and up again all work.",
    )
