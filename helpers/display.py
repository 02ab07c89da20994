"""Print query results as small plain-text tables, without touching the database.

:func:`show` accepts ORM objects, ``Row`` objects, mappings, tuples or plain values. For
ORM objects it reads only attributes that are already loaded (``inspect(obj).dict``): an
expired or unloaded attribute is shown as ``<not loaded>`` instead of triggering the lazy
load that would fail under asyncio. That keeps the display honest about what the session
really fetched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.engine import Row
from sqlalchemy.orm import DeclarativeBase

__all__ = ["NOT_LOADED", "loaded_columns", "show", "table"]

NOT_LOADED = "<not loaded>"


def loaded_columns(obj: DeclarativeBase) -> dict[str, Any]:
    """The mapped column attributes of ``obj`` with their loaded values, in mapping order."""
    state = inspect(obj)
    loaded = state.dict
    return {attr.key: loaded.get(attr.key, NOT_LOADED) for attr in state.mapper.column_attrs}


def _as_record(item: Any) -> dict[str, Any]:
    if isinstance(item, DeclarativeBase):
        return loaded_columns(item)
    if isinstance(item, Row):
        return dict(item._mapping)
    if isinstance(item, Mapping):
        return dict(item)
    if isinstance(item, tuple):
        return {f"{i}": value for i, value in enumerate(item)}
    return {"value": item}


def _cell(value: Any) -> str:
    if isinstance(value, DeclarativeBase):
        state = inspect(value)
        ident = state.identity[0] if state.identity and len(state.identity) == 1 else state.identity
        return f"{type(value).__name__}({ident})"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, list | tuple | set) and not isinstance(value, Row):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return str(value)


def table(items: Iterable[Any], columns: Sequence[str] | None = None, *, max_width: int = 40) -> str:
    """Render ``items`` as an aligned text table and return it."""
    records = [_as_record(item) for item in items]
    if not records:
        return "(no rows)"
    names = list(columns) if columns is not None else list(records[0])
    cells = [[_cell(r.get(name, "")) for name in names] for r in records]
    cells = [[c if len(c) <= max_width else c[: max_width - 3] + "..." for c in row] for row in cells]
    widths = [max(len(name), *(len(row[i]) for row in cells)) for i, name in enumerate(names)]
    lines = [
        " | ".join(name.ljust(w) for name, w in zip(names, widths, strict=True)),
        "-+-".join("-" * w for w in widths),
    ]
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def show(items: Any, columns: Sequence[str] | None = None, *, max_width: int = 40) -> None:
    """Print ``items`` (one object or an iterable of them) as a table, then the row count."""
    if (
        isinstance(items, DeclarativeBase | Row | Mapping)
        or not isinstance(items, Iterable)
        or isinstance(items, str | bytes)
    ):
        items = [items]
    rows = list(items)
    print(table(rows, columns, max_width=max_width))
    if rows:
        print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
