"""Keep notebooks/12_pitfall_cheat_sheet.ipynb in sync with the code and the other notebooks.

* every section helpers.explain names (SECTIONS) exists, under that exact heading;
* every "Pitfall:" section of the lessons whose demonstration raises is in the sheet, or is
  listed in helpers.explain.EXCLUDED with its reason;
* the error texts stored in the sheet are what its trigger code raises now (re-run here, on
  SQLite, from the notebook's own cells); the PostgreSQL ones, shown as recorded on SQLite,
  are raised live on PostgreSQL with each driver (asyncpg, psycopg) and compared with that
  driver's record (the PgBouncer one where PgBouncer 1.21+ is installed, else shown as recorded);
* the sheet shows the causes, fixes and links of helpers.explain.PITFALLS (one source of truth),
  and never a "skipped" text where an error belongs;
* its list of pitfalls names every "Pitfall:" heading of the lessons.
"""

from __future__ import annotations

import ast
import gc
import json
import re
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import make_url

from helpers.database import DatabaseConfigError, NotebookDatabase, configured_url, open_database
from helpers.explain import EXCLUDED, NOTEBOOKS, PITFALLS, RECORDED_WITH, SECTIONS, anchor

NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
SHEET = NOTEBOOKS_DIR / NOTEBOOKS["cheat_sheet"]
LOCAL_POSTGRESQL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"


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


def lessons() -> list[Path]:
    """The lesson notebooks , not the start notebook or the cheat sheet."""
    skip = {NOTEBOOKS["start"], NOTEBOOKS["cheat_sheet"]}
    return sorted(
        p for p in NOTEBOOKS_DIR.glob("*.ipynb") if re.match(r"\d\d[a-z]?_", p.name) and p.name not in skip
    )


def headings(path: Path) -> list[str]:
    return [
        line.lstrip("#").strip()
        for cell in cells(path)
        if cell["cell_type"] == "markdown"
        for line in source(cell).splitlines()
        if line.startswith("#")
    ]


def raising_pitfall_sections(path: Path) -> set[str]:
    """Headings of the "Pitfall:" sections that contain a cell tagged raises-exception."""
    found, current = set(), None
    for cell in cells(path):
        if cell["cell_type"] == "markdown":
            for line in source(cell).splitlines():
                if line.startswith("#"):
                    current = line.lstrip("#").strip()
        elif (
            current
            and current.startswith("Pitfall:")
            and "raises-exception" in cell.get("metadata", {}).get("tags", [])
        ):
            found.add(current)
    return found


def run_code(code: str, namespace: dict[str, Any]) -> None:
    # dont_inherit: not this module's `from __future__ import annotations`, which would turn the
    # cells' annotations into strings (FastAPI could then not resolve a local Depends())
    exec(compile(code, str(SHEET), "exec", dont_inherit=True), namespace)


def sheet_namespace() -> dict[str, Any]:
    """The sheet's imports, triggers and capture functions, executed here as in the notebook."""
    namespace: dict[str, Any] = {}
    setup = "\n".join(line for line in source(cells(SHEET)[1]).splitlines() if not line.startswith("%"))
    imports: list[ast.stmt] = [n for n in ast.parse(setup).body if isinstance(n, ast.Import | ast.ImportFrom)]
    run_code(ast.unparse(ast.Module(body=imports, type_ignores=[])), namespace)
    for cell in cells(SHEET):
        if cell["cell_type"] == "code" and source(cell).startswith(("# Triggers", "# Capturing")):
            run_code(source(cell), namespace)
    return namespace


async def run_capture(db: NotebookDatabase) -> dict[str, tuple[str, str]]:
    namespace = sheet_namespace()
    try:
        await namespace["load_sample_data"](db.engine)
        return await namespace["capture"](db)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            gc.collect()


# --- the sections the table refers to -----------------------------------------------------------


@pytest.mark.parametrize("key", sorted(SECTIONS))
def test_each_section_exists(key: str) -> None:
    section = SECTIONS[key]
    path = NOTEBOOKS_DIR / section.notebook
    assert path.is_file(), (
        f"{key}: {section.notebook} does not exist (renamed? update helpers.explain.NOTEBOOKS)"
    )
    found = headings(path)
    assert section.heading in found, (
        f"{key}: no heading {section.heading!r} in {section.notebook} (update helpers.explain.SECTIONS); "
        f"its Pitfall headings are {[h for h in found if h.startswith('Pitfall')]}"
    )


def test_every_reference_is_a_known_section() -> None:
    for pitfall in PITFALLS:
        for key in (pitfall.section, *pitfall.also):
            assert key in SECTIONS, (pitfall.key, key)
    assert set(EXCLUDED) <= set(SECTIONS)


@pytest.mark.parametrize("path", lessons(), ids=lambda p: p.name)
def test_every_raising_pitfall_is_in_the_sheet(path: Path) -> None:
    in_sheet = {(s.notebook, s.heading) for p in PITFALLS for s in p.sections}
    excluded = {(SECTIONS[k].notebook, SECTIONS[k].heading) for k in EXCLUDED}
    missing = [h for h in sorted(raising_pitfall_sections(path)) if (path.name, h) not in in_sheet | excluded]
    assert not missing, (
        f"{path.name}: these Pitfall sections raise, but helpers.explain has no entry for them "
        f"(add a Pitfall and a trigger in notebook 12, or an EXCLUDED reason): {missing}"
    )


