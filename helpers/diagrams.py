"""Diagrams drawn by code, so they change when the lessons change (and never drift from them).

One function per diagram, each returning a :class:`Diagram` (a matplotlib ``Figure`` that a
notebook displays as a PNG 900 pixels wide, whatever the matplotlib backend):

* :func:`object_states`: transient, pending, persistent, expired, detached, deleted, and the
  calls that move an object between them;
* :func:`session_lifecycle`: one request: session, connection and pool over time;
* :func:`n_plus_one_timeline`: round trips of a per-object loop (N+1) versus ``selectinload``
  and ``joinedload``; pass the statements a :class:`helpers.QueryRecorder` captured to draw
  your own run.

``python -m helpers.diagrams [--out docs/diagrams]`` writes them all as PNG files.

Drawing uses matplotlib's Agg canvas directly (no pyplot, no global state), the DejaVu fonts
shipped with matplotlib, and fixed sizes, so the pictures are the same on every machine.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Rectangle

__all__ = [
    "DIAGRAMS",
    "Diagram",
    "main",
    "n_plus_one_timeline",
    "object_states",
    "save_all",
    "session_lifecycle",
]

WIDTH_IN = 9.0  # x DPI = 900 pixels, the width of a notebook's output area
DPI = 100
FONT = "DejaVu Sans"
MONO = "DejaVu Sans Mono"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "diagrams"

INK = "#1f2933"
MUTED = "#52606d"
BLUE = "#2f6fb0"
BLUE_BG = "#e3eefa"
GREEN = "#2b8a3e"
GREEN_BG = "#e6f4ea"
AMBER = "#b35c00"
AMBER_BG = "#fff1dc"
RED = "#c92a2a"
RED_BG = "#fdeaea"
GREY_BG = "#f1f3f5"


class Diagram(Figure):
    """A Figure that shows itself as a PNG in IPython/Jupyter and has a short, stable repr."""

    title: str = "diagram"

    def png(self) -> bytes:
        buffer = io.BytesIO()
        FigureCanvasAgg(self)
        self.savefig(buffer, format="png", dpi=DPI, metadata={"Software": None})
        return buffer.getvalue()

    def _repr_png_(self) -> bytes:
        return self.png()

    def __repr__(self) -> str:
        width, height = (round(v * DPI) for v in self.get_size_inches())
        return f"<diagram: {self.title}, {width}x{height} px>"


def _canvas(
    title: str, height_in: float, xmax: float = 10.0, ymax: float | None = None
) -> tuple[Diagram, Any]:
    fig = Diagram(figsize=(WIDTH_IN, height_in), dpi=DPI)
    fig.title = title
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, xmax)
    ax.set_ylim(0, ymax if ymax is not None else xmax * height_in / WIDTH_IN)
    ax.set_axis_off()
    return fig, ax


def _heading(ax: Any, y: float, text: str) -> None:
    """The diagram's title line, at the top left."""
    ax.text(0.25, y, text, fontsize=14, fontweight="bold", color=INK, family=FONT, va="center")


def _box(
    ax: Any,
    x: float,
    y: float,
    w: float,
    h: float,
    label: str,
    *,
    fg: str,
    bg: str,
    size: float = 12,
    sub: str = "",
    weight: str = "bold",
) -> None:
    ax.add_patch(
        FancyBboxPatch(
            (x - w / 2, y - h / 2),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.12",
            linewidth=1.8,
            edgecolor=fg,
            facecolor=bg,
            zorder=2,
        )
    )
    dy = 0.13 if sub else 0
    ax.text(
        x,
        y + dy,
        label,
        ha="center",
        va="center",
        fontsize=size,
        fontweight=weight,
        color=fg,
        family=FONT,
        zorder=3,
    )
    if sub:
        ax.text(x, y - 0.2, sub, ha="center", va="center", fontsize=8.5, color=MUTED, family=FONT, zorder=3)


