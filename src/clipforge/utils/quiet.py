"""The known noise of every run, silenced one message at a time.

Each entry names the exact message, its category and the module that emits it, so nothing else is hidden:

- warnings (:data:`KNOWN_WARNINGS`): Lightning's own use of torch's deprecated ``LeafSpec``; "Found N module(s) in
  eval mode" (clipforge's frozen towers run in eval mode on purpose; :class:`~clipforge.callbacks.param_report.
  ParamReport` warns instead when a module in eval mode holds *trainable* parameters); "Attribute 'loss' is an
  instance of `nn.Module`" (the loss module is a hyper-parameter on purpose: LightningCLI rebuilds it from it, and
  checkpoints store it as plain config, :class:`~clipforge.callbacks.checkpoint.PlainHyperparameters`);
- log lines (:data:`KNOWN_LOG_LINES`): Lightning's advertising tips (litlogger, litmodels) and its note that the
  model summary is configured (:class:`~clipforge.callbacks.summary.ModelSummary`);
- duplicated lines: the ``lightning`` package adds its own console handler at import, so under Hydra (whose root
  handlers print every record already) each Lightning line came twice; that handler is dropped while the root
  logger has handlers;
- the ``Loading weights`` / ``Loading checkpoint shards`` bars of transformers' ``from_pretrained`` (one per model
  load; download bars stay).

:func:`install` is idempotent and imports nothing heavy; the entry points call it before a job runs and again
once Lightning and transformers are imported.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
import warnings
from collections.abc import Callable

__all__ = ["KNOWN_LOG_LINES", "KNOWN_WARNINGS", "install"]

KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        FutureWarning,
        r"lightning\.pytorch\.utilities\._pytree",
    ),
    (
        r"Found \d+ module\(s\) in eval mode at the start of training",
        UserWarning,
        r"lightning\.pytorch\.loops\.fit_loop",
    ),
    (
        r"Attribute 'loss' is an instance of `nn\.Module` and is already saved during checkpointing",
        UserWarning,
        r"lightning\.pytorch\.utilities\.parsing",
    ),
)
"""``(message regex, category, emitting module regex)`` of the warnings :func:`install` ignores."""

KNOWN_LOG_LINES: dict[str, tuple[str, ...]] = {
    "lightning.pytorch.utilities.rank_zero": (
        r"💡 Tip: For seamless cloud (logging and experiment tracking|uploads and versioning), try installing "
        r"\[lit(logger|models)\]",
        r"Trainer already configured with model summary callbacks: \[<class 'clipforge\.",
    ),
}
"""Logger name -> regexes (matched at the start of the message) of the records :func:`install` drops."""

WEIGHT_LOADING_BARS = ("Loading weights", "Loading checkpoint shards")
"""Descriptions of transformers' model-loading progress bars."""


class _DropKnownLines(logging.Filter):
    """Drops the records whose message matches one of ``patterns`` (from its start)."""

    def __init__(self, patterns: tuple[str, ...]) -> None:
        super().__init__()
        self.patterns = [re.compile(p) for p in patterns]

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(p.match(message) for p in self.patterns)


def _weight_loading_bars_off(factory: Callable, args: tuple, kwargs: dict):
    """transformers' tqdm hook: the bars of :data:`WEIGHT_LOADING_BARS` are created disabled."""
    if kwargs.get("desc") in WEIGHT_LOADING_BARS:
        kwargs = {**kwargs, "disable": True}
    return factory(*args, **kwargs)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    set_hook = getattr(hf_logging, "set_tqdm_hook", None)  # transformers >= 5
    if set_hook is not None:
        set_hook(_weight_loading_bars_off)


def _single_lightning_console() -> None:
    if not logging.getLogger().handlers:
        return  # no Hydra logging: Lightning's console handler is the only one
    console = getattr(sys.modules["lightning"], "_console", None)  # added by lightning/__init__.py
    if console is not None:
        logging.getLogger("lightning").removeHandler(console)


def install(transformers: bool = False) -> None:
    """Silence the known noise (module docstring); safe to call again, imports nothing unless asked.

    Args:
        transformers: also import ``transformers.utils.logging`` (when installed) to turn its model-loading bars
            off before a model is loaded; without it they are turned off only if transformers is imported already.
    """
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name, patterns in KNOWN_LOG_LINES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropKnownLines) for f in logger.filters):
            logger.addFilter(_DropKnownLines(patterns))
    if "lightning" in sys.modules:
        _single_lightning_console()
    if "transformers" in sys.modules or (transformers and importlib.util.find_spec("transformers")):
        _quiet_transformers()
