"""``clipforge pipeline``: the mission as one resumable command (recap -> enhance -> llm2clip -> train -> eval ->
report) with per-row lineage and a visual report.

clipforge pipeline                                     # the embedded demo photos, real offline models, CPU
clipforge pipeline preset=coco_dev                     # ../shared/data/coco-dev, held out by key hash, 3 seeds
clipforge pipeline pipeline.steps=[recap,train,eval,report] pipeline.arms=[raw,recap]
clipforge pipeline data.train.path=<coco.json> data.train.image_root=<images/>

Rerunning the same command continues where a killed run stopped; see clipforge.pipeline.run.
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from clipforge.utils.hydra import CONF_DIR, job_config

log = logging.getLogger("clipforge.pipeline")


def pipeline(cfg: DictConfig) -> dict:
    """Run the pipeline of a composed config; a failing step ends the process with one line naming it."""
    from clipforge.pipeline.jobs import JobFailed
    from clipforge.pipeline.run import run_pipeline

    resolved = job_config(cfg)  # before any job's composition replaces Hydra's global state
    try:
        return run_pipeline(resolved)
    except (JobFailed, ValueError) as e:
        log.error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1 if isinstance(e, JobFailed) else 2)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="pipeline")
def main(cfg: DictConfig) -> None:
    pipeline(cfg)


if __name__ == "__main__":
    main()
