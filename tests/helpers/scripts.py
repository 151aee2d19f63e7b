"""Run the console scripts that ``pyproject.toml`` declares, as pip's generated launchers run them.

The launcher of ``name = "module:function"`` is ``sys.exit(function())`` with ``sys.argv[0]`` set to the script's
name; here it runs on this checkout's sources (``PYTHONPATH``), whatever clipforge the interpreter has installed,
so a script's exit status and output are tested exactly as a user's shell sees them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = (
    "import atexit\n"
    "atexit.register(lambda: print('heavy modules:', "
    "sorted({'torch', 'lightning', 'transformers', 'timm'} & set(sys.modules))))\n"
)
"""Prepended by ``probe_heavy=True``: prints which of torch / Lightning / transformers / timm were imported, at
exit."""


def console_scripts() -> dict[str, str]:
    """``{script: "module:function"}`` of ``[project.scripts]`` in ``pyproject.toml``."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([\w.]+:\w+)"', section, flags=re.M))


def script_env(tmp_path: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a script run: this checkout first, no hub, logs under ``tmp_path``."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        **extra,
    }
    if tmp_path is not None:
        env["CLIPFORGE_LOG_DIR"] = str(tmp_path / "logs")
    return env


def run_script(
    name: str,
    *args: str,
    tmp_path: Path | None = None,
    probe_heavy: bool = False,
    timeout: float = 600,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run console script ``name`` with ``args``; ``probe_heavy`` adds the heavy-module report to stdout."""
    module, function = console_scripts()[name].split(":")
    code = (
        "import sys\n"
        + (PROBE if probe_heavy else "")
        + f"from {module} import {function}\n"
        + f"sys.argv[0] = {name!r}\n"
        + f"sys.exit({function}())\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env or script_env(tmp_path),
        timeout=timeout,
        cwd=ROOT,
    )
