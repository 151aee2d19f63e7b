"""LoRA on any part of a model through ``peft``, and the merged weights for export.

Adapters are injected in place (``peft.inject_adapter_in_model``): the module keeps its class and its attribute
paths, so a LoRA-adapted LLM inside a larger model is still reached as ``model.model``. Exporting never mutates the
trained module: :func:`merged_state_dict` computes ``W + B A * scale`` per adapted layer and returns the plain
state dict of the same model without adapters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["LoraSpec", "apply_lora", "as_lora_spec", "has_lora", "merged_state_dict"]


@dataclass
class LoraSpec:
    """LoRA hyper-parameters.

    Attributes:
        r: rank of the update.
        alpha: scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapter's input.
        target_modules: ``all-linear`` (every ``nn.Linear`` except a causal LM's output layer) or a list of module
            name suffixes, e.g. ``[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]``.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


def as_lora_spec(spec: LoraSpec | Mapping | None) -> LoraSpec:
    """Normalise a spec given as a dataclass, a mapping or ``None`` (the defaults)."""
    if spec is None:
        return LoraSpec()
    return spec if isinstance(spec, LoraSpec) else LoraSpec(**spec)


def apply_lora(module: nn.Module, spec: LoraSpec) -> nn.Module:
    """Inject LoRA adapters into ``module`` in place; afterwards only the adapters of ``module`` require grad."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = spec.target_modules if isinstance(spec.target_modules, str) else list(spec.target_modules)
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets)
    return inject_adapter_in_model(config, module)


def _lora_layers(module: nn.Module) -> dict[str, Any]:
    """The ``peft`` ``LoraLayer`` modules of ``module`` by name (typed ``Any``: ``LoraLayer`` is a mixin)."""
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in module.named_modules() if isinstance(m, LoraLayer)}


def has_lora(module: nn.Module) -> bool:
    """Whether ``module`` contains LoRA-adapted layers."""
    return bool(_lora_layers(module))


def merged_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict ``module`` would have without adapters, with every active adapter merged into its layer.

    Keys come in the module's own order; an adapted layer ``p`` contributes ``p.weight`` (base weight + delta) and
    ``p.bias`` instead of ``p.base_layer.*`` and ``p.lora_*``. A ``peft.PeftModel`` wrapper is looked through: the
    keys are those of its base model. Tensors are detached; ``module`` is not changed.
    """
    from peft import PeftModel

    if isinstance(module, PeftModel):
        module = module.get_base_model()
    layers = {f"{name}.": layer for name, layer in _lora_layers(module).items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        prefix = next((p for p in layers if key.startswith(p)), None)
        if prefix is None:
            out[key] = value.detach()
            continue
        layer, rest = layers[prefix], key[len(prefix) :]
        if rest == "base_layer.weight":
            weight = layer.get_base_layer().weight.detach()
            if not layer.merged:
                for adapter in layer.active_adapters:
                    if adapter in layer.lora_A:
                        weight = weight + layer.get_delta_weight(adapter).detach().to(weight.dtype)
            out[f"{prefix}weight"] = weight
        elif rest == "base_layer.bias":
            out[f"{prefix}bias"] = value.detach()
    return out
