"""Building natively implemented captioner models from released weights without a random initialisation.

A 7B model initialised at random in float32 before its weights are copied in costs minutes and twice its memory;
:func:`empty_init` builds modules with uninitialised storage in the target dtype instead, and :func:`load_strict`
copies a state dict in and fails loudly on any tensor the file does not provide.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

log = logging.getLogger("clipforge.models")

__all__ = ["empty_init", "load_strict"]


@contextlib.contextmanager
def empty_init(dtype: torch.dtype):
    """Modules built inside get parameters of ``dtype`` with uninitialised values (torch's and transformers'
    weight initialisation are skipped); buffers computed in ``__init__`` (rotary frequencies, position ids) are
    real. Every parameter must then be loaded."""
    from transformers.initialization import no_init_weights

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights():
            yield
    finally:
        torch.set_default_dtype(previous)


def load_strict(
    module: nn.Module,
    state: Mapping[str, Tensor],
    what: str,
    optional_unexpected: Iterable[str] = (),
) -> None:
    """Copy ``state`` into ``module``: every parameter and persistent buffer must be in it.

    Args:
        module: the model (built with :func:`empty_init`).
        state: tensors keyed like ``module.state_dict()``.
        what: name of the source, for error messages.
        optional_unexpected: substrings of source keys that may be left over silently (e.g. ``position_ids``
            buffers older transformers versions saved); other leftovers are logged.

    Raises:
        KeyError: tensors of the module that ``state`` does not provide.
        RuntimeError: a tensor of the wrong shape.
    """
    result = module.load_state_dict(dict(state), strict=False)
    if result.missing_keys:
        shown = ", ".join(result.missing_keys[:8])
        raise KeyError(f"{what}: {len(result.missing_keys)} tensors missing ({shown}, ...)")
    extra = [k for k in result.unexpected_keys if not any(s in k for s in optional_unexpected)]
    if extra:
        log.warning("%s: %d tensors not used (%s, ...)", what, len(extra), ", ".join(extra[:5]))
