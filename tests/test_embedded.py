"""helpers.embedded: the PostgreSQL server from a pip wheel, shared, watched and removable.

Every test works in its own directory (``ASQLA_EMBEDDED_DIR`` in ``tmp_path``) and ends with
``clean()``; the fixture then checks that no process of that directory is left. Tests that
are not about initdb start from a copy of one data directory made once per session.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
from sqlalchemy import URL, text
from sqlalchemy.ext.asyncio import create_async_engine

from helpers import embedded
from helpers.database import DatabaseConfigError

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(
    not any(importlib.util.find_spec(module) for _, module in embedded.PACKAGES) and not os.environ.get("CI"),
    reason="no PostgreSQL wheel installed (pip install -r requirements.txt); required when CI is set",
)
# How long a watchdog may take to stop a server nobody uses: linger, one poll, a fast
# shutdown, and slack for a busy machine.
STOP_BOUND = embedded.LINGER + embedded.POLL + embedded.STOP_TIMEOUT + 5.0


def processes_of(base: Path) -> list[psutil.Process]:
    """Running processes started for ``base``: the server (``-D base/data``) and the watchdog."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] != psutil.STATUS_ZOMBIE and any(str(base) in part for part in cmdline):
            found.append(process)
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent to reap it does not)."""
    return embedded._process(pid) is not None


def server(base: Path) -> int | None:
    """The pid of the server running from ``base``, if any."""
    found = embedded._postmaster(base / "data")
    return found.pid if found is not None else None


def watchdog(base: Path) -> int | None:
    found = embedded._read_identity(base / "watchdog.pid")
    return found.pid if found is not None else None


def wait_until(condition: Callable[[], bool], timeout: float) -> float:
    """Poll ``condition()`` until true; the seconds it took. Fails after ``timeout``."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout, f"not within {timeout:g} s"
        time.sleep(0.02)
    return time.monotonic() - start


def one_sentence(info: pytest.ExceptionInfo[DatabaseConfigError]) -> str:
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.fixture(scope="session")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data directory made by initdb once, for tests that are not about initdb."""
    paths = embedded._Paths(tmp_path_factory.mktemp("template").resolve())
    wheel, owner = embedded._wheel(), embedded._server_user()
    embedded._prepare(paths, wheel, owner)
    embedded._initdb(paths, wheel, owner)
    yield paths.data
    shutil.rmtree(paths.base)


@pytest.fixture
def empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private ``ASQLA_EMBEDDED_DIR``; afterwards: cleaned, and no process of it left."""
    base = (tmp_path / "embedded").resolve()
    monkeypatch.setenv(embedded.ENV_DIR, str(base))
    try:
        yield base
    finally:
        embedded.clean()
        assert not base.exists()
        assert processes_of(base) == []


def copy_data(template: Path, base: Path) -> None:
    """Give ``base`` a copy of the template's data directory (cp -a keeps its owner)."""
    base.mkdir(parents=True)
    subprocess.run(["cp", "-a", str(template), str(base / "data")], check=True, timeout=60)


@pytest.fixture
def base(empty: Path, template: Path) -> Path:
    """Like ``empty``, with a data directory already made."""
    copy_data(template, empty)
    return empty


# A child process that uses the server through the module's own file (no helpers package,
# no SQLAlchemy: fast to start). Arguments: "together" (wait for a line on standard input
# before starting, to start at the same instant as other children) or "-", and LINGER. It
# prints the server's and the watchdog's pids and how long its start took, then waits for its
# standard input to close, unless the test kills it first.
CHILD = textwrap.dedent(
    f"""
    import importlib.util, os, sys, time
    spec = importlib.util.spec_from_file_location("child_embedded", {str(ROOT / "helpers" / "embedded.py")!r})
    embedded = sys.modules["child_embedded"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(embedded)
    embedded.LINGER = float(sys.argv[2])
    if sys.argv[1] == "together":
        print("imported", flush=True)
        sys.stdin.readline()
    start = time.perf_counter()
    paths, server = embedded._start(user=os.getpid(), pin=False)
    took = time.perf_counter() - start
    watchdog = embedded._read_identity(paths.watchdog).pid
    print(server.pid, watchdog, round(took, 3), flush=True)
    sys.stdin.read()
    """
)


def start_child(*, together: bool = False, linger: float = embedded.LINGER) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, "together" if together else "-", repr(linger)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def report(child: subprocess.Popen[str]) -> tuple[int, int, float]:
    assert child.stdout is not None
    line = child.stdout.readline().split()
    assert len(line) == 3, f"the child failed (exit status {child.poll()})"
    return int(line[0]), int(line[1]), float(line[2])


def finish(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    assert child.wait(timeout=10) == 0


async def data_directory(url: URL) -> str:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text("SELECT current_setting('data_directory')"))).scalar_one()
    finally:
        await engine.dispose()


