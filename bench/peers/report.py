"""The results of ``make bench-peers`` as plain data, and their Markdown.

Every workload module of ``bench/peers/`` exposes ``run(opts) -> list[Section]``. A section
is a plain JSON-serialisable dict (the driver writes them all to ``peers.json`` as they are)::

    {
        "id": "throughput",            # stable, for --only and for links
        "title": "Trivial tasks: throughput",
        "what": "One paragraph: what was measured and how (rounds, tasks, medians ...).",
        "columns": ["peer", "tasks/s", "vs pooly"],
        "rows": [["pooly-executor", 41000.0, 1.0], ...],   # cells: str, int, float or None
        "notes": ["one sentence each", ...],
        "plots": [plot, ...],
    }

and a plot (drawn by ``plots.draw(plot, out_dir)`` into ``out_dir/plot["file"]``)::

    {
        "file": "throughput.png",      # a file name, no directory
        "kind": "bar" | "line",
        "title": str, "xlabel": str, "ylabel": str,
        "series": {label: value} for "bar" (one bar per label)
                  {label: [[x, y], ...]} for "line" (one line per label),
        "log_x": bool, "log_y": bool,
    }

Series labels that are peer ids (``pooly-executor``, ``stdlib`` ...) get the same colour in
every plot, pooly's highlighted. Missing keys are tolerated when rendering (``notes`` and
``plots`` default to empty). Plain dicts matching this are fine: :func:`section` and
:func:`plot` only build them.

This module imports nothing outside the standard library (its tests run in the default venv).
"""

from __future__ import annotations

import math
from typing import Any, Literal, NotRequired, TypedDict

Cell = str | int | float | None


class Plot(TypedDict):
    file: str
    kind: Literal["bar", "line"]
    title: str
    xlabel: str
    ylabel: str
    series: dict[str, Any]
    log_x: NotRequired[bool]
    log_y: NotRequired[bool]


class Section(TypedDict):
    id: str
    title: str
    what: str
    columns: list[str]
    rows: list[list[Cell]]
    notes: NotRequired[list[str]]
    plots: NotRequired[list[Plot]]


def section(
    id: str,
    title: str,
    what: str,
    columns: list[str],
    rows: list[list[Cell]],
    notes: list[str] | None = None,
    plots: list[Plot] | None = None,
) -> Section:
    """A :class:`Section`, checked: every row has one cell per column."""
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(
                f"section {id!r}: row {row!r} has {len(row)} cells, not {len(columns)}"
            )
    return {
        "id": id,
        "title": title,
        "what": what,
        "columns": list(columns),
        "rows": [list(r) for r in rows],
        "notes": list(notes or []),
        "plots": list(plots or []),
    }


def plot(
    file: str,
    kind: Literal["bar", "line"],
    title: str,
    xlabel: str,
    ylabel: str,
    series: dict[str, Any],
    *,
    log_x: bool = False,
    log_y: bool = False,
) -> Plot:
    if "/" in file or not file.endswith(".png"):
        raise ValueError(f"plot file must be a bare name ending in .png: {file!r}")
    return {
        "file": file,
        "kind": kind,
        "title": title,
        "xlabel": xlabel,
        "ylabel": ylabel,
        "series": series,
        "log_x": log_x,
        "log_y": log_y,
    }


def failed_section(id: str, title: str, error: str) -> Section:
    """What the driver records for a workload that raised: the error, as a fact."""
    return section(
        id,
        title,
        "This workload failed before it produced results; the error is below.",
        ["error"],
        [[error]],
        notes=["The rest of the run went on without it."],
    )


# ------------------------------------------------------------------ formatting


def fmt(cell: Cell) -> str:
    """A cell as table text: floats to 3 significant digits (thousands separated), None as —."""
    if cell is None:
        return "—"
    if isinstance(cell, bool):
        return "yes" if cell else "no"
    if isinstance(cell, int):
        return f"{cell:,}"
    if isinstance(cell, float):
        if math.isnan(cell):
            return "—"
        if math.isinf(cell):
            return "∞" if cell > 0 else "-∞"
        if cell == 0:
            return "0"
        a = abs(cell)
        if a >= 1000:
            return f"{cell:,.0f}"
        digits = max(0, 2 - math.floor(math.log10(a)))
        return f"{cell:.{digits}f}"
    return str(cell)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def markdown_table(columns: list[str], rows: list[list[Cell]]) -> str:
    """A GitHub-flavoured Markdown table; numeric columns right-aligned."""
    numeric = [
        any(isinstance(r[i], int | float) and not isinstance(r[i], bool) for r in rows)
        and all(r[i] is None or isinstance(r[i], int | float) for r in rows)
        for i in range(len(columns))
    ]
    head = "| " + " | ".join(_escape(c) for c in columns) + " |"
    rule = "| " + " | ".join("---:" if n else "---" for n in numeric) + " |"
    body = ["| " + " | ".join(_escape(fmt(c)) for c in row) + " |" for row in rows]
    return "\n".join([head, rule, *body])


def text_table(columns: list[str], rows: list[list[Cell]]) -> str:
    """The same table as aligned plain text, for the terminal."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def section_markdown(sec: Section, level: int = 2) -> str:
    """One section: its heading, what was measured, the table, notes, and plots."""
    out = [f"{'#' * level} {sec['title']}", "", sec["what"], ""]
    out.append(markdown_table(sec["columns"], sec["rows"]))
    notes = sec.get("notes") or []
    if notes:
        out.append("")
        out += [f"- {n}" for n in notes]
    for p in sec.get("plots") or []:
        out += ["", f"![{_escape(p['title'])}]({p['file']})"]
    return "\n".join(out) + "\n"


def section_text(sec: Section) -> str:
    """One section for the terminal."""
    out = [f"== {sec['title']} ==", text_table(sec["columns"], sec["rows"])]
    out += [f"  * {n}" for n in sec.get("notes") or []]
    return "\n".join(out) + "\n"


def page_markdown(meta: dict[str, Any], sections: list[Section]) -> str:
    """The whole generated page: a header (command, date, machine, versions), then sections."""
    out = [
        "# Pooly beside its peers",
        "",
        "<!-- Generated by bench/bench_peers.py; do not edit by hand. -->",
        "",
        f"Command: `{meta.get('command', '')}`  ",
        f"Date: {meta.get('date', '')} (took {fmt(meta.get('seconds'))} s)  ",
        f"Machine: {meta.get('machine', '')}  ",
        f"Python: {meta.get('python', '')}  ",
        f"Workers per pool: {meta.get('workers', '')}",
        "",
    ]
    versions = meta.get("versions") or {}
    if versions:
        out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + ".")
        out.append("")
    for note in meta.get("notes") or []:
        out.append(f"- {note}")
    if meta.get("notes"):
        out.append("")
    if sections:
        out.append(
            "Sections: " + ", ".join(f"[{s['title']}](#{anchor(s['title'])})" for s in sections)
        )
        out.append("")
    for sec in sections:
        out.append(section_markdown(sec))
    return "\n".join(out).rstrip() + "\n"


def anchor(title: str) -> str:
    """GitHub's heading anchor for ``title`` (lower case, spaces to dashes, punctuation out)."""
    keep = [c for c in title.lower() if c.isalnum() or c in " -_"]
    return "".join(keep).replace(" ", "-")
