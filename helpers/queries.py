"""Count and show the SQL statements a block of code sends to the database.

``echo=True`` prints every statement with timestamps and timings, which is noisy and
changes on every run. :class:`QueryRecorder` listens to the engine's
``before_cursor_execute`` event instead, so a notebook can print *how many* statements a
piece of code needed (the proof that eager loading fixes N+1) and, when useful, which ones.

    with QueryRecorder(engine) as queries:
        users = (await session.scalars(select(User))).all()
    print(queries.count)
    queries.show()

The driver's own transaction control (commit() and rollback() calls, and the BEGIN that
asyncpg or sqlite3 sends by itself) is not a cursor statement and is not counted; SAVEPOINT
statements are. The ``BEGIN`` that SQLAlchemy's SQLite recipe emits (``db.engine`` on SQLite,
notebook 01) goes through the cursor, so it is recorded: count only the statements you mean
(``queries.verbs().count("SELECT")``) where both backends must agree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["QueryRecorder", "RecordedStatement"]


@dataclass(frozen=True)
class RecordedStatement:
    """One statement as it was sent: SQL text (whitespace collapsed) and its parameters."""

    sql: str
    parameters: Any

    @property
    def verb(self) -> str:
        """The first keyword: SELECT, INSERT, UPDATE, DELETE, SAVEPOINT, ..."""
        return self.sql.split(" ", 1)[0].upper()


@dataclass
class QueryRecorder:
    """Records the statements an engine executes while the ``with`` block is open."""

    engine: AsyncEngine | Engine
    statements: list[RecordedStatement] = field(default_factory=list)
    _listening: bool = False

    @property
    def _sync_engine(self) -> Engine:
        return self.engine.sync_engine if isinstance(self.engine, AsyncEngine) else self.engine

    def _record(
        self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool
    ) -> None:
        self.statements.append(RecordedStatement(" ".join(statement.split()), parameters))

    def __enter__(self) -> QueryRecorder:
        event.listen(self._sync_engine, "before_cursor_execute", self._record)
        self._listening = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._listening:
            event.remove(self._sync_engine, "before_cursor_execute", self._record)
            self._listening = False

    @property
    def count(self) -> int:
        """How many statements were executed."""
        return len(self.statements)

    def verbs(self) -> list[str]:
        """The first keyword of each statement, in order: ``['SELECT', 'SELECT', ...]``."""
        return [s.verb for s in self.statements]

    def reset(self) -> None:
        """Forget what was recorded so far (keeps listening)."""
        self.statements.clear()

    def show(self, *, width: int = 100, parameters: bool = False) -> None:
        """Print the count, then each statement numbered and cut to ``width`` characters."""
        noun = "statement" if self.count == 1 else "statements"
        print(f"{self.count} {noun}")
        for number, statement in enumerate(self.statements, 1):
            sql = statement.sql if len(statement.sql) <= width else statement.sql[: width - 3] + "..."
            print(f"{number:>3}. {sql}")
            if parameters:
                print(f"     parameters: {_short(statement.parameters)}")

    def __repr__(self) -> str:
        return f"<QueryRecorder: {self.count} statements>"


def _short(value: Any, limit: int = 80) -> str:
    text = re.sub(r"\s+", " ", repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."
