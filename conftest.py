"""pytest set-up shared by the unit tests and the notebook (nbval) tests.

Backends and comparison modes
-----------------------------
* ``DATABASE_URL`` unset (SQLite): nbval runs in strict mode. Every cell's output is
  compared with the output stored in the notebook (which comes from SQLite).
* ``DATABASE_URL=postgresql+asyncpg://...``: the stored outputs are SQLite's, and some
  differ on PostgreSQL by design (SQL text, server messages). nbval switches to lax mode,
  where it compares only cells tagged ``nbval-check-output``; that tag is set by
  ``tests/execute_notebooks.py`` on every cell whose output was identical on both backends.
  The claims that matter (query counts, row counts, which exception) are asserted inside
  the notebooks, so they are checked on both backends anyway.

Stored outputs come from one SQLAlchemy release series (recorded by the execute script in
each notebook's metadata, e.g. ``"sqlalchemy": "2.1.9"``). With another series installed
(2.0 instead of 2.1), messages and SQL text legitimately differ, so no output is compared:
every cell must still run, every exception must still be raised, and the assertions inside
the notebooks still hold. That is how CI checks that the notebooks are correct on 2.0 too.

Cells marked ``%needs_postgresql`` (helpers/recorded.py) show their recorded PostgreSQL output
on SQLite, compared strictly like any other output. On PostgreSQL they run live, and this file
sets ``ASQLA_CHECK_RECORDINGS=1`` so that each compares its output with its recording for the
same driver, server major version and SQLAlchemy series: a difference fails the cell (the
recording is stale; re-run tests/execute_notebooks.py).

On both backends a cell tagged ``raises-exception`` must really raise (nbval's lax mode
alone would let a missing exception pass, nbval issue #108), except a cell also tagged
``sqlite-only`` on PostgreSQL, or ``postgresql-only`` on SQLite: those print why they are
skipped on the other backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from helpers.database import (
    DatabaseConfigError,
    _admin_connect,
    abandoned_directories,
    abandoned_postgresql_databases,
    configured_url,
)
from helpers.recorded import MISMATCH

ROOT = Path(__file__).parent
BACKEND_KEY = pytest.StashKey[str]()


def _backend() -> str:
    url = configured_url()
    return "sqlite" if url is None or url.get_backend_name() == "sqlite" else "postgresql"


async def _postgresql_leftovers() -> list[str]:
    """Notebook databases on this machine whose process has ended: nobody closed them.

    (Connections are not counted here: runs by other people may be going on at the same
    time. .ci/run, which runs alone, also checks pg_stat_activity.)
    """
    url = configured_url()
    assert url is not None
    conn = await _admin_connect(url)
    try:
        return await abandoned_postgresql_databases(conn)
    finally:
        await conn.close()


def _shut_down_like_jupyterlab(self: Any) -> None:
    """nbval kills each notebook's kernel; JupyterLab asks it to shut down, which lets the
    kernel delete its notebook database (helpers.database removes it at exit). Do the same,
    so the leftovers check below tests what learners get. A kernel that does not exit within
    jupyter_client's grace period is still killed."""
    self.kc.stop_channels()
    self.km.shutdown_kernel(now=False)
    del self.km


def pytest_configure(config: pytest.Config) -> None:
    with contextlib.suppress(ImportError):
        from nbval import kernel

        from tests.kernels import IPCKernelManager

        kernel.RunningKernel.stop = _shut_down_like_jupyterlab
        kernel.KernelManager = IPCKernelManager  # type: ignore[misc]  # no TCP port races
    try:
        backend = _backend()
        if backend == "postgresql":
            asyncio.run(_postgresql_leftovers())  # reachable, credentials right
    except DatabaseConfigError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[BACKEND_KEY] = backend
    if backend == "postgresql":  # inherited by the notebook kernels (--nbval-current-env)
        os.environ["ASQLA_CHECK_RECORDINGS"] = "1"
    if not hasattr(config.option, "nbval"):  # pytest -p no:nbval: unit tests only
        return
    if not config.option.nbval_sanitize_with:  # absolute, so pytest works from any directory
        config.option.nbval_sanitize_with = str(ROOT / "tests" / "sanitize.cfg")
    if backend == "postgresql" and config.option.nbval:
        config.option.nbval = False
        config.option.nbval_lax = True


