"""PeriodicEval's epoch gate under a real Trainer, and the two evaluation callbacks that share it."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from clipforge.callbacks.zero_shot import ZeroShotEval
from clipforge.eval.longtext import LongTextEval
from clipforge.eval.periodic import PeriodicEval


class _Linear(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.layer(batch[0]).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)


def _recording(base: type[PeriodicEval]) -> type[PeriodicEval]:
    """``base`` with ``evaluate`` replaced by a recorder of the (1-based) epochs it ran at."""

    class Recording(base):
        def __init__(self, every_n_epochs: int) -> None:
            PeriodicEval.__init__(self, "demo", every_n_epochs)
            self.epochs: list[int] = []

        def evaluate(self, pl_module):
            self.epochs.append(pl_module.current_epoch + 1)
            return {"calls": float(len(self.epochs))}

    return Recording


def _fit(callback: PeriodicEval, tmp_path, **trainer) -> L.Trainer:
    t = L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        **trainer,
    )
    t.fit(_Linear(), _loader(), _loader())
    return t


@pytest.mark.parametrize("base", [PeriodicEval, ZeroShotEval, LongTextEval], ids=lambda c: c.__name__)
def test_runs_every_n_epochs_and_at_the_last_never_in_the_sanity_check(base, tmp_path):
    callback = _recording(base)(every_n_epochs=2)
    trainer = _fit(callback, tmp_path, max_epochs=5, num_sanity_val_steps=2)
    assert callback.epochs == [2, 4, 5]
    prefix = {PeriodicEval: "val/eval", ZeroShotEval: "val/zeroshot", LongTextEval: "val/longtext"}[base]
    assert trainer.callback_metrics[f"{prefix}/demo/calls"] == 3.0
    assert callback.last == {"calls": 3.0}


def test_only_validating_epochs_that_are_due_run_it(tmp_path):
    """Validation after epochs 2, 4, 6; of those only 6 is a multiple of 3 (and the last)."""
    callback = _recording(PeriodicEval)(every_n_epochs=3)
    _fit(callback, tmp_path, max_epochs=6, check_val_every_n_epoch=2, num_sanity_val_steps=0)
    assert callback.epochs == [6]


def test_a_run_bounded_by_steps_gates_by_the_period_and_its_last_epoch(tmp_path):
    """``max_epochs=-1`` (Lightning's "no epoch limit") is not "every epoch is the last"."""
    callback = _recording(PeriodicEval)(every_n_epochs=2)
    # 2 steps an epoch: 5 epochs
    _fit(callback, tmp_path, max_epochs=-1, max_steps=10, num_sanity_val_steps=0)
    assert callback.epochs == [2, 4, 5]


def test_a_period_below_one_is_refused():
    with pytest.raises(ValueError, match="every_n_epochs=0 must be a positive integer"):
        ZeroShotEval({"path": "demo"}, every_n_epochs=0)
