"""Cells that need a PostgreSQL server: run live on PostgreSQL, shown as recorded on SQLite.

(``%needs_pgbouncer`` marks a cell that also needs PgBouncer 1.21 or newer: it runs live only
on PostgreSQL with such a PgBouncer installed, and is replayed elsewhere.)

A notebook loads this once, in its set-up cell::

    %load_ext helpers.recorded

and marks each cell that only a server can run with ``%needs_postgresql`` on its first line.

* On PostgreSQL the line is dropped and the cell runs as written.
* On SQLite the cell is not run. It prints what the same code printed on PostgreSQL, recorded
  by ``tests/execute_notebooks.py``: one block per driver (asyncpg, psycopg), each headed by
  the server, driver and SQLAlchemy versions, and by the setting that runs it live
  (``DATABASE_URL=embedded``, see notebook 00). An error the cell raised is shown in its short
  form, on the error stream; nothing is raised.

Recordings live in ``helpers/recordings.json``, keyed by a hash of the cell's code: a cell
whose code changes has no recording until the execute script runs again, and says so.

Two settings, for the project's own scripts:

* ``ASQLA_RECORD_TO=<file>``: on PostgreSQL, append each such cell's outputs to that file (the
  execute script merges them into ``recordings.json``);
* ``ASQLA_CHECK_RECORDINGS=1``: on PostgreSQL, compare each such cell's outputs with its
  recording for the same driver, server major version and SQLAlchemy series, and print
  ``RECORDING MISMATCH`` on the error stream when they differ (``conftest.py`` fails the cell).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

__all__ = [
    "MARKER",
    "MISMATCH",
    "PGBOUNCER_MARKER",
    "RECORDINGS",
    "cell_hash",
    "load_ipython_extension",
    "marked_cells",
    "normalize",
    "private",
    "replay",
]

#: The first line that marks a cell as needing a PostgreSQL server.
MARKER = "%needs_postgresql"
#: A cell that also needs PgBouncer 1.21 or newer (notebook 14): replayed where it is missing.
PGBOUNCER_MARKER = "%needs_pgbouncer"
#: How to see each kind of marked cell live, named in the replay's header.
_HOW_LIVE = {
    MARKER: "To run it live, see 'Which database am I using?' in notebook 00.",
    PGBOUNCER_MARKER: "It runs live on PostgreSQL where PgBouncer 1.21 or newer is installed (notebook 14).",
}
#: What the staleness check prints; conftest.py fails a cell whose output contains it.
MISMATCH = "RECORDING MISMATCH"
RECORDINGS = Path(__file__).with_name("recordings.json")
_DRIVERS = ("asyncpg", "psycopg")

# Stored recordings name no private database, machine path or execution count.
_PRIVATE = [
    (r"\basqla_[a-z0-9_]+_[0-9a-f]{8}_\d+_\d+\b", "<notebook database>"),  # helpers.database's names
    (r"Cell In\[\d+\]", "Cell"),
    (r"~?(?:/[^\s/:\"']+)+/site-packages/", ".../site-packages/"),
    (r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", "<time>"),
    (r"\[(generated in|cached since) \d+\.\d+s( ago)?\]", r"[\1 <duration>]"),
]
# What else differs between two runs of the same cell on the same server, for the comparison.
_VARYING = [
    (r"\bat 0x[0-9a-f]{4,}", "at 0x…"),  # object addresses
    (r"\b([Pp]rocess|pid|transaction) \d+", r"\1 <n>"),  # deadlock and lock reports
    (r"\btuple \(\d+,\d+\)", "tuple (<page>,<item>)"),  # where a locked row lies
    (r"__asyncpg_stmt_[0-9a-f]+__", "__asyncpg_stmt_<n>__"),  # asyncpg's prepared statement names
    (r"\bc_[0-9a-f]{6,}_\d+\b", "c_<address>_<n>"),  # psycopg's server-side cursor names
    (r"\b\d+\.\d+ ?(?:s|ms)\b", "<time> s"),  # measured durations
    (r"\b\d+\.\d+x\b", "<ratio>x"),  # measured ratios
    (r"^\[parameters: .*\]$", "[parameters: <which row lost a race>]"),  # e.g. a deadlock's victim
    (r"(sqlalche\.me/e/)\d+/", r"\1<series>/"),
]


def private(text: str) -> str:
    """``text`` without the notebook's database name, paths and execution counts (as stored)."""
    for pattern, replacement in _PRIVATE:
        text = re.sub(pattern, replacement, text)
    return text