async def database_names(url: URL, create: str | None = None) -> list[str]:
    """The server's databases, through plain asyncpg on the URL's socket (creating one first)."""
    conn = await asyncpg.connect(host=url.query["host"], port=url.port, user="postgres", database="postgres")
    try:
        if create:
            await conn.execute(f'CREATE DATABASE "{create}"')
        return [row[0] for row in await conn.fetch("SELECT datname FROM pg_database")]
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("value", "driver"),
    [
        ("embedded", "asyncpg"),
        ("embedded+asyncpg", "asyncpg"),
        ("embedded+psycopg", "psycopg"),
        (" Embedded+Psycopg ", "psycopg"),
        ("embedded+aiosqlite", None),
        ("embeded", None),
        ("postgresql+asyncpg://postgres@localhost/postgres", None),
        ("", None),
    ],
)
def test_keywords(value: str, driver: str | None) -> None:
    assert embedded.driver_for(value) == driver
    assert all(embedded.driver_for(keyword) for keyword in embedded.KEYWORDS)


def test_unknown_driver_is_refused_before_anything_starts(empty: Path) -> None:
    with pytest.raises(DatabaseConfigError) as info:
        embedded.server_url("aiosqlite")
    assert "'aiosqlite'" in one_sentence(info)
    assert not empty.exists()


def test_an_unusable_directory_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv(embedded.ENV_DIR, str(tmp_path / "a-file" / "embedded"))
    with pytest.raises(DatabaseConfigError) as info:
        embedded.server_url()
    assert one_sentence(info).startswith(f"The embedded server cannot use {tmp_path / 'a-file'}")


async def test_cold_start_serves_both_drivers_and_a_second_process(empty: Path) -> None:
    assert embedded.status().startswith("not created:")
    start = time.perf_counter()
    url = embedded.server_url()
    print(f"cold start (initdb, then the server): {time.perf_counter() - start:.2f} s")
    psycopg_url = embedded.server_url("psycopg")
    assert (url.drivername, psycopg_url.drivername) == ("postgresql+asyncpg", "postgresql+psycopg")
    assert (url.username, url.database, url.host) == ("postgres", "postgres", None)
    socket_dir = url.query["host"]
    assert Path(socket_dir, f".s.PGSQL.{url.port}").is_socket()

    # Our server answers, not another one on this machine: its data directory is ours.
    data = str(embedded._paths().data)
    assert await data_directory(url) == data
    assert await data_directory(psycopg_url) == data
    conn = await asyncpg.connect(host=socket_dir, port=url.port, user="postgres", database="postgres")
    try:
        assert await conn.fetchval("SHOW data_directory") == data
        assert await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
    finally:
        await conn.close()

    pid, keeper = server(empty), watchdog(empty)
    assert pid is not None and keeper is not None
    if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as the system user
        assert psutil.Process(pid).username() == embedded.SYSTEM_USER
    line = embedded.status()
    assert line.startswith("running:") and f"pid {pid}" in line and "1 process(es)" in line

    child = start_child()
    try:
        child_server, child_watchdog, took = report(child)
        print(f"warm start in a second process: {took:.3f} s")
        assert (child_server, child_watchdog) == (pid, keeper)
        assert "2 process(es)" in embedded.status()
    finally:
        finish(child)


def test_simultaneous_first_use_starts_one_server(empty: Path) -> None:
    children = [start_child(together=True) for _ in range(4)]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().strip() == "imported"
        for child in children:  # all four start now, on an empty directory
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        reports = [report(child) for child in children]
        assert len({(server_pid, keeper) for server_pid, keeper, _ in reports}) == 1
        server_pid, keeper, _ = reports[0]
        assert sorted(process.pid for process in processes_of(empty)) == sorted([server_pid, keeper])
        assert not list(empty.glob("data.init-*"))
        assert all((empty / "users" / str(child.pid)).exists() for child in children)
    finally:
        for child in children:
            finish(child)


def test_watchdog_stops_the_server_after_its_user_is_killed(base: Path) -> None:
    child = start_child(linger=0.5)  # this test's own process never registers
    server_pid, keeper, _ = report(child)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=10)
    took = wait_until(lambda: not alive(server_pid) and not alive(keeper), STOP_BOUND)
    print(f"server and watchdog gone {took:.2f} s after the only user was killed (linger 0.5 s)")
    assert embedded.status().startswith("stopped:")
    assert not (base / "users" / str(child.pid)).exists(), "the dead user was forgotten"


@pytest.mark.skipif(sys.platform != "linux", reason="the parent-death signal is Linux's")
def test_a_killed_watchdog_takes_the_server_down_and_the_next_use_restarts_it(base: Path) -> None:
    embedded.server_url()
    pid, keeper = server(base), watchdog(base)
    assert pid is not None and keeper is not None
    os.kill(keeper, signal.SIGKILL)
    wait_until(lambda: not alive(pid), STOP_BOUND)
    embedded.server_url()
    assert server(base) not in (None, pid) and watchdog(base) not in (None, keeper)