def _arrow(
    ax: Any,
    start: tuple[float, float],
    end: tuple[float, float],
    label: str = "",
    *,
    rad: float = 0.0,
    color: str = INK,
    label_at: tuple[float, float] | None = None,
    size: float = 9,
    style: str = "-|>",
    dashed: bool = False,
    label_color: str | None = None,
) -> None:
    ax.add_patch(
        FancyArrowPatch(
            start,
            end,
            arrowstyle=style,
            mutation_scale=14,
            linewidth=1.5,
            color=color,
            connectionstyle=f"arc3,rad={rad}",
            linestyle="--" if dashed else "-",
            zorder=1,
            shrinkA=0,
            shrinkB=0,
        )
    )
    if label:
        x, y = label_at or ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
        ax.text(
            x,
            y,
            label,
            ha="center",
            va="center",
            fontsize=size,
            family=MONO,
            color=label_color or color,
            zorder=4,
            linespacing=1.25,
            bbox={"boxstyle": "round,pad=0.18", "facecolor": "white", "edgecolor": "none", "alpha": 0.95},
        )


# --- 1. object states ---------------------------------------------------------------------------


def object_states() -> Diagram:
    """The states of an ORM object in an AsyncSession, and the calls that move it between them."""
    fig, ax = _canvas("object states", 6.2, ymax=6.2)
    _heading(ax, 5.9, "An ORM object's states in an AsyncSession")
    w, h = 1.6, 0.72
    at = {
        "transient": (1.05, 4.5),
        "pending": (3.65, 4.5),
        "persistent": (6.4, 4.5),
        "detached": (9.1, 4.5),
        "deleted": (3.65, 1.55),
        "expired": (6.4, 1.55),
    }
    subs = {
        "transient": "no session, no row",
        "pending": "added, not flushed",
        "persistent": "in session, loaded",
        "expired": "in session, values gone",
        "detached": "has a row, no session",
        "deleted": "DELETE flushed",
    }
    colors = {
        "transient": (MUTED, GREY_BG),
        "pending": (BLUE, BLUE_BG),
        "persistent": (GREEN, GREEN_BG),
        "expired": (AMBER, AMBER_BG),
        "detached": (RED, RED_BG),
        "deleted": (MUTED, GREY_BG),
    }
    for name, (x, y) in at.items():
        fg, bg = colors[name]
        _box(ax, x, y, w, h, name, fg=fg, bg=bg, sub=subs[name])
    bottom = 4.5 - h / 2

    def label(x: float, y: float, text: str, color: str, ha: str = "center") -> None:
        ax.text(x, y, text, ha=ha, va="center", fontsize=8.5, family=MONO, color=color, linespacing=1.3)

    # along the top row
    _arrow(ax, (1.85, 4.62), (2.85, 4.62), color=BLUE)
    label(2.35, 5.2, "session.add(obj)", BLUE)
    _arrow(ax, (4.45, 4.62), (5.6, 4.62), color=GREEN)
    label(5.05, 5.28, "await session.flush()\n(or commit())", GREEN)
    _arrow(ax, (7.2, 4.62), (8.3, 4.62), color=RED)
    label(7.75, 5.28, "await session.close()\nsession.expunge(obj)", RED)
    # and back
    _arrow(ax, (2.85, 4.35), (1.85, 4.35), color=MUTED)
    label(2.35, 3.7, "await session.rollback()\nsession.expunge(obj)", MUTED)
    _arrow(ax, (8.3, 4.35), (7.2, 4.35), color=MUTED)
    label(8.9, 3.7, "session.add(obj)\nawait session.merge(obj)", MUTED)
    # expire and refresh
    _arrow(ax, (6.2, bottom), (6.2, 1.55 + h / 2), color=AMBER)
    _arrow(ax, (6.6, 1.55 + h / 2), (6.6, bottom), color=GREEN)
    label(6.8, 3.15, "await session.commit()\n  (expire_on_commit=True)\nsession.expire(obj)", AMBER, "left")
    label(6.8, 2.2, "await session.refresh(obj)\nawait obj.awaitable_attrs.name", GREEN, "left")
    # delete
    _arrow(ax, (5.85, bottom), (4.2, 1.55 + h / 2), color=MUTED)
    label(4.8, 3.2, "await session.delete(obj)\nawait session.flush()", MUTED, "right")
    label(3.65, 0.85, "after commit(): detached", MUTED)
    # the traps
    ax.add_patch(
        Rectangle((0.2, 0.3), 2.35, 2.45, facecolor="white", edgecolor=RED, linewidth=1.2, linestyle="--")
    )
    ax.text(
        0.35,
        2.5,
        "A plain attribute read:",
        fontsize=9.5,
        family=FONT,
        color=RED,
        fontweight="bold",
        va="center",
    )
    ax.text(
        0.35,
        1.95,
        "expired:\nMissingGreenlet",
        fontsize=9,
        family=MONO,
        color=AMBER,
        va="center",
        linespacing=1.3,
        fontweight="bold",
    )
    ax.text(
        0.35,
        1.3,
        "detached, not loaded:\nDetachedInstanceError",
        fontsize=9,
        family=MONO,
        color=RED,
        va="center",
        linespacing=1.3,
        fontweight="bold",
    )
    ax.text(
        0.35,
        0.65,
        "reloading is I/O: await it,\nor load before it happens",
        fontsize=8.5,
        family=FONT,
        color=INK,
        va="center",
        linespacing=1.3,
    )
    return fig


