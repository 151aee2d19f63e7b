"""A checker for the relative links of Markdown files: every link and image must name an existing file, and an
``#anchor`` into a Markdown file must name one of its headings (GitHub's heading ids).

Links to other sites (``https:``, ``mailto:`` ...) are not followed; links inside fenced code blocks and inline code
are not links.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

# folders that are not part of the repository's own documents
SKIP_DIRS = {
    ".git",
    ".venv",
    ".venv-vllm",
    "logs",
    "outputs",
    "artifacts",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
}

_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
# [text](target) and ![alt](target); the text may span lines and hold one level of brackets
_INLINE_LINK = re.compile(
    r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>]*>|[^()\s]*(?:\([^()\s]*\)[^()\s]*)*)(?:\s+[\"'(][^)]*)?\s*\)"
)
# [label]: target
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(<[^>]*>|\S+)", re.M)
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ID = re.compile(r"<a\s+(?:name|id)=[\"']([^\"']+)[\"']", re.I)
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


@dataclass(frozen=True)
class Broken:
    """One link that does not resolve."""

    file: Path
    line: int
    target: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.target} ({self.reason})"


def markdown_files(root: Path) -> list[Path]:
    """The ``*.md`` files under ``root``, outside :data:`SKIP_DIRS` and ``*.egg-info`` folders, sorted."""
    out = []
    for path in root.rglob("*.md"):
        parts = path.relative_to(root).parts[:-1]
        if any(p in SKIP_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        out.append(path)
    return sorted(out)


def _prose(text: str) -> str:
    """``text`` with fenced code blocks and inline code blanked out (line numbers kept)."""
    lines, fenced = [], False
    for line in text.split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
            lines.append("")
        else:
            lines.append("" if fenced else line)
    return _INLINE_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), "\n".join(lines))


def slugify(heading: str) -> str:
    """GitHub's id of a heading: link syntax and markup dropped, lower case, punctuation removed, spaces to ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading counts by its text
    # HTML tags are dropped, but not inside code spans, which show them as text
    parts = re.split(r"(`+[^`]*`+)", text)
    text = "".join(part if part.startswith("`") else re.sub(r"<[^>]+>", "", part) for part in parts)
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The ids a link can point at in a Markdown file: its headings (repeats numbered ``-1``, ``-2``...) and any
    ``<a name=...>`` / ``<a id=...>``."""
    seen: dict[str, int] = {}
    out = set()
    text = path.read_text(encoding="utf-8")
    fenced = False
    for line in text.split("\n"):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING.match(line)
        if m:
            slug = slugify(m.group(2))
            n = seen.get(slug, 0)
            out.add(slug if n == 0 else f"{slug}-{n}")
            seen[slug] = n + 1
    out.update(_HTML_ID.findall(text))
    return out


def links(path: Path) -> Iterator[tuple[int, str]]:
    """``(line, target)`` of every inline link, image and reference definition of a Markdown file."""
    text = _prose(path.read_text(encoding="utf-8"))
    found = []
    for pattern in (_INLINE_LINK, _REFERENCE):
        for m in pattern.finditer(text):
            target = m.group(1).strip()
            if target.startswith("<") and target.endswith(">"):
                target = target[1:-1]
            found.append((m.start(1), text.count("\n", 0, m.start(1)) + 1, target))
    for _, line, target in sorted(found):  # in the order they appear
        yield line, target


def check_file(path: Path, root: Path) -> list[Broken]:
    """The links of ``path`` that do not resolve (relative to the file; ``/...`` relative to ``root``)."""
    broken = []
    for line, target in links(path):
        if not target or _SCHEME.match(target) or target.startswith("//"):
            continue
        file_part, _, anchor = target.partition("#")
        file_part = unquote(file_part.split("?")[0])
        if file_part:
            base = root if file_part.startswith("/") else path.parent
            dest = (base / file_part.lstrip("/")).resolve()
        else:
            dest = path
        if not dest.exists():
            broken.append(Broken(path, line, target, "no such file"))
            continue
        if anchor and dest.suffix.lower() == ".md" and dest.is_file():
            if unquote(anchor).lower() not in {a.lower() for a in anchors(dest)}:
                broken.append(Broken(path, line, target, f"no heading #{anchor} in {dest.name}"))
    return broken


def check_all(files: Iterable[Path], root: Path) -> list[Broken]:
    """:func:`check_file` over ``files``."""
    return [b for f in files for b in check_file(f, root)]
