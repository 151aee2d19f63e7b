"""Hydra plumbing: config location, resolvers, composition outside ``@hydra.main``, instantiation helpers."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(os.environ.get("CLIPFORGE_ROOT", Path(__file__).resolve().parents[3]))
CONF_DIR = str(PROJECT_ROOT / "conf")


def register_resolvers() -> None:
    """``${run_id:}``: SLURM job id (or ``local``) + 6 random hex digits, so run dirs never collide;
    ``${project_root:}``: the checkout holding ``conf/``. Safe to call more than once."""
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver(
            "run_id",
            lambda: f"{os.environ.get('SLURM_JOB_ID', 'local')}-{uuid.uuid4().hex[:6]}",
            use_cache=True,
        )
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))


def compose(
    overrides: Sequence[str] = (), config_name: str = "train", output_dir: str | None = None
) -> DictConfig:
    """Compose a primary config with the compose API (tests, notebooks, the CLI exporter).

    ``paths.output_dir`` (the only ``${hydra:}`` consumer outside ``hydra/``) is set to ``output_dir`` or a
    temporary-looking default under ``paths.log_dir``; the returned config resolves without ``@hydra.main``.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    OmegaConf.set_struct(cfg, False)
    cfg.paths.output_dir = output_dir or str(Path(cfg.paths.log_dir) / "compose")
    return cfg


def job_config(cfg: DictConfig) -> DictConfig:
    """The resolved job config (everything but the ``hydra`` node)."""
    out = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg.copy()
    OmegaConf.resolve(out)
    return out


def instantiate_dict(node: DictConfig | None, what: str) -> list:
    """Instantiate every ``_target_`` entry of a dict of named components (callbacks, loggers); skip ``null``s."""
    from hydra.utils import instantiate

    objects = []
    for name, conf in (node or {}).items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.debug("instantiating %s %s <%s>", what, name, conf._target_)
            objects.append(instantiate(conf, _convert_="all"))
    return objects
