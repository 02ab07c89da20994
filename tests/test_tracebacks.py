"""helpers.tracebacks: the short form, for the screen and for IPython's history."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from IPython.core.interactiveshell import InteractiveShell

from helpers import tracebacks

DEEP = "def down(n):\n    return down(n - 1) if n else 1 / 0\n\ndown(60)\n"


@pytest.fixture
def shell() -> Iterator[InteractiveShell]:
    ip = InteractiveShell.instance()
    tracebacks.load_ipython_extension(ip)
    yield ip
    tracebacks.unload_ipython_extension(ip)
    InteractiveShell.clear_instance()


def test_history_stores_the_short_form(shell: InteractiveShell) -> None:
    """IPython 9 formats a failed cell's exception again for its history; with the extension it
    stores the short form (one frame per cell line), not every frame of the recursion."""
    if not hasattr(InteractiveShell, "_format_exception_for_storage"):
        pytest.skip("this IPython keeps no exceptions in its history")
    count = shell.execution_count
    result = shell.run_cell(DEEP, store_history=True)
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    stored = shell.history_manager.exceptions[count]
    assert stored["ename"] == "ZeroDivisionError" and stored["evalue"] == "division by zero"
    assert "ZeroDivisionError: division by zero" in stored["traceback"]
    assert "Traceback (most recent call last; %tb shows every frame):" in stored["traceback"]
    assert not any("\x1b[" in line for line in stored["traceback"])  # not IPython's coloured form


def test_unloading_restores_ipythons_own_formatting(shell: InteractiveShell) -> None:
    if not hasattr(InteractiveShell, "_format_exception_for_storage"):
        pytest.skip("this IPython keeps no exceptions in its history")
    tracebacks.unload_ipython_extension(shell)
    count = shell.execution_count
    shell.run_cell(DEEP, store_history=True)
    assert any("\x1b[" in line for line in shell.history_manager.exceptions[count]["traceback"])
    tracebacks.load_ipython_extension(shell)


def test_a_syntax_error_keeps_ipythons_formatting(shell: InteractiveShell) -> None:
    if not hasattr(InteractiveShell, "_format_exception_for_storage"):
        pytest.skip("this IPython keeps no exceptions in its history")
    count = shell.execution_count
    shell.run_cell("def broken(:\n    pass\n", store_history=True)
    assert shell.history_manager.exceptions[count]["ename"] == "SyntaxError"
