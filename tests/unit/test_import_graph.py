"""The layers of ``src/clipforge`` import only downwards.

Every ``import`` / ``from ... import`` of every module is read with ``ast`` — at module level, inside functions
(lazy imports), under ``TYPE_CHECKING`` and relative ones alike — and each edge between two top-level packages
must be allowed by :data:`ALLOWED`. Bottom to top:

* ``utils`` — helpers every layer may use; imports no other layer.
* ``data`` — records, readers, datasets, datamodules, shard files; ``losses`` — plain ``nn.Module`` losses.
* ``models`` — towers, LLM encoders, VLMs, captioners (may use ``losses``; never ``data``: the task module hands
  the datamodule the model's tokenizer and transform, so neither side knows the other).
* ``eval`` — metrics and protocols (plain torch); ``callbacks`` — Lightning callbacks; ``tasks`` — the stages'
  LightningModules; ``pipeline`` — the multi-job pipeline; ``cli`` — the entry points.

:data:`EXCEPTIONS` lists the upward edges that are allowed on purpose, with the reason.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "clipforge"

_BELOW_EVAL = {"utils", "data", "losses", "models"}
ALLOWED: dict[str, set[str]] = {
    "utils": set(),
    "data": {"utils"},
    "losses": {"utils"},
    "models": {"utils", "losses"},
    "eval": _BELOW_EVAL,
    "callbacks": _BELOW_EVAL | {"eval"},
    "tasks": _BELOW_EVAL | {"eval", "callbacks"},
    "pipeline": _BELOW_EVAL | {"eval", "callbacks", "tasks"},
    "cli": _BELOW_EVAL | {"eval", "callbacks", "tasks", "pipeline"},
}
"""Top-level package -> the top-level packages it may import (besides itself and the root ``clipforge``)."""

EXCEPTIONS: dict[tuple[str, str], str] = {
    ("clipforge.pipeline.jobs", "clipforge.cli.train"): "a pipeline job runs the train entry task in-process",
    (
        "clipforge.pipeline.jobs",
        "clipforge.cli.generate",
    ): "a pipeline job runs the generate entry task in-process",
    ("clipforge.pipeline.jobs", "clipforge.cli.task"): "the pipeline prints a failed job's error line itself",
}
"""Upward edges allowed on purpose: ``(importing module, imported module) -> why``."""


def module_name(path: Path, root: Path = SRC) -> str:
    """Dotted name of a source file (``.../clipforge/data/__init__.py`` -> ``clipforge.data``)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str, root: Path) -> bool:
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(tree: ast.AST, module: str, is_package: bool, root: Path = SRC) -> Iterator[tuple[str, int]]:
    """``(imported clipforge module, line)`` for every import statement anywhere in ``tree``.

    ``from pkg import name`` counts as an import of ``pkg.name`` when that is a module, else of ``pkg``; relative
    imports are resolved against ``module``.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found = {
                f"{target}.{a.name}" if _is_module(f"{target}.{a.name}", root) else target for a in node.names
            }
            for name in sorted(found):
                yield name, node.lineno


def _top(name: str) -> str | None:
    parts = name.split(".")
    return parts[1] if parts[0] == "clipforge" and len(parts) > 1 else None


def violations(source: str, module: str, is_package: bool = False, root: Path = SRC) -> list[str]:
    """Edges of one module's source that :data:`ALLOWED` and :data:`EXCEPTIONS` forbid, as ``module:line -> x``."""
    own = _top(module)
    out = []
    for target, line in imports(ast.parse(source), module, is_package, root):
        if not target.startswith("clipforge"):
            continue
        layer = _top(target)
        if layer is None or layer == own or layer in ALLOWED.get(own, set()):
            continue
        if (module, target) in EXCEPTIONS:
            continue
        out.append(f"{module}:{line} -> {target} ({own} may not import {layer})")
    return out


def source_files() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_layer_imports_only_downwards():
    found = []
    for path in source_files():
        found += violations(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
    assert found == [], "upward imports:\n" + "\n".join(found)


def test_the_checker_rejects_upward_imports_in_any_form(tmp_path):
    """A crafted data module importing the model layer at module level, lazily in a function, relatively and
    under TYPE_CHECKING: each edge is reported with its line; the same imports from ``tasks`` pass."""
    (tmp_path / "clipforge" / "models").mkdir(parents=True)
    (tmp_path / "clipforge" / "models" / "vision.py").write_text("")
    source = "\n".join(
        [
            "from typing import TYPE_CHECKING",
            "import clipforge.models.vision",
            "from ..models import vision",
            "def load():",
            "    from clipforge.models.vision import TimmVision",
            "    return TimmVision",
            "if TYPE_CHECKING:",
            "    from clipforge.callbacks.zero_shot import ZeroShotEval",
            "from clipforge.utils.optim import param_groups",
            "from clipforge.data.records import Record",
        ]
    )
    found = violations(source, "clipforge.data.probe", root=tmp_path)
    assert found == [
        "clipforge.data.probe:2 -> clipforge.models.vision (data may not import models)",
        "clipforge.data.probe:3 -> clipforge.models.vision (data may not import models)",
        "clipforge.data.probe:5 -> clipforge.models.vision (data may not import models)",
        "clipforge.data.probe:8 -> clipforge.callbacks.zero_shot (data may not import callbacks)",
    ]
    assert violations(source, "clipforge.tasks.probe", root=tmp_path) == []
    # models and data are siblings: neither direction is allowed
    assert violations("from clipforge.data.records import Record", "clipforge.models.probe") == [
        "clipforge.models.probe:1 -> clipforge.data.records (models may not import data)"
    ]


def test_relative_imports_resolve_against_the_package():
    tree = ast.parse("from . import shear\nfrom .records import Record\nfrom .. import utils")
    got = list(imports(tree, "clipforge.data", is_package=True))
    assert got == [("clipforge.data.shear", 1), ("clipforge.data.records", 2), ("clipforge.utils", 3)]
    got = list(imports(ast.parse("from . import shear"), "clipforge.data.dataset", is_package=False))
    assert got == [("clipforge.data.shear", 1)]


def test_every_declared_exception_is_still_an_import():
    """An exception whose import is gone must be removed from the list (it would silently allow a new one)."""
    edges = set()
    for path in source_files():
        name = module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        edges |= {(name, target) for target, _ in imports(tree, name, path.name == "__init__.py")}
    assert set(EXCEPTIONS) <= edges, sorted(set(EXCEPTIONS) - edges)


def test_every_top_level_package_has_a_place_and_the_layers_have_no_cycle():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(ALLOWED)
    assert all(deps <= set(ALLOWED) and name not in deps for name, deps in ALLOWED.items())
    done: set[str] = set()
    while len(done) < len(ALLOWED):  # peel off layers whose imports are all placed: stalls on a cycle
        ready = {name for name, deps in ALLOWED.items() if name not in done and deps <= done}
        assert ready, f"cycle among {sorted(set(ALLOWED) - done)}"
        done |= ready


def test_the_zero_shot_metadata_needs_only_the_standard_library():
    path = PACKAGE / "utils" / "zero_shot_metadata.py"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots = {target.split(".")[0] for target, _ in imports(tree, module_name(path), False)}
    assert roots <= set(sys.stdlib_module_names) | {"__future__"}, roots
