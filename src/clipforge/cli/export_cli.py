"""``clipforge export-cli``: write the LightningCLI YAML of a Hydra composition, so one config tree serves both.

clipforge export-cli experiment=clip_demo trainer.max_epochs=2 -o run.cli.yaml [--config-name train]

Mapping (the Hydra tree in ``conf/`` is the only hand-written config; the LightningCLI YAML is generated from it,
README "Sweeps, Lightning CLI, notebooks"): ``{_target_: X, a: 1}`` -> ``{class_path: X, init_args: {a: 1}}``
(``_partial_`` dropped: jsonargparse decides instance vs builder from the parameter's type hint);
``trainer._target_`` dropped; ``callbacks`` / ``logger`` dicts -> ``trainer.callbacks`` / ``trainer.logger`` lists;
``seed`` -> ``seed_everything``; ``ckpt_path`` kept for ``fit``; every other top-level key (hydra, paths, tags,
task_name, experiment, ablation...) is Hydra-only and dropped. Every run also writes its own ``run.cli.yaml``
(:func:`~clipforge.cli.task.write_run_files`).
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from clipforge.utils.hydra import compose

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="clipforge export-cli", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for clipforge train")
    parser.add_argument("-o", "--output", default="run.cli.yaml", help="where to write the YAML")
    parser.add_argument("--config-name", default="train", help="primary config (train, eval, generate)")
    parser.add_argument("--output-dir", default=None, help="value of paths.output_dir (default: next to -o)")
    a = parser.parse_args(argv)
    out_dir = a.output_dir or os.path.dirname(os.path.abspath(a.output))
    cfg = compose(a.overrides, a.config_name, output_dir=out_dir)
    with open(a.output, "w") as f:
        yaml.safe_dump(to_lightning_cli(cfg), f, sort_keys=False)
    print(a.output)


if __name__ == "__main__":
    main()
