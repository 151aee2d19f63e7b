"""The README's Layout table matches the tree: every folder it names exists, every top-level folder of the
repository and every package of ``src/clipforge`` is named."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# top-level folders that are not part of the repository (environments, run outputs, caches)
NOT_OURS = {"logs", "outputs", "artifacts"}


def layout_folders(readme: str) -> list[str]:
    """The folders in the first column of the table under ``## Layout`` (``conf/``, ``src/clipforge/data/``...)."""
    section = re.search(r"^## Layout\n(.*?)(?=^## )", readme, flags=re.M | re.S)
    assert section, "README has no '## Layout' section"
    return re.findall(r"^\| `([^`]+/)` \|", section.group(1), flags=re.M)


def test_the_parser_reads_the_first_column():
    readme = "# x\n## Layout\n\n| folder | what |\n|---|---|\n| `conf/` | configs, see `data/` |\n| `src/a/` | b |\n## Next\n| `no/` | x |\n"
    assert layout_folders(readme) == ["conf/", "src/a/"]


def test_every_folder_the_layout_names_exists():
    named = layout_folders((ROOT / "README.md").read_text())
    assert named, "the Layout table names no folder"
    assert len(named) == len(set(named))
    missing = [f for f in named if not (ROOT / f).is_dir()]
    assert not missing, f"the README's Layout names folders that do not exist: {missing}"


def test_every_top_level_folder_and_package_is_named():
    named = set(layout_folders((ROOT / "README.md").read_text()))
    top = {
        f"{p.name}/"
        for p in ROOT.iterdir()
        if p.is_dir()
        and not p.name.startswith(".")
        and p.name not in NOT_OURS
        and not p.name.endswith(".egg-info")
    }
    unnamed = {t for t in top if not any(f.startswith(t) for f in named)}  # src/ is named as src/clipforge/
    assert not unnamed, f"top-level folders missing from the README's Layout: {sorted(unnamed)}"
    packages = {
        f"src/clipforge/{p.name}/"
        for p in (ROOT / "src" / "clipforge").iterdir()
        if (p / "__init__.py").is_file()
    }
    assert packages, "no package found under src/clipforge"
    assert packages - named == set(), f"packages missing from the README's Layout: {sorted(packages - named)}"