def normalize(text: str) -> str:
    """``text`` without anything that changes from run to run (for comparing with a recording)."""
    text = private(text)
    for pattern, replacement in _VARYING:
        text = re.sub(pattern, replacement, text, flags=re.MULTILINE)
    return text


def cell_hash(body: str) -> str:
    """The key of a cell's recording: a hash of its code, ignoring trailing spaces and blank edges."""
    lines = [line.rstrip() for line in body.strip("\n").splitlines()]
    return hashlib.sha256("\n".join(lines).strip().encode()).hexdigest()[:16]


def marked_cells(source: str) -> str | None:
    """The code of a cell marked with :data:`MARKER` or :data:`PGBOUNCER_MARKER` (without that
    line), else ``None``."""
    first, _, rest = source.partition("\n")
    return rest if first.strip() in _HOW_LIVE else None


@dataclass
class _Capture:
    """What one marked cell printed on PostgreSQL, captured while it is also shown."""

    key: str
    stdout: io.StringIO = field(default_factory=io.StringIO)
    saved: tuple[TextIO, TextIO] | None = None


class _Tee(io.TextIOBase):
    def __init__(self, shown: TextIO, copy: io.StringIO) -> None:
        self.shown, self.copy = shown, copy

    def write(self, text: str) -> int:
        self.copy.write(text)
        return self.shown.write(text)

    def flush(self) -> None:
        self.shown.flush()


_current: _Capture | None = None


def _backend_and_driver() -> tuple[str, str, str]:
    """(backend, driver, server version) of the notebook's database, from helpers.database."""
    from helpers import database

    db = database.current_database()
    if db is not None:
        return db.backend, db.driver, db.server_version
    url = database.configured_url()
    if url is None or url.get_backend_name() == "sqlite":
        return "sqlite", "aiosqlite", ""
    return "postgresql", database.driver_of(url), ""


def live(key: str) -> None:
    """Called first by a marked cell on PostgreSQL: start copying what the cell prints."""
    global _current
    capture = _Capture(key)
    capture.saved = (sys.stdout, sys.stderr)
    sys.stdout = _Tee(sys.stdout, capture.stdout)  # type: ignore[assignment]
    _current = capture


def _error_lines(shell: Any, exc: BaseException) -> list[str]:
    from helpers.tracebacks import FULL, short_traceback

    # a replayed traceback has no frames behind it for %tb to show
    return [private(line.replace(f"; {FULL}", "")) for line in short_traceback(shell, exc)]


def _finish(result: Any) -> None:
    """IPython's post_run_cell event: stop copying, then record and/or check the outputs."""
    global _current
    capture, _current = _current, None
    if capture is None:
        return
    assert capture.saved is not None
    sys.stdout, _ = capture.saved
    shell = _shell()
    outputs: dict[str, Any] = {"stdout": private(capture.stdout.getvalue())}
    value = getattr(result, "result", None)
    if value is not None and shell is not None:
        outputs["result"] = private(shell.display_formatter.format(value)[0].get("text/plain", ""))
    error = getattr(result, "error_in_exec", None)
    if error is not None:
        outputs["error"] = _error_lines(shell, error)
    backend, driver, server = _backend_and_driver()
    if backend != "postgresql":
        return
    entry = {
        "key": capture.key,
        "driver": driver,
        "versions": _versions(driver, server),
        "outputs": outputs,
    }
    target = os.environ.get("ASQLA_RECORD_TO")
    if target:
        with open(target, "a", encoding="utf-8") as file:
            file.write(json.dumps(entry) + "\n")
    if os.environ.get("ASQLA_CHECK_RECORDINGS") == "1":
        _check(entry)


def _versions(driver: str, server: str) -> dict[str, str]:
    return {
        "postgresql": server,
        driver: metadata.version(driver),
        "sqlalchemy": metadata.version("sqlalchemy"),
    }


def _comparable(entry: dict[str, Any]) -> dict[str, Any]:
    """What must match: printed text, the result, and each error's message lines (not frames)."""
    outputs: dict[str, Any] = {k: normalize(v) for k, v in entry["outputs"].items() if isinstance(v, str)}
    if "error" in entry["outputs"]:
        outputs["error"] = [
            normalize(line) for line in entry["outputs"]["error"] if not line.startswith(("  ", "Traceback"))
        ]
    return outputs


