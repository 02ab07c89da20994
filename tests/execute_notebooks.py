"""Re-execute notebooks from a clean kernel and store their outputs: the project's one way
to refresh the expected results that nbval compares against.

    python tests/execute_notebooks.py                       # every notebook
    python tests/execute_notebooks.py notebooks/05_*.ipynb  # some of them
    python tests/execute_notebooks.py --no-postgresql ...   # SQLite only (no new recordings)

For each notebook:

1. unless ``--no-postgresql``, run it on PostgreSQL once per ``--postgresql`` setting (default:
   ``embedded+asyncpg`` and ``embedded+psycopg``, the embedded server with each driver). Each
   cell marked ``%needs_postgresql`` (helpers/recorded.py) records its outputs, which are merged
   into ``helpers/recordings.json``; recordings of cells that no longer exist are dropped;
2. run it top to bottom in a fresh kernel on SQLite (``DATABASE_URL`` removed from the
   environment), with the notebook's folder as working directory; a cell may raise only if
   it is tagged ``raises-exception``. Marked cells show the recordings made in step 1;
3. clean the outputs of what differs between machines (tests/sanitize.cfg, and absolute
   paths in tracebacks) and store them;
4. tag every cell whose output is the same on SQLite and on every PostgreSQL run
   ``nbval-check-output``, so the PostgreSQL test runs still compare it (see conftest.py).
   Cells tagged ``nbval-ignore-output`` are never tagged.

It prints each notebook's wall time per backend: the figures quoted in the instructor guide.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nbformat
import sqlalchemy
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
SANITIZE = ROOT / "tests" / "sanitize.cfg"
sys.path.insert(0, str(ROOT))
from helpers import recorded  # noqa: E402
from tests.kernels import AsyncIPCKernelManager  # noqa: E402

DEFAULT_POSTGRESQL = ["embedded+asyncpg", "embedded+psycopg"]
_MERGE = threading.Lock()
CHECK_TAG = "nbval-check-output"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def sanitize_patterns() -> list[tuple[str, str]]:
    """The rules of tests/sanitize.cfg, except sections marked "(comparison only)"."""
    rules = []
    for section in re.split(r"^\[", SANITIZE.read_text(), flags=re.MULTILINE)[1:]:
        if "(comparison only)" not in section.split("]", 1)[0]:
            rules += re.findall(r"^regex: (.*)$\n^replace: (.*)$", section, flags=re.MULTILINE)
    return rules


PATTERNS = sanitize_patterns()


def sanitize(text: str) -> str:
    for regex, replace in PATTERNS:
        text = re.sub(regex, replace, text)
    return text


def clean_traceback_line(line: str) -> str:
    """Make a traceback line machine-independent: no venv, home or repository paths."""
    line = re.sub(r"~?(?:/[^\s/\x1b:\"']+)+/site-packages/", ".../site-packages/", line)
    line = re.sub(r"~?(?:/[^\s/\x1b:\"']+)+/lib/python3\.\d+/", ".../lib/python/", line)
    return sanitize(line.replace(str(ROOT) + "/", ""))


def coalesce_streams(outputs: list[Any]) -> list[Any]:
    """Join consecutive stdout (or stderr) chunks: how the kernel split them depends on timing."""
    joined: list[Any] = []
    for out in outputs:
        previous = joined[-1] if joined else None
        if (
            out.output_type == "stream"
            and previous is not None
            and previous.output_type == "stream"
            and previous.name == out.name
        ):
            previous.text += out.text
        else:
            joined.append(out)
    return joined


#: Cell metadata that records a session rather than the lesson: JupyterLab's per-cell
#: execution timestamps, and view state (scrolling, collapsing) of whoever saved the file.
SESSION_METADATA = ("execution", "scrolled", "collapsed", "jupyter", "ExecuteTime")


def clean_outputs(nb: Any) -> None:
    for cell in nb.cells:
        for key in SESSION_METADATA:
            cell.metadata.pop(key, None)
        if cell.cell_type != "code":
            continue
        cell.outputs = coalesce_streams(cell.get("outputs", []))
        for out in cell.outputs:
            if out.output_type == "stream":
                out.text = sanitize(out.text)
            elif out.output_type in ("execute_result", "display_data"):
                for key in ("text/plain", "text/html"):
                    if key in out.get("data", {}):
                        out.data[key] = sanitize(out.data[key])
            elif out.output_type == "error":
                out.evalue = sanitize(out.evalue)
                out.traceback = [clean_traceback_line(line) for line in out.traceback]


def comparable(outputs: list[Any]) -> list[tuple[str, str]]:
    """What nbval compares in one cell's outputs, as a list of (kind, text)."""
    result: list[tuple[str, str]] = []
    for out in outputs:
        if out["output_type"] == "stream":
            kind = f"stream:{out['name']}"
            if result and result[-1][0] == kind:  # nbval coalesces consecutive streams
                result[-1] = (kind, result[-1][1] + sanitize(out["text"]))
            else:
                result.append((kind, sanitize(out["text"])))
        elif out["output_type"] == "error":
            result.append(("error", f"{out['ename']}: {sanitize(out['evalue'])}"))
        else:
            for key, value in sorted(out.get("data", {}).items()):
                if key not in ("image/png", "image/jpeg"):
                    result.append((key, sanitize(value if isinstance(value, str) else "".join(value))))
    return result


