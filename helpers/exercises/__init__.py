"""Self-checks for the exercises at the end of each notebook.

Each notebook's checks live in their own module (``nb01``, ``nb02``, ...). A check takes
the learner's answer, runs it against a fresh fixture where needed, and returns a
:class:`Verdict` that displays as one line:

* ``correct: ...`` for a right answer;
* ``not yet: <specific hint>`` for a wrong one (also when the answer raised);
* ``not attempted yet: ...`` while the placeholder is untouched: the placeholder raises
  ``NotImplementedError`` (or is ``...``), and the notebook still runs to the end.
"""

from helpers.exercises.base import Status, Verdict, check, correct, not_attempted, wrong

__all__ = ["Status", "Verdict", "check", "correct", "not_attempted", "wrong"]
