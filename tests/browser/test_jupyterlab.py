"""The learner's path through real JupyterLab in a real browser (``pytest -m browser``).

JupyterLab is started exactly as the README says (``jupyter lab --notebook-dir=.
notebooks/00_start_here.ipynb``), headless, with a token and a free port, and driven with
Playwright in Debian's Chromium. For every notebook it runs *Kernel → Restart Kernel and Run
All Cells*, checks that the error outputs are exactly the cells tagged ``raises-exception``
and that each fits on the screen, types the worked answer into the first exercise cell and
waits for ``correct``, then shuts the kernel down as JupyterLab does. From the start notebook
it follows a link to a lesson, the link to the solutions and a link to a ``.py`` file.

Screenshots land in ``tests/browser/screenshots/`` (git-ignored) for a person to look at, with
``timings.txt`` (Run All seconds per notebook).

Needs ``playwright`` (pip) and a Chromium binary (``apt-get install chromium``; set
``CHROMIUM`` to use another path). Playwright's own browser download is not used.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

from helpers.database import abandoned_directories

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from learner_flow import answer_cells, backend, must_raise, solutions_of

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]*.ipynb"))
SHOTS = Path(__file__).parent / "screenshots"
VIEWPORT = {"width": 1400, "height": 900}
RUN_ALL_TIMEOUT = 120.0
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",  # this machine has no network but loopback
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# JupyterLab settings for the test run only: never autosave (Run All would rewrite the
# notebooks in the repository), no news pop-up over the page.
SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": '{"autosave": false}',
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": '{"fetchNews": "false"}',
}


def _chromium() -> str:
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        message = "no Chromium: apt-get install chromium (or set CHROMIUM=/path/to/chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab() -> Iterator[str]:
    """A JupyterLab server started as the README says; yields its base URL (token included)."""
    pytest.importorskip("playwright", reason="pip install playwright")
    port, token = _free_port(), secrets.token_hex(16)
    started = time.time()
    scratch = Path(tempfile.mkdtemp(prefix="lab-test-"))
    for name, text in SETTINGS.items():
        (scratch / "settings" / name).parent.mkdir(parents=True, exist_ok=True)
        (scratch / "settings" / name).write_text(text)
    env = {
        **os.environ,
        "JUPYTERLAB_SETTINGS_DIR": str(scratch / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(scratch / "workspaces"),
        # JupyterLab "opens a browser" by printing the address into the log; the test's
        # Chromium then goes there, as a learner's browser would.
        "BROWSER": "echo OPEN %s",
    }
    command = [sys.executable, "-m", "jupyter", "lab", "--notebook-dir=.", "notebooks/00_start_here.ipynb"]
    command += ["--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}"]
    command += ["--ServerApp.port_retries=0", f"--IdentityProvider.token={token}"]
    command += ["--LabApp.expose_app_in_browser=True"]  # lets the test read the notebook model
    if os.geteuid() == 0:
        command.append("--allow-root")
    log = (scratch / "server.log").open("w")
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # What JupyterLab asks the browser to open: a local page that redirects to the server.
        opened = re.compile(r"OPEN (file:\S+\.html)")
        deadline = time.monotonic() + 60
        while not (found := opened.search((scratch / "server.log").read_text())):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail("JupyterLab did not start:\n" + (scratch / "server.log").read_text()[-3000:])
            time.sleep(0.2)
        yield found[1]
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        not_found = [line for line in (scratch / "server.log").read_text().splitlines() if " 404 " in line]
        shutil.rmtree(scratch, ignore_errors=True)
        assert not not_found, "the server answered 404:\n" + "\n".join(not_found)
        left = [p for p in abandoned_directories() if p.stat().st_mtime >= started]
        assert not left, f"kernels shut down by JupyterLab left their databases: {left}"


@pytest.fixture(scope="module")
def page(lab: str) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        tab = browser.new_page(viewport=VIEWPORT)
        tab.set_default_timeout(30_000)
        tab.goto(lab)
        tab.wait_for_function(  # the README's command opens the start notebook
            "window.jupyterapp && window.jupyterapp.shell.currentWidget"
            " && window.jupyterapp.shell.currentWidget.context"
            " && window.jupyterapp.shell.currentWidget.context.path === 'notebooks/00_start_here.ipynb'",
            timeout=60_000,
        )
        tab.screenshot(path=str(SHOTS / "start.png"))
        yield tab
        browser.close()


CURRENT = "window.jupyterapp.shell.currentWidget"
CHECK_CALL = re.compile(r"await (?:nb\d\d\.)?check_\w+\(")  # as learner_flow.answer_cells()


def _open(page, path: str) -> None:
    page.evaluate(
        f"window.jupyterapp.commands.execute('docmanager:open', {{path: '{path}'}}).then(() => null)"
    )
    page.wait_for_function(
        f"{CURRENT} && {CURRENT}.context && {CURRENT}.context.path === '{path}'"
        f" && {CURRENT}.sessionContext && {CURRENT}.sessionContext.session"
        f" && {CURRENT}.sessionContext.session.kernel",
        timeout=60_000,
    )


def _menu(page, menu: str, item: str) -> None:
    page.get_by_role("menuitem", name=menu, exact=True).first.click()
    page.get_by_role("menuitem", name=re.compile(re.escape(item))).first.click()


def _run_all(page) -> float:
    """Kernel → Restart Kernel and Run All Cells…, confirmed; seconds until every cell ran."""
    # The stored outputs carry execution counts: clear them first, so that "every cell has a
    # count" below means "every cell ran in this kernel".
    page.evaluate("window.jupyterapp.commands.execute('notebook:clear-all-cell-outputs').then(() => null)")
    page.wait_for_function(
        f"{CURRENT}.content.widgets.every(c => c.model.type !== 'code' || c.model.executionCount === null)"
    )
    start = time.monotonic()
    _menu(page, "Kernel", "Restart Kernel and Run All Cells")
    page.locator(".jp-Dialog .jp-mod-accept").click()
    page.wait_for_function(
        f"""() => {{
            const nb = {CURRENT}.content;
            const code = nb.widgets.filter(c => c.model.type === 'code');
            return {CURRENT}.sessionContext.session.kernel.status === 'idle'
                && code.length > 0
                && code.every(c => c.model.executionCount !== null
                                   && c.model.executionState !== 'running');
        }}""",
        timeout=RUN_ALL_TIMEOUT * 1000,
        polling=250,
    )
    return time.monotonic() - start


def _outputs(page) -> list[list[dict]]:
    return page.evaluate(
        f"{CURRENT}.content.widgets.map(c => c.model.type === 'code' ? c.model.outputs.toJSON() : [])"
    )


def _error_heights(page) -> list[float]:
    """Per cell, the height in pixels of its tallest error output (0 without one)."""
    return page.evaluate(
        f"""{CURRENT}.content.widgets.map(c => Math.max(0, ...Array.from(
              c.node.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'))
            .map(n => n.getBoundingClientRect().height)))"""
    )


def _close_and_shut_down(page) -> None:
    """Shut the notebook's kernel down through the server (graceful, as JupyterLab's menu does),
    wait until the server lists no session for it, and close the tab without saving."""
    path = page.evaluate(f"{CURRENT}.context.path")
    page.evaluate(
        f"""async () => {{
            const w = {CURRENT};
            try {{ await w.sessionContext.shutdown(); }} catch (error) {{ /* checked below */ }}
            w.context.model.dirty = false;
            w.close();
        }}"""
    )
    page.wait_for_function(
        f"""async () => {{
            const sessions = window.jupyterapp.serviceManager.sessions;
            await sessions.refreshRunning();
            const mine = Array.from(sessions.running()).filter(s => s.path === '{path}');
            for (const s of mine) {{ try {{ await sessions.shutdown(s.id); }} catch (e) {{}} }}
            return mine.length === 0;
        }}""",
        timeout=30_000,
        polling=500,
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_run_all_then_first_exercise(page, notebook: Path, request: pytest.FixtureRequest) -> None:
    path = str(notebook.relative_to(ROOT))
    nb = nbformat.read(notebook, as_version=4)
    _open(page, path)
    try:
        seconds = _run_all(page)
        with (SHOTS / "timings.txt").open("a") as out:
            out.write(f"{notebook.name}\t{backend()}\tRun All {seconds:.1f}s\n")
        page.screenshot(path=str(SHOTS / f"{notebook.stem}_run_all.png"))

        expected = [i for i, c in enumerate(nb.cells) if must_raise(c.metadata.get("tags", []), backend())]
        outputs = _outputs(page)
        raised = [i for i, outs in enumerate(outputs) if any(o["output_type"] == "error" for o in outs)]
        assert raised == expected, f"cells with an error output {raised}, cells that must raise {expected}"
        # Every traceback fits on the screen, except where %tb asks for the full one on purpose.
        too_tall = {
            i: h
            for i, h in enumerate(_error_heights(page))
            if h > VIEWPORT["height"] * 0.8 and "%tb" not in nb.cells[i].source
        }
        assert not too_tall, f"tracebacks taller than the screen (cell: px): {too_tall}"

        solutions = solutions_of(notebook)
        answers = answer_cells(solutions) if solutions else []
        if answers:
            first = next(
                i for i, c in enumerate(nb.cells) if c.cell_type == "code" and CHECK_CALL.search(c.source)
            )
            # JupyterLab renders only the cells near the view: scroll to the cell, then mark it.
            page.evaluate(
                f"""async () => {{
                    const nb = {CURRENT}.content;
                    nb.activeCellIndex = {first};
                    await nb.scrollToItem({first});
                    nb.widgets[{first}].node.setAttribute('data-exercise', 'first');
                }}"""
            )
            cell = page.locator("[data-exercise=first]")
            cell.scroll_into_view_if_needed()
            cell.locator(".cm-content").click()
            page.keyboard.press("ControlOrMeta+a")
            page.keyboard.insert_text(answers[0])
            page.keyboard.press("Shift+Enter")
            verdict = cell.locator(".jp-OutputArea-output").filter(has_text=re.compile(r"Exercise [\d.]+:"))
            verdict.wait_for(timeout=60_000)
            page.screenshot(path=str(SHOTS / f"{notebook.stem}_exercise.png"))
            text = verdict.inner_text()
            assert re.search(r"Exercise [\d.]+: correct:", text), text
    finally:
        _close_and_shut_down(page)


def test_links_from_the_start_notebook(page) -> None:
    _open(page, "notebooks/00_start_here.ipynb")
    for name, title in [
        ("01 · Engine set-up", "01_engine_setup.ipynb"),
        ("worked answers", "01_engine_setup_solutions.ipynb"),
        ("helpers/tracebacks.py", "tracebacks.py"),
    ]:
        _open(page, "notebooks/00_start_here.ipynb")
        link = page.locator(".jp-RenderedMarkdown a").filter(has_text=name).first
        link.scroll_into_view_if_needed()
        link.click()
        page.wait_for_function(f"{CURRENT} && {CURRENT}.title.label === '{title}'", timeout=30_000)
        page.screenshot(path=str(SHOTS / f"link_{title}.png"))
        assert page.locator(".jp-Dialog").count() == 0, page.locator(".jp-Dialog").inner_text()
    # Opening a notebook starts a kernel: shut them all down as JupyterLab's "Shut Down All" does.
    page.evaluate("window.jupyterapp.serviceManager.sessions.shutdownAll().then(() => null)")