# --- 2. request -> session -> connection -> pool --------------------------------------------------


def session_lifecycle() -> Diagram:
    """One request's AsyncSession borrowing a pooled connection, and giving it back."""
    fig, ax = _canvas("session life cycle", 5.4, ymax=5.4)
    _heading(ax, 5.1, "One request: session → connection → pool")
    lanes = [("request", 4.1), ("AsyncSession", 3.1), ("connection", 2.1), ("pool", 1.1)]
    for name, y in lanes:
        ax.add_patch(Rectangle((0.2, y - 0.42), 9.6, 0.84, facecolor=GREY_BG, edgecolor="none", zorder=0))
        ax.text(0.35, y, name, fontsize=10.5, fontweight="bold", color=INK, family=FONT, va="center")
    t = {"in": 1.7, "open": 2.45, "first": 3.85, "query2": 5.25, "commit": 6.65, "close": 8.05, "out": 8.9}

    def bar(x0: float, x1: float, y0: float, face: str, edge: str) -> None:
        """How long something is in use, on its lane."""
        ax.add_patch(Rectangle((x0, y0), x1 - x0, 0.34, facecolor=face, edgecolor=edge))

    def caption(x: float, y: float, text: str, color: str, background: str | None = None) -> None:
        """A centred caption; with a background it masks the event lines behind it."""
        masking = {"zorder": 5, "bbox": {"facecolor": background, "edgecolor": "none"}} if background else {}
        ax.text(x, y, text, ha="center", va="center", fontsize=8.5, color=color, family=FONT, **masking)

    bar(t["in"], t["out"], 3.93, BLUE_BG, BLUE)
    bar(t["open"], t["close"], 2.93, GREEN_BG, GREEN)
    bar(t["first"], t["commit"], 1.93, AMBER_BG, AMBER)
    caption((t["first"] + t["commit"]) / 2, 2.1, "checked out: one transaction", AMBER, AMBER_BG)
    caption((t["in"] + t["out"]) / 2, 4.1, "your handler, e.g. a FastAPI endpoint", BLUE, BLUE_BG)
    caption((t["open"] + t["first"]) / 2, 3.1, "no connection yet", GREEN)
    caption((t["first"] + t["close"]) / 2 + 0.3, 3.1, "tracks your objects (identity map)", GREEN, GREEN_BG)
    bar(t["in"], t["first"], 0.93, "white", MUTED)
    bar(t["commit"], 9.7, 0.93, "white", MUTED)
    caption((t["in"] + t["first"]) / 2, 1.1, "idle in pool", MUTED)
    caption((t["commit"] + 9.7) / 2, 1.1, "idle again, ready for the next request", MUTED)
    # events
    events = [
        (t["open"], 3.45, "async with\nfactory() as s:", BLUE),
        (t["first"], 3.45, "first await\ns.execute(...)", GREEN),
        (t["query2"], 3.45, "more awaits,\nsame connection", GREEN),
        (t["commit"], 3.45, "await\ns.commit()", GREEN),
        (t["close"], 3.45, "end of async with:\nawait s.close()", GREEN),
    ]
    for x, _y, label, color in events:
        ax.plot([x, x], [0.6, 4.35], color=color, linewidth=0.9, linestyle=":", zorder=1)
        ax.text(
            x, 4.62, label, ha="center", va="center", fontsize=8.5, family=MONO, color=color, linespacing=1.2
        )
    _arrow(ax, (t["first"] - 0.05, 1.27), (t["first"] - 0.05, 1.93), color=AMBER)
    ax.text(
        t["first"] - 0.15, 1.6, "checkout", ha="right", va="center", fontsize=8.5, color=AMBER, family=FONT
    )
    _arrow(ax, (t["commit"] + 0.05, 1.93), (t["commit"] + 0.05, 1.27), color=AMBER)
    ax.text(
        t["commit"] + 0.15, 1.6, "checkin", ha="left", va="center", fontsize=8.5, color=AMBER, family=FONT
    )
    ax.text(
        t["first"] + 0.1,
        2.58,
        "BEGIN (implicit)",
        ha="left",
        va="center",
        fontsize=8,
        family=MONO,
        color=AMBER,
    )
    ax.text(t["commit"] - 0.1, 2.58, "COMMIT", ha="right", va="center", fontsize=8, family=MONO, color=AMBER)
    ax.text(
        t["close"] + 0.1,
        2.58,
        "nothing left to return",
        ha="left",
        va="center",
        fontsize=8,
        family=FONT,
        color=MUTED,
        linespacing=1.2,
    )
    ax.text(
        0.25,
        0.3,
        "The session takes a connection at its first query and returns it at commit, rollback or close. "
        "Hold sessions briefly:\nthe pool has pool_size + max_overflow connections, and a task that waits "
        "longer than pool_timeout gets TimeoutError.",
        fontsize=8.5,
        family=FONT,
        color=INK,
        va="center",
        linespacing=1.3,
    )
    return fig


