"""ImageNet class names and prompt templates for zero-shot classification, with no dependency but the standard library.

The lists are open_clip's (``open_clip/zero_shot_metadata.py``): ``IMAGENET_CLASSNAMES``,
``OPENAI_IMAGENET_TEMPLATES`` (the 80 prompts of OpenAI's prompt-engineering notebook, also what LLM2CLIP's
``imagenet_zeroshot_data.py`` lists) and ``SIMPLE_IMAGENET_TEMPLATES`` (its 7-prompt subset). That file is read on
its own, without running ``open_clip/__init__.py``, which builds the whole model zoo (timm, transformers: ~3.5 s
after torch). This module sits in the bottom layer so that every layer can name classes — the zero-shot
evaluation (:mod:`clipforge.eval.zero_shot`), a captioner that prompts with labels, a projector initialised from
class names — without importing the layer that evaluates.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Literal

__all__ = ["Template", "imagenet_classnames", "imagenet_templates", "render_template"]

Template = Callable[[str], str] | str
"""A prompt template: a callable ``classname -> prompt`` or a format string with ``{}`` or ``{c}``."""


@lru_cache(maxsize=1)
def _open_clip_metadata() -> ModuleType:
    """``open_clip.zero_shot_metadata`` without running ``open_clip/__init__.py``.

    The metadata file is plain tuples of strings and lambdas. If open_clip is already imported, its module is
    reused.

    Raises:
        ModuleNotFoundError: open_clip (``open_clip_torch``) is not installed.
    """
    loaded = sys.modules.get("open_clip.zero_shot_metadata")
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec("open_clip")  # locates the package without executing it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "open_clip (open_clip_torch) is required for the ImageNet zero-shot metadata"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "zero_shot_metadata.py"
    file_spec = importlib.util.spec_from_file_location("_clipforge_open_clip_zero_shot_metadata", path)
    if file_spec is None or file_spec.loader is None:
        raise ModuleNotFoundError(f"cannot load {path}")
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
    return module


def imagenet_classnames() -> list[str]:
    """The 1000 ImageNet-1k class names in label order (open_clip's ``IMAGENET_CLASSNAMES``).

    Returns:
        A new list of 1000 strings.
    """
    return list(_open_clip_metadata().IMAGENET_CLASSNAMES)


def imagenet_templates(kind: Literal["openai", "simple"] = "openai") -> list[Callable[[str], str]]:
    """ImageNet prompt templates as callables ``classname -> prompt``.

    Args:
        kind: ``"openai"`` — the 80 templates of OpenAI's prompt-engineering notebook
            (``OPENAI_IMAGENET_TEMPLATES``, used by CLIP, open_clip and LLM2CLIP); ``"simple"`` — the 7-template
            subset (``SIMPLE_IMAGENET_TEMPLATES``).

    Returns:
        A new list of callables.

    Raises:
        ValueError: for an unknown ``kind``.
    """
    meta = _open_clip_metadata()
    if kind == "openai":
        return list(meta.OPENAI_IMAGENET_TEMPLATES)
    if kind == "simple":
        return list(meta.SIMPLE_IMAGENET_TEMPLATES)
    raise ValueError(f"kind must be 'openai' or 'simple', got {kind!r}")


def render_template(template: Template, classname: str) -> str:
    """The prompt of ``template`` for ``classname`` (a callable is called; a string accepts ``{}`` and ``{c}``)."""
    if isinstance(template, str):
        return template.format(classname, c=classname)
    return template(classname)
