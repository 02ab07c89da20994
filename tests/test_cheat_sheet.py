"""Keep notebooks/11_pitfall_cheat_sheet.ipynb in sync with the code and the other notebooks.

* every section it (and helpers.explain) links to exists, under that exact heading;
* the error texts stored in it are what the trigger code in it raises now (re-run here, on
  SQLite, from the notebook's own trigger cell);
* its table shows the causes and fixes of helpers.explain.PITFALLS (one source of truth);
* its list of pitfalls names every "Pitfall:" heading of notebooks 01-10.
"""

from __future__ import annotations

import gc
import json
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from helpers.database import open_database
from helpers.explain import PITFALLS, anchor

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SHEET = NOTEBOOKS / "11_pitfall_cheat_sheet.ipynb"


def cells(path: Path) -> list[dict[str, Any]]:
    return json.loads(path.read_text())["cells"]


def source(cell: dict[str, Any]) -> str:
    return "".join(cell["source"])


def output_text(cell: dict[str, Any]) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream":
            parts.append("".join(out["text"]))
        elif "data" in out:
            data = out["data"]
            parts.append("".join(data.get("text/markdown", data.get("text/plain", ""))))
    return "".join(parts)


def code_cell(starting: str) -> dict[str, Any]:
    found = [c for c in cells(SHEET) if c["cell_type"] == "code" and source(c).startswith(starting)]
    assert len(found) == 1, f"the cheat sheet needs exactly one code cell starting with {starting!r}"
    return found[0]


def headings(path: Path) -> list[str]:
    return [
        line.lstrip("#").strip()
        for cell in cells(path)
        if cell["cell_type"] == "markdown"
        for line in source(cell).splitlines()
        if line.startswith("#")
    ]


@pytest.mark.parametrize("pitfall", PITFALLS, ids=lambda p: p.key)
def test_each_link_points_at_an_existing_heading(pitfall: Any) -> None:
    path = NOTEBOOKS / pitfall.notebook
    assert path.is_file(), f"{pitfall.key}: {pitfall.notebook} does not exist (yet?)"
    assert pitfall.heading in headings(path), (
        f"{pitfall.key}: no heading {pitfall.heading!r} in {pitfall.notebook}; "
        f"its Pitfall headings are {[h for h in headings(path) if h.startswith('Pitfall')]}"
    )


async def test_stored_errors_are_what_the_code_raises_now() -> None:
    setup = source(cells(SHEET)[1])
    namespace: dict[str, Any] = {}
    imports = "\n".join(line for line in setup.splitlines() if line.startswith(("import ", "from ")))
    exec(imports, namespace)
    exec(source(code_cell("# Triggers:")), namespace)
    db = await open_database("test_cheat_sheet", environ={})  # stored outputs come from SQLite
    try:
        await namespace["load_sample_data"](db.engine)
        errors = await namespace["capture"](db)
    finally:
        await db.close()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            gc.collect()
    now = "".join(f"{key:<21} {error}\n" for key, error in errors.items())
    stored = output_text(code_cell("errors = await capture(db)"))
    stored_with = json.loads(SHEET.read_text())["metadata"]["outputs"]["sqlalchemy"]
    if stored_with.split(".")[:2] != sqlalchemy.__version__.split(".")[:2]:
        # another release series words some messages differently: every pitfall must still be
        # raised and recognised by explain()
        assert re.findall(r"^(\S+) ", stored, re.MULTILINE) == list(errors)
        return
    assert stored == now, (
        "the stored errors are out of date: re-run tests/execute_notebooks.py on notebook 11"
    )


def test_table_shows_the_explain_table() -> None:
    table = output_text(code_cell("from IPython.display import Markdown"))
    keys = set(re.findall(r"^(\S+) ", output_text(code_cell("errors = await capture(db)")), re.MULTILINE))
    for pitfall in PITFALLS:
        if pitfall.key in keys:
            row = next((r for r in table.splitlines() if f"]({pitfall.link})" in r), "")
            assert pitfall.cause.replace("|", "\\|") in row and pitfall.fix.replace("|", "\\|") in row, (
                pitfall.key
            )


def test_every_pitfall_heading_is_listed() -> None:
    listed = output_text(code_cell("import json"))
    for path in sorted(NOTEBOOKS.glob("[01][0-9]_*.ipynb")):
        for heading in headings(path):
            if heading.startswith("Pitfall:"):
                assert f"({path.name}#{anchor(heading)})" in listed, f"{path.name}: {heading}"
