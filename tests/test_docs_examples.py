"""Every ```python block of the docs (docs/**/*.md) and README.md runs, so the docs can't rot.

Each example runs as a script -- ``python example.py`` with this interpreter, in a fresh
temporary directory as cwd, with the repository's ``src`` and that directory on PYTHONPATH --
and must exit 0 within its deadline; a failing example fails its test with its stdout and
stderr. Pools an example starts must be under ``if __name__ == "__main__":``, as pooly's
default start method (forkserver) requires. Test ids name the file and the block's line:
``docs/quickstart.md:12``.

The convention, an HTML comment on the line(s) just before a block (invisible when rendered;
documented for writers in docs/about.md)::

    <!-- pooly-example: requires=examples -->   needs the ``examples`` extra (the embedding
                                               model, aiohttp): run only when
                                               POOLY_TEST_EXAMPLES=1 (`make test-extras`,
                                               in .venv-bench), else skipped with the reason
    <!-- pooly-example: requires=bench -->      needs the ``bench`` extra (pebble, for the
                                               migration guide's "before"): the same
    <!-- pooly-example: requires=ray -->        needs Ray: the same
    <!-- pooly-example: file=workers.py -->     not run by itself: written as that file in the
                                               example's directory, for the page's later
                                               blocks to import (a worker class Ray or a
                                               web app imports by module name)
    <!-- pooly-example: continue -->            part of the block before it on the page: the
                                               two (or more) run as one script
    <!-- pooly-example: output -->              on the block just after a python block (any
                                               fence language, usually ``text``): each of
                                               its non-blank lines must appear in the
                                               script's stdout, in order; ``...`` in a line
                                               matches anything
    <!-- pooly-example: skip: the reason -->    not run (rare: a fragment that can't be made
                                               whole); the test is reported skipped

Options combine with spaces (``requires=ray continue``); ``skip:`` takes the rest of the
comment as its reason. Files written by ``file=`` blocks belong to the page: every later
example of that page finds them in its directory. A ``continue`` block inherits the
``requires`` of the block it continues.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
EXTRAS = {"examples", "bench", "ray"}
DEADLINE = {None: 120, "examples": 300, "bench": 300, "ray": 420}  # seconds per example
_RUN_EXTRAS = os.environ.get("POOLY_TEST_EXAMPLES") == "1"

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
_DIRECTIVE = re.compile(r"<!--\s*pooly-example:(?P<body>.*?)-->", re.S)


@dataclasses.dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    options: dict[str, str]


@dataclasses.dataclass
class Example:
    path: Path
    line: int
    code: str
    requires: str | None
    skip: str | None
    expected: list[str]
    files: dict[str, str]  # written before it runs (file= blocks earlier on the page)

    @property
    def id(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line}"


def parse_options(body: str) -> dict[str, str]:
    """``requires=ray continue`` -> {"requires": "ray", "continue": ""}; ``skip: why``."""
    body = " ".join(body.split())
    options: dict[str, str] = {}
    head, sep, reason = body.partition("skip:")
    if sep:
        options["skip"] = reason.strip() or "no reason given"
    for word in head.split():
        key, _, value = word.partition("=")
        if key not in ("requires", "file", "continue", "output"):
            raise ValueError(f"unknown pooly-example option {word!r}")
        options[key] = value
    if options.get("requires", "") and options["requires"] not in EXTRAS:
        raise ValueError(f"requires={options['requires']!r}: not one of {sorted(EXTRAS)}")
    return options


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, each with the directive just before it."""
    lines = path.read_text(encoding="utf-8").split("\n")
    found: list[Block] = []
    i = 0
    pending: dict[str, str] = {}
    while i < len(lines):
        line = lines[i]
        start = line.lstrip()
        if start.startswith("<!--") and "pooly-example:" in start:
            j = i
            text = line
            while "-->" not in text and j + 1 < len(lines):
                j += 1
                text += "\n" + lines[j]
            m = _DIRECTIVE.search(text)
            if m is None:
                raise ValueError(f"{path}:{i + 1}: unterminated pooly-example comment")
            pending = parse_options(m.group("body"))
            i = j + 1
            continue
        m = _FENCE.match(line)
        if m is None:
            if line.strip():
                pending = {}  # a directive applies to the very next block only
            i += 1
            continue
        indent, fence = len(m.group("indent")), m.group("fence")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            row = lines[j]
            body.append(row[indent:] if row[:indent].strip() == "" else row.lstrip())
            j += 1
        found.append(Block(path, i + 1, m.group("lang").lower(), "\n".join(body) + "\n", pending))
        pending = {}
        i = j + 1
    return found


