"""The documented tiny chains: a tiny overlay given a saved model folder runs from that folder (the overlay's random
spec is what it builds when no folder is given), exactly as the stage READMEs write the command."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

from clipforge.cli.validate import validate_config
from clipforge.utils.hydra import compose
from tests.helpers.tiny_enhance import save_tiny_aitqe

ROOT = Path(__file__).resolve().parents[2]

DOCUMENTED = {
    "recap": (
        "experiments/recap/README.md",
        "clipforge generate experiment=recap_mini_llava debug=tiny_recap_mini_llava "
        "model.captioners.mini_llava.path=<run>/mini_llava",
        "mini_llava",
    ),
    "enhance": (
        "experiments/enhance/README.md",
        "clipforge generate experiment=enhance_score_demo debug=tiny_enhance_score_demo model.model_path=<run>/aitqe",
        "aitqe",
    ),
}


def _loaded_model(stage: str, module):
    if stage == "recap":
        (captioner,) = module.captioners
        assert captioner.spec is None and captioner.path.endswith("mini_llava")
        return captioner.model
    assert module.spec is None and module.hparams.model_path.endswith("aitqe")
    return module.vlm


@pytest.mark.parametrize("stage", sorted(DOCUMENTED))
def test_tiny_overlay_with_a_saved_folder_runs_from_the_folder(stage, tmp_path):
    from clipforge.cli.generate import generate
    from clipforge.models.vlm import VisionLanguageModel

    doc, command, folder_name = DOCUMENTED[stage]
    assert command in (ROOT / doc).read_text()  # the command form the README gives
    run = tmp_path / "run"
    folder = save_tiny_aitqe(run / folder_name)  # any VisionLanguageModel folder: the AITQE layout
    overrides = shlex.split(command.replace("<run>", str(run)))[2:]  # after "clipforge generate"
    cfg = compose(overrides, "generate", output_dir=str(tmp_path / "out"))
    validate_config(cfg, "generate")
    _, objects = generate(cfg)
    model = _loaded_model(stage, objects["model"])
    saved = VisionLanguageModel.from_pretrained(folder).state_dict()
    state = model.state_dict()
    assert state.keys() == saved.keys()
    assert all(torch.equal(state[k].cpu(), saved[k]) for k in saved)  # the folder's weights, not the spec's
    rows = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == cfg.data.predict.limit


def test_a_folder_or_a_spec_is_required():
    from clipforge.models.captioners.mini_llava import VLMCaptioner
    from clipforge.tasks.enhance.scorer import EnhanceScoreModule

    with pytest.raises(ValueError, match=r"^mini_llava: give path \(a saved VLM folder\) or spec"):
        VLMCaptioner()
    with pytest.raises(
        ValueError, match=r"^EnhanceScoreModule needs model_path \(an AITQE-format folder\) or spec$"
    ):
        EnhanceScoreModule()
