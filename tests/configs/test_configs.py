"""Every primary x experiment x ablation composes, every `_target_` binds to its signature, and the
Hydra config and its generated LightningCLI YAML build the same objects."""

from __future__ import annotations

import importlib
import inspect

import pytest
import yaml
from omegaconf import OmegaConf

from clipforge.cli.export_cli import convert_node, to_lightning_cli
from clipforge.cli.validate import check_values, validate_config
from clipforge.utils.hydra import compose
from tests.helpers.configs import combinations, compose_cases, tiny_overrides

EXTRA = {"eval": ["ckpt_path={tmp}/none.ckpt"]}  # an existing (empty) file: eval validates ckpt_path


def _targets(node, path="cfg"):
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for k, v in node.items():
            yield from _targets(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _targets(v, f"{path}[{i}]")


def _locate(target: str):
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("primary,experiment,stage,ablation", compose_cases())
def test_compose_and_bind(primary, experiment, stage, ablation, tmp_path):
    (tmp_path / "none.ckpt").write_bytes(b"")
    extra = [x.format(tmp=tmp_path) for x in EXTRA.get(primary, [])]
    cfg = compose(
        [f"experiment={experiment}", f"ablation/{stage}={ablation}", *extra],
        primary,
        output_dir=str(tmp_path),
    )
    job = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
    check_values(
        job, missing_ok=True
    )  # no false positives of the entry points' validation (values left to fill aside)
    found = 0
    for _path, node in _targets(job):
        target = _locate(node["_target_"])
        args = {k: v for k, v in node.items() if not k.startswith("_")}
        sig = inspect.signature(target)
        # partials are completed later (optimizer params, scheduler optimizer): bind what is given
        (sig.bind_partial if node.get("_partial_") else sig.bind)(**args)
        found += 1
    assert found >= 3  # trainer, data, model at least


def test_released_aitqe_scoring_overrides_of_the_docs_compose(tmp_path):
    """The enhance docs' command for the released AITQE (local SigLIP, bf16) and the CPU speed options are keys
    of the scoring module's config, and reach its constructor."""
    from hydra.utils import instantiate

    cfg = compose(
        [
            "experiment=enhance_score_demo",
            "model.model_path=/models/AITQE",
            "model.vision_model_name_or_path=/models/siglip-so400m-patch14-384",
            "model.dtype=bfloat16",
            "model.vision_chunk_size=2",
            "model.attn_implementation=sdpa",
        ],
        "generate",
        output_dir=str(tmp_path),
    )
    module = instantiate(cfg.model)  # loads nothing until configure_model
    assert (module.hparams.dtype, module.hparams.vision_chunk_size) == ("bfloat16", 2)
    assert module.hparams.vision_model_name_or_path == "/models/siglip-so400m-patch14-384"
    assert module.hparams.chunk_size == 16 and module.hparams.attn_implementation == "sdpa"


def test_defaults_order_experiment_beats_primary(tmp_path):
    cfg = compose(["experiment=clip_demo"], output_dir=str(tmp_path))
    assert cfg.model.embed_dim == 256  # clip_demo's, not model/clip.yaml's 512
    assert cfg.model.vision._target_.endswith("TimmVision")
    cfg = compose(["experiment=clip_demo", "model.embed_dim=64"], output_dir=str(tmp_path))
    assert cfg.model.embed_dim == 64  # command line beats the experiment
    cfg = compose(["experiment=clip_demo", "debug=tiny_clip"], output_dir=str(tmp_path))
    assert cfg.model.vision.model_name == "vit_tiny_patch16_224"  # debug overlay beats the experiment


def test_exporter_mapping_golden():
    node = {
        "_target_": "torch.optim.AdamW",
        "_partial_": True,
        "lr": 0.1,
        "sub": {"_target_": "x.Y", "a": [1, {"_target_": "x.Z"}]},
        "plain": {"k": 1},
    }
    assert convert_node(node) == {
        "class_path": "torch.optim.AdamW",
        "init_args": {
            "lr": 0.1,
            "sub": {"class_path": "x.Y", "init_args": {"a": [1, {"class_path": "x.Z"}]}},
            "plain": {"k": 1},
        },
    }


def _normalise(value):
    """hparams from Hydra (partials, dicts) vs jsonargparse (dataclasses, builder functions): compare by shape."""
    import dataclasses
    import functools

    if isinstance(value, functools.partial):
        return {
            "builder": f"{value.func.__module__}.{value.func.__qualname__}",
            **{k: _normalise(v) for k, v in value.keywords.items()},
        }
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _normalise(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, list | tuple):
        return [_normalise(v) for v in value]
    if hasattr(value, "__dict__") and not callable(value):
        return {
            "class": type(value).__name__,
            **{k: _normalise(v) for k, v in vars(value).items() if not k.startswith("_") and not callable(v)},
        }
    if callable(value):
        return "callable"
    return value


@pytest.mark.parametrize("experiment,stage,ablation", combinations())
def test_hydra_cli_round_trip(experiment, stage, ablation, tmp_path):
    from hydra.utils import instantiate

    from clipforge.cli.lightning_cli import build_cli as cli_main

    cfg = compose([*tiny_overrides(experiment), f"ablation/{stage}={ablation}"], output_dir=str(tmp_path))
    validate_config(cfg, "train")  # what clipforge-train checks first: the tiny overlays pass as they are
    h_model = instantiate(cfg.model, _convert_="all")
    h_data = instantiate(cfg.data, _convert_="all")
    path = tmp_path / "run.cli.yaml"
    path.write_text(yaml.safe_dump(to_lightning_cli(cfg)))
    cli = cli_main(["--config", str(path)], run=False)
    assert type(cli.model) is type(h_model)
    assert type(cli.datamodule) is type(h_data)
    # the built components (LightningCLI's hparams hold the class_path dicts it parsed, Hydra's the objects)
    for attr in ("vision_spec", "text_spec", "trainable", "vision_head_spec", "text_head_spec"):
        if hasattr(h_model, attr):
            assert _normalise(getattr(cli.model, attr)) == _normalise(getattr(h_model, attr)), attr
    for key in ("embed_dim", "cache_frozen_features"):
        if key in h_model.hparams:
            assert _normalise(cli.model.hparams[key]) == _normalise(h_model.hparams[key]), key
    if hasattr(h_model, "loss"):
        assert type(cli.model.loss) is type(h_model.loss)
        assert cli.model.loss.state_dict().keys() == h_model.loss.state_dict().keys()
    if hasattr(h_model, "optimizer_builder"):  # both builders give the same optimizer with the same defaults
        import torch

        params = [torch.nn.Parameter(torch.zeros(2, 2))]
        o1, o2 = h_model.optimizer_builder(params), cli.model.optimizer_builder(params)
        assert type(o1) is type(o2) and o1.defaults == o2.defaults
    assert _normalise(cli.datamodule.hparams) == _normalise(h_data.hparams)
    assert cli.trainer.max_epochs == cfg.trainer.max_epochs


def _sweeps() -> list[str]:
    from tests.helpers.configs import CONF

    return sorted(
        str(p.relative_to(CONF / "sweep").with_suffix("")) for p in (CONF / "sweep").rglob("*.yaml")
    )


@pytest.mark.parametrize("sweep", _sweeps())
def test_every_sweep_row_composes(sweep, tmp_path):
    """Each job of each sweep (Hydra's own parsing of its parameters; seeds aside) is a valid override of the
    sweep's experiment (named in its header): it validates and its datamodule accepts its caption policy."""
    from hydra.utils import instantiate

    from tests.helpers.configs import CONF, sweep_rows

    path = CONF / "sweep" / f"{sweep}.yaml"
    experiment = path.read_text().split("experiment=")[1].split()[0]
    rows = {tuple(o for o in row if not o.startswith("seed=")) for row in sweep_rows(path)}
    assert rows
    for row in sorted(rows):
        cfg = compose([*tiny_overrides(experiment), *row], output_dir=str(tmp_path))
        validate_config(cfg, "train")
        instantiate(cfg.data, _convert_="all")