def pytest_report_header(config: pytest.Config) -> list[str]:
    backend = config.stash[BACKEND_KEY]
    mode = (
        "strict: every stored output compared"
        if backend == "sqlite"
        else "lax: cells tagged nbval-check-output compared, raises-exception enforced"
    )
    lines = [f"notebook database: {backend}; nbval {mode}"]
    stored = _stored_series()
    if stored and stored != {_series(sqlalchemy.__version__)}:
        lines.append(
            f"outputs were stored with SQLAlchemy {', '.join(sorted(stored))}, installed is "
            f"{sqlalchemy.__version__}: outputs not compared; cells must run, raise and assert"
        )
    return lines


def _series(version: str) -> str:
    return ".".join(version.split(".")[:2])


# Test modules whose result does not depend on the database DATABASE_URL selects (static
# checks of the notebooks and helpers, and tests that choose their own database or server).
# They carry the marker ``once``: .ci/run runs them once per Python and SQLAlchemy environment
# and deselects them in its other database stages (-m "not once"). Plain ``pytest`` runs them.
ONCE = {
    "test_cheat_sheet",  # SQLite, and PostgreSQL at DATABASE_URL or 127.0.0.1:5432
    "test_diagrams",
    "test_embedded",  # starts servers of its own
    "test_explain",  # like test_cheat_sheet
    "test_helpers",
    "test_learner_flow",
    "test_lint",
    "test_notebook_hygiene",
    "test_performance",  # SQLite whatever DATABASE_URL says
    "test_recorded",  # chooses SQLite or the server at 127.0.0.1:5432 itself
    "test_setup_check",
    "test_tracebacks",
}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the ``once`` modules; compare no outputs of notebooks whose outputs were stored
    with another SQLAlchemy series."""
    installed = _series(sqlalchemy.__version__)
    for item in items:
        if item.path.stem in ONCE:
            item.add_marker(pytest.mark.once)
        notebook = getattr(item, "parent", None)
        stored = getattr(notebook, "nb", None)
        if getattr(item, "cell", None) is None or stored is None:
            continue
        recorded = stored.metadata.get("outputs", {}).get("sqlalchemy")
        if recorded and _series(recorded) != installed:
            item.options["check"] = False


def _stored_series() -> set[str]:
    found = set()
    for path in sorted((ROOT / "notebooks").rglob("*.ipynb")):
        match = re.search(r'"sqlalchemy": "(\d+\.\d+)', path.read_text())
        if match:
            found.add(match[1])
    return found


def _must_raise(tags: list[str], backend: str) -> bool:
    if "raises-exception" not in tags:
        return False
    if backend == "postgresql" and "sqlite-only" in tags:
        return False
    return not (backend == "sqlite" and "postgresql-only" in tags)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    result = yield
    cell = getattr(item, "cell", None)
    outputs = getattr(item, "test_outputs", None)
    if cell is not None and outputs is not None:
        stale = [
            out["text"] for out in outputs if out.get("output_type") == "stream" and MISMATCH in out["text"]
        ]
        if stale:
            pytest.fail("".join(stale), pytrace=False)
        tags = cell.get("metadata", {}).get("tags", [])
        if _must_raise(tags, item.config.stash[BACKEND_KEY]) and not any(
            out.get("output_type") == "error" for out in outputs
        ):
            pytest.fail(
                "cell is tagged raises-exception but raised nothing: the pitfall it demonstrates "
                "no longer happens",
                pytrace=False,
            )
    return result


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """On the main process: fail the run if it left database files or connections behind."""
    config = session.config
    if hasattr(config, "workerinput") or not (
        getattr(config.option, "nbval", False) or getattr(config.option, "nbval_lax", False)
    ):
        return
    problems = []
    strays = subprocess.run(
        [
            "git",
            "status",
            "--porcelain",
            "--ignored",
            "--untracked-files=all",
            "--",
            ".",
            ":!.venv*",
            ":!.mypy_cache",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.splitlines()
    strays = [line[3:] for line in strays if re.search(r"\.(db|sqlite3?)(-journal|-wal|-shm)?$", line)]
    if strays:
        problems.append("database files appeared in the repository: " + ", ".join(strays))
    if leftover := abandoned_directories():
        problems.append(f"SQLite directories left behind: {', '.join(map(str, leftover))}")
    if config.stash[BACKEND_KEY] == "postgresql" and (dead := asyncio.run(_postgresql_leftovers())):
        problems.append(f"PostgreSQL databases left behind: {', '.join(dead)}")
    if problems:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        for problem in problems:
            if reporter is not None:
                reporter.write_line(f"LEFT BEHIND: {problem}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
