"""A private PgBouncer in front of the notebook's PostgreSQL server (notebook 14).

::

    bouncer = await start_pgbouncer(db.url, max_prepared_statements=0)
    engine = create_async_engine(bouncer.url)  # same driver, user and database, through PgBouncer
    ...
    bouncer.stop()

:func:`start_pgbouncer` writes a configuration into a private temporary directory, starts the
``pgbouncer`` binary on a free port of 127.0.0.1 and waits (bounded) until it accepts
connections. It passes clients on to the server and database of the URL it is given: over TCP,
or over a unix socket when the URL names a socket directory (``?host=/dir``, as the embedded
server's does).

What it needs:

* the ``pgbouncer`` program (Debian/Ubuntu: ``apt install pgbouncer``; macOS: ``brew install
  pgbouncer``); ``PGBOUNCER=/path/to/pgbouncer`` names one that is not on ``PATH``;
* version 1.21 or newer for ``max_prepared_statements`` other than 0 (PgBouncer 1.21 added
  that setting; 1.24 made 200 its default);
* nothing else from the server: clients log in to PgBouncer without a password
  (``auth_type = any``, on 127.0.0.1 only), and PgBouncer logs in to the server with the user
  and password of the URL, which it keeps in its private, owner-only configuration file.

PgBouncer refuses to run as root; as root it is started with ``user = nobody`` (or, for a
server reached through a unix socket, as the owner of the socket's directory).

Every PgBouncer started here is stopped by :meth:`PgBouncer.stop`, at interpreter exit (kernel
shutdown), and on Linux also when the process that started it dies. A missing or too old
binary, or a PgBouncer that does not start, raises :class:`~helpers.database.DatabaseConfigError`
with one sentence.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import URL

from helpers.database import DatabaseConfigError

__all__ = ["PREPARED_STATEMENTS_SINCE", "PgBouncer", "available", "find", "start_pgbouncer", "version_of"]

ENV_VAR = "PGBOUNCER"
#: The first release with ``max_prepared_statements``.
PREPARED_STATEMENTS_SINCE = (1, 21)
START_TIMEOUT = 5.0  # seconds until PgBouncer accepts connections
STOP_TIMEOUT = 3.0  # seconds after the shutdown signal before SIGKILL
_SEARCH = ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer", "/opt/homebrew/bin/pgbouncer")
_INSTALL = "install it (Debian/Ubuntu: apt install pgbouncer; macOS: brew install pgbouncer)"

Version = tuple[int, int, int]


def find() -> Path | None:
    """The ``pgbouncer`` program: ``$PGBOUNCER``, else the first on ``PATH``, else a usual place."""
    named = os.environ.get(ENV_VAR)
    if named:
        return Path(named)
    found = shutil.which("pgbouncer")
    if found:
        return Path(found)
    return next((Path(p) for p in _SEARCH if os.access(p, os.X_OK)), None)


def version_of(binary: Path) -> Version:
    """The version ``binary --version`` reports, e.g. ``(1, 24, 1)``."""
    try:
        output = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except OSError as exc:
        raise DatabaseConfigError(f"{binary} cannot be run ({exc.strerror or exc}); {_INSTALL}.") from None
    match = re.search(r"PgBouncer (\d+)\.(\d+)\.(\d+)", output)
    if match is None:
        raise DatabaseConfigError(f"{binary} --version does not name a PgBouncer release; {_INSTALL}.")
    return int(match[1]), int(match[2]), int(match[3])


def available(minimum: tuple[int, int] = PREPARED_STATEMENTS_SINCE) -> bool:
    """Whether a PgBouncer of at least version ``minimum`` is installed (for skipping cells)."""
    binary = find()
    if binary is None:
        return False
    try:
        return version_of(binary)[:2] >= minimum
    except DatabaseConfigError:
        return False


@dataclass
class PgBouncer:
    """One running PgBouncer: connect to :attr:`url`; :meth:`stop` ends it."""

    url: URL
    pool_mode: str
    max_prepared_statements: int
    pool_size: int
    version: Version
    _process: subprocess.Popen[bytes] = field(repr=False)
    _directory: Path = field(repr=False)

    @property
    def running(self) -> bool:
        return self._process.poll() is None

    def stop(self) -> None:
        """End PgBouncer (SIGTERM, then SIGKILL after a bounded wait) and remove its files. Safe to repeat."""
        _RUNNING.discard(self)
        if self._process.poll() is None:
            # immediate shutdown: SIGQUIT since 1.23 (SIGTERM waits for clients), SIGTERM before
            self._process.send_signal(signal.SIGQUIT if self.version[:2] >= (1, 23) else signal.SIGTERM)
            try:
                self._process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(STOP_TIMEOUT)
        shutil.rmtree(self._directory, ignore_errors=True)

    def log(self) -> str:
        """What PgBouncer has written to its log so far."""
        path = self._directory / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __hash__(self) -> int:
        return id(self)


_RUNNING: set[PgBouncer] = set()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _quote(value: str) -> str:
    """A value for a ``[databases]`` connection string (libpq style: single quotes, \\ escapes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _server(url: URL) -> tuple[str, int]:
    """Where PgBouncer reaches the server: a host name, an address or a unix-socket directory."""
    query_host = url.query.get("host")
    query_port = url.query.get("port")
    host = url.host or (query_host if isinstance(query_host, str) else None) or "localhost"
    port = url.port or int(query_port if isinstance(query_port, str) else 5432)
    return host, port


def _config(
    url: URL,
    port: int,
    pool_mode: str,
    max_prepared_statements: int | None,
    pool_size: int,
    run_as: str | None,
) -> str:
    if not url.database:
        raise DatabaseConfigError(f"{url.render_as_string(hide_password=True)!r} names no database.")
    host, server_port = _server(url)
    target = {"host": host, "port": str(server_port), "dbname": url.database}
    if url.username:
        target["user"] = url.username
    if url.password:
        target["password"] = str(url.password)
    connection = " ".join(f"{key}={_quote(value)}" for key, value in target.items())
    settings = {
        "listen_addr": "127.0.0.1",
        "listen_port": str(port),
        "unix_socket_dir": "",  # TCP only: no socket file to clean up
        "auth_type": "any",  # clients need no password; PgBouncer logs in as the URL's user
        "pool_mode": pool_mode,
        "default_pool_size": str(pool_size),
        "max_client_conn": "100",
        "query_wait_timeout": "10",  # a client waiting for a server connection fails after 10 s
        "server_connect_timeout": "5",
        "server_login_retry": "1",
        "log_connections": "0",
        "log_disconnections": "0",
    }
    if max_prepared_statements is not None:
        settings["max_prepared_statements"] = str(max_prepared_statements)
    if run_as:
        settings["user"] = run_as
    lines = ["[databases]", f"{url.database} = {connection}", "", "[pgbouncer]"]
    lines += [f"{key} = {value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def _unprivileged_user(url: URL) -> str:
    """Who PgBouncer runs as under root: the owner of the server's socket directory, else nobody.

    A unix-socket directory (the embedded server's) may be open to its owner only.
    """
    host, _ = _server(url)
    if host.startswith("/"):
        import pwd

        with contextlib.suppress(OSError, KeyError):
            owner = pwd.getpwuid(os.stat(host).st_uid).pw_name
            if owner != "root":
                return owner
    return "nobody"


def _stop_when_parent_dies() -> None:  # pragma: no cover - runs in the child, before exec
    """Linux: the kernel sends SIGTERM to PgBouncer when the process that started it dies."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


async def start_pgbouncer(
    url: URL,
    *,
    pool_mode: Literal["transaction", "session", "statement"] = "transaction",
    max_prepared_statements: int = 0,
    pool_size: int = 2,
    ready_within: float = START_TIMEOUT,
) -> PgBouncer:
    """Start a private PgBouncer in front of the server and database of ``url``.

    Args:
        url: The notebook's database URL (``db.url``); its driver is kept in :attr:`PgBouncer.url`.
        pool_mode: When a client gives its server connection back: after each transaction
            (``"transaction"``, the mode that multiplexes many clients over few connections),
            at disconnect (``"session"``) or after each statement.
        max_prepared_statements: 0 turns PgBouncer's tracking of protocol-level prepared
            statements off (the only behaviour before 1.21); a positive number turns it on.
        pool_size: Server connections per database and user (``default_pool_size``).
        ready_within: Seconds to wait until PgBouncer accepts connections.

    Raises:
        DatabaseConfigError: no pgbouncer, too old for the settings asked for, or it did not start.
    """
    binary = find()
    if binary is None or not binary.exists():
        where = f"${ENV_VAR}={binary}" if binary is not None else "pgbouncer was not found on PATH"
        raise DatabaseConfigError(f"This cell needs PgBouncer, and {where}; {_INSTALL}.")
    version = version_of(binary)
    if max_prepared_statements and version[:2] < PREPARED_STATEMENTS_SINCE:
        raise DatabaseConfigError(
            f"PgBouncer {'.'.join(map(str, version))} at {binary} has no max_prepared_statements "
            f"(added in {'.'.join(map(str, PREPARED_STATEMENTS_SINCE))}); install a newer one, or "
            f"name it with {ENV_VAR}=/path/to/pgbouncer."
        )
    tracked = max_prepared_statements if version[:2] >= PREPARED_STATEMENTS_SINCE else None
    run_as = _unprivileged_user(url) if os.geteuid() == 0 else None
    directory = Path(tempfile.mkdtemp(prefix="asqla-pgbouncer-"))
    try:
        port = _free_port()
        config = directory / "pgbouncer.ini"
        config.write_text(_config(url, port, pool_mode, tracked, pool_size, run_as))
        config.chmod(0o600)  # it may hold the server password; PgBouncer reads it before dropping root
        log = (directory / "pgbouncer.log").open("wb")
        with log:
            process = subprocess.Popen(  # noqa: ASYNC220 - returns at once; stop() must work without a loop
                [str(binary), str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=directory,
                preexec_fn=_stop_when_parent_dies if sys.platform == "linux" else None,
            )
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    client_url = url.set(host="127.0.0.1", port=port, password=None, query={})
    bouncer = PgBouncer(
        client_url, pool_mode, max_prepared_statements, pool_size, version, process, directory
    )
    _RUNNING.add(bouncer)
    try:
        await _wait_until_listening(bouncer, port, ready_within)
    except BaseException:
        bouncer.stop()
        raise
    return bouncer


async def _wait_until_listening(bouncer: PgBouncer, port: int, ready_within: float) -> None:
    deadline = time.monotonic() + ready_within
    while True:
        if not bouncer.running:
            lines = [line for line in bouncer.log().splitlines() if line.strip()]
            reason = re.sub(r"^.*?(FATAL|ERROR|WARNING) ", "", lines[-1]) if lines else "no message"
            raise DatabaseConfigError(f"PgBouncer stopped at once: {reason}.")
        with contextlib.suppress(OSError):
            _, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 1.0)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        if time.monotonic() > deadline:
            raise DatabaseConfigError(
                f"PgBouncer did not accept connections on 127.0.0.1:{port} within {ready_within:g} s."
            )
        await asyncio.sleep(0.02)


def _stop_all() -> None:
    """At interpreter exit (kernel shutdown): stop every PgBouncer still running."""
    for bouncer in list(_RUNNING):
        with contextlib.suppress(Exception):
            bouncer.stop()


_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_stop_all)
else:  # pragma: no cover
    atexit.register(_stop_all)
