"""Every relative link and image in the repository's Markdown resolves: to an existing file, and for an ``#anchor``
into Markdown to an existing heading. The checker itself is tested on crafted files first."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.markdown_links import anchors, check_all, check_file, links, markdown_files, slugify

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("heading", "slug"),
    [
        ("Stage 2: the frozen LLM as CLIP's text tower", "stage-2-the-frozen-llm-as-clips-text-tower"),
        ("Ablation map (table 2) → `ablation/llm2clip=<file>` on `llm2clip_demo`",
         "ablation-map-table-2--ablationllm2clipfile-on-llm2clip_demo"),
        ("recap in four commands (CPU, offline, ../shared/data/coco-dev)",
         "recap-in-four-commands-cpu-offline-shareddatacoco-dev"),
        ("The [pipeline](x.md) command", "the-pipeline-command"),
        ("#### `llava_1_5` — what differs", "-llava_1_5--what-differs"),
    ],
)  # fmt: skip
def test_slugs_are_githubs(heading, slug):
    assert slugify(heading) == slug


def test_the_checker_finds_every_kind_of_broken_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "img.png").write_bytes(b"\x89PNG")
    (tmp_path / "docs" / "note.md").write_text(
        "# Note\n\n## Step one\n\n## Step one\n\n<a name='custom'></a>\n"
    )
    page = tmp_path / "README.md"
    page.write_text(
        "# Top\n\n"
        "ok: [note](docs/note.md), [section](docs/note.md#step-one), [repeat](docs/note.md#step-one-1),\n"
        "[custom](docs/note.md#custom), [here](#top), [folder](docs/), ![img](img.png), [web](https://x.invalid/a),\n"
        '[titled](docs/note.md "a title"), [split\nlink text](docs/note.md), <https://x.invalid>\n\n'
        "broken: [gone](docs/missing.md), ![pic](figs/none.png), [bad anchor](docs/note.md#step-two),\n"
        "[self](#nowhere)\n\n"
        "[ref]: docs/also-missing.md\n\n"
        "```\n[in code](not/checked.md)\n```\n"
        "and `[inline](not/checked/either.md)` code.\n"
    )
    broken = check_file(page, tmp_path)
    assert [(b.line, b.target, b.reason) for b in broken] == [
        (8, "docs/missing.md", "no such file"),
        (8, "figs/none.png", "no such file"),
        (8, "docs/note.md#step-two", "no heading #step-two in note.md"),
        (9, "#nowhere", "no heading #nowhere in README.md"),
        (11, "docs/also-missing.md", "no such file"),
    ]
    assert anchors(tmp_path / "docs" / "note.md") == {"note", "step-one", "step-one-1", "custom"}
    assert (6, "docs/note.md") in set(links(page))  # a link whose text spans two lines


def test_markdown_files_skip_environments_and_run_outputs(tmp_path):
    for name in (
        "README.md",
        "docs/a.md",
        ".venv/lib/x.md",
        ".venv-vllm/lib/x.md",
        "logs/run/report.md",
        "pkg.egg-info/PKG.md",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("# x\n")
    assert [p.relative_to(tmp_path).as_posix() for p in markdown_files(tmp_path)] == [
        "README.md",
        "docs/a.md",
    ]


def test_every_relative_link_in_the_repository_resolves():
    files = markdown_files(ROOT)
    assert (
        ROOT / "README.md" in files
        and ROOT / "CONTRIBUTING.md" in files
        and ROOT / "docs" / "ARCHITECTURE.md" in files
    )
    broken = check_all(files, ROOT)
    assert not broken, "broken Markdown links:\n" + "\n".join(map(str, broken))
