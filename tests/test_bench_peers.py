"""``make bench-peers`` (issue 13): the report's Markdown, the plots, and a quick run.

The report tests need nothing but the standard library and run everywhere. The plot and run
tests need the bench extra (matplotlib, the peers): they skip in the default .venv and run
in .venv-bench. Timings are never asserted: speed is the benchmark's business.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import left_with_env

BENCH_DIR = Path(__file__).resolve().parent.parent / "bench"
BENCH_PEERS = BENCH_DIR / "bench_peers.py"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

from peers import report  # noqa: E402  (bench/ is not a package on the default path)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ report (stdlib only)


def _table_lines(md: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("|")]


def test_markdown_table_is_well_formed_and_right_aligns_numbers() -> None:
    """Every line of the table has one cell per column; numeric columns are right-aligned,
    text ones left; None renders as a dash; a pipe in a cell is escaped, not a new cell."""
    md = report.markdown_table(
        ["peer", "tasks/s", "note"],
        [["pooly", 41234.5, "a|b"], ["stdlib", None, "x"], ["mp", 12, None]],
    )
    lines = md.splitlines()
    assert lines[1] == "| --- | ---: | --- |"
    for line in lines:
        cells = line.replace("\\|", "").strip("|").split("|")
        assert len(cells) == 3, line
    assert "| pooly | 41,234 | a\\|b |" in lines
    assert "| stdlib | — | x |" in lines
    assert "| mp | 12 | — |" in lines


@pytest.mark.parametrize(
    ("cell", "text"),
    [
        (None, "—"),
        (0.0, "0"),
        (1.0, "1.00"),
        (0.0123456, "0.0123"),
        (12.345, "12.3"),
        (123.45, "123"),
        (98765.4, "98,765"),
        (10_000, "10,000"),
        (float("nan"), "—"),
        (True, "yes"),
        ("text", "text"),
    ],
)
def test_cells_are_formatted_to_three_significant_digits(cell: report.Cell, text: str) -> None:
    """Floats keep three significant digits (thousands separated), ints are grouped."""
    assert report.fmt(cell) == text


def test_section_rejects_a_row_of_the_wrong_width() -> None:
    """A row with more or fewer cells than columns is an error when the section is made."""
    with pytest.raises(ValueError, match="cells"):
        report.section("s", "S", "what", ["a", "b"], [[1]])


def test_page_has_header_sections_notes_and_relative_plot_links() -> None:
    """The page names the command, date, machine and versions, then each section: its
    heading, its "what" paragraph, its table, its notes and its plots as relative links."""
    sec = report.section(
        "throughput",
        "Trivial tasks: throughput",
        "N tasks through each peer.",
        ["peer", "tasks/s"],
        [["pooly-executor", 1000.0], ["stdlib", 100.0]],
        notes=["a note"],
        plots=[report.plot("throughput.png", "bar", "Throughput", "", "tasks/s", {"a": 1.0})],
    )
    # A plain dict written by another workload module, without notes or plots.
    other = {"id": "faults", "title": "Faults", "what": "w", "columns": ["x"], "rows": [["y"]]}
    meta = {
        "command": "python bench/bench_peers.py --quick",
        "date": "2026-12-03 15:00 UTC",
        "machine": "Linux, 2 CPUs",
        "python": "3.11.7",
        "workers": 2,
        "seconds": 12,
        "versions": {"pebble": "5.2.3", "loky": "3.7.0"},
    }
    md = report.page_markdown(meta, [sec, other])  # type: ignore[list-item]
    assert "`python bench/bench_peers.py --quick`" in md
    assert "2026-12-03 15:00 UTC" in md and "Linux, 2 CPUs" in md
    assert "loky 3.7.0, pebble 5.2.3" in md
    assert "## Trivial tasks: throughput\n\nN tasks through each peer.\n\n| peer | tasks/s |" in md
    assert "| pooly-executor | 1,000 |" in md
    assert "- a note" in md
    assert "![Throughput](throughput.png)" in md
    assert "## Faults" in md and "| y |" in md
    assert "[Trivial tasks: throughput](#trivial-tasks-throughput)" in md


def test_plot_names_must_be_bare_png_files() -> None:
    """A plot's file is a bare .png name: the page links it relative to itself."""
    with pytest.raises(ValueError):
        report.plot("../x.png", "bar", "t", "", "", {})
    with pytest.raises(ValueError):
        report.plot("x.svg", "bar", "t", "", "", {})


