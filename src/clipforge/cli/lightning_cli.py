"""``clipforge-cli``: LightningCLI over the same classes as the Hydra entry points.

Its YAML is generated, never hand-written: every Hydra run leaves ``run.cli.yaml`` in its output dir, and
``clipforge-export-cli <overrides> -o run.cli.yaml`` writes one from any composition. Then::

    clipforge-cli fit --config run.cli.yaml --trainer.max_epochs 2
    clipforge-cli fit --config run.cli.yaml --print_config

Its checkpoints hold plain-data hyper-parameters (:class:`~clipforge.callbacks.checkpoint.PlainHyperparameters`),
so ``--ckpt_path`` loads them with ``weights_only=True`` (Lightning's default here).
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningCLI

from clipforge.callbacks.checkpoint import PlainHyperparameters


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the CLI; ``run=False`` only instantiates, for tests and notebooks."""
    return LightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [PlainHyperparameters()]},
        args=args,
        run=run,
        auto_configure_optimizers=False,
    )


if __name__ == "__main__":
    main()
