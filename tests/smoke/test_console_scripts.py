"""The console scripts as a shell runs them: exit status, what they print, what they import before a job runs."""

from __future__ import annotations

import re

import pytest
import yaml

from clipforge.cli import main as dispatcher
from clipforge.cli.aitqe import build_parser as aitqe_parser
from clipforge.cli.export_cli import to_lightning_cli
from clipforge.utils.hydra import compose
from tests.helpers.scripts import console_scripts, run_script

TINY = ["experiment=clip_demo", "debug=tiny_clip"]
HEAVY = re.compile(r"heavy modules: \[(.*)\]")


def _heavy(stdout: str) -> list[str]:
    """The heavy modules the probe (``probe_heavy=True``) saw imported at exit."""
    [found] = HEAVY.findall(stdout)
    return re.findall(r"'([\w.]+)'", found)


# -- one command ---------------------------------------------------------------------------------------------------
def test_pyproject_declares_clipforge_and_the_former_scripts_as_its_aliases():
    scripts = console_scripts()
    assert scripts.pop("clipforge") == "clipforge.cli.main:main"
    assert scripts == {name: f"clipforge.cli.main:{name.replace('-', '_')}" for name in dispatcher.ALIASES}
    assert set(dispatcher.ALIASES) == {
        "clipforge-train",
        "clipforge-eval",
        "clipforge-generate",
        "clipforge-pipeline",
        "clipforge-data",
        "clipforge-aitqe",
        "clipforge-cli",
        "clipforge-export-cli",
    }


def test_clipforge_help_lists_every_command_and_imports_nothing_heavy(tmp_path):
    r = run_script("clipforge", "--help", tmp_path=tmp_path, probe_heavy=True)
    assert r.returncode == 0, r.stderr
    listed = re.findall(r"^  ([\w-]+)  +\S", r.stdout, flags=re.M)
    assert listed == list(dispatcher.COMMANDS)
    expected = {
        "train",
        "eval",
        "generate",
        "pipeline",
        "data",
        "convert",
        "cra",
        "aitqe",
        "cli",
        "export-cli",
    }
    assert expected <= set(listed) and {"longtext", "classnames", "eval-pairs"} <= set(listed)
    assert _heavy(r.stdout) == []


@pytest.mark.parametrize(
    ("command", "first_line"),
    [
        ("train", "clipforge train is powered by Hydra."),
        ("eval", "clipforge eval is powered by Hydra."),
        ("cra", "usage: clipforge cra [-h] --encoder ENCODER --data DATA"),
        ("data", "usage: clipforge data [-h] {inspect,split-coco,sidecars} ..."),
        ("convert", "usage: clipforge convert [-h] {llm2clip,cc-llm} ..."),
    ],
)
def test_command_help_is_the_commands_own(command, first_line, tmp_path):
    r = run_script("clipforge", command, "--help", tmp_path=tmp_path, probe_heavy=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == first_line
    if command in ("train", "eval"):  # Hydra's own help: its config groups and the composed config
        assert "== Configuration groups ==" in r.stdout and "experiment: " in r.stdout
    assert _heavy(r.stdout) == []


def test_unknown_command_names_the_closest_one(tmp_path):
    r = run_script("clipforge", "trian", tmp_path=tmp_path)
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        "error: unknown command 'trian'; did you mean `clipforge train`? (`clipforge --help` lists them)"
    ]


def test_a_former_script_runs_its_command_and_says_so(tmp_path):
    r = run_script("clipforge-eval", "cra", "--help", tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage: clipforge cra ")
    assert r.stderr.splitlines() == [
        "note: `clipforge-eval cra` is now `clipforge cra`; the old name goes in the next release"
    ]


# -- the seed's AITQE command --------------------------------------------------------------------------------------
def test_aitqe_keeps_the_seed_flags_exactly():
    """``inference.py --model_path M --gpu_id 0 --image_path I --caption C [--output_all]``, as the seed parses it."""
    parser = aitqe_parser()
    seed = [
        "--model_path",
        "m",
        "--gpu_id",
        "1",
        "--image_path",
        "i.jpg",
        "--caption",
        "a dog",
        "--output_all",
    ]
    args = vars(parser.parse_args(seed))
    assert {k: args[k] for k in ("model_path", "gpu_id", "image_path", "caption", "output_all")} == {
        "model_path": "m",
        "gpu_id": 1,
        "image_path": "i.jpg",
        "caption": "a dog",
        "output_all": True,
    }
    defaults = vars(parser.parse_args(["--model_path", "m", "--image_path", "i", "--caption", "c"]))
    assert defaults["gpu_id"] == 0 and defaults["output_all"] is False
    for missing in ("--model_path", "--image_path", "--caption"):  # required, as in the seed
        argv = [a for flag, value in zip(seed[::2], seed[1::2]) if flag != missing for a in (flag, value)]
        with pytest.raises(SystemExit):
            parser.parse_args(argv)


def test_aitqe_help_is_the_same_under_both_names(tmp_path):
    new = run_script("clipforge", "aitqe", "--help", tmp_path=tmp_path)
    old = run_script("clipforge-aitqe", "--help", tmp_path=tmp_path)
    assert new.returncode == old.returncode == 0
    assert new.stdout == old.stdout
    for flag in ("--model_path", "--image_path", "--caption", "--output_all", "--gpu_id"):
        assert flag in new.stdout
    assert old.stderr.splitlines() == [
        "note: `clipforge-aitqe` is now `clipforge aitqe`; the old name goes in the next release"
    ]


# -- fast answers: nothing heavy before the job runs ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "status", "stderr"),
    [
        (["--cfg", "job"], 0, None),
        (["trainer.max_epochs=="], 1, "Error parsing override 'trainer.max_epochs=='"),
        (["no_such_key=1"], 1, "Could not override 'no_such_key'."),
        (["experiment=no_such_experiment"], 1, "Could not find 'experiment/no_such_experiment'"),
        (
            ["data.train.path=/no/such/file.json"],
            2,
            "error: data.train.path: no such file: /no/such/file.json",
        ),
    ],
    ids=["cfg-job", "bad-override", "unknown-key", "missing-config", "missing-file"],
)
def test_config_answers_come_before_lightning_and_the_model_libraries(args, status, stderr, tmp_path):
    r = run_script("clipforge", "train", *TINY, *args, tmp_path=tmp_path, probe_heavy=True)
    assert r.returncode == status, r.stderr[-3000:]
    if stderr is not None:
        assert stderr in r.stderr
    else:  # the composed job config
        assert "_target_: lightning.pytorch.Trainer" in r.stdout
    assert _heavy(r.stdout) == []
    assert not [p for p in tmp_path.rglob("config.yaml") if p.parent.name != ".hydra"]  # no task run files


# -- clipforge cli -------------------------------------------------------------------------------------------------
def test_lightning_cli_fit_exits_0_and_prints_no_object(tmp_path):
    cfg = compose(TINY, output_dir=str(tmp_path / "run"))
    path = tmp_path / "run.cli.yaml"
    path.write_text(yaml.safe_dump(to_lightning_cli(cfg)))
    r = run_script("clipforge-cli", "fit", "--config", str(path), tmp_path=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "LightningCLI object" not in r.stdout + r.stderr
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()  # it trained
