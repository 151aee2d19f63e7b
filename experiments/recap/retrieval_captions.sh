#!/usr/bin/env bash
# Held-out caption quality of the CPU captioners on coco-dev: split the photos by a stable hash of the image id
# (30 % held out), train the LiT retriever (clip_demo) on the other 70 %, caption the held-out photos with
# label_llm, retrieval (nearest mode) and retrieval + SmolLM2 in one clipforge generate job (datastore: the
# training photos' captions + the 20k coco-captions-text captions; never a held-out photo's), then score
# BLEU-4 / CIDEr against the 5 human captions and the LiT image-text score. Results: experiments/recap/README.md.
#   OUT=/tmp/recap_retrieval experiments/recap/retrieval_captions.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${CLIPFORGE_DATA_DIR:-../shared/data}
OUT=${OUT:-artifacts/recap/retrieval}
CLIPFORGE=${CLIPFORGE:-.venv/bin/clipforge}
PYTHON=${PYTHON:-.venv/bin/python}
SEED=${SEED:-0}
mkdir -p "$OUT"
"$CLIPFORGE" data split-coco "$DATA/coco-dev/annotations/captions_train2017.json" --val-fraction 0.3 --out-dir "$OUT/split"
TRAIN="$OUT/split/captions_train2017_train.json" HELD="$OUT/split/captions_train2017_val.json"
LIT="$OUT/lit/checkpoints/last.ckpt"   # the last epoch: no checkpoint is chosen on the held-out photos
if [ ! -f "$LIT" ]; then
  "$CLIPFORGE" train experiment=clip_demo seed="$SEED" \
      data.train.path="$TRAIN" data.train.image_root="$DATA/coco-dev/train2017" \
      data.val.path="$HELD" data.val.image_root="$DATA/coco-dev/train2017" \
      data.batch_size=32 hydra.run.dir="$OUT/lit"
fi
STORE="[{path:$TRAIN},{path:$DATA/coco-captions-text/annotations/captions_val2017.json}]"
"$CLIPFORGE" generate experiment=recap_label_llm run_name=retrieval_heldout \
    data.predict.path="$HELD" data.predict.image_root="$DATA/coco-dev/train2017" \
    +model/mllm@model.captioners.nearest=retrieval model.captioners.nearest.name=nearest \
    model.captioners.nearest.mode=nearest model.captioners.nearest.checkpoint="$LIT" \
    "model.captioners.nearest.datastore=$STORE" \
    +model/mllm@model.captioners.retrieval=retrieval model.captioners.retrieval.checkpoint="$LIT" \
    "model.captioners.retrieval.datastore=$STORE" \
    hydra.run.dir="$OUT/generate"
"$PYTHON" experiments/recap/score_captions.py "$OUT/generate/predictions.jsonl" --lit "$LIT" \
    --slots label_llm nearest retrieval --json "$OUT/scores.json"