def _check(entry: dict[str, Any]) -> None:
    recorded = load().get(entry["key"], {}).get("drivers", {}).get(entry["driver"])
    if recorded is None:
        print(f"{MISMATCH}: this cell has no recording for {entry['driver']}", file=sys.stderr)
        return
    ours, theirs = entry["versions"], recorded["versions"]
    same_setting = ours["postgresql"].split(".")[0] == theirs["postgresql"].split(".")[0] and (
        ours["sqlalchemy"].rsplit(".", 1)[0] == theirs["sqlalchemy"].rsplit(".", 1)[0]
    )
    if same_setting and _comparable(entry) != _comparable(recorded):
        print(
            f"{MISMATCH}: on {entry['driver']} this cell now prints {_comparable(entry)!r}, "
            f"but its recording says {_comparable(recorded)!r}; re-run tests/execute_notebooks.py",
            file=sys.stderr,
        )


def recordings_path() -> Path:
    """:data:`RECORDINGS`, or the file named by ``ASQLA_RECORDINGS`` (for the project's tests)."""
    return Path(os.environ.get("ASQLA_RECORDINGS") or RECORDINGS)


def load(path: Path | None = None) -> dict[str, Any]:
    """The recordings: ``{key: {"notebook": ..., "drivers": {driver: entry}}}``."""
    path = path or recordings_path()
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return {}


def _header(drivers: list[str], entries: dict[str, Any], how: str) -> str:
    first = entries[drivers[0]]["versions"]
    names = " and ".join(f"{d} {entries[d]['versions'][d]}" for d in drivers)
    return (
        f"[Not run here. Output recorded on PostgreSQL {first['postgresql']} with {names}, "
        f"SQLAlchemy {first['sqlalchemy']}. {how}]"
    )


def replay(key: str, marker: str = MARKER) -> None:
    """On SQLite (or without PgBouncer, for its cells), in place of a marked cell: print what it
    printed on PostgreSQL."""
    how = _HOW_LIVE[marker]
    recording = load().get(key)
    if recording is None:
        print(
            "[This cell needs PostgreSQL, and no recording matches its code (it was changed, or "
            f"not recorded yet). {how}]",
            file=sys.stderr,
        )
        return
    entries = recording["drivers"]
    drivers = [d for d in _DRIVERS if d in entries]
    groups: list[list[str]] = []
    for driver in drivers:  # drivers that printed the same thing share one block
        for group in groups:
            if entries[group[0]]["outputs"] == entries[driver]["outputs"]:
                group.append(driver)
                break
        else:
            groups.append([driver])
    for n, group in enumerate(groups):
        outputs = entries[group[0]]["outputs"]
        print(("\n" if n else "") + _header(group, entries, how))
        if outputs["stdout"]:
            print(outputs["stdout"], end="")
        if "result" in outputs:
            print(outputs["result"])
        sys.stdout.flush()
        if "error" in outputs:
            print("\n".join(outputs["error"]), file=sys.stderr)
            sys.stderr.flush()


def _shell() -> Any:
    with contextlib.suppress(ImportError):
        from IPython import get_ipython

        return get_ipython()
    return None


def _runs_live(marker: str) -> bool:
    try:
        if _backend_and_driver()[0] != "postgresql":
            return False
    except Exception:  # a bad DATABASE_URL: the set-up cell already said why
        return False
    if marker == PGBOUNCER_MARKER:
        from helpers import pgbouncer

        return pgbouncer.available()
    return True


def _transform(lines: list[str]) -> list[str]:
    """IPython input transformer: a marked cell runs live where it can, is replayed elsewhere."""
    marker = lines[0].strip() if lines else ""
    if marker not in _HOW_LIVE:
        return lines
    key = cell_hash("".join(lines[1:]))
    call = "__import__('helpers.recorded').recorded.{}"
    if _runs_live(marker):
        return [call.format(f"live({key!r})\n"), *lines[1:]]
    return [call.format(f"replay({key!r}, {marker!r})\n")]


def _misplaced(line: str) -> None:
    print("%needs_postgresql and %needs_pgbouncer belong on the first line of a cell.", file=sys.stderr)


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext helpers.recorded``: handle cells whose first line is ``%needs_postgresql``."""
    if _transform not in shell.input_transformers_cleanup:
        shell.input_transformers_cleanup.insert(0, _transform)
    for marker in _HOW_LIVE:
        shell.register_magic_function(_misplaced, "line", marker.lstrip("%"))
    with contextlib.suppress(ValueError):
        shell.events.unregister("post_run_cell", _finish)
    shell.events.register("post_run_cell", _finish)


def unload_ipython_extension(shell: Any) -> None:
    with contextlib.suppress(ValueError):
        shell.input_transformers_cleanup.remove(_transform)
    with contextlib.suppress(ValueError):
        shell.events.unregister("post_run_cell", _finish)
