"""The verdict type and the decorator every exercise check is built from."""

from __future__ import annotations

import enum
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ParamSpec

__all__ = ["Status", "Verdict", "check", "correct", "not_attempted", "wrong"]

P = ParamSpec("P")


class Status(enum.Enum):
    CORRECT = "correct"
    WRONG = "not yet"
    NOT_ATTEMPTED = "not attempted yet"


@dataclass(frozen=True)
class Verdict:
    """The outcome of one exercise check. Displays as a single line in a notebook."""

    exercise: str
    status: Status
    message: str

    @property
    def ok(self) -> bool:
        return self.status is Status.CORRECT

    def __str__(self) -> str:
        return f"Exercise {self.exercise}: {self.status.value}: {self.message}"

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))


def correct(exercise: str, message: str = "well done.") -> Verdict:
    return Verdict(exercise, Status.CORRECT, message)


def wrong(exercise: str, hint: str) -> Verdict:
    return Verdict(exercise, Status.WRONG, hint)


def not_attempted(exercise: str) -> Verdict:
    return Verdict(
        exercise,
        Status.NOT_ATTEMPTED,
        "replace the placeholder (raise NotImplementedError, or ...) in this cell with your answer, "
        "then run the cell again.",
    )


def check(exercise: str) -> Callable[[Callable[P, Awaitable[Verdict]]], Callable[P, Awaitable[Verdict]]]:
    """Turn ``async def f(answer, ...) -> Verdict`` into a forgiving self-check.

    The wrapped check returns "not attempted yet" when the answer is ``...`` or raises
    ``NotImplementedError``, and turns any other exception from the learner's code into a
    hint naming it, so a check never breaks the notebook.
    """

    def decorate(func: Callable[P, Awaitable[Verdict]]) -> Callable[P, Awaitable[Verdict]]:
        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> Verdict:
            if args and args[0] is Ellipsis:
                return not_attempted(exercise)
            try:
                return await func(*args, **kwargs)
            except NotImplementedError:
                return not_attempted(exercise)
            except Exception as exc:  # the learner's code failed: say how, as a hint
                return wrong(exercise, f"your code raised {type(exc).__name__}: {exc}")

        return wrapper

    return decorate
