"""Walk a notebook the way a learner does, in one kernel, and report what breaks.

nbval runs each cell once, top to bottom, and kills the kernel. A learner does more:

1. *Run All* (the clean-up cell included), then goes back and re-runs cells;
2. presses Shift-Enter twice on the same cell, the commonest thing anyone does in Jupyter;
3. types the worked answer into each exercise cell, after Run All, in that same kernel;
4. shuts the kernel down (restart, close JupyterLab) and expects nothing left behind.

:func:`walk` does exactly that: every code cell is executed twice in a row, then every
answer cell of the notebook's solutions is executed in the same kernel (each must print a
``correct`` verdict), then the kernel is shut down the way JupyterLab does it (a shutdown
request, not a kill) and its database must be gone. A cell may raise only if it is tagged
``raises-exception`` (for this backend), and then both runs must raise the same exception.

    python tests/learner_flow.py                       # every lesson, a summary per notebook
    python tests/learner_flow.py notebooks/04_crud.ipynb

``tests/test_learner_flow.py`` runs it under pytest (``pytest -m learner``).
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
sys.path.insert(0, str(ROOT))  # also run as a script
from tests.kernels import IPCKernelManager  # noqa: E402

CELL_TIMEOUT = 60.0
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def backend(environ: dict[str, str] | None = None) -> str:
    """``"sqlite"`` or ``"postgresql"``, from ``DATABASE_URL`` as the notebooks read it."""
    url = (os.environ if environ is None else environ).get("DATABASE_URL", "").strip().lower()
    return "postgresql" if url.startswith(("postgresql", "embedded")) else "sqlite"


def must_raise(tags: list[str], backend_name: str) -> bool:
    """Whether a cell with these tags must raise on this backend (see conftest.py)."""
    if "raises-exception" not in tags:
        return False
    if backend_name == "postgresql" and "sqlite-only" in tags:
        return False
    return not (backend_name == "sqlite" and "postgresql-only" in tags)


def solutions_of(lesson: Path) -> Path | None:
    path = lesson.parent / "solutions" / f"{lesson.stem}_solutions.ipynb"
    return path if path.exists() else None


def answer_cells(solutions: Path) -> list[str]:
    """The solution cells a learner would type into the lesson: each defines and checks one answer."""
    nb = nbformat.read(solutions, as_version=4)
    return [
        cell.source
        for cell in nb.cells
        if cell.cell_type == "code" and re.search(r"await (?:nb\d\d\.)?check_\w+\(", cell.source)
    ]


@dataclass
class Run:
    """The outcome of executing one cell once."""

    error: str | None  # "Name: message" of the exception, or None
    text: str  # everything the cell printed or displayed, as text
    seconds: float


@dataclass
class Report:
    notebook: Path
    cells: int = 0
    problems: list[str] = field(default_factory=list)
    twice_failures: int = 0  # code cells that broke when run a second time
    answers: int = 0
    answers_wrong: int = 0  # worked answers that did not get "correct" after Run All
    leftovers: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (
            f"{self.notebook.relative_to(ROOT)}: {self.cells} code cells run twice "
            f"({self.twice_failures} broke), {self.answers} worked answers after Run All "
            f"({self.answers_wrong} not correct), {len(self.leftovers)} left behind, "
            f"{self.seconds:.1f}s"
        )


class Kernel:
    """A kernel started and stopped the way JupyterLab does it."""

    def __init__(self, cwd: Path, env: dict[str, str]) -> None:
        self.manager = IPCKernelManager(kernel_name="python3")
        self.manager.start_kernel(cwd=str(cwd), env=env)
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    @property
    def pid(self) -> int:
        provisioner = self.manager.provisioner
        return int(provisioner.pid) if provisioner is not None and provisioner.pid else -1

    def run(self, code: str, timeout: float = CELL_TIMEOUT) -> Run:
        start = time.perf_counter()
        msg_id = self.client.execute(code, store_history=True)
        texts: list[str] = []
        error = None
        deadline = start + timeout
        while True:
            try:
                msg = self.client.get_iopub_msg(timeout=max(0.1, deadline - time.perf_counter()))
            except queue.Empty:
                self.manager.interrupt_kernel()
                return Run(f"Timeout: cell still running after {timeout:.0f}s", "".join(texts), timeout)
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                texts.append(content["text"])
            elif kind in ("execute_result", "display_data"):
                texts.append(content["data"].get("text/plain", "") + "\n")
            elif kind == "error":
                error = f"{content['ename']}: {ANSI.sub('', content['evalue'])}"
                texts.append(ANSI.sub("", "\n".join(content["traceback"])) + "\n")
            elif kind == "status" and content["execution_state"] == "idle":
                break
        return Run(error, "".join(texts), time.perf_counter() - start)

    def shutdown(self) -> None:
        """A shutdown request, as JupyterLab sends it (the kernel is killed only if it hangs)."""
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=False)


def leftovers(pid: int, environ: dict[str, str]) -> list[str]:
    """Databases or SQLite directories of the kernel process ``pid``."""
    from helpers.database import machine_id

    if backend(environ) == "sqlite":
        return [str(p) for p in Path(tempfile.gettempdir()).glob(f"asqla-*-{pid}-*")]
    import asyncio

    from helpers.database import _admin_connect, configured_url

    async def names() -> list[str]:
        conn = await _admin_connect(configured_url(environ))
        try:
            rows = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE 'asqla%'")
        finally:
            await conn.close()
        return [r[0] for r in rows if re.search(rf"_{machine_id()}_{pid}_\d+$", r[0])]

    return asyncio.run(names())


def _describe(run: Run) -> str:
    return run.error or "no exception"


def walk(notebook: Path, environ: dict[str, str] | None = None) -> Report:
    """Run every cell twice, then the worked answers, then shut down; collect every problem."""
    env = dict(os.environ if environ is None else environ)
    env.pop("PYDEVD_DISABLE_FILE_VALIDATION", None)
    env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
    name = backend(env)
    report = Report(notebook)
    start = time.perf_counter()
    nb = nbformat.read(notebook, as_version=4)
    kernel = Kernel(notebook.parent, env)
    try:
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            report.cells += 1
            expected = must_raise(cell.metadata.get("tags", []), name)
            first = kernel.run(cell.source)
            if (first.error is not None) != expected:
                report.problems.append(
                    f"cell {index}, first run: {'expected an exception, got ' if expected else ''}"
                    f"{_describe(first)}\n{first.text[-800:]}"
                )
                continue  # the second run says nothing new
            second = kernel.run(cell.source)
            broke = (second.error is not None) != expected or (
                expected
                and second.error
                and first.error
                and second.error.split(":")[0] != first.error.split(":")[0]
            )
            if broke:
                report.twice_failures += 1
                report.problems.append(
                    f"cell {index}, run again: {_describe(second)} (first run: {_describe(first)})\n"
                    f"{second.text[-800:]}"
                )
        solutions = solutions_of(notebook)
        for source in answer_cells(solutions) if solutions else []:
            report.answers += 1
            run = kernel.run(source)
            if run.error is not None or not re.search(r"Exercise [\d.]+: correct:", run.text):
                report.answers_wrong += 1
                report.problems.append(
                    f"worked answer after Run All did not get 'correct':\n{source[:200]}\n-> {run.error}\n"
                    f"{run.text[-800:]}"
                )
    finally:
        pid = kernel.pid
        kernel.shutdown()
    report.leftovers = leftovers(pid, env)
    if report.leftovers:
        report.problems.append(f"left behind after the kernel shut down: {', '.join(report.leftovers)}")
    report.seconds = time.perf_counter() - start
    return report


def lessons() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every lesson")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.notebooks or lessons():
        report = walk(path.resolve())
        print(report.summary(), flush=True)
        for problem in report.problems:
            print("   -", problem.replace("\n", "\n     "))
        failed += not report.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
