"""ImageTextDataModule: model wiring, global/per-device batch, loaders with and without workers, caption epochs."""

from __future__ import annotations

import pytest
import torch

from clipforge.data.datamodule import ImageTextDataModule, per_device_batch_size
from clipforge.data.errors import DataConfigError
from clipforge.data.specs import DatasetSpec
from tests.unit.test_data_fixtures import CharTokenizer, FakeTrainer, quiet_trainer


def _dm(num_workers: int = 0, seed: int = 0, **kwargs) -> ImageTextDataModule:
    args = dict(
        train={"path": "synthetic", "limit": 48},
        val={"path": ""},
        holdout_fraction=0.25,
        batch_size=8,
        num_workers=num_workers,
        seed=seed,
        persistent_workers=num_workers > 0,
    )
    return ImageTextDataModule(**{**args, **kwargs})


def test_per_device_batch_size():
    assert per_device_batch_size(8, 1) == 8
    assert per_device_batch_size(8, 2) == 4
    with pytest.raises(ValueError, match="divisible by the world size"):
        per_device_batch_size(8, 3)


def test_setup_takes_tokenizer_and_transforms_from_the_model():
    dm = _dm()
    dm.trainer = FakeTrainer()
    dm.setup("fit")
    assert isinstance(dm.tokenizer, CharTokenizer) and dm.batch_size_per_device == 8
    assert isinstance(dm.hparams.train, DatasetSpec)  # dicts are normalised before save_hyperparameters
    train, val = dm.datasets["train"][0], dm.datasets["val"][0]
    assert len(train) + len(val) == 48 and not {r.key for r in train.records} & {r.key for r in val.records}
    first = dm.datasets["train"]
    dm.setup("fit")  # a second setup reads nothing again
    assert dm.datasets["train"] is first and dm.eval_names() == ["synthetic"] and not dm.has_test


def test_world_size_two_halves_the_batch_and_shards_the_rows():
    seen = []
    for rank in (0, 1):
        dm = _dm(drop_last=False)
        dm.trainer = FakeTrainer(world_size=2, global_rank=rank)
        dm.setup("fit")
        assert dm.batch_size_per_device == 4
        loader = dm.train_dataloader()
        batches = list(loader)
        assert all(len(b["key"]) <= 4 for b in batches)
        seen.append({k for b in batches for k in b["key"]})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == len(dm.datasets["train"][0])


@pytest.mark.parametrize("num_workers", [0, 2])
def test_one_epoch_of_train_and_val(num_workers):
    dm = _dm(num_workers)
    dm.trainer = FakeTrainer()
    dm.setup("fit")
    n_train, val_ds = len(dm.datasets["train"][0]), dm.datasets["val"][0]
    batches = list(dm.train_dataloader())
    assert len(batches) == n_train // 8  # drop_last
    for b in batches:
        assert b["image"].shape == (8, 3, 8, 8) and len(b["caption"]) == 8
        assert b["text"]["input_ids"].shape[0] == 8 and b["errors"] == []
    val = list(dm.val_dataloader())
    assert [k for b in val for k in b["key"]] == [r.key for r in val_ds.records]  # every row, in order
    assert sum(len(b["captions"]) for b in val) == 3 * len(val_ds)
    assert all(b["caption_image_index"].max() == len(b["key"]) - 1 for b in val)


def _captions_by_epoch(dm: ImageTextDataModule, epochs: int) -> list[dict]:
    loader = dm.train_dataloader()
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)  # what Lightning does at the start of every epoch
        out.append({k: c for b in loader for k, c in zip(b["key"], b["caption"])})
    return out


def test_random_one_changes_across_epochs_and_repeats_across_runs():
    runs = []
    for _ in range(2):
        dm = _dm(num_workers=2, caption_policy={"sampling": "random_one"}, seed=5, drop_last=False)
        dm.connect(tokenizer=CharTokenizer())
        dm.setup("fit")
        runs.append(_captions_by_epoch(dm, 2))
    assert runs[0] == runs[1]  # same seed -> identical, with persistent worker processes
    epoch0, epoch1 = runs[0]
    assert epoch0.keys() == epoch1.keys() and epoch0 != epoch1
    other = _dm(caption_policy={"sampling": "random_one"}, seed=6, drop_last=False)
    other.setup("fit")
    assert _captions_by_epoch(other, 1)[0] != epoch0


def test_connect_and_default_transform():
    dm = _dm(val=None, holdout_fraction=0.0)
    dm.connect(tokenizer=None)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 224, 224) and "text" not in batch
    assert dm.val_dataloader() == []


def test_demo_spec_with_holdout_and_predict():
    dm = ImageTextDataModule(
        train={"path": "demo"},
        val={"path": ""},
        predict={"path": "demo", "limit": 3},
        holdout_fraction=0.3,
        batch_size=4,
    )
    dm.connect(tokenizer=CharTokenizer())
    dm.setup("fit")
    n_train, n_val = len(dm.datasets["train"][0]), len(dm.datasets["val"][0])
    assert n_train + n_val >= 18 and n_val >= 3
    dm.setup("predict")
    pred = next(iter(dm.predict_dataloader()))
    assert len(pred["key"]) == 3 and len(pred["captions"]) == 15


def test_empty_split_is_a_clear_error():
    dm = ImageTextDataModule(
        train={"path": "synthetic", "limit": 8},
        val={"path": "synthetic", "limit": 8, "split": "val"},
        batch_size=4,
    )
    with pytest.raises(DataConfigError, match=r"data\.val: no usable rows in synthetic \(split=val"):
        dm.setup("fit")


def test_missing_path_names_the_config_field(tmp_path):
    dm = ImageTextDataModule(train={"path": str(tmp_path / "missing.jsonl")}, batch_size=4)
    with pytest.raises(DataConfigError, match=r"^data\.train\.path: no such file: .*missing\.jsonl$"):
        dm.setup("fit")


def test_lightning_sets_the_epoch(tmp_path):
    """A real Trainer: Lightning's set_epoch reaches the sampler, so captions change between epochs."""
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.tokenizer = CharTokenizer()
            self.captions: list[dict] = []

        def image_transform(self, train: bool):
            from clipforge.data.images import DefaultImageTransform

            return DefaultImageTransform(8)

        def on_train_epoch_start(self):
            self.captions.append({})

        def training_step(self, batch, batch_idx):
            self.captions[-1].update(zip(batch["key"], batch["caption"]))
            return (self.w * batch["image"].mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Recorder()
    trainer = quiet_trainer(tmp_path)
    trainer.fit(model, datamodule=_dm(val=None, holdout_fraction=0.0, drop_last=False))
    assert len(model.captions) == 2 and len(model.captions[0]) == 48
    assert model.captions[0] != model.captions[1]
