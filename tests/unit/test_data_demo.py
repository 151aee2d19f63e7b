"""The embedded demo photos (scikit-image / scikit-learn / matplotlib) and the synthetic set."""

from __future__ import annotations

import os

from clipforge.data.demo import DEMO_PHOTOS, demo_records
from clipforge.data.images import load_image
from clipforge.data.readers import read_records
from clipforge.data.specs import DatasetSpec
from clipforge.data.synthetic import synthetic_records


def test_demo_records():
    records = demo_records()
    assert len(records) >= 18 and len(records) == len(DEMO_PHOTOS)
    assert len({r.key for r in records}) == len(records)
    for r in records:
        assert len(r.captions) == 5 and all(c.strip() == c and c for c in r.captions), r.key
        assert len(set(r.captions)) == 5 and r.meta["label"], r.key
        assert os.path.isfile(r.image)
        img = load_image(r.image)
        assert img.mode == "RGB" and min(img.size) >= 64, r.key
    labels = {r.meta["label"] for r in records}
    assert {"cat", "coffee", "rocket", "astronaut", "flower"} <= labels


def test_demo_through_a_spec_is_text_only_capable():
    records, errors = read_records(DatasetSpec(format="demo", text_only=True))
    assert errors == [] and all(r.image is None for r in records) and len(records) >= 18


def test_synthetic_is_deterministic():
    a, b = synthetic_records(5), synthetic_records(5)
    assert [r.captions for r in a] == [r.captions for r in b]
    img_a, img_b = load_image(a[3].image), load_image(b[3].image)
    assert img_a.tobytes() == img_b.tobytes() and img_a.size == (32, 32)
    assert load_image(a[2].image).tobytes() != img_a.tobytes()
    assert a[0].captions[1] == f"{a[0].meta['label']} square"
