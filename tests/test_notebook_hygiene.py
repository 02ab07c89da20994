"""Checks on the notebooks as files: links, clean stored outputs, the shape of each chapter.

nbval re-runs the notebooks and compares outputs; these tests check what nbval cannot: that
the stored outputs came from one clean top-to-bottom run, that every notebook is reachable
from the start notebook, and that lessons and solutions are complete.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from execute_notebooks import SESSION_METADATA

from helpers import recorded
from helpers.recorded import marked_cells

NEWEST_PYTHON = "3.13."

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
START = NOTEBOOKS / "00_start_here.ipynb"
ALL = sorted(p for p in NOTEBOOKS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
# Lessons: every numbered notebook but the start page (00) and the pitfall cheat sheet (12).
LESSONS = [
    p
    for p in ALL
    if p.parent == NOTEBOOKS and re.match(r"\d\d_", p.name) and p.name[:3] not in ("00_", "12_")
]
SOLUTIONS = sorted((NOTEBOOKS / "solutions").glob("*.ipynb"))
LINK = re.compile(r"\]\(([^)#\s]+\.ipynb)(#[^)]*)?\)")
VARYING = [
    (re.compile(r" at 0x[0-9a-f]{6,}"), "a memory address"),
    (re.compile(r"/tmp/|/var/folders/|asqla-\w+-\d+-"), "a temporary path"),
    (re.compile(r"asqla_\w+_[0-9a-f]{6}_\d+"), "a private database name"),
]


def load(path: Path) -> dict:
    return json.loads(path.read_text())


def ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(NOTEBOOKS)) for p in paths]


def markdown(nb: dict) -> str:
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


def links(path: Path) -> set[Path]:
    return {(path.parent / m[1]).resolve() for m in LINK.finditer(markdown(load(path)))}


def tags(cell: dict) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def outputs_text(cell: dict) -> str:
    return json.dumps(cell.get("outputs", []))


def test_there_are_lessons_and_solutions() -> None:
    assert START.exists()
    assert [p.name[:2] for p in LESSONS] == [f"{n:02}" for n in (*range(1, 12), *range(13, 18))], ids(LESSONS)
    assert [p.name.replace("_solutions", "") for p in SOLUTIONS] == [p.name for p in LESSONS]


def test_every_notebook_is_linked_from_the_start_notebook() -> None:
    missing = set(ALL) - {START} - links(START)
    assert not missing, f"not linked from 00_start_here: {ids(sorted(missing))}"


DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
ANY_LINK = re.compile(r"\]\(([^)\s]+)\)")


def headings(path: Path) -> set[str]:
    """The anchors JupyterLab (notebooks) or GitHub (markdown files) makes for each heading."""
    text = markdown(load(path)) if path.suffix == ".ipynb" else path.read_text()
    found = set()
    for heading in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE):
        if path.suffix == ".ipynb":  # JupyterLab: rendered text, spaces turned into '-'
            found.add(re.sub(r"[`*]", "", heading).replace(" ", "-"))
        else:  # GitHub: lower case, punctuation dropped, spaces turned into '-'
            found.add(re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-"))
    return found


def relative_links(path: Path) -> list[tuple[str, Path, str]]:
    """(link as written, target file, anchor) for every relative link of a notebook or doc."""
    text = markdown(load(path)) if path.suffix == ".ipynb" else path.read_text()
    found = []
    for target in ANY_LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s):, mailto:
        file, _, anchor = target.partition("#")
        found.append((target, (path.parent / file).resolve() if file else path, anchor))
    return found


@pytest.mark.parametrize("path", ALL + DOCS, ids=[str(p.relative_to(ROOT)) for p in ALL + DOCS])
def test_links_resolve(path: Path) -> None:
    """Every relative link opens a file, in JupyterLab as on GitHub; anchors name a heading.

    JupyterLab 4 opens a link to a folder as if it were a file ("is a directory, not a
    file"), so links must name files. The browser test follows some of them for real.
    """
    problems = []
    for target, file, anchor in relative_links(path):
        if not file.exists():
            problems.append(f"{target}: no such file")
        elif file.is_dir():
            problems.append(f"{target}: a folder (JupyterLab cannot open it); link a file inside")
        elif not file.is_relative_to(ROOT):
            problems.append(f"{target}: outside the repository")
        elif anchor and file.suffix in (".ipynb", ".md") and anchor not in headings(file):
            problems.append(f"{target}: no heading with the anchor #{anchor}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", ALL, ids=ids(ALL))
def test_outputs_come_from_one_clean_run(path: Path) -> None:
    nb = load(path)
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    recorded = nb["metadata"].get("outputs", {})
    assert recorded.get("backend") == "sqlite" and recorded.get("sqlalchemy"), (
        "outputs must come from tests/execute_notebooks.py (it records the SQLAlchemy version)"
    )
    assert recorded.get("python", "").startswith(NEWEST_PYTHON), (
        f"outputs must be stored from Python {NEWEST_PYTHON}, the newest supported (execute_notebooks.py)"
    )
    stamped = [i for i, c in enumerate(nb["cells"]) if set(c.get("metadata", {})) & set(SESSION_METADATA)]
    assert not stamped, f"cells {stamped} store session metadata (timestamps, view state): re-execute"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), "re-run with tests/execute_notebooks.py"
    for index, cell in enumerate(code, 1):
        cell_tags = tags(cell)
        errors = [o for o in cell["outputs"] if o["output_type"] == "error"]
        if errors:
            assert "raises-exception" in cell_tags, f"code cell {index}: error output without the tag"
        elif "raises-exception" in cell_tags and "postgresql-only" not in cell_tags:
            pytest.fail(f"code cell {index} is tagged raises-exception but its stored output has no error")
        for output in cell["outputs"]:
            assert (
                output.get("output_type") != "stream"
                or output["name"] != "stderr"
                or ("nbval-ignore-output" in cell_tags)
                or marked_cells("".join(cell["source"])) is not None  # a recorded traceback
            ), f"code cell {index} wrote to stderr"
        if "nbval-ignore-output" not in cell_tags:
            text = outputs_text(cell)
            for pattern, what in VARYING:
                assert not pattern.search(text), f"code cell {index}: stored output holds {what}"


@pytest.mark.parametrize("path", LESSONS, ids=ids(LESSONS))
def test_lesson_shape(path: Path) -> None:
    nb = load(path)
    prose = markdown(nb)
    number = int(path.name[:2])
    for heading in ("Goals", "Recap", "Exercises"):
        assert re.search(rf"^#+ .*{heading}", prose, re.MULTILINE), f"no '{heading}' heading"
    targets = {p.name for p in links(path)}
    assert "00_start_here.ipynb" in targets, "no link back to the index"
    assert path.name.replace(".ipynb", "_solutions.ipynb") in targets, "no link to its solutions"
    neighbours = {p.name[:2] for p in links(path) if p.parent == NOTEBOOKS}
    assert f"{number - 1:02d}" in neighbours, "no link to the previous notebook"
    if path != LESSONS[-1]:  # the last lesson links back to the index instead
        assert f"{number + 1:02d}" in neighbours, "no link to the next notebook"
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert "await db.dispose()" in "".join(code[-1]["source"]), "no clean-up at the end"
    checks = [outputs_text(c) for c in code if "Exercise " in outputs_text(c)]
    assert checks, "no exercise self-check output"
    assert all("not attempted yet" in text for text in checks), "lesson placeholders must stay untouched"


@pytest.mark.parametrize("path", SOLUTIONS, ids=ids(SOLUTIONS))
def test_solutions_are_correct(path: Path) -> None:
    nb = load(path)
    lesson = path.name.replace("_solutions", "")
    assert lesson in {p.name for p in links(path)}, "no link back to its lesson"
    results = [
        outputs_text(c) for c in nb["cells"] if c["cell_type"] == "code" and "Exercise " in outputs_text(c)
    ]
    assert results, "no self-check output"
    for text in results:
        assert ": correct:" in text and "not yet" not in text and "not attempted" not in text, text


def marked(nb: dict) -> list[tuple[dict, str]]:
    """The cells marked %needs_postgresql, with their recording keys."""
    found = []
    for cell in nb["cells"]:
        body = recorded.marked_cells("".join(cell["source"])) if cell["cell_type"] == "code" else None
        if body is not None:
            found.append((cell, recorded.cell_hash(body)))
    return found


@pytest.mark.parametrize("path", ALL, ids=ids(ALL))
def test_cells_needing_postgresql_are_recorded_with_both_drivers(path: Path) -> None:
    nb = load(path)
    cells = marked(nb)
    if not cells:
        return
    set_up = next(c for c in nb["cells"] if c["cell_type"] == "code")
    assert "%load_ext helpers.recorded" in "".join(set_up["source"]), "the set-up cell must load it"
    stored = recorded.load(recorded.RECORDINGS)
    for cell, key in cells:
        first = "".join(cell["source"]).splitlines()[1]
        entry = stored.get(key)
        assert entry is not None, f"no recording of {first!r}: run tests/execute_notebooks.py {path.name}"
        assert sorted(entry["drivers"]) == ["asyncpg", "psycopg"], first
        raised = {driver: "error" in rec["outputs"] for driver, rec in entry["drivers"].items()}
        if any(raised.values()):
            assert {"raises-exception", "postgresql-only"} <= tags(cell), (first, raised)
        else:
            assert "raises-exception" not in tags(cell), (first, raised)


def test_recordings_come_from_one_run_and_none_is_orphaned() -> None:
    stored = recorded.load(recorded.RECORDINGS)
    wanted = {key for path in ALL for _, key in marked(load(path))}
    assert set(stored) == wanted, "orphaned or missing recordings: run tests/execute_notebooks.py"
    settings = set()
    for entry in stored.values():
        for driver, rec in entry["drivers"].items():
            versions = rec["versions"]
            settings.add(
                (versions["postgresql"].split(".")[0], versions["sqlalchemy"], driver, versions[driver])
            )
    assert len({s[:2] for s in settings}) == 1, f"recorded with several servers or releases: {settings}"
    assert len(settings) == 2, settings  # one version of each driver
