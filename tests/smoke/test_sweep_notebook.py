"""A Hydra multirun over an ablation axis, loaded with clipforge.utils.runs and plotted by the notebook."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep")
    env = {
        **os.environ,
        "CLIPFORGE_LOG_DIR": str(out / "logs"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONWARNINGS": "ignore",
    }
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipforge.cli.train",
            "-m",
            "experiment=clip_demo",
            "debug=tiny_clip",
            "model/loss=clip,siglip",
            f"hydra.sweep.dir={out / 'multirun'}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out / "multirun"


def test_load_sweep_joins_overrides_and_metrics(sweep_dir):
    from clipforge.utils.runs import load_sweep

    df = load_sweep(str(sweep_dir))
    assert list(df["job"]) == ["0", "1"]
    assert list(df["model/loss"]) == ["clip", "siglip"]
    assert df["val/rsum"].notna().all()
    assert (df["val/retrieval/synthetic/num_images"] > 0).all()


def test_notebook_runs_on_the_sweep(sweep_dir):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "01-cf-sweep-analysis.ipynb", as_version=4)
    os.environ["CLIPFORGE_SWEEP_DIR"] = str(sweep_dir)
    try:
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        ).execute()
    finally:
        del os.environ["CLIPFORGE_SWEEP_DIR"]
    assert (sweep_dir / "sweep_summary.png").stat().st_size > 1000
    shown = "".join(
        o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if c.cell_type == "code"
    )
    assert "sweep_summary.png" in shown
