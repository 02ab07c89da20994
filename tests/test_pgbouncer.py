"""helpers.pgbouncer: a private PgBouncer starts, passes queries on, stops, and explains failures.

The live tests need PostgreSQL (DATABASE_URL) and a pgbouncer program; without them they are
skipped. The others fake the program with a small script.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from helpers import DatabaseConfigError, NotebookDatabase, open_database, pgbouncer
from helpers.database import configured_url

ROOT = Path(__file__).resolve().parents[1]
URL = make_url("postgresql+asyncpg://app:s3cret@db.example:6543/shop")
needs_server = pytest.mark.skipif(
    configured_url() is None or pgbouncer.find() is None, reason="needs PostgreSQL and pgbouncer"
)


def fake_pgbouncer(tmp_path: Path, version: str) -> Path:
    """A script that answers --version like PgBouncer and otherwise exits with an error."""
    script = tmp_path / "pgbouncer"
    script.write_text(
        textwrap.dedent(f"""\
            #!/bin/sh
            if [ "$1" = --version ]; then echo "PgBouncer {version}"; exit 0; fi
            echo "2026-01-01 00:00:00.000 UTC [1] FATAL cannot load config file"
            exit 1
            """)
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


async def test_missing_program_is_one_sentence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PGBOUNCER", str(tmp_path / "nowhere"))
    with pytest.raises(DatabaseConfigError, match=r"needs PgBouncer.*apt install pgbouncer"):
        await pgbouncer.start_pgbouncer(URL)
    assert not pgbouncer.available()


async def test_too_old_for_prepared_statements(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PGBOUNCER", str(fake_pgbouncer(tmp_path, "1.18.0")))
    assert pgbouncer.version_of(pgbouncer.find()) == (1, 18, 0)
    assert not pgbouncer.available()
    with pytest.raises(
        DatabaseConfigError, match=r"1\.18\.0 .* has no max_prepared_statements \(added in 1\.21\)"
    ):
        await pgbouncer.start_pgbouncer(URL, max_prepared_statements=100)


async def test_a_pgbouncer_that_stops_at_once_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PGBOUNCER", str(fake_pgbouncer(tmp_path, "1.24.1")))
    assert pgbouncer.available()
    before = set(Path(os.environ.get("TMPDIR", "/tmp")).glob("asqla-pgbouncer-*"))
    with pytest.raises(DatabaseConfigError, match="PgBouncer stopped at once: cannot load config file"):
        await pgbouncer.start_pgbouncer(URL)
    assert set(Path(os.environ.get("TMPDIR", "/tmp")).glob("asqla-pgbouncer-*")) == before  # removed


def test_config_reaches_the_server_with_the_urls_login() -> None:
    text = pgbouncer._config(URL, 7000, "transaction", 0, 2, None)
    assert "shop = host='db.example' port='6543' dbname='shop' user='app' password='s3cret'" in text
    assert "auth_type = any" in text and "listen_addr = 127.0.0.1" in text and "listen_port = 7000" in text
    socket_url = make_url("postgresql+psycopg://postgres@/shop?host=/tmp/run dir")
    assert "host='/tmp/run dir' port='5432'" in pgbouncer._config(
        socket_url, 7000, "session", None, 1, "nobody"
    )
    assert "max_prepared_statements" not in pgbouncer._config(socket_url, 7000, "session", None, 1, None)


@pytest_asyncio.fixture
async def db() -> AsyncIterator[NotebookDatabase]:
    db = await open_database("test_pgbouncer")
    try:
        yield db
    finally:
        await db.close()


@needs_server
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_clients_share_server_connections(db: NotebookDatabase, driver: str) -> None:
    tracked = 100 if pgbouncer.available() else 0
    bouncer = await pgbouncer.start_pgbouncer(
        db.url.set(drivername=f"postgresql+{driver}"), max_prepared_statements=tracked, pool_size=1
    )
    engine = create_async_engine(bouncer.url)
    try:
        assert bouncer.url.port != db.url.port and bouncer.url.password is None
        async with engine.connect() as a, engine.connect() as b:
            first = await a.scalar(select(func.pg_backend_pid()))
            await a.commit()
            assert await b.scalar(select(func.pg_backend_pid())) == first  # one server connection
    finally:
        await engine.dispose()
        bouncer.stop()
    assert not bouncer.running
    bouncer.stop()  # a second stop does nothing


@needs_server
def test_stopped_when_the_interpreter_exits(db: NotebookDatabase) -> None:
    program = textwrap.dedent(f"""\
        import asyncio
        from sqlalchemy.engine import make_url
        from helpers.pgbouncer import start_pgbouncer
        bouncer = asyncio.run(start_pgbouncer(make_url({db.url.render_as_string(hide_password=False)!r})))
        print(bouncer._process.pid, bouncer._directory, flush=True)
        """)
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True, timeout=30, check=True
    )
    pid, directory = result.stdout.split()
    assert not Path(directory).exists()
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)