def examples(path: Path) -> list[Example]:
    """A page's examples: its python blocks, with continuations joined and files attached."""
    out: list[Example] = []
    files: dict[str, str] = {}
    previous: Block | None = None
    for b in blocks(path):
        if "output" in b.options:
            if previous is None or previous.lang != "python" or not out:
                raise ValueError(f"{path}:{b.line}: an output block must follow a python block")
            out[-1].expected += [ln for ln in b.code.split("\n") if ln.strip()]
            previous = b
            continue
        previous = b
        if b.lang not in ("python", "py"):
            continue
        if "file" in b.options:
            name = b.options["file"]
            if not re.fullmatch(r"[\w./-]+\.py", name) or name.startswith(("/", "..")):
                raise ValueError(f"{path}:{b.line}: file={name!r} must be a relative .py path")
            files[name] = b.code
            continue
        if "continue" in b.options:
            if not out:
                raise ValueError(f"{path}:{b.line}: 'continue' with no example before it")
            out[-1].code += "\n" + b.code
            if b.options.get("requires"):
                out[-1].requires = b.options["requires"]
            continue
        out.append(
            Example(
                path,
                b.line,
                b.code,
                b.options.get("requires") or None,
                b.options.get("skip"),
                [],
                dict(files),
            )
        )
    return out


def collect() -> list[Example]:
    return [ex for path in SOURCES for ex in examples(path)]


ALL = collect()


def check_output(stdout: str, expected: list[str]) -> str | None:
    """None if every expected line appears in order; else what is missing."""
    lines = stdout.split("\n")
    at = 0
    for want in expected:
        pattern = re.compile(".*?".join(re.escape(part) for part in want.strip().split("...")))
        while at < len(lines) and not pattern.fullmatch(lines[at].strip()):
            at += 1
        if at == len(lines):
            return f"expected output line not found (in order): {want.strip()!r}"
        at += 1
    return None


@pytest.mark.timeout(max(DEADLINE.values()) + 60)
@pytest.mark.parametrize("example", ALL, ids=[ex.id for ex in ALL])
def test_example(example: Example, tmp_path: Path) -> None:
    """The example runs as a script and exits 0 (and prints its expected output, if given)."""
    if example.skip:
        pytest.skip(f"marked skip in the docs: {example.skip}")
    if example.requires and not _RUN_EXTRAS:
        pytest.skip(
            f"needs the {example.requires!r} extra: runs under POOLY_TEST_EXAMPLES=1 "
            "(`make test-extras`, .venv-bench)"
        )
    for name, code in example.files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(code, encoding="utf-8")
    script = tmp_path / "example.py"
    script.write_text(example.code, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(tmp_path), str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])]
    )
    # Nothing an example does may reach the network: the model loads from its package, Ray
    # stays on 127.0.0.1 and reports no usage.
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", RAY_USAGE_STATS_ENABLED="0")
    env.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    deadline = DEADLINE[example.requires]
    try:
        proc = subprocess.run(
            [sys.executable, str(script)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=deadline,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(
            f"{example.id}: still running after {deadline} s\n--- stdout\n{e.stdout}\n"
            f"--- stderr\n{e.stderr}",
            pytrace=False,
        )
    report = f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    if proc.returncode != 0:
        pytest.fail(f"{example.id}: exited with {proc.returncode}\n{report}", pytrace=False)
    missing = check_output(proc.stdout, example.expected)
    if missing:
        pytest.fail(f"{example.id}: {missing}\n{report}", pytrace=False)


def test_convention_is_parsed(tmp_path: Path) -> None:
    """The directive parser and the collector agree with the convention above: options,
    continuations, files, expected output, and that a directive binds the next block only."""
    text = "\n".join(
        [
            "<!-- pooly-example: file=w.py -->",
            "```python",
            "X = 1",
            "```",
            "",
            "```python",
            "from w import X",
            "```",
            "<!-- pooly-example: continue -->",
            "```python",
            "print(X)",
            "```",
            "<!-- pooly-example: output -->",
            "```text",
            "1",
            "```",
            "<!-- pooly-example: requires=ray -->",
            "",
            "Some prose.",
            "",
            "```python",
            "print(2)",
            "```",
            "<!-- pooly-example: skip: a shell session -->",
            "```python",
            ">>> 1",
            "```",
        ]
    )
    page = tmp_path / "page.md"
    page.write_text(text, encoding="utf-8")
    found = examples(page)
    assert [ex.line for ex in found] == [6, 21, 25]
    first, second, third = found
    assert first.code == "from w import X\n\nprint(X)\n"
    assert first.files == {"w.py": "X = 1\n"}
    assert first.expected == ["1"]
    assert second.requires is None  # the directive was separated from it by prose
    assert third.skip == "a shell session"
    assert check_output("a\n12\n3\n", ["1...", "3"]) is None
    assert check_output("3\n1\n", ["1", "3"]) is not None


def test_every_page_is_collected() -> None:
    """Each docs page and the README is read, and the README's examples are among them."""
    assert ROOT / "README.md" in SOURCES
    assert any(ex.path.name == "README.md" for ex in ALL)
