"""Short tracebacks for the notebooks: the error and your own line, without scrolling.

A failed query under asyncio passes through SQLAlchemy's greenlet bridge, the driver and
asyncio before it reaches you: a ``MissingGreenlet`` traceback is well over a hundred lines,
and the two lines that matter (your cell's line and the error at the bottom) are screens
apart. Every notebook starts with::

    %load_ext helpers.tracebacks

From then on an exception is shown as: your cells' frames, the frame that raised it, a count
of the library frames left out, and the exception itself (with what it wraps, each shortened
the same way). Nothing is caught or changed: the cell still fails, the exception object is the
real one, ``sys.last_value`` holds it, and ``%tb`` prints the complete traceback at any time.
``%unload_ext helpers.tracebacks`` goes back to IPython's own display.
"""

from __future__ import annotations

import linecache
import sys
import traceback
from types import TracebackType
from typing import Any

__all__ = ["load_ipython_extension", "short_traceback", "unload_ipython_extension"]

#: How a learner brings the full traceback back, named in every shortened one.
FULL = "%tb shows every frame"
CAUSE = "The above exception was the direct cause of the following exception:"
CONTEXT = "During handling of the above exception, another exception occurred:"


def _cell_name(shell: Any, filename: str) -> str | None:
    """``"Cell In[7]"`` for a notebook cell's pseudo file, ``None`` for a real file."""
    compiler = getattr(shell, "compile", None)
    described = compiler.format_code_name(filename) if compiler is not None else None
    return " ".join(described) if described else None


def _frame_lines(shell: Any, frame: traceback.FrameSummary) -> list[str]:
    cell = _cell_name(shell, frame.filename)
    where = (
        f"{cell}, line {frame.lineno}" if cell else f"File {frame.filename}:{frame.lineno}, in {frame.name}"
    )
    line = (frame.line or linecache.getline(frame.filename, frame.lineno or 0)).strip()
    return [f"  {where}", f"    {line}"] if line else [f"  {where}"]


def _one(shell: Any, exc: BaseException, tb: TracebackType | None) -> list[str]:
    """One exception: your frames, the raising frame, the count of the others, the message."""
    frames: list[traceback.FrameSummary] = list(traceback.extract_tb(tb))
    if frames and frames[0].filename.endswith("interactiveshell.py"):
        frames = frames[1:]  # IPython's own run_code(): not the learner's, not a library's
    kept = [i for i, frame in enumerate(frames) if _cell_name(shell, frame.filename) or i == len(frames) - 1]
    lines = [f"Traceback (most recent call last; {FULL}):"] if frames else []
    previous = -1
    for i in kept:
        if i != previous + 1:
            lines.append(f"  ... {i - previous - 1} library frames ...")
        lines += _frame_lines(shell, frames[i])
        previous = i
    message = traceback.format_exception_only(type(exc), exc)
    qualified = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if message and message[0].startswith(qualified):  # IPython's style: the class name alone
        message[0] = type(exc).__name__ + message[0][len(qualified) :]
    return lines + [line.rstrip("\n") for part in message for line in part.split("\n") if line or part]


def short_traceback(shell: Any, exc: BaseException) -> list[str]:
    """The shortened traceback of ``exc`` and of the exceptions it wraps, as text lines."""
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, CONTEXT
        else:
            current = None
    # SQLAlchemy wraps a driver's error in its own, whose message repeats the driver's: show
    # the wrapped one only when it says something the outer one does not.
    shown = [chain[0]]
    for inner, link in chain[1:]:
        if str(inner) and str(inner) in str(shown[-1][0]):
            continue
        shown.append((inner, link))
    lines: list[str] = []
    for inner, link in reversed(shown):  # innermost first, as Python prints them
        lines += _one(shell, inner, inner.__traceback__)
        if link:
            lines += ["", link, ""]
    return lines


def _handler(
    shell: Any,
    etype: type[BaseException],
    value: BaseException,
    tb: TracebackType | None,
    tb_offset: Any = None,
) -> None:
    """IPython custom exception handler: show the short form (or IPython's, when it knows better)."""
    if issubclass(etype, SyntaxError) or hasattr(value, "_render_traceback_"):
        shell.showtraceback((etype, value, tb), tb_offset=tb_offset)  # already short
        return
    sys.last_type, sys.last_value, sys.last_traceback = etype, value, tb  # for %tb, %debug, explain()
    if sys.version_info >= (3, 12):
        sys.last_exc = value
    shell._showtraceback(etype, value, short_traceback(shell, value))


def _for_history(shell: Any) -> Any:
    """IPython 9 formats every failed cell's exception a second time, for its history, with its
    full (slow) traceback formatter: seconds for a deep SQLAlchemy traceback. Store the short
    form instead; syntax and usage errors keep IPython's own formatting."""
    original = type(shell)._format_exception_for_storage

    def store(exception: BaseException, filename: Any = None, running_compiled_code: bool = False) -> Any:
        if isinstance(exception, SyntaxError) or hasattr(exception, "_render_traceback_"):
            return original(shell, exception, filename, running_compiled_code)
        if type(exception).__name__ == "UsageError":
            return original(shell, exception, filename, running_compiled_code)
        return {
            "ename": type(exception).__name__,
            "evalue": str(exception),
            "traceback": short_traceback(shell, exception),
        }

    return store


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext helpers.tracebacks``: show exceptions in the short form."""
    shell.set_custom_exc((Exception,), _handler)
    if hasattr(type(shell), "_format_exception_for_storage"):
        shell._format_exception_for_storage = _for_history(shell)


def unload_ipython_extension(shell: Any) -> None:
    """``%unload_ext helpers.tracebacks``: back to IPython's own traceback display."""
    shell.set_custom_exc((), None)
    shell.__dict__.pop("_format_exception_for_storage", None)