# --- 3. N+1 versus eager loading ------------------------------------------------------------------

_USERS_SQL = "SELECT users.* FROM users ORDER BY users.id"
DEFAULT_TIMELINES: dict[str, list[str]] = {
    "per-object loads (N+1)": [_USERS_SQL]
    + [f"SELECT posts.* FROM posts WHERE {i} = posts.author_id" for i in range(1, 5)],
    "selectinload(User.posts)": [
        _USERS_SQL,
        "SELECT posts.* FROM posts WHERE posts.author_id IN (1, 2, 3, 4)",
    ],
    "joinedload(User.posts)": ["SELECT users.*, posts.* FROM users LEFT OUTER JOIN posts ON ..."],
}
"""Round trips for the 4 sample users (helpers.sample_data); tests/test_diagrams.py re-measures them."""


def _sql_of(item: Any) -> str:
    return str(getattr(item, "sql", item))


def _short_sql(sql: str) -> str:
    words = sql.split()
    verb = words[0].upper() if words else ""
    lowered = sql.lower()
    table = ""
    if " from " in lowered:
        table = sql[lowered.index(" from ") + 6 :].split()[0]
    if verb == "SELECT" and table:
        if " join " in lowered:
            return f"{table} + JOIN"
        if " in (" in lowered:
            return f"{table} IN (...)"
        if match := re.search(r"where (\d+) = |where \S+ = (\d+)", lowered):
            return f"{table} of {match[1] or match[2]}"
        return table
    return verb.lower()


