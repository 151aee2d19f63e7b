"""Every command of README.md and experiments/**/*.md that takes a tiny overlay (``debug=...``) or names webdataset
shards by a brace range composes as written, and each of its overrides lands where it says (what ``--cfg job``
prints): the commands are read from the Markdown, shell-split, their ``<placeholders>`` filled in."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from clipforge.utils.hydra import compose

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "experiments").rglob("*.md"))]
COMMAND = re.compile(r"clipforge[- ](train|generate|eval|pipeline)\b(.*)")
BRACE_RANGE = re.compile(r"\{\d+\.\.\d+\}")
CHOICES = ("experiment", "debug", "preset", "data", "model", "trainer", "logger", "callbacks")


def _lines(text: str) -> list[str]:
    """Command lines of the fenced code blocks (continuations joined) and of inline code spans."""
    out, block, pending = [], False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            block, pending = not block, ""
            continue
        if block:
            line = f"{pending} {line.strip()}" if pending else line
            if line.rstrip().endswith("\\"):
                pending = line.rstrip()[:-1]
                continue
            pending = ""
            out.append(line)
        else:
            out.extend(re.findall(r"`([^`]+)`", line))
    return out


def documented() -> list[tuple[str, str, str]]:
    """``(file, primary, argument string)`` of each selected command."""
    found = []
    for path in DOCS:
        for line in _lines(path.read_text()):
            for match in COMMAND.finditer(line):
                args = match.group(2)
                if "debug=" in args or BRACE_RANGE.search(args):
                    found.append((str(path.relative_to(ROOT)), match.group(1), args.strip()))
    return found


COMMANDS = documented()


def test_the_commands_are_found():
    """The extraction finds the tiny chains of every stage and the brace-range forms (it cannot pass empty)."""
    text = " ".join(args for _, _, args in COMMANDS)
    for needle in (
        "debug=tiny_recap_mini_llava model.captioners.mini_llava.path=<run>/mini_llava",
        "debug=tiny_enhance_score_demo model.model_path=<run>/aitqe",
        "debug=tiny_recap_label_llm",
        """'data.train.path="/data/cc3m/{00000..00331}.tar"'""",
    ):
        assert needle in text, needle
    assert {primary for _, primary, _ in COMMANDS} >= {"train", "generate", "pipeline"}


def _args(args: str, tmp_path) -> list[str]:
    filled = re.sub(r"<([^<>]+)>", lambda m: str(tmp_path / re.sub(r"\W+", "_", m.group(1))), args)
    return [a for a in shlex.split(filled, comments=True) if a != "-m"]


@pytest.mark.parametrize(("doc", "primary", "args"), COMMANDS, ids=[f"{d}: {a}" for d, _, a in COMMANDS])
def test_documented_command_composes_as_written(doc, primary, args, tmp_path):
    overrides = _args(args, tmp_path)
    cfg = compose(overrides, primary, output_dir=str(tmp_path / "out"))
    choices = cfg.hydra.runtime.choices
    job = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    parser = OverridesParser.create()
    for override in map(parser.parse_override, overrides):
        key, value = override.key_or_group, override.value()
        if key.split("/")[0] in CHOICES and ("/" in key or key in ("experiment", "debug", "preset")):
            assert choices[key] == value, key
        elif isinstance(value, str) and "${" in value:
            continue  # an interpolation: resolved by the job
        elif not override.is_delete():
            assert (
                OmegaConf.to_container(OmegaConf.create({"v": OmegaConf.select(job, key)}))["v"] == value
            ), key


def test_an_unquoted_brace_range_is_refused_by_hydra_and_the_documented_quoting_is_not():
    parser = OverridesParser.create()
    with pytest.raises(Exception, match="mismatched input '{'"):
        parser.parse_override("data.train.path=/data/cc3m/{00000..00331}.tar")
    for documented_form in (
        """'data.train.path="/data/cc3m/{00000..00331}.tar"'""",
        "'data.train.path=/data/cc3m/*.tar'",
    ):
        (arg,) = shlex.split(documented_form)  # what the shell hands over
        assert parser.parse_override(arg).value() == shlex.split(documented_form)[0].split("=", 1)[1].strip(
            '"'
        )
