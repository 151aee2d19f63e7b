#!/usr/bin/env bash
# Recap stage 2 with the retrieval captions: caption all 130 coco-dev photos with the retrieval captioner (both
# modes; the LiT retriever and the datastore of retrieval_captions.sh: trained on / drawn from the 97 training
# photos plus coco-captions-text, never a held-out photo's captions), then the raw_only vs random_one sweep
# (3 seeds) on the 97 training photos, evaluated on the 33 held out. Run retrieval_captions.sh first (same OUT).
#   OUT=/tmp/recap_retrieval experiments/recap/retrieval_sweep.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${CLIPFORGE_DATA_DIR:-../shared/data}
OUT=${OUT:-artifacts/recap/retrieval}
CLIPFORGE=${CLIPFORGE:-.venv/bin/clipforge}
SOURCE=${SOURCE:-nearest}   # the extended captions the sweep trains on: nearest or retrieval (+ LM)
LIT="$OUT/lit/checkpoints/last.ckpt" TRAIN="$OUT/split/captions_train2017_train.json"
STORE="[{path:$TRAIN},{path:$DATA/coco-captions-text/annotations/captions_val2017.json}]"
if [ ! -f "$OUT/all/predictions.jsonl" ]; then
  "$CLIPFORGE" generate experiment=recap_retrieval run_name=retrieval_all \
      +model/mllm@model.captioners.nearest=retrieval model.captioners.nearest.name=nearest \
      model.captioners.nearest.mode=nearest model.captioners.nearest.checkpoint="$LIT" \
      "model.captioners.nearest.datastore=$STORE" \
      model.captioners.retrieval.checkpoint="$LIT" "model.captioners.retrieval.datastore=$STORE" \
      hydra.run.dir="$OUT/all"
fi
"$CLIPFORGE" train experiment=recap_clip +sweep=recap/sampling recap_table="$OUT/all/predictions.jsonl" \
    "data.train.caption_fields=[captions,$SOURCE]" hydra.sweep.dir="$OUT/sweep_$SOURCE"