def test_stop_keeps_the_data_and_clean_removes_it_both_idempotent(empty: Path, template: Path) -> None:
    embedded.stop()
    embedded.clean()
    assert not empty.exists(), "stop() and clean() create nothing"
    copy_data(template, empty)

    url = embedded.server_url()
    first = server(empty)
    assert first is not None
    asyncio.run(database_names(url, create="kept"))
    embedded.stop()
    assert server(empty) is None and watchdog(empty) is None and not alive(first)
    assert embedded.status().startswith("stopped:")
    embedded.stop()

    assert embedded.server_url() == url
    assert server(empty) not in (None, first)
    assert "kept" in asyncio.run(database_names(url)), "stop() keeps the data"

    embedded.clean()
    assert not empty.exists() and not Path(url.query["host"]).exists() and processes_of(empty) == []
    embedded.clean()
    embedded.stop()
    assert embedded.status().startswith("not created:")


def test_a_long_directory_gets_a_short_socket_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template: Path
) -> None:
    long = (tmp_path / ("long-" * 16) / "embedded").resolve()
    monkeypatch.setenv(embedded.ENV_DIR, str(long))
    copy_data(template, long)
    try:
        url = embedded.server_url()
        socket_dir = Path(url.query["host"])
        assert socket_dir.parent == Path(tempfile.gettempdir()).resolve() and socket_dir.is_dir()
        assert (socket_dir / f".s.PGSQL.{url.port}").is_socket()
    finally:
        embedded.clean()
    assert not long.exists() and not socket_dir.exists() and processes_of(long) == []


def test_a_pid_file_naming_a_reused_pid_does_not_block_the_start(base: Path) -> None:
    # After a reboot, postmaster.pid may name a live process of the server's user that is no
    # server; PostgreSQL itself would refuse to start then.
    other = subprocess.Popen(["sleep", "60"], **embedded._as_user(embedded._server_user()))
    try:
        (base / "data" / "postmaster.pid").write_text(f"{other.pid}\n{base / 'data'}\n")
        embedded.server_url()
        assert server(base) not in (None, other.pid)
    finally:
        other.kill()
        other.wait()


def test_data_of_another_major_version_is_refused(empty: Path) -> None:
    installed = embedded._wheel().major
    (empty / "data").mkdir(parents=True)
    (empty / "data" / "PG_VERSION").write_text(f"{installed - 2}\n")
    with pytest.raises(DatabaseConfigError) as info:
        embedded.server_url()
    message = one_sentence(info)
    assert f"PostgreSQL {installed - 2}," in message and f"runs PostgreSQL {installed};" in message
    assert message.endswith("python -m helpers.embedded clean")
    assert embedded.status().startswith(f"stopped: PostgreSQL {installed - 2} data")


def test_socket_in_use_by_something_else_is_refused(empty: Path) -> None:
    paths = embedded._paths()
    paths.run.mkdir(parents=True)
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        squatter.bind(str(paths.socket))
        squatter.listen()
        with pytest.raises(DatabaseConfigError) as info:
            embedded.server_url()
        message = one_sentence(info)
        assert str(paths.socket) in message and "already in use" in message
        assert server(empty) is None and watchdog(empty) is None
    finally:
        squatter.close()


def test_a_server_that_is_late_or_fails_points_to_its_log(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = str(base / "server.log")
    real = embedded._postmaster

    def never_ready(data: Path) -> embedded._Postmaster | None:
        found = real(data)
        return embedded._Postmaster(found.pid, ready=False) if found is not None else None

    with monkeypatch.context() as patch:
        patch.setattr(embedded, "_postmaster", never_ready)
        patch.setattr(embedded, "READY_TIMEOUT", 0.5)
        with pytest.raises(DatabaseConfigError) as info:
            embedded.server_url()
    message = one_sentence(info)
    assert "did not become ready within 0.5 s" in message and message.endswith(log)

    embedded.stop()
    with (base / "data" / "postgresql.conf").open("a") as conf:
        conf.write("shared_buffers = 'not a size'\n")
    with pytest.raises(DatabaseConfigError) as info:
        embedded.server_url()
    message = one_sentence(info)
    assert "did not start (FATAL:" in message and message.endswith(log)
    assert server(base) is None


def test_command_line(empty: Path, capsys: pytest.CaptureFixture[str], template: Path) -> None:
    def one_line(*args: str) -> str:
        assert embedded.main(list(args)) == 0
        printed = capsys.readouterr()
        assert printed.out.count("\n") == 1 and not printed.err
        return printed.out.strip()

    assert one_line("status").startswith("not created:")
    copy_data(template, empty)
    started = one_line("start")
    pid = server(empty)
    assert started.startswith(f"running: PostgreSQL {embedded._wheel().major}, pid {pid}, kept running by")
    assert "0 process(es)" in started, "start registers no process: the pin keeps the server"
    assert embedded._live_users(embedded._paths(), prune=True) == 1

    # The module runs as a command, in another process, and says the same.
    result = subprocess.run(
        [sys.executable, "-m", "helpers.embedded", "status"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, started + "\n", "")

    assert one_line("stop") == f"stopped: the server (pid {pid})"
    assert one_line("stop") == "stopped: the server was not running"
    assert one_line("status").startswith("stopped:")
    assert one_line("clean") == f"removed: {empty}"
    assert one_line("clean") == f"nothing to remove: {empty} does not exist"
    assert embedded.main(["restart"]) == 2
    assert capsys.readouterr().err.startswith("usage: python -m helpers.embedded {start,status,stop,clean}")
