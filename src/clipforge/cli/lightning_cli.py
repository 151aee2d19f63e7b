"""``clipforge cli``: LightningCLI over the same classes as the Hydra entry points.

Its YAML is generated, never hand-written: every Hydra run leaves ``run.cli.yaml`` in its output dir, and
``clipforge export-cli <overrides> -o run.cli.yaml`` writes one from any composition. Then::

    clipforge cli fit --config run.cli.yaml --trainer.max_epochs 2
    clipforge cli fit --config run.cli.yaml --print_config

Its checkpoints hold plain-data hyper-parameters (:class:`~clipforge.callbacks.checkpoint.PlainHyperparameters`),
so ``--ckpt_path`` loads them with ``weights_only=True`` (Lightning's default here).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning.pytorch.cli import LightningCLI

__all__ = ["build_cli", "main"]


def build_cli(args: Sequence[str] | None = None, run: bool = True) -> LightningCLI:
    """Build (and by default run) the CLI; ``run=False`` only instantiates, for tests and notebooks.

    Args:
        args: the command line after the program name (default: ``sys.argv[1:]``).
        run: run the subcommand (``fit``, ``validate``, ...) after instantiating.

    Returns:
        The LightningCLI, its ``trainer``, ``model`` and ``datamodule`` built.
    """
    # imported here: `clipforge cli --help` of the dispatcher must not load Lightning
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    from clipforge.callbacks.checkpoint import PlainHyperparameters
    from clipforge.utils import quiet

    quiet.install(transformers=True)
    return LightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"callbacks": [PlainHyperparameters()]},
        args=list(args) if args is not None else None,
        run=run,
        auto_configure_optimizers=False,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry: run the LightningCLI command line; exit status 0 when it finishes (errors raise or exit)."""
    build_cli(argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
