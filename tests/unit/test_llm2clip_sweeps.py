"""Every row of every conf/sweep/llm2clip/*.yaml composes with llm2clip_demo and changes what it says it changes."""

from __future__ import annotations

import itertools

import pytest
import yaml
from hydra.utils import instantiate

from clipforge.tasks.llm2clip.clip import LLM2CLIPModule
from clipforge.utils.hydra import compose
from tests.helpers.configs import CONF

SWEEPS = sorted((CONF / "sweep" / "llm2clip").glob("*.yaml"))


def _rows(path) -> list[list[str]]:
    params = yaml.safe_load(path.read_text())["hydra"]["sweeper"]["params"]
    axes = [[f"{k}={v}" for v in str(values).split(",")] for k, values in params.items()]
    return [list(row) for row in itertools.product(*axes)]


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.stem)
def test_sweep_rows_compose(sweep, tmp_path):
    rows = _rows(sweep)
    assert rows and all(r[0].startswith("ablation/llm2clip=") for r in rows)
    for row in rows:
        cfg = compose(["experiment=llm2clip_demo", *row], output_dir=str(tmp_path))
        model = instantiate(cfg.model, _convert_="all")  # no stray keys from one encoder class in another
        assert isinstance(model, LLM2CLIPModule)


def test_text_encoder_rows_swap_the_text_tower_and_drop_the_cache(tmp_path):
    base = compose(["experiment=llm2clip_demo"], output_dir=str(tmp_path))
    assert base.model.get("text_source", "cache") == "cache"
    assert base.data.train.text_embeddings.endswith("shards")
    raw = compose(["experiment=llm2clip_demo", "ablation/llm2clip=text_raw_llm"], output_dir=str(tmp_path))
    assert (
        raw.model.text.name_or_path == "pypi:smollm2-135m-instruct" and raw.model.text.bidirectional is False
    )
    minilm = compose(["experiment=llm2clip_demo", "ablation/llm2clip=text_minilm"], output_dir=str(tmp_path))
    assert minilm.model.text._target_ == "clipforge.models.text.HFText"
    for cfg in (raw, minilm):
        assert cfg.model.text_source == "online" and cfg.data.train.text_embeddings is None
        assert cfg.model.memoize_text is True


def test_sweep_file_sets_multirun(tmp_path):
    cfg = compose(["experiment=llm2clip_demo", "+sweep=llm2clip/text_encoders"], output_dir=str(tmp_path))
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params["ablation/llm2clip"] == "none,text_raw_llm,text_minilm"
