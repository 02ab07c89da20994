"""helpers.database: URL validation messages, private databases, clean-up."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy import text

from helpers.database import (
    DatabaseConfigError,
    abandoned_directories,
    configured_url,
    hide_password,
    open_database,
    validate_url,
)

POSTGRESQL = os.environ.get("TEST_POSTGRESQL_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres")


def _postgresql_available() -> bool:
    url = validate_url(POSTGRESQL)
    try:
        socket.create_connection((url.host or "localhost", url.port or 5432), timeout=1).close()
    except OSError:
        return False
    return True


needs_postgresql = pytest.mark.skipif(
    not _postgresql_available() and not os.environ.get("CI"),
    reason="no PostgreSQL server reachable (set TEST_POSTGRESQL_URL); required when CI is set",
)


def message(raw: str) -> str:
    with pytest.raises(DatabaseConfigError) as info:
        validate_url(raw)
    text_ = str(info.value)
    assert "\n" not in text_, "the explanation must be one sentence on one line"
    return text_


@pytest.mark.parametrize(
    "raw",
    ["sqlite+aiosqlite:///notes.db", "sqlite+aiosqlite://", "postgresql+asyncpg://u:p@db.example:5433/app"],
)
def test_accepts_the_supported_async_urls(raw: str) -> None:
    assert validate_url(raw).drivername in {"sqlite+aiosqlite", "postgresql+asyncpg"}


def test_sync_sqlite_driver_names_the_async_spelling() -> None:
    text_ = message("sqlite:///example.db")
    assert "synchronous driver 'pysqlite'" in text_
    assert "'sqlite+aiosqlite:///example.db'" in text_


def test_sync_postgresql_driver_suggests_asyncpg_and_hides_password() -> None:
    text_ = message("postgresql://app:s3cret@db:5432/app")
    assert "s3cret" not in text_
    assert "postgresql+asyncpg://app:***@db:5432/app" in text_


def test_driverless_postgresql_url_is_described_per_release() -> None:
    """2.0: postgresql:// is psycopg2 (sync); 2.1: psycopg, whose async mode create_async_engine uses."""
    text_ = message("postgresql://app@db/app")
    if sqlalchemy.__version__.startswith("2.0."):
        assert "synchronous driver 'psycopg2'" in text_
    else:
        assert "selects 'psycopg' (create_async_engine() uses its async mode)" in text_
    assert "'postgresql+asyncpg://app@db/app'" in text_


def test_dialect_typo_gets_a_suggestion() -> None:
    text_ = message("sqlite_aiosqlite:///:memory:")
    assert "unknown dialect 'sqlite_aiosqlite'" in text_
    assert "did you mean 'sqlite+aiosqlite'" in text_


def test_garbage_is_not_a_url() -> None:
    assert "is not a database URL" in message("not a url at all")


def test_unsupported_async_driver_is_named() -> None:
    assert "postgresql+psycopg_async" in message("postgresql+psycopg_async://u@h/db")


def test_missing_driver_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "asyncpg" else real(name, *a)
    )
    text_ = message("postgresql+asyncpg://u@h/db")
    assert "driver package 'asyncpg', which is not installed" in text_
    assert "pip install -r requirements.txt" in text_


def test_postgresql_url_needs_a_database_name() -> None:
    assert "names no database" in message("postgresql+asyncpg://u@h:5432")


def test_hide_password_also_for_unparsable_strings() -> None:
    assert hide_password("postgres+asyncpg://me:pw@h/db") == "postgres+asyncpg://me:***@h/db"


def test_configured_url_reads_the_environment_variable() -> None:
    assert configured_url({}) is None
    assert configured_url({"DATABASE_URL": "  "}) is None
    url = configured_url({"DATABASE_URL": "postgresql+asyncpg://u@h/db"})
    assert url is not None and url.database == "db"


def test_ipython_shows_the_sentence_without_a_traceback() -> None:
    error = DatabaseConfigError("DATABASE_URL='x' is wrong; do y.")
    assert error._render_traceback_() == ["DatabaseConfigError: DATABASE_URL='x' is wrong; do y."]