# --- the stored errors --------------------------------------------------------------------------


async def test_stored_errors_are_what_the_code_raises_now() -> None:
    db = await open_database("test_cheat_sheet", environ={})  # stored outputs come from SQLite
    try:
        errors = await run_capture(db)
    finally:
        await db.close()
    assert set(errors) == {p.key for p in PITFALLS}
    recorded = [p.key for p in PITFALLS if p.backend == "postgresql"]
    assert [key for key, (_, driver) in errors.items() if driver] == recorded
    now = "".join(
        f"{key:<22} {error}{f'   [recorded on PostgreSQL with {driver}]' if driver else ''}\n"
        for key, (error, driver) in errors.items()
    )
    stored = output_text(code_cell("errors = await capture(db)"))
    stored_with = json.loads(SHEET.read_text())["metadata"]["outputs"]["sqlalchemy"]
    if stored_with.split(".")[:2] != sqlalchemy.__version__.split(".")[:2]:
        # another release series words some messages differently: every pitfall must still be
        # raised and recognised by explain() (capture() asserts that)
        assert re.findall(r"^(\S+) ", stored, re.MULTILINE) == list(errors)
        return
    assert stored == now, (
        "the stored errors are out of date: re-run tests/execute_notebooks.py on notebook 12"
    )


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_postgresql_errors_are_as_recorded(driver: str) -> None:
    """The PostgreSQL-only rows, raised live with each driver: the sheet shows their records on
    SQLite. A row another driver does not raise shows that driver's record instead."""
    url = configured_url()
    server = url if url is not None and url.get_backend_name() == "postgresql" else LOCAL_POSTGRESQL
    environ = {
        "DATABASE_URL": make_url(server).set(drivername=f"postgresql+{driver}").render_as_string(False)
    }
    try:
        db = await open_database("test_cheat_sheet_pg", environ=environ)
    except DatabaseConfigError as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    try:
        assert db.driver == driver
        errors = await run_capture(db)
    finally:
        await db.close()
    for pitfall in PITFALLS:
        live = pitfall.live_on("postgresql", driver)
        recorded_with = driver if driver in pitfall.seen else next(iter(pitfall.seen), "")
        assert errors[pitfall.key][1] == ("" if live else recorded_with), pitfall.key
    if not sqlalchemy.__version__.startswith(RECORDED_WITH + "."):
        return  # capture() checked that explain() recognises each; the wording may differ
    for pitfall in PITFALLS:
        if driver in pitfall.seen:  # live or not: the text is this driver's
            assert errors[pitfall.key][0] == pitfall.seen[driver], pitfall.key


async def test_without_pgbouncer_the_sheet_shows_the_record_of_the_driver_in_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PgBouncer missing (or older than 1.21): its row is shown as recorded, for this driver."""
    from helpers import pgbouncer

    monkeypatch.setattr(pgbouncer, "available", lambda *args: False)
    rows = tuple(p for p in PITFALLS if p.requires == "pgbouncer")
    assert rows, "no PITFALLS row requires PgBouncer"
    namespace = sheet_namespace()
    namespace["PITFALLS"] = rows  # capture() looks the table up in the notebook's namespace
    for driver in ("asyncpg", "psycopg"):
        db = SimpleNamespace(backend="postgresql", driver=driver)  # all capture() reads of a record
        errors = await namespace["capture"](db)
        assert errors == {p.key: (p.seen[driver], driver) for p in rows}


def test_no_skipped_text_where_an_error_belongs() -> None:
    stored = output_text(code_cell("errors = await capture(db)")) + output_text(
        code_cell("from IPython.display")
    )
    assert "skipped" not in stored.lower()
    for pitfall in PITFALLS:
        for text in pitfall.seen.values():
            assert text.split(": ")[0] in pitfall.errors, pitfall.key


def test_greenlet_trigger_ignores_coloured_tracebacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """ipykernel sets FORCE_COLOR=1, which colours Python 3.13's tracebacks in the child process."""
    import asyncio

    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("PYTHON_COLORS", raising=False)
    namespace = sheet_namespace()
    with pytest.raises((ImportError, ValueError), match="greenlet"):
        asyncio.run(namespace["greenlet_missing"](None))


# --- what the sheet shows -----------------------------------------------------------------------


def test_sheet_shows_the_explain_table() -> None:
    sheet = output_text(code_cell("from IPython.display"))
    blocks = sheet.split("\n\n")
    for pitfall in PITFALLS:
        block = next((b for b in blocks if f"]({pitfall.link})" in b and pitfall.cause in b), "")
        assert block, pitfall.key
        assert f"- fix: {pitfall.fix}" in block, pitfall.key
        for driver, text in pitfall.seen.items():  # stored from SQLite: every driver's record
            assert f"- error with {driver}, as recorded: `{text}`" in block, (pitfall.key, driver)
        assert (pitfall.elsewhere in block) if pitfall.elsewhere else "- other drivers" not in block
        for section in pitfall.sections:
            assert f"]({section.link})" in block, (pitfall.key, section.heading)


def test_every_pitfall_heading_is_listed() -> None:
    listed = output_text(code_cell("from pathlib import Path"))
    for path in lessons():
        for heading in headings(path):
            if heading.startswith("Pitfall:"):
                assert f"({path.name}#{anchor(heading)})" in listed, f"{path.name}: {heading}"
