"""Every row of every conf/sweep/llm2clip/*.yaml composes with llm2clip_s2_demo and changes what it says it changes."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from clipforge.tasks.llm2clip.clip import LLM2CLIPModule
from clipforge.utils.hydra import compose
from tests.helpers.configs import CONF, sweep_rows

SWEEPS = sorted((CONF / "sweep" / "llm2clip").glob("*.yaml"))


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.stem)
def test_sweep_rows_compose(sweep, tmp_path):
    rows = sweep_rows(sweep)
    assert rows and all(r[-1].startswith("seed=") for r in rows)
    for row in rows:
        cfg = compose(["experiment=llm2clip_s2_demo", *row], output_dir=str(tmp_path))
        model = instantiate(cfg.model, _convert_="all")  # no stray keys from one encoder class in another
        assert isinstance(model, LLM2CLIPModule)


def test_text_encoder_rows_swap_the_text_tower_and_drop_the_cache(tmp_path):
    base = compose(["experiment=llm2clip_s2_demo"], output_dir=str(tmp_path))
    assert base.model.get("text_source", "cache") == "cache"
    assert base.data.train.text_embeddings.endswith("shards")
    raw = compose(["experiment=llm2clip_s2_demo", "ablation/llm2clip=text_raw_llm"], output_dir=str(tmp_path))
    assert (
        raw.model.text.name_or_path == "pypi:smollm2-135m-instruct" and raw.model.text.bidirectional is False
    )
    minilm = compose(
        ["experiment=llm2clip_s2_demo", "ablation/llm2clip=text_minilm"], output_dir=str(tmp_path)
    )
    assert minilm.model.text._target_ == "clipforge.models.text.HFText"
    for cfg in (raw, minilm):
        assert cfg.model.text_source == "online" and cfg.data.train.text_embeddings is None
        assert cfg.model.memoize_text is True


def test_sweep_file_sets_multirun(tmp_path):
    cfg = compose(["experiment=llm2clip_s2_demo", "+sweep=llm2clip/text_encoders"], output_dir=str(tmp_path))
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert cfg.hydra.sweeper.params["ablation/llm2clip"] == "none,text_raw_llm,text_minilm"


def test_number_sweeps_cover_the_papers_values(tmp_path):
    """The dense-caption ratio (v1 Table 5: 0..100 %) and the adapter depth (0, 1, 2, 4 blocks) are sweeps over one
    key; each row sets the key to its value, and the datamodule / adapter get it."""
    dense, depth = set(), set()
    for row in sweep_rows(CONF / "sweep" / "llm2clip" / "dense_ratio.yaml"):
        cfg = compose(["experiment=llm2clip_s2_demo", *row], output_dir=str(tmp_path))
        weights = instantiate(cfg.data, _convert_="all").caption_policy.source_weights
        assert weights["raw"] + weights["dense"] == 1.0 and cfg.data.caption_policy.sampling == "random_one"
        dense.add(weights["dense"])
    assert dense == {0.0, 0.25, 0.5, 0.75, 1.0}
    for row in sweep_rows(CONF / "sweep" / "llm2clip" / "adapter_depth.yaml"):
        cfg = compose(["experiment=llm2clip_s2_demo", *row], output_dir=str(tmp_path))
        spec = instantiate(cfg.model, _convert_="all").adapter_spec
        assert spec.kind == "textproj"
        depth.add(spec.num_layers)
    assert depth == {0, 1, 2, 4}
