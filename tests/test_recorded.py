"""helpers.recorded: cells marked %needs_postgresql run live on PostgreSQL, replay on SQLite."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from helpers.recorded import MISMATCH, cell_hash, marked_cells, normalize, private
from tests.kernels import AsyncIPCKernelManager
from tests.test_database import POSTGRESQL, needs_postgresql

SET_UP = (
    "%load_ext helpers.tracebacks\n%load_ext helpers.recorded\n"
    "from sqlalchemy import text\nfrom helpers.database import open_database\n"
    "db = await open_database('recorded_test')"
)
PRINTS = (
    "%needs_postgresql\nasync with db.engine.connect() as conn:\n"
    "    print('server adds', await conn.scalar(text('SELECT 40 + 2')))\n    print(db.url.database)"
)
RAISES = (
    "%needs_postgresql\nasync with db.engine.connect() as conn:\n    await conn.execute(text('SELECT 1/0'))"
)
RESULT = "%needs_postgresql\n6 * 7"


def test_marked_cells_and_their_key() -> None:
    assert marked_cells("%needs_postgresql\nx = 1\n") == "x = 1\n"
    assert marked_cells("x = 1\n%needs_postgresql\n") is None
    assert cell_hash("x = 1  \n\n") == cell_hash("\nx = 1")  # trailing spaces, blank edges
    assert cell_hash("x = 1") != cell_hash("x = 2")


def test_private_and_normalize() -> None:
    line = (
        "  File /root/v/lib/python3.11/site-packages/sqlalchemy/x.py:3 asqla_05_x_0a1b2c3d_123_1 Cell In[7]"
    )
    assert private(line) == "  File .../site-packages/sqlalchemy/x.py:3 <notebook database> Cell"
    assert normalize("Process 123 waits for ShareLock on transaction 456") == (
        "Process <n> waits for ShareLock on transaction <n>"
    )
    assert normalize('DECLARE "c_7f8c2a1b3d40_2" CURSOR') == 'DECLARE "c_<address>_<n>" CURSOR'
    assert (
        normalize('prepared statement "__asyncpg_stmt_1a__"') == 'prepared statement "__asyncpg_stmt_<n>__"'
    )


def test_a_pgbouncer_cell_is_replayed_without_a_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers import recorded

    monkeypatch.setattr(recorded, "_backend_and_driver", lambda: ("sqlite", "aiosqlite", ""))
    (line,) = recorded._transform(["%needs_pgbouncer\n", "x = 1\n"])
    assert "replay(" in line and "%needs_pgbouncer" in line


def run(tmp_path: Path, cells: list[str], **env: str) -> list[list[dict[str, Any]]]:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(source) for source in [SET_UP, *cells, "await db.close()"]]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ASQLA_", "DATABASE_URL"))}
    NotebookClient(
        nb, timeout=60, kernel_name="python3", kernel_manager_class=AsyncIPCKernelManager, allow_errors=True
    ).execute(env={**base, **env}, cwd=str(tmp_path))
    return [[dict(out) for out in cell.outputs] for cell in nb.cells[1:-1]]


def streams(outputs: list[dict[str, Any]], name: str) -> str:
    return "".join(out["text"] for out in outputs if out["output_type"] == "stream" and out["name"] == name)


@needs_postgresql
def test_record_replay_and_staleness(tmp_path: Path) -> None:
    # 1. On PostgreSQL the cells run live and record what they showed.
    record_to = tmp_path / "recorded.jsonl"
    live = run(tmp_path, [PRINTS, RAISES, RESULT], DATABASE_URL=POSTGRESQL, ASQLA_RECORD_TO=str(record_to))
    assert "server adds 42" in streams(live[0], "stdout")
    assert [out["ename"] for out in live[1] if out["output_type"] == "error"] == ["DBAPIError"]
    entries = [json.loads(line) for line in record_to.read_text().splitlines()]
    assert [entry["key"] for entry in entries] == [
        cell_hash(marked_cells(c) or "") for c in (PRINTS, RAISES, RESULT)
    ]
    printed, raised, result = (entry["outputs"] for entry in entries)
    assert printed["stdout"] == "server adds 42\n<notebook database>\n"  # no private name stored
    assert any(line.startswith("DBAPIError: ") and "division by zero" in line for line in raised["error"])
    assert result == {"stdout": "", "result": "42"}
    assert entries[0]["versions"]["postgresql"][:2].isdigit() and "asyncpg" in entries[0]["versions"]

    recordings = tmp_path / "recordings.json"
    stored = {e["key"]: {"notebook": "t", "drivers": {e["driver"]: e}} for e in entries}
    recordings.write_text(json.dumps(stored))

    # 2. On SQLite nothing runs: each cell shows its recording, headed, and nothing raises.
    replayed = run(
        tmp_path,
        [PRINTS, RAISES, RESULT, "%needs_postgresql\nnever_recorded()"],
        ASQLA_RECORDINGS=str(recordings),
    )
    assert not any(out["output_type"] == "error" for cell in replayed for out in cell)
    header = streams(replayed[0], "stdout").splitlines()[0]
    assert header.startswith("[Not run here. Output recorded on PostgreSQL ") and "with asyncpg " in header
    assert "notebook 00" in header
    assert streams(replayed[0], "stdout").endswith("server adds 42\n<notebook database>\n")
    assert "division by zero" in streams(replayed[1], "stderr")
    assert streams(replayed[2], "stdout").endswith("\n42\n")
    assert "no recording matches its code" in streams(replayed[3], "stderr")

    # 3. With the check on, a live output that differs from its recording is reported.
    stored[entries[0]["key"]]["drivers"]["asyncpg"]["outputs"]["stdout"] = (
        "server adds 41\n<notebook database>\n"
    )
    recordings.write_text(json.dumps(stored))
    checked = run(
        tmp_path,
        [PRINTS, RAISES, RESULT],
        DATABASE_URL=POSTGRESQL,
        ASQLA_RECORDINGS=str(recordings),
        ASQLA_CHECK_RECORDINGS="1",
    )
    assert MISMATCH in streams(checked[0], "stderr") and "server adds 41" in streams(checked[0], "stderr")
    assert MISMATCH not in streams(checked[1], "stderr") + streams(checked[2], "stderr")


def test_the_marker_elsewhere_in_a_cell_is_explained(tmp_path: Path) -> None:
    (outputs,) = run(tmp_path, ["x = 1\n%needs_postgresql"])
    assert "belong on the first line of a cell" in streams(outputs, "stderr")


@pytest.fixture(autouse=True)
def _no_stray_files(tmp_path: Path):
    yield
    assert not list(tmp_path.glob("*.db"))
