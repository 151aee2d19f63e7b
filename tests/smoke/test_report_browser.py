"""The pipeline report in a real browser: headless Chromium renders it (screenshot) and dumps its DOM.

Skipped where Chromium is not installed, except in CI (``CI`` set), where a missing browser fails the test:
``.ci/run`` installs the Debian package ``chromium``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from clipforge.pipeline.report import write_report
from tests.helpers.pipeline_run import edit_lineage, make_pipeline_run, parse_html

# a caption that would change the page if the report let it run
HOSTILE = "<script>document.body.setAttribute('data-pwned', '1')</script><img src=x onerror=\"document.title='pwned'\">"


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; CI must run the browser test (.ci/run installs it)")
        pytest.skip("chromium is not installed (Debian: apt-get install chromium)")
    return exe


def _run(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    exe = _chromium()
    tmp = tmp_path_factory.mktemp("browser")
    run_dir = make_pipeline_run(tmp)

    def poison(rows):
        for r in rows:
            r["raw_captions"][0] = HOSTILE + " " + r["raw_captions"][0]

    edit_lineage(run_dir, poison)
    url = Path(write_report(run_dir)["report.html"]).resolve().as_uri()
    shot = tmp / "report.png"
    _run(exe, tmp / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000", url)
    dom = _run(exe, tmp / "profile-dom", "--dump-dom", url).stdout
    return shot, dom


def test_screenshot_is_a_rendered_page(rendered):
    import numpy as np
    from PIL import Image

    shot, _ = rendered
    page = Image.open(shot).convert("RGB")
    img = np.asarray(page)
    assert img.shape == (2000, 1280, 3)
    non_white = (img.min(axis=2) < 240).mean()
    colours = len(page.getcolors(maxcolors=1 << 24))
    assert 0.05 < non_white < 0.95, f"{non_white:.1%} of the pixels are not white"
    assert colours > 500, f"only {colours} distinct colours"
    assert img.std() > 20
    dark_text = (img.max(axis=2) < 80).mean()
    assert dark_text > 0.005, "no text drawn"


def test_dumped_dom_has_the_report(rendered):
    _, dom_text = rendered
    dom = parse_html(dom_text)
    table = dom.find("table", id="comparison")
    assert table is not None
    assert [r[0] for r in table.table_rows()[1:8]] == [
        "i2t_R@1",
        "i2t_R@5",
        "i2t_R@10",
        "t2i_R@1",
        "t2i_R@5",
        "t2i_R@10",
        "rsum",
    ]
    items = dom.find_all(cls="gallery-item")
    assert len(items) == 12
    images = [i for item in items for i in item.find_all("img")]
    assert len(images) == 12 and all(i.attrs["src"].startswith("data:image/jpeg;base64,") for i in images)
    # the hostile caption is shown as text and ran nothing
    body = dom.find("body")
    assert "data-pwned" not in body.attrs
    assert dom.find("title").text().startswith("Pipeline report")
    assert dom.find_all("script") == []
    assert HOSTILE in dom.find(id="gallery").text()