def n_plus_one_timeline(rows: Mapping[str, Sequence[Any]] | None = None) -> Diagram:
    """Round trips per loading strategy, one row each, on a shared time axis.

    Args:
        rows: label -> the statements that strategy sent (strings, or ``QueryRecorder.statements``).
            Default: :data:`DEFAULT_TIMELINES`, the sample data's 4 users and their posts.
    """
    rows = dict(DEFAULT_TIMELINES if rows is None else rows)
    height = 1.6 + 0.95 * len(rows)
    fig, ax = _canvas("N+1 versus eager loading", height, ymax=height)
    _heading(ax, height - 0.35, "Round trips to the database: N+1 versus eager loading")
    longest = max(len(v) for v in rows.values())
    x0, x1 = 3.2, 9.75
    step = (x1 - x0) / max(longest, 5)
    palette = [(RED, RED_BG), (GREEN, GREEN_BG), (BLUE, BLUE_BG), (AMBER, AMBER_BG)]
    for index, (label, statements) in enumerate(rows.items()):
        y = height - 1.15 - 0.95 * index
        fg, bg = palette[index % len(palette)]
        count = len(statements)
        ax.text(0.25, y + 0.12, label, fontsize=10, fontweight="bold", family=FONT, color=INK, va="center")
        ax.text(
            0.25,
            y - 0.2,
            f"{count} quer{'y' if count == 1 else 'ies'}",
            fontsize=10,
            family=FONT,
            color=fg,
            va="center",
            fontweight="bold",
        )
        for k, statement in enumerate(statements):
            left = x0 + k * step
            ax.add_patch(
                FancyBboxPatch(
                    (left + 0.04, y - 0.3),
                    step - 0.08,
                    0.6,
                    boxstyle="round,pad=0.0,rounding_size=0.08",
                    facecolor=bg,
                    edgecolor=fg,
                    linewidth=1.4,
                )
            )
            ax.text(
                left + step / 2,
                y + 0.1,
                f"#{k + 1}",
                ha="center",
                va="center",
                fontsize=9,
                fontweight="bold",
                color=fg,
                family=FONT,
            )
            ax.text(
                left + step / 2,
                y - 0.14,
                _short_sql(_sql_of(statement)),
                ha="center",
                va="center",
                fontsize=7.5,
                color=INK,
                family=MONO,
            )
    axis_y = 0.55
    _arrow(ax, (x0, axis_y), (x1, axis_y), color=MUTED)
    ax.text(
        x0,
        axis_y - 0.25,
        "time: each box is one round trip (network + query)",
        fontsize=8.5,
        family=FONT,
        color=MUTED,
        va="center",
    )
    ax.text(
        0.25,
        axis_y - 0.25,
        "N+1 under asyncio: a loop of\nawait u.awaitable_attrs.posts",
        fontsize=8.5,
        family=MONO,
        color=MUTED,
        va="center",
        linespacing=1.3,
    )
    return fig


# --- all of them -------------------------------------------------------------------------------

DIAGRAMS = {
    "object_states": object_states,
    "session_lifecycle": session_lifecycle,
    "n_plus_one_timeline": n_plus_one_timeline,
}


def save_all(directory: Path = DOCS) -> list[Path]:
    """Write every diagram as ``<name>.png`` into ``directory``; return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw in DIAGRAMS.items():
        path = directory / f"{name}.png"
        path.write_bytes(draw().png())
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.diagrams", description="Write the diagrams as PNG."
    )
    parser.add_argument("--out", type=Path, default=DOCS, help=f"directory (default: {DOCS})")
    args = parser.parse_args(argv)
    for path in save_all(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
