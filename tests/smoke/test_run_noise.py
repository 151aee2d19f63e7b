"""What a run prints: none of the known noise, the metrics table once, the generation bar in rows."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import lightning as L
import pytest
import torch

from clipforge.callbacks.param_report import ParamReport
from clipforge.utils.hydra import compose
from tests.helpers.scripts import run_script, script_env

TINY = ["experiment=clip_demo", "debug=tiny_clip"]
NOISE = (
    "LeafSpec",  # Lightning's use of torch's deprecated pytree class
    "module(s) in eval mode",  # Lightning's warning about the frozen towers
    "is an instance of `nn.Module`",  # the loss module saved as a hyper-parameter
    "litlogger",
    "litmodels",
    "Total FLOPs",
    "FLOPs",
    "Loading weights",
    "Trainer already configured with model summary callbacks",
)


@pytest.fixture(scope="module")
def tiny_fit(tmp_path_factory):
    """``clipforge train`` of the tiny CLIP overlay as a shell runs it: (stdout + stderr, run folder)."""
    tmp = tmp_path_factory.mktemp("noise")
    r = run_script("clipforge", "train", *TINY, f"hydra.run.dir={tmp / 'run'}", tmp_path=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout + r.stderr, tmp / "run"


@pytest.mark.parametrize("noise", NOISE)
def test_a_tiny_fit_prints_none_of_the_known_noise(tiny_fit, noise):
    assert noise not in tiny_fit[0]


def test_the_metrics_table_is_printed_once(tiny_fit):
    out, run = tiny_fit
    metrics = json.loads((run / "metrics.json").read_text())
    assert "val/retrieval/synthetic/i2t_R@1" in metrics
    # only the final table; Lightning's own is off
    assert len(re.findall(r"val/retrieval/synthetic/i2t_R@1\b", out)) == 1
    assert "Validate metric" not in out and "final metrics" in out


def test_each_lightning_line_is_printed_once(tiny_fit):
    out, _ = tiny_fit
    assert out.count("`Trainer.fit` stopped: `max_epochs=1` reached.") == 1
    assert out.count("Seed set to 0") == 1


def test_the_model_summary_keeps_the_layer_table_and_totals(tiny_fit):
    out, _ = tiny_fit
    for name in ("vision_tower", "text_tower", "vision_head", "text_head"):
        assert name in out
    assert "Params: 1.0 K trainable, 1.6 M frozen, 1.6 M total" in out
    assert "Modules: 5 in train mode, 74 in eval mode" in out


def test_weight_loading_bars_are_off_and_download_bars_untouched(tiny_bert_dir, tmp_path):
    """The same from_pretrained in two fresh processes: the bar shows without :func:`quiet.install`, not with it."""
    code = (
        "import sys\n"
        "if sys.argv[2] == 'quiet':\n"
        "    from clipforge.utils import quiet; quiet.install(transformers=True)\n"
        "from transformers import AutoModel\n"
        "AutoModel.from_pretrained(sys.argv[1])\n"
    )
    outputs = {}
    for mode in ("plain", "quiet"):
        r = subprocess.run(
            [sys.executable, "-c", code, tiny_bert_dir, mode],
            capture_output=True,
            text=True,
            env=script_env(tmp_path),
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-2000:]
        outputs[mode] = r.stdout + r.stderr
    assert "Loading weights" in outputs["plain"]  # the reference: this transformers draws the bar
    assert "Loading weights" not in outputs["quiet"]


def test_the_generation_bar_counts_rows_bad_ones_included(tmp_path):
    """11 rows (9 images, a missing file, an empty file) in batches of 4: the bar's total and position are 11."""
    from PIL import Image

    from clipforge.cli.generate import generate

    rows = []
    for i in range(9):
        Image.new("RGB", (24, 24), (25 * i, 90, 160)).save(tmp_path / f"{i}.png")
        rows.append({"image": f"{i}.png", "caption": f"picture {i}"})
    (tmp_path / "empty.png").write_bytes(b"")
    rows += [{"image": "missing.png", "caption": "gone"}, {"image": "empty.png", "caption": "zero bytes"}]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    cfg = compose(
        [
            *TINY,
            f"data.predict.path={tmp_path / 'rows.json'}",
            f"data.predict.image_root={tmp_path}",
            "data.batch_size=4",
            "callbacks.shard_writer.format=pt",
            "callbacks.shard_writer.merge_path=null",
        ],
        "generate",
        output_dir=str(tmp_path / "run"),
    )
    _, objects = generate(cfg)
    bar = objects["trainer"].progress_bar_callback.predict_progress_bar
    assert (bar.total, bar.n) == (11, 11)
    assert bar.unit == "row"
    assert "errors=2" in str(bar)


class _FrozenTowerModule(L.LightningModule):
    """A frozen tower kept in eval mode (as clipforge's modules do) and, with ``mistake``, a trainable one too."""

    def __init__(self, mistake: bool) -> None:
        super().__init__()
        self.mistake = mistake
        self.tower = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1)).requires_grad_(False)
        self.head = torch.nn.Linear(2, 1)

    def train(self, mode: bool = True):
        super().train(mode)
        self.tower.eval()
        if self.mistake:
            self.head.eval()
        return self

    def training_step(self, batch, batch_idx):
        return self.head(self.tower(batch[0])).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.head.parameters(), lr=0.1)


@pytest.mark.parametrize("mistake", [False, True])
def test_only_modules_that_train_in_eval_mode_are_reported(mistake, tmp_path, caplog):
    report = ParamReport()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=2)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[report],
    )
    module = _FrozenTowerModule(mistake).train()  # the modes the module trains in
    trainer.fit(module, data)
    assert report.trainable_in_eval == (["head"] if mistake else [])
    warned = [r.getMessage() for r in caplog.records if "hold trainable parameters" in r.getMessage()]
    assert warned == (
        [
            "1 module(s) in eval mode hold trainable parameters (dropout / batch norm act as in evaluation): head"
        ]
        if mistake
        else []
    )


def test_zero_shot_of_the_embedded_photos_is_named_for_them_whatever_the_training_data(tmp_path):
    """``clip_demo`` trained on the user's data still classifies the embedded photos: the key says so."""
    from clipforge.cli.train import train

    cfg = compose([*TINY, "trainer.max_epochs=1", "evaluate=false"], output_dir=str(tmp_path))
    zero_shot = compose(["experiment=clip_demo"], output_dir=str(tmp_path)).callbacks.zero_shot
    assert zero_shot.data.path == "demo" and cfg.data.train.path == "synthetic"  # not the training data
    cfg.callbacks.zero_shot = zero_shot
    metrics, _ = train(cfg)
    keys = sorted(k for k in metrics if k.startswith("val/zeroshot/"))
    assert keys == ["val/zeroshot/embedded_photos/top1", "val/zeroshot/embedded_photos/top5"]
