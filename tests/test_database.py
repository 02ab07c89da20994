"""helpers.database: URL validation messages, private databases, clean-up."""

from __future__ import annotations

import asyncio
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
    driver_of,
    hide_password,
    machine_id,
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
    [
        "sqlite+aiosqlite:///notes.db",
        "sqlite+aiosqlite://",
        "postgresql+asyncpg://u:p@db.example:5433/app",
        "postgresql+psycopg://u:p@db.example:5433/app",
        "postgresql+psycopg_async://u@db/app",
    ],
)
def test_accepts_the_supported_async_urls(raw: str) -> None:
    url = validate_url(raw)
    assert url.drivername == raw.split(":")[0]
    assert driver_of(url) in {"aiosqlite", "asyncpg", "psycopg"}


def test_sync_sqlite_driver_names_the_async_spelling() -> None:
    text_ = message("sqlite:///example.db")
    assert "synchronous driver 'pysqlite'" in text_
    assert "'sqlite+aiosqlite:///example.db'" in text_


def test_sync_postgresql_driver_suggests_both_async_drivers_and_hides_password() -> None:
    text_ = message("postgresql+psycopg2://app:s3cret@db:5432/app")
    assert "s3cret" not in text_
    assert "synchronous driver 'psycopg2'" in text_
    assert "'postgresql+asyncpg://app:***@db:5432/app' or 'postgresql+psycopg://app:***@db:5432/app'" in text_


def test_driverless_postgresql_url_is_judged_per_release() -> None:
    """2.0: postgresql:// is psycopg2 (sync), and the message says so for the installed release;
    2.1: it is psycopg, whose async mode create_async_engine() uses: accepted."""
    if sqlalchemy.__version__.startswith("2.0."):
        text_ = message("postgresql://app@db/app")
        assert "synchronous driver 'psycopg2'" in text_
        assert f"on SQLAlchemy {sqlalchemy.__version__}; 2.1 selects psycopg instead" in text_
        assert "'postgresql+psycopg://app@db/app'" in text_
    else:
        assert driver_of(validate_url("postgresql://app@db/app")) == "psycopg"


def test_dialect_typo_gets_a_suggestion() -> None:
    text_ = message("sqlite_aiosqlite:///:memory:")
    assert "unknown dialect 'sqlite_aiosqlite'" in text_
    assert "did you mean 'sqlite+aiosqlite'" in text_


def test_garbage_is_not_a_url() -> None:
    assert "is not a database URL" in message("not a url at all")


def test_unsupported_async_driver_is_named() -> None:
    text_ = message("mysql+aiomysql://u@h/db")
    assert "uses mysql+aiomysql" in text_ and "postgresql+psycopg" in text_


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


def test_machine_id_is_random_kept_and_shared_by_concurrent_first_users(tmp_path: Path) -> None:
    """Eight processes asking at once on a new cache directory all get the one id that is kept."""
    code = "from helpers.database import machine_id; print(machine_id())"
    env = {**os.environ, "ASQLA_CACHE_DIR": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    ids = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert len(ids) == 1
    (found,) = ids
    assert len(found) == 8 and int(found, 16) >= 0
    assert (tmp_path / "cache" / "machine-id").read_text().strip() == found
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["machine-id"]
    other = {**os.environ, "ASQLA_CACHE_DIR": str(tmp_path / "other")}
    second = subprocess.run(
        [sys.executable, "-c", code], env=other, capture_output=True, text=True, check=True
    )
    assert second.stdout.strip() != found  # another machine (cache directory), another id


def test_a_corrupt_machine_id_file_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ASQLA_CACHE_DIR", str(tmp_path))
    (tmp_path / "machine-id").write_text("not an id")
    with pytest.raises(DatabaseConfigError, match="does not hold a machine id"):
        machine_id()


_LEAVE_ONE = (
    "import asyncio, os, sys\n"
    "from helpers.database import open_database\n"
    "db = asyncio.run(open_database('workshop', environ={'DATABASE_URL': sys.argv[1]}))\n"
    "print(db.url.database, flush=True)\n"
    "os._exit(0)  # its pid is now dead here: from this machine it looks like another machine's live kernel\n"
)


async def _database_exists(name: str) -> bool:
    checker = await open_database("checker", environ={"DATABASE_URL": POSTGRESQL})
    try:
        async with checker.engine.connect() as conn:
            found = await conn.scalar(
                text("SELECT count(*) FROM pg_database WHERE datname = :n"), {"n": name}
            )
    finally:
        await checker.close()
    return bool(found)


def _participant(url: str, cache: Path, code: str = _LEAVE_ONE) -> str:
    """Run a notebook start on "another machine" (its own cache directory, so its own machine id)."""
    env = {**os.environ, "ASQLA_CACHE_DIR": str(cache)}
    done = subprocess.run([sys.executable, "-c", code, url], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@needs_postgresql
async def test_same_host_name_and_one_shared_login_never_drop_each_others_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two workshop machines with the same host name and the same login: B must not take A's
    database (whose pid does not run on B) for one of its own abandoned ones."""
    a_database = await asyncio.to_thread(_participant, POSTGRESQL, tmp_path / "machine-a")
    assert a_database.startswith("asqla_workshop_")
    monkeypatch.setenv("ASQLA_CACHE_DIR", str(tmp_path / "machine-b"))
    b = await open_database("workshop", environ={"DATABASE_URL": POSTGRESQL})  # B cleans up its own
    await b.close()
    assert await _database_exists(a_database), "B dropped A's database"
    # A's machine, on its next start, recognises it as its own abandoned database and removes it
    monkeypatch.setenv("ASQLA_CACHE_DIR", str(tmp_path / "machine-a"))
    a_again = await open_database("workshop", environ={"DATABASE_URL": POSTGRESQL})
    await a_again.close()
    assert not await _database_exists(a_database)


@needs_postgresql
async def test_two_roles_on_one_machine_leave_each_other_alone(tmp_path: Path) -> None:
    """Participants with their own CREATEDB-only roles: B's start neither fails on A's database
    (owned by A: "must be owner") nor touches it."""
    admin = validate_url(POSTGRESQL)
    suffix = os.urandom(3).hex()
    roles = [f"asqla_test_a_{suffix}", f"asqla_test_b_{suffix}"]
    setup = await open_database("roles", environ={"DATABASE_URL": POSTGRESQL})
    admin_engine = setup.create_engine(isolation_level="AUTOCOMMIT")
    async with admin_engine.connect() as conn:
        for role in roles:
            await conn.execute(text(f"CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEROLE CREATEDB"))
    a_database = ""
    try:
        url_a, url_b = (admin.set(username=role).render_as_string(hide_password=False) for role in roles)
        same_machine = tmp_path / "shared-machine"
        a_database = await asyncio.to_thread(_participant, url_a, same_machine)
        b_code = _LEAVE_ONE.replace("os._exit(0)", "pass")  # B starts, cleans up, exits normally
        await asyncio.to_thread(_participant, url_b, same_machine, b_code)
        assert await _database_exists(a_database), "B dropped A's database"
    finally:
        async with admin_engine.connect() as conn:
            if a_database:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{a_database}" WITH (FORCE)'))
            for role in roles:
                await conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        await setup.close()
