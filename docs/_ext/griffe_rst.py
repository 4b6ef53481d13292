"""A griffe extension for the API reference: pooly's docstrings, written for ``help()`` and
Sphinx-style roles, rendered as Markdown by mkdocstrings.

It rewrites each docstring's text before mkdocstrings renders it (the source is untouched):

* references to the developers' SPEC, "(SPEC 4.5)", are left out;
* roles -- :class:`~pooly.Lease`, :meth:`Pool.checkout`, :mod:`pooly.events`, ... -- become
  links to the object's entry in the reference when it has one, else code spans;
* a paragraph ending in ``::`` and the indented block after it become a fenced code block;
* an attribute documented by ``#:`` comments gets them as its docstring;
* a reST simple table (``=== ===`` rules) becomes a Markdown table.

Loaded by mkdocs.yml (``extensions: [docs/_ext/griffe_rst.py]``); only the docs build uses it.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

# Objects with an entry of their own in docs/reference/*.md: a role naming one becomes a link.
_PUBLIC_MODULES = ("pooly.events", "pooly.observe", "pooly.prometheus")
_SPEC = re.compile(r" ?\(SPEC [\d.]+\)")
_ROLE = re.compile(r":(?:py:)?(class|meth|func|mod|attr|data|exc|obj):`(~?)([^`]+)`")


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring of the ``pooly`` package as it is loaded."""

    def __init__(self) -> None:
        super().__init__()
        self.linkable: set[str] = set()

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != "pooly":
            return
        exported = pkg.exports or ()
        for name in exported:
            self.linkable.add(f"pooly.{name}")
        for mod in _PUBLIC_MODULES:
            self.linkable.add(mod)
            try:
                sub = pkg[mod.split(".", 1)[1]]
            except (KeyError, griffe.AliasResolutionError):
                continue
            for name in sub.exports or ():
                self.linkable.add(f"{mod}.{name}")
        for obj in _walk(pkg):
            if obj.docstring is None and obj.is_attribute:
                _comment_docstring(obj)
            if obj.docstring is not None:
                obj.docstring.value = self.convert(obj.docstring.value, obj)

    def convert(self, text: str, obj: Any) -> str:
        text = _SPEC.sub("", text)  # (the developers' contract, not in these docs)
        text = _ROLE.sub(lambda m: self._role(m, obj), text)
        text = _tables(text)
        return _literal_blocks(text)

    def _role(self, m: re.Match[str], obj: Any) -> str:
        short, target = m.group(2) == "~", m.group(3).strip()
        shown = target.rsplit(".", 1)[-1] if short else target
        if m.group(1) in ("meth", "func"):
            shown += "()"
        path = self._resolve(target, obj)
        return f"[`{shown}`][{path}]" if path else f"`{shown}`"

    def _resolve(self, target: str, obj: Any) -> str | None:
        if target in self.linkable:
            return target
        for prefix in ("pooly.", *(f"{m}." for m in _PUBLIC_MODULES)):
            if prefix + target in self.linkable:
                return prefix + target
        # Cls.method or pooly.Cls.method of a class with an entry: its member's anchor.
        head, _, member = target.rpartition(".")
        if head and not member.startswith("_"):
            cls = self._resolve(head, obj)
            if cls and cls.count(".") == 1 and cls not in _PUBLIC_MODULES:
                return f"{cls}.{member}"
        return None


def _comment_docstring(obj: Any) -> None:
    """An attribute documented Sphinx's way, by ``#:`` comments above it: their text."""
    try:
        lines = obj.lines_collection[obj.filepath]
    except (KeyError, TypeError):
        return
    found: list[str] = []
    i = obj.lineno - 2  # (lineno counts from 1)
    while i >= 0 and lines[i].lstrip().startswith("#:"):
        found.insert(0, lines[i].lstrip()[2:].strip())
        i -= 1
    if found:
        obj.docstring = griffe.Docstring(" ".join(found), parent=obj)


def _walk(obj: Any) -> Any:
    yield obj
    for member in obj.members.values():
        if member.is_alias:
            continue
        yield from _walk(member)


def _literal_blocks(text: str) -> str:
    """``para::`` + blank + indented block -> ``para:`` + fenced block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and not line.lstrip().startswith(("|", "=")):
            base = len(line) - len(line.lstrip())
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            k = j
            while k < len(lines) and (
                not lines[k].strip() or len(lines[k]) - len(lines[k].lstrip()) > base
            ):
                k += 1
            while k > j and not lines[k - 1].strip():
                k -= 1
            if k > j:
                head = line.rstrip()[:-2].rstrip()
                if head.strip():
                    out.append(head + ":")
                    out.append("")
                block = textwrap.dedent("\n".join(lines[j:k]))
                lang = "python" if _looks_like_python(block) else "text"
                indent = " " * base
                out.append(f"{indent}```{lang}")
                out.extend(indent + b if b else "" for b in block.split("\n"))
                out.append(f"{indent}```")
                i = k
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _looks_like_python(block: str) -> bool:
    return bool(re.search(r"^\s*(import |from |with |for |def |class |\w+ = )", block, re.M))


_RULE = re.compile(r"^ *=+( +=+)+ *$")


def _next_rule(lines: list[str], start: int) -> int:
    end = start
    while end < len(lines) and not _RULE.match(lines[end]):
        end += 1
    return end


def _rows(lines: list[str], spans: list[tuple[int, int]]) -> list[list[str]]:
    """A simple table's rows, cut at its columns; a blank first cell continues a row."""
    rows: list[list[str]] = []
    for row in lines:
        if not row.strip():
            continue
        cells = []
        for n, (a, _) in enumerate(spans):
            stop = spans[n + 1][0] if n + 1 < len(spans) else len(row)
            cells.append(row[a:stop].strip())
        if rows and not cells[0]:
            rows[-1] = [f"{p} {c}".strip() for p, c in zip(rows[-1], cells, strict=True)]
        else:
            rows.append(cells)
    return rows


def _tables(text: str) -> str:
    """reST simple tables (a rule, rows, a rule) -> Markdown tables. A row whose first
    column is blank continues the row above it."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        if not _RULE.match(lines[i]):
            out.append(lines[i])
            i += 1
            continue
        rule = lines[i]
        spans = [(m.start(), m.end()) for m in re.finditer(r"=+", rule)]
        end = _next_rule(lines, i + 1)
        header: list[str] = [" " for _ in spans]
        after = _next_rule(lines, end + 1)
        if after < len(lines) and all(ln.strip() for ln in lines[end + 1 : after]):
            # rule, header, rule, body, rule: the first block is the header row
            (header,) = _rows(lines[i + 1 : end], spans) or [header]
            body = _rows(lines[end + 1 : after], spans)
            end = after
        else:
            body = _rows(lines[i + 1 : end], spans)
        indent = rule[: len(rule) - len(rule.lstrip())]
        out.append("")
        out.append(indent + "| " + " | ".join(header) + " |")
        out.append(indent + "| " + " | ".join("---" for _ in spans) + " |")
        out.extend(
            indent + "| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in body
        )
        out.append("")
        i = end + 1
    return "\n".join(out)
