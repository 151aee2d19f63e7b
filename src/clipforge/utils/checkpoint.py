"""Checkpoints as plain data, loaded with ``torch.load(weights_only=True)`` unless the user trusts the file.

Unpickling can run code: a crafted ``.ckpt`` given as ``ckpt_path`` would run its payload under
``weights_only=False``. So clipforge writes checkpoints that hold only plain data (tensors, numbers, strings,
lists, dicts) and loads every checkpoint with ``weights_only=True``; a file that needs more (pickled objects,
(e.g. one written by an earlier clipforge, whose hyper-parameters held the tower specs and optimizer builders as
pickled objects) is refused with one line naming it. The opt-in for files you trust is explicit:
``trust_checkpoint=true`` in the job config, or ``CLIPFORGE_TRUST_CHECKPOINT=1`` in the environment (notebooks:
``trust=True``).

Hyper-parameters are stored as plain config: the entry points store the job's resolved ``model`` / ``data``
configs (``hydra.utils.instantiate(checkpoint["hyper_parameters"])`` rebuilds the module), and
:func:`plain_data` describes any other object Hydra-style (``_target_`` plus its constructor arguments).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
import pickle
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from clipforge.utils.moved import upgrade_targets

__all__ = [
    "TRUST_ENV",
    "UntrustedCheckpointError",
    "load_checkpoint",
    "plain_data",
    "plain_hyperparameters",
    "refusal_detail",
    "refuse_untrusted",
    "trusts_checkpoints",
]

TRUST_ENV = "CLIPFORGE_TRUST_CHECKPOINT"
"""Environment variable that, set to ``1``/``true``/``yes``, loads checkpoints with ``weights_only=False``."""

HPARAM_KEYS = ("hyper_parameters", "datamodule_hyper_parameters")
_HPARAM_TYPES = ("hparams_type", "datamodule_hparams_type")
_PLAIN_SCALARS = (type(None), bool, int, float, str, bytes)


class UntrustedCheckpointError(RuntimeError):
    """A checkpoint that needs unrestricted unpickling, refused without the opt-in; the message is one line."""


def trusts_checkpoints(trust: bool | None = None) -> bool:
    """``trust`` (a job's ``trust_checkpoint``) or the :data:`TRUST_ENV` environment variable."""
    if trust:
        return True
    return os.environ.get(TRUST_ENV, "").strip().lower() in ("1", "true", "yes")


def refusal_detail(error: BaseException) -> str:
    """What the ``weights_only`` unpickler refused, in a few words (``Unsupported global: GLOBAL os.system``)."""
    found = re.search(
        r"WeightsUnpickler error: (.*?)(?: was not an allowed global|\. Please|\n|$)", str(error)
    )
    return found.group(1).strip() if found else "objects outside plain data"


def _untrusted(path: object, error: BaseException) -> UntrustedCheckpointError:
    what = refusal_detail(error)
    return UntrustedCheckpointError(
        f"{path}: the checkpoint holds pickled Python objects ({what}), and unpickling them can run code, so "
        f"clipforge loads checkpoints with weights_only=True; only for a file you trust, set trust_checkpoint=true "
        f"(or {TRUST_ENV}=1)"
    )


@contextlib.contextmanager
def refuse_untrusted(path: object) -> Iterator[None]:
    """Turn the ``weights_only`` unpickler's refusal (e.g. inside ``trainer.fit(ckpt_path=...)``) into an
    :class:`UntrustedCheckpointError` naming ``path``; any other error passes through."""
    try:
        yield
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            raise
        raise _untrusted(path, e) from None


def load_checkpoint(path: str, trust: bool | None = None, map_location: Any = "cpu") -> dict:
    """``torch.load`` a checkpoint, with ``weights_only=True`` unless :func:`trusts_checkpoints` says otherwise.

    The hyper-parameters' class paths are the current ones (:func:`~clipforge.utils.moved.upgrade_targets`), so
    ``hydra.utils.instantiate(state["hyper_parameters"])`` rebuilds a module saved before its class moved.

    Raises:
        UntrustedCheckpointError: the file needs unrestricted unpickling and is not trusted.
    """
    with refuse_untrusted(path):
        state = torch.load(path, map_location=map_location, weights_only=not trusts_checkpoints(trust))
    for key in HPARAM_KEYS:  # hyper-parameters written before a class moved name its old path
        if isinstance(state, dict) and isinstance(state.get(key), Mapping):
            state[key] = upgrade_targets(state[key])
    return state


def _path(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}".lstrip(
        "."
    )