def execute(nb: Any, path: Path, env: dict[str, str], timeout: int) -> float:
    started = time.perf_counter()
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        kernel_manager_class=AsyncIPCKernelManager,
        resources={"metadata": {"path": str(path.parent)}},
        record_timing=False,  # no per-cell timestamps in the stored metadata
        allow_errors=False,  # cells tagged raises-exception may still raise
    )
    client.execute(env=env)  # the kernel's whole environment
    return time.perf_counter() - started


def merge_recordings(path: Path, lines: list[str]) -> int:
    """Store the recordings one PostgreSQL run wrote (JSON lines) in helpers/recordings.json."""
    with _MERGE:
        stored = recorded.load()
        for line in lines:
            entry = json.loads(line)
            slot = stored.setdefault(entry["key"], {"notebook": str(path.relative_to(ROOT)), "drivers": {}})
            slot["drivers"][entry["driver"]] = {"versions": entry["versions"], "outputs": entry["outputs"]}
        write_recordings(stored)
    return len(lines)


def write_recordings(stored: dict[str, Any]) -> None:
    """Write the recordings, keeping only those of marked cells some notebook still has."""
    wanted = set()
    for notebook in ROOT.joinpath("notebooks").rglob("*.ipynb"):
        for cell in nbformat.read(notebook, as_version=4).cells:
            body = recorded.marked_cells(cell.source) if cell.cell_type == "code" else None
            if body is not None:
                wanted.add(recorded.cell_hash(body))
    kept = {key: stored[key] for key in sorted(stored) if key in wanted}
    recorded.RECORDINGS.write_text(json.dumps(kept, indent=1, sort_keys=True, ensure_ascii=False) + "\n")


def process(path: Path, postgresql: list[str], timeout: int) -> str:
    nb = nbformat.read(path, as_version=4)
    sqlite_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "ASQLA_RECORDINGS")}
    report = f"{path.relative_to(ROOT)}:"
    server_runs = []
    for setting in postgresql:
        other = copy.deepcopy(nb)
        with tempfile.TemporaryDirectory() as scratch:
            record_to = Path(scratch) / "recorded.jsonl"
            record_to.touch()
            env = {**sqlite_env, "DATABASE_URL": setting, "ASQLA_RECORD_TO": str(record_to)}
            env.pop("ASQLA_CHECK_RECORDINGS", None)
            seconds = execute(other, path, env, timeout)
            count = merge_recordings(path, record_to.read_text().splitlines())
        server_runs.append(other)
        report += f" {setting} {seconds:.1f}s ({count} recorded),"
    seconds = execute(nb, path, sqlite_env, timeout)
    clean_outputs(nb)
    report += f" sqlite {seconds:.1f}s"
    if server_runs:
        same = 0
        for cell, *pg_cells in zip(nb.cells, *(run.cells for run in server_runs), strict=True):
            if cell.cell_type != "code":
                continue
            tags = [t for t in cell.metadata.get("tags", []) if t != CHECK_TAG]
            if "nbval-ignore-output" not in tags and all(
                comparable(cell.outputs) == comparable(pg_cell.outputs) for pg_cell in pg_cells
            ):
                tags.append(CHECK_TAG)
                same += 1
            if tags:
                cell.metadata["tags"] = tags
            else:
                cell.metadata.pop("tags", None)
        code_cells = sum(c.cell_type == "code" for c in nb.cells)
        report += f"; {same}/{code_cells} cells identical on all"
    # recorded so that conftest.py knows which SQLAlchemy release series the outputs are from
    nb.metadata["outputs"] = {
        "sqlalchemy": sqlalchemy.__version__,
        "python": platform.python_version(),
        "backend": "sqlite",
    }
    nbformat.write(nb, path)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebook")
    parser.add_argument(
        "--postgresql",
        action="append",
        help="a DATABASE_URL setting to record with (repeatable); default: " + ", ".join(DEFAULT_POSTGRESQL),
    )
    parser.add_argument("--no-postgresql", action="store_true", help="SQLite only; keep the recordings")
    parser.add_argument("--jobs", "-j", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=120, help="seconds per cell")
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.notebooks] or sorted(
        p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts
    )
    postgresql = [] if args.no_postgresql else (args.postgresql or DEFAULT_POSTGRESQL)
    failed = 0
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {p: pool.submit(process, p, postgresql, args.timeout) for p in paths}
        for path, future in futures.items():
            try:
                print(future.result(), flush=True)
            except Exception as exc:  # report every notebook, then fail
                failed += 1
                print(f"{path.relative_to(ROOT)}: FAILED\n{exc}", file=sys.stderr, flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
