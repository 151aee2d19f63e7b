#!/usr/bin/env bash
# CLIP baseline (clip_demo: frozen EfficientNet-Lite0 + frozen MiniLM + trained heads) on ../shared/data/coco-dev:
# split the COCO file by a stable hash of the image id, train on one file (3 seeds), evaluate the best checkpoint
# of each on the other file with clipforge eval. Results: experiments/clip/README.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${CLIPFORGE_DATA_DIR:-../shared/data}/coco-dev
OUT=${OUT:-artifacts/clip/coco_dev}
mkdir -p "$OUT"
.venv/bin/clipforge data split-coco "$DATA/annotations/captions_train2017.json" --val-fraction 0.3 --out-dir "$OUT"
.venv/bin/clipforge train -m experiment=clip_demo seed=0,1,2 \
    data.train.path="$OUT/captions_train2017_train.json" data.train.image_root="$DATA/train2017" \
    data.val.path="$OUT/captions_train2017_val.json" data.val.image_root="$DATA/train2017" \
    data.batch_size=32 hydra.sweep.dir="$OUT/sweep"
for job in "$OUT"/sweep/[0-9]*; do
  ckpt=$(.venv/bin/python -c "from clipforge.utils.runs import find_checkpoint; print(find_checkpoint('$job'))")
  .venv/bin/clipforge eval experiment=clip_demo ckpt_path="$ckpt" \
      data.val.path="$OUT/captions_train2017_val.json" data.val.image_root="$DATA/train2017" \
      hydra.run.dir="$job/eval"
done
.venv/bin/python - "$OUT/sweep" <<'PY'
import json, statistics, sys
from pathlib import Path
rows = [json.loads(p.read_text()) for p in sorted(Path(sys.argv[1]).glob("*/eval/metrics.json"))]
for k in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10"):
    v = [r[f"val/retrieval/captions_train2017_val/{k}"] for r in rows]
    print(f"{k}: " + " ".join(f"{x:.1f}" for x in v) + f"  median {statistics.median(v):.1f}")
PY