# ------------------------------------------------------------------ plots (matplotlib)


@pytest.mark.parametrize("kind", ["bar", "line"])
def test_draw_writes_a_real_png(tmp_path: Path, kind: str) -> None:
    """Both plot kinds render to a PNG file (checked by its signature and size), log axes
    and labels that are not peer ids included."""
    pytest.importorskip("matplotlib")
    from peers.plots import draw

    series: dict[str, object] = (
        {"pooly-executor": 70000.0, "stdlib": 8000.0, "someone else": 100.0}
        if kind == "bar"
        else {"pooly-lease": [[1, 800.0], [10, 250.0], [10_000, 90.0]], "loky": [[1, 900.0]]}
    )
    p = report.plot(
        f"{kind}.png", kind, "Title", "x", "y", series, log_x=kind == "line", log_y=True
    )  # type: ignore[arg-type]
    path = Path(draw(p, str(tmp_path)))
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5000


# ------------------------------------------------------------------ a quick run


@pytest.mark.timeout(150)
def test_quick_run_writes_page_json_headline_and_plots_and_leaves_nothing(tmp_path: Path) -> None:
    """A quick run of two cheap sections over three peers: exit 0, the sections in
    peers.json have the agreed structure with a row per peer, peers.md has a valid table per
    section and links its plots, the PNGs are real, headline.md has its table -- and no
    process the run started is left behind (found by an environment token they inherit)."""
    for mod in ("matplotlib", "psutil", "pebble"):
        pytest.importorskip(mod)
    token = uuid.uuid4().hex
    src = str(Path(__file__).resolve().parent.parent / "src")
    env = {
        **os.environ,
        "POOLY_BENCH_PEERS_TEST": token,
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
    }
    peers = ["pooly-executor", "stdlib", "pebble"]
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH_PEERS),
            "--quick",
            "--peers",
            ",".join(peers),
            "--only",
            "throughput,latency",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=140,
        env=env,
    )
    left = left_with_env("POOLY_BENCH_PEERS_TEST", token)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert not left, f"the run left processes behind: {left}"
    assert "== Trivial tasks: throughput ==" in proc.stdout

    data = json.loads((tmp_path / "peers.json").read_text())
    assert data["meta"]["peers"] == peers and data["meta"]["quick"] is True
    secs = {s["id"]: s for s in data["sections"]}
    assert set(secs) == {"throughput", "latency"}
    for s in secs.values():
        assert set(s) >= {"id", "title", "what", "columns", "rows", "notes", "plots"}
        assert [r[0] for r in s["rows"]] == peers
        assert all(len(r) == len(s["columns"]) for r in s["rows"])
        assert all(isinstance(r[1], float) and r[1] > 0 for r in s["rows"])
        for p in s["plots"]:
            png = (tmp_path / p["file"]).read_bytes()
            assert png[:8] == PNG_MAGIC and len(png) > 5000, p["file"]

    md = (tmp_path / "peers.md").read_text()
    for s in secs.values():
        assert f"## {s['title']}" in md
        header = "| " + " | ".join(s["columns"]) + " |"
        i = md.index(header)
        table = md[i:].split("\n\n", 1)[0].splitlines()
        assert len(table) == 2 + len(peers), table
        assert all(line.startswith("| ") and line.endswith(" |") for line in table)
        for p in s["plots"]:
            assert f"]({p['file']})" in md
    headline = (tmp_path / "headline.md").read_text()
    assert "| pooly-executor | stdlib | pebble |" in headline
    assert "trivial tasks/s" in headline and "lone round trip" in headline

    # --render-only rebuilds the page, the headline and the plots from peers.json alone.
    for name in (
        "peers.md",
        "headline.md",
        *(p["file"] for s in secs.values() for p in s["plots"]),
    ):
        (tmp_path / name).unlink()
    again = subprocess.run(
        [sys.executable, str(BENCH_PEERS), "--render-only", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "peers.md").read_text() == md
    assert (tmp_path / "headline.md").read_text() == headline
    assert all((tmp_path / p["file"]).exists() for s in secs.values() for p in s["plots"])
