"""Every notebook walked as a learner walks it (``pytest -m learner``; see learner_flow.py).

Each code cell runs twice in a row, then every worked answer of the notebook's solutions runs
in the same kernel and must be ``correct``, then the kernel is shut down as JupyterLab does
and its database must be gone. Slow (every notebook twice), so .ci/run runs it as a stage of
its own on each backend; plain ``pytest`` leaves it out.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from learner_flow import NOTEBOOKS, walk

pytestmark = pytest.mark.learner

ALL = sorted(p for p in NOTEBOOKS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)


@pytest.mark.parametrize("notebook", ALL, ids=[str(p.relative_to(NOTEBOOKS)) for p in ALL])
def test_learner_flow(notebook: Path) -> None:
    report = walk(notebook)
    assert report.ok, report.summary() + "\n" + "\n".join(f"- {p}" for p in report.problems)
