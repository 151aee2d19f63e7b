"""The developer tooling agrees with itself: `make help` lists every target, the pre-commit hooks run the pinned
versions of the dev extra, and mypy checks the folders the docs say it checks."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _makefile_targets(text: str) -> list[str]:
    """Rule names of a Makefile (``name: ...``), without pattern / path rules and ``:=`` assignments."""
    return re.findall(r"^([a-zA-Z][a-zA-Z0-9_-]*):(?!=)", text, flags=re.M)


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def test_make_help_lists_every_target_with_its_description():
    text = (ROOT / "Makefile").read_text()
    targets = _makefile_targets(text)
    phony = re.search(r"^\.PHONY:(.*)$", text, flags=re.M).group(1).split()
    assert sorted(targets) == sorted(phony)  # every rule is a documented command, every command a rule
    out = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    listed = dict(re.findall(r"^  make (\S+) +(\S.*)$", out.stdout, flags=re.M))
    assert list(listed) == targets  # in Makefile order, nothing missing, nothing extra
    for target in targets:
        # the description is the rule's own "## ..." comment
        own = re.search(rf"^{target}:[^\n#]*## (.+)$", text, flags=re.M)
        assert own and listed[target] == own.group(1).strip(), target
    # bare `make` prints the same list (and sets nothing up)
    bare = subprocess.run(["make", "-s"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 0 and bare.stdout == out.stdout


def test_the_target_parser_reads_rules_not_assignments():
    text = "A := 1\nB ?= 2\nfoo: bar  ## x\n$(VENV)/.x: y\n\tcmd\nbaz:\n"
    assert _makefile_targets(text) == ["foo", "baz"]


def test_pre_commit_hooks_use_the_pinned_dev_tools():
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = {h["id"]: h for repo in config["repos"] for h in repo["hooks"]}
    assert set(hooks) >= {"ruff", "ruff-format", "codespell"}
    pins = _constraints()
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    dev_names = {re.split(r"[<>=\[ ]", d)[0].lower() for d in dev}
    for hook in hooks.values():
        for dep in hook.get("additional_dependencies", []):
            name, version = dep.split("==")
            assert pins.get(name.lower()) == version, f"{hook['id']}: {dep} vs constraints.txt"
            assert name.lower() in dev_names, f"{name} is not in the dev extra"
    for tool in ("mypy", "codespell", "pre-commit", "ruff"):
        assert tool in dev_names and tool in pins, tool


def test_mypy_checks_models_and_losses():
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert mypy["files"] == ["src/clipforge/losses", "src/clipforge/models"]
    assert all((ROOT / f).is_dir() for f in mypy["files"])
    lint = re.search(r"^lint:.*?(?=^\S)", (ROOT / "Makefile").read_text(), flags=re.M | re.S).group(0)
    assert "$(BIN)/mypy" in lint and "$(BIN)/codespell" in lint
