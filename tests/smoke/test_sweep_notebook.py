"""A Hydra multirun over an ablation axis, loaded with clipforge.utils.runs and plotted by the notebook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "01-cf-sweep-analysis.ipynb"
# appended to the notebook by the tests: the axis it chose, its groups and what the figure shows
PROBE = (
    "print('AXIS=' + repr(key)); print('GROUPS=' + repr(list(summary[key].astype(str))));"
    " print('XLABEL=' + repr(ax.get_xlabel())); print('TICKS=' + repr([t.get_text() for t in ax.get_xticklabels()]))"
)


def run_notebook(sweep_dir: Path) -> dict[str, object]:
    """Execute the notebook on ``sweep_dir`` and return what :data:`PROBE` printed (name -> value)."""
    import ast

    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    os.environ["CLIPFORGE_SWEEP_DIR"] = str(sweep_dir)
    try:
        NotebookClient(
            nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT / "notebooks")}}
        ).execute()
    finally:
        del os.environ["CLIPFORGE_SWEEP_DIR"]
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if c.cell_type == "code")
    probe = dict(
        line.split("=", 1)
        for line in text.splitlines()
        if line.split("=", 1)[0] in {"AXIS", "GROUPS", "XLABEL", "TICKS"}
    )
    return {"text": text, **{k: ast.literal_eval(v) for k, v in probe.items()}}


def fake_sweep(root: Path, jobs: list[list[str]], metric: str = "val/rsum") -> Path:
    """A multirun folder as clipforge-train leaves it (``config.yaml``, ``.hydra/overrides.yaml``, ``metrics.json``
    per job), without training: job ``n`` scores ``10 * n``."""
    for n, overrides in enumerate(jobs):
        job = root / str(n)
        (job / ".hydra").mkdir(parents=True)
        (job / "config.yaml").write_text("seed: 0\n")
        (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        (job / "metrics.json").write_text(json.dumps({metric: 10.0 * n, "val/retrieval/x/i2t_R@1": 1.0}))
    return root


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
    shown = run_notebook(sweep_dir)
    assert (sweep_dir / "sweep_summary.png").stat().st_size > 1000
    assert "sweep_summary.png" in shown["text"]
    # the swept key holds a "/": it is the axis, not the job number
    assert shown["AXIS"] == shown["XLABEL"] == "model/loss"
    assert shown["GROUPS"] == shown["TICKS"] == ["clip", "siglip"]


@pytest.mark.parametrize(
    ("jobs", "axis", "groups"),
    [
        # a group override with "/" swept against seeds: the group is the axis, seeds are the error bars
        (
            [
                ["experiment=llm2clip_s2_demo", f"ablation/llm2clip={a}", f"seed={s}"]
                for a in ("none", "no_adapter")
                for s in (0, 1)
            ],
            "ablation/llm2clip",
            ["no_adapter", "none"],
        ),
        # a plain key swept, a "/" key fixed: the plain key is the axis
        (
            [["model/loss=siglip", f"seed={s}"] for s in (0, 1, 2)],
            "seed",
            ["0", "1", "2"],
        ),
        # nothing swept (one job per override set): one bar per job
        ([["experiment=clip_demo"]], "job", ["0"]),
    ],
)
def test_notebook_plots_the_swept_key(tmp_path, jobs, axis, groups):
    shown = run_notebook(fake_sweep(tmp_path / "multirun", jobs))
    assert shown["AXIS"] == shown["XLABEL"] == axis
    assert shown["GROUPS"] == shown["TICKS"] == groups


def test_swept_keys_are_the_varying_overrides_in_command_line_order(tmp_path):
    import pandas as pd

    from clipforge.utils.runs import load_sweep, swept_keys

    jobs = [
        ["experiment=clip_demo", f"model/loss={loss}", f"+seed={s}"]
        for loss in ("clip", "siglip")
        for s in (0, 1)
    ]
    df = load_sweep(str(fake_sweep(tmp_path / "multirun", jobs)))
    assert df.attrs["override_keys"] == ["experiment", "model/loss", "seed"]
    # metric columns hold "/" too and vary (10 * job) but are not overrides; a fixed override is not swept
    assert swept_keys(df) == ["model/loss", "seed"]
    assert list(df["val/rsum"]) == [0.0, 10.0, 20.0, 30.0]
    with pytest.raises(ValueError, match="load_sweep"):
        swept_keys(pd.DataFrame({"model/loss": ["clip", "siglip"]}))
