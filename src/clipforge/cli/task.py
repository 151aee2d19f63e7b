"""What every Hydra entry point does around its task: config validation, run files, metrics, clean shutdown.

The metrics helpers every layer may use (``flat_metrics``, ``write_metrics``) live in :mod:`clipforge.utils.metrics`
and are re-exported here for the entry points.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Mapping

import yaml
from omegaconf import DictConfig, OmegaConf

from clipforge.cli.export_cli import to_lightning_cli
from clipforge.utils.metrics import flat_metrics, write_metrics

__all__ = [
    "PRINT_ERRORS",
    "flat_metrics",
    "log_hyperparameters",
    "print_metrics",
    "task_wrapper",
    "write_metrics",
    "write_run_files",
]

log = logging.getLogger("clipforge")

PRINT_ERRORS = True
"""Print a task's one-line error on stderr (off while ``clipforge pipeline`` runs the task and reports it itself)."""


def task_wrapper(
    task: Callable[[DictConfig], tuple[dict, dict]],
) -> Callable[[DictConfig], tuple[dict, dict]]:
    """Validate the composed config before the task builds anything (:func:`~clipforge.cli.validate.validate_config`),
    turn config and data-config errors and refusals (an output folder another live job writes, a checkpoint that
    needs unrestricted unpickling) into one clear line (exit code 2) and always close experiment trackers (wandb) so
    the next job of a multirun starts clean."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> tuple[dict, dict]:
        from clipforge.cli.validate import ConfigValueError, validate_config
        from clipforge.data.errors import DataConfigError
        from clipforge.utils import quiet
        from clipforge.utils.locks import FolderLockedError

        try:
            validate_config(cfg, stage=task.__name__)
            quiet.install()
            return task(cfg)
        except Exception as e:
            # the checkpoint module imports torch: a refusal can only come from it once something imported it
            checkpoint = sys.modules.get("clipforge.utils.checkpoint")
            refused = checkpoint is not None and isinstance(e, checkpoint.UntrustedCheckpointError)
            if not (refused or isinstance(e, DataConfigError | ConfigValueError | FolderLockedError)):
                raise
            log.error("%s", e)
            if PRINT_ERRORS:
                print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        finally:
            if "wandb" in sys.modules:
                import wandb

                if wandb.run:
                    wandb.finish()

    return wrapped


def write_run_files(cfg: DictConfig, output_dir: str) -> None:
    """Save the resolved job config (``config.yaml``) and its LightningCLI twin (``run.cli.yaml``)."""
    os.makedirs(output_dir, exist_ok=True)
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.save(job, os.path.join(output_dir, "config.yaml"), resolve=True)
    with open(os.path.join(output_dir, "run.cli.yaml"), "w") as f:
        yaml.safe_dump(to_lightning_cli(job), f, sort_keys=False)


def print_metrics(metrics: Mapping[str, float], title: str, patterns: tuple[str, ...] = ("",)) -> None:
    """Print the metrics whose key contains one of ``patterns`` as a table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        if any(p in k for p in patterns):
            table.add_row(k, f"{v:.2f}" if v is not None else "nan")
    Console().print(table)


def log_hyperparameters(trainer, cfg: DictConfig) -> None:
    """Log the resolved model / data / trainer config to every logger (parameter counts: ``ParamReport``)."""
    resolved = OmegaConf.to_container(
        OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True
    )
    job = {k: resolved[k] for k in ("model", "data", "trainer", "seed") if k in resolved}
    for logger in trainer.loggers:
        logger.log_hyperparams(job)
