"""The design the code cites is in the repository: no file cites sections of documents that live outside the
clone (the old ``SPEC``/``STYLE`` codes), and every pointer into ``docs/`` or ``experiments/`` Markdown that code,
configs and tests write (``docs/design/llm2clip.md#stage-2-the-adapter``) names an existing file and heading."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.helpers.markdown_links import anchors

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("src", "conf", "tests", "experiments", "benchmarks", "notebooks", "docs")
SUFFIXES = {".py", ".yaml", ".yml", ".md", ".ipynb", ".toml", ".txt", ".sh"}
# the link checker's own tests write pointers to crafted files
CRAFTED = {"tests/unit/test_markdown_links.py", "tests/unit/test_design_citations.py"}


# "SPEC §C.7", "SPEC B.1", "SPEC Part A", "STYLE §4.5", and the files those codes referred to (assembled from
# pieces so that this file does not match itself)
_DOC = r"\b(?:SP" + r"EC|STY" + r"LE)"
OUTSIDE_CITATION = re.compile(
    _DOC + r"\s*(?:§|Part\s+[A-D]\b|[A-D]\.\d)|docs/SP" + r"EC\.md|STY" + r"LE\.md|llm2clip/stage2\.md"
)
# a pointer into the repository's Markdown: docs/<...>.md or experiments/<...>.md, optionally with #anchor
POINTER = re.compile(r"\b((?:docs|experiments)/[\w./-]*?\w\.md)(?:#([\w-]*\w))?")


def _files() -> list[Path]:
    out = [p for p in ROOT.glob("*.md")]
    for top in SCANNED:
        out += [p for p in (ROOT / top).rglob("*") if p.is_file() and p.suffix in SUFFIXES]
    return sorted(p for p in out if "__pycache__" not in p.parts)


def outside_citations(text: str) -> list[str]:
    """The citations of outside documents in ``text``."""
    return [m.group(0) for m in OUTSIDE_CITATION.finditer(text)]


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("Conventions (SP" + "EC §C.7):", ["SP" + "EC §"]),
        ("tokenization happens here (STY" + "LE §4.7).", ["STY" + "LE §"]),
        ("(SP" + "EC B.1)", ["SP" + "EC B.1"]),
        ("SP" + "EC Part C has the recipe", ["SP" + "EC Part C"]),
        ("Spec: `../shared/docs/SP" + "EC.md` Part A", ["docs/SP" + "EC.md"]),
        ("the encoder (docs/design/llm2clip.md#stage-1a-mntp); SPEC_KEYS = (...)", []),
        ("Higham, *Accuracy and Stability*, §3.1", []),
    ],
)
def test_the_pattern_finds_outside_citations_only(text, found):
    assert outside_citations(text) == found


def test_no_file_cites_documents_outside_the_repository():
    me = Path(__file__).resolve()
    hits = {}
    for path in _files():
        if path.resolve() == me:
            continue
        found = outside_citations(path.read_text(encoding="utf-8", errors="replace"))
        if found:
            hits[path.relative_to(ROOT).as_posix()] = found
    assert not hits, f"cite the paper section, the official file or docs/design/*.md instead: {hits}"


def test_every_pointer_into_the_repositorys_markdown_resolves():
    pointers = 0
    broken = []
    for path in _files():
        if path.relative_to(ROOT).as_posix() in CRAFTED:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in POINTER.finditer(text):
            target, anchor = ROOT / m.group(1), m.group(2)
            if "<" in m.group(1) or not (
                path.suffix != ".md" or "`" in text[max(0, m.start() - 1) : m.start()]
            ):
                continue  # Markdown links are the link test's; here: code, configs, and code spans in Markdown
            pointers += 1
            where = f"{path.relative_to(ROOT)}: {m.group(0)}"
            if not target.is_file():
                broken.append(f"{where} (no such file)")
            elif anchor and anchor not in anchors(target):
                broken.append(f"{where} (no such heading)")
    assert pointers > 20  # the scan sees the code's design-note pointers
    assert not broken, "\n".join(broken)