def plain_data(obj: Any, _seen: frozenset[int] = frozenset()) -> Any:
    """A copy of ``obj`` made of plain data only (what ``torch.load(weights_only=True)`` reads back).

    Plain values (numbers, strings, bytes, tensors) and containers are kept (sets become lists); an OmegaConf
    config becomes its resolved container; a class or function becomes its dotted path; a ``functools.partial``
    becomes ``{"_target_", "_partial_": true, ...keywords}``; a dataclass ``{"_target_", ...fields}``; any other
    object ``{"_target_", ...}`` with the constructor arguments it keeps as same-named attributes (how the
    clipforge specs and losses store them), so ``hydra.utils.instantiate`` can rebuild it.
    """
    if isinstance(obj, _PLAIN_SCALARS) or isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, torch.dtype | torch.device):
        return str(obj)
    if id(obj) in _seen:
        return repr(obj)
    seen = _seen | {id(obj)}
    try:
        from omegaconf import Container, OmegaConf

        if isinstance(obj, Container):
            return plain_data(OmegaConf.to_container(obj, resolve=True), seen)
    except ImportError:  # pragma: no cover - omegaconf ships with hydra
        pass
    if isinstance(obj, Mapping):
        return {(k if isinstance(k, _PLAIN_SCALARS) else str(k)): plain_data(v, seen) for k, v in obj.items()}
    if isinstance(obj, tuple) and not hasattr(obj, "_fields"):
        return tuple(plain_data(v, seen) for v in obj)
    if isinstance(obj, list | tuple | set | frozenset):
        return [plain_data(v, seen) for v in obj]
    if isinstance(obj, type) or inspect.isroutine(obj):
        return _path(obj)
    if isinstance(obj, functools.partial):
        out = {"_target_": _path(obj.func), "_partial_": True}
        if obj.args:
            out["_args_"] = plain_data(list(obj.args), seen)
        return {**out, **plain_data(dict(obj.keywords), seen)}
    if dataclasses.is_dataclass(obj):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.init}
        return {"_target_": _path(type(obj)), **plain_data(fields, seen)}
    try:
        params = inspect.signature(type(obj)).parameters
    except (TypeError, ValueError):
        params = {}
    kept = {
        name: getattr(obj, name)
        for name, p in params.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and hasattr(obj, name)
    }
    return {"_target_": _path(type(obj)), **plain_data(kept, seen)}


def plain_hyperparameters(
    checkpoint: dict, model: Mapping | None = None, datamodule: Mapping | None = None
) -> dict:
    """Replace a checkpoint's hyper-parameters (module's and datamodule's) by plain data, in place.

    Args:
        checkpoint: the dict Lightning is about to save.
        model: the module's plain config (a job's resolved ``model`` config); ``None`` = :func:`plain_data` of
            what the module saved.
        datamodule: the same for the datamodule (a job's ``data`` config).

    Returns:
        ``checkpoint``.
    """
    for key, given in zip(HPARAM_KEYS, (model, datamodule), strict=True):
        if key in checkpoint:
            checkpoint[key] = plain_data(given if given is not None else checkpoint[key])
    for key in _HPARAM_TYPES:  # the OmegaConf class Lightning records for config hparams: a pickled global
        checkpoint.pop(key, None)
    return checkpoint
