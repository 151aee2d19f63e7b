"""The console scripts as a shell runs them: exit status, what they print, what they import before a job runs."""

from __future__ import annotations

import yaml

from clipforge.utils.cli_export import to_lightning_cli
from clipforge.utils.hydra import compose
from tests.helpers.scripts import run_script

TINY = ["experiment=demo_clip", "debug=tiny_clip"]


def test_lightning_cli_fit_exits_0_and_prints_no_object(tmp_path):
    cfg = compose(TINY, output_dir=str(tmp_path / "run"))
    path = tmp_path / "run.cli.yaml"
    path.write_text(yaml.safe_dump(to_lightning_cli(cfg)))
    r = run_script("clipforge-cli", "fit", "--config", str(path), tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "LightningCLI object" not in r.stdout + r.stderr
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()  # it trained