async def test_sqlite_database_is_private_and_removed() -> None:
    first = await open_database("Unit Test", environ={})
    second = await open_database("Unit Test", environ={})
    assert first.url != second.url and first.is_sqlite
    path = Path(first.url.database)
    async with first.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE t (x INTEGER)"))
    assert path.exists() and "unit_test" in path.name
    assert "temporary" in first.describe() and str(path.parent) not in first.describe()
    await first.close()
    await first.close()  # safe to repeat
    await second.close()
    assert not path.parent.exists()


async def test_sqlite_url_places_the_private_file_beside_it(tmp_path: Path) -> None:
    db = await open_database("beside", environ={"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/app.db"})
    assert Path(db.url.database).parent.parent == tmp_path
    await db.close()
    assert list(tmp_path.iterdir()) == []


async def test_sqlite_directory_must_exist(tmp_path: Path) -> None:
    with pytest.raises(DatabaseConfigError, match="is not a directory"):
        await open_database("x", environ={"DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/no/app.db"})


def test_a_killed_kernel_leaves_a_directory_that_the_next_open_removes(tmp_path: Path) -> None:
    code = (
        "import asyncio, os, sys\n"
        "from helpers.database import open_database\n"
        "db = asyncio.run(open_database('crash', environ={'DATABASE_URL': sys.argv[1]}))\n"
        "print(db.url.database, flush=True)\n"
        "os._exit(0)  # dies without closing, like a killed kernel\n"
    )
    url = f"sqlite+aiosqlite:///{tmp_path}/x.db"
    left = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, check=True)
    directory = Path(left.stdout.strip()).parent
    assert directory.exists() and abandoned_directories(tmp_path) == [directory]
    subprocess.run([sys.executable, "-c", code.replace("os._exit(0)", "pass"), url], check=True)
    assert not directory.exists()


def test_atexit_removes_an_unclosed_database(tmp_path: Path) -> None:
    code = (
        "import asyncio, sys\n"
        "from helpers.database import open_database\n"
        "db = asyncio.run(open_database('forgot', environ={'DATABASE_URL': sys.argv[1]}))\n"
        "print(db.url.database)\n"
    )
    url = f"sqlite+aiosqlite:///{tmp_path}/x.db"
    done = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, check=True)
    assert not Path(done.stdout.strip()).parent.exists()


async def test_unreachable_postgresql_is_one_sentence() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DatabaseConfigError) as info:
        await open_database("x", environ={"DATABASE_URL": f"postgresql+asyncpg://me:pw@127.0.0.1:{port}/db"})
    text_ = str(info.value)
    assert text_.startswith(f"Cannot reach PostgreSQL at 127.0.0.1:{port}")
    assert "pw" not in text_ and "is the server running" in text_


@needs_postgresql
async def test_missing_postgresql_database_is_named() -> None:
    url = validate_url(POSTGRESQL).set(database="asqla_no_such_database")
    with pytest.raises(DatabaseConfigError, match="has no database 'asqla_no_such_database'"):
        await open_database("x", environ={"DATABASE_URL": url.render_as_string(hide_password=False)})


@needs_postgresql
async def test_wrong_postgresql_user_is_refused_clearly() -> None:
    url = validate_url(POSTGRESQL).set(username="asqla_nobody", password="pw")
    with pytest.raises(DatabaseConfigError) as info:
        await open_database("x", environ={"DATABASE_URL": url.render_as_string(hide_password=False)})
    assert "refused the login" in str(info.value) and "pw@" not in str(info.value)


@needs_postgresql
async def test_postgresql_database_is_created_and_dropped() -> None:
    environ = {"DATABASE_URL": POSTGRESQL}
    db = await open_database("07 Transactions!", environ=environ)
    assert db.is_postgresql and db.url.database.startswith("asqla_07_transactions_")
    async with db.engine.connect() as conn:
        assert await conn.scalar(text("SELECT current_database()")) == db.url.database
    # a forgotten second engine with an open connection does not block the drop
    other = db.create_engine()
    leaked = await other.connect()
    await db.close()  # DROP DATABASE ... WITH (FORCE) ends that connection on the server
    with pytest.raises(Exception, match="connection"):
        await leaked.execute(text("SELECT 1"))
    await leaked.close()
    checker = await open_database("checker", environ=environ)
    async with checker.engine.connect() as conn:
        left = await conn.scalar(
            text("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": db.url.database}
        )
    await checker.close()
    assert left == 0
