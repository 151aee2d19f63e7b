"""Composed Hydra config -> LightningCLI YAML (``class_path`` / ``init_args``), so one config tree serves both.

Mapping (STYLE §4.5): ``{_target_: X, a: 1}`` -> ``{class_path: X, init_args: {a: 1}}`` (``_partial_`` dropped:
jsonargparse decides instance vs builder from the parameter's type hint); ``trainer._target_`` dropped;
``callbacks`` / ``logger`` dicts -> ``trainer.callbacks`` / ``trainer.logger`` lists; ``seed`` ->
``seed_everything``; ``ckpt_path`` kept for ``fit``; every other top-level key (hydra, paths, tags, task_name,
experiment, ablation...) is Hydra-only and dropped.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

_HYDRA_KEYS = {"_target_", "_partial_", "_convert_", "_recursive_", "_args_"}


def convert_node(node: Any) -> Any:
    """Rewrite one resolved node (plain Python containers) from Hydra to jsonargparse form."""
    if isinstance(node, dict):
        if "_target_" in node:
            init_args = {k: convert_node(v) for k, v in node.items() if k not in _HYDRA_KEYS}
            out: dict[str, Any] = {"class_path": node["_target_"]}
            if init_args:
                out["init_args"] = init_args
            return out
        return {k: convert_node(v) for k, v in node.items()}
    if isinstance(node, list):
        return [convert_node(v) for v in node]
    return node


def to_lightning_cli(cfg: DictConfig) -> dict:
    """The LightningCLI ``fit`` config equivalent to a composed (resolvable) Hydra config."""
    c = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    trainer = {k: convert_node(v) for k, v in c["trainer"].items() if k not in _HYDRA_KEYS}
    callbacks = [convert_node(v) for v in (c.get("callbacks") or {}).values() if isinstance(v, dict)]
    loggers = [convert_node(v) for v in (c.get("logger") or {}).values() if isinstance(v, dict)]
    trainer["callbacks"] = callbacks
    trainer["logger"] = loggers if loggers else False
    out = {
        "seed_everything": c.get("seed"),
        "trainer": trainer,
        "model": convert_node(c["model"]),
        "data": convert_node(c["data"]),
    }
    if c.get("ckpt_path"):
        out["ckpt_path"] = c["ckpt_path"]
    return out
