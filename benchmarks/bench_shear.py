"""Text-shearing throughput: ``clipforge.data.shear.Shear`` vs the straightforward encode/cut/decode rule.

    python benchmarks/bench_shear.py [--data ../shared/data/coco-captions-text/annotations/captions_val2017.json \\
        --repeats 5 --json bench_shear.json]

Pairs: for every caption group of the COCO caption file (4,000 images x 5 human captions), raw = caption #1 and
extended = captions #2 and #3 joined (longer than the raw caption, like an MLLM's description), so every pair is
cut. Both implementations cut to the raw caption's CLIP BPE token count (open_clip's ``SimpleTokenizer``):

- peer (the encode / cut / decode rule): ``L = len(tok.encode(raw)); tok.decode(tok.encode(ext)[:L])``;
- clipforge: per-word token counts (cached), cut at a word boundary.

One process, one thread (the rule is pure Python). Each repeat is a fresh pass over all pairs with warm caches of
the tokenizer (both tools keep theirs across calls); the first pass of each is reported separately (cold).

Design notes: docs/design/recap.md#text-shearing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

DEFAULT = (
    Path(__file__).resolve().parents[2] / "shared/data/coco-captions-text/annotations/captions_val2017.json"
)


def pairs(path: Path) -> list[tuple[str, str]]:
    data = json.loads(path.read_text())
    groups: dict[int, list[str]] = {}
    for a in data["annotations"]:
        groups.setdefault(a["image_id"], []).append(a["caption"].strip())
    return [(g[0], f"{g[1]} {g[2]}") for g in groups.values() if len(g) >= 3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from open_clip.tokenizer import SimpleTokenizer

    from clipforge.data.shear import Shear

    data = pairs(args.data)
    tok = SimpleTokenizer()
    policy = Shear(unit="tokens")

    def peer(raw: str, ext: str) -> str:
        n = len(tok.encode(raw))
        return tok.decode(tok.encode(ext)[:n])

    def ours(raw: str, ext: str) -> str:
        return policy(raw, ext)

    results = {}
    for name, fn in (("peer_encode_decode", peer), ("clipforge", ours)):
        times = []
        for _ in range(args.repeats + 1):
            t0 = time.perf_counter()
            for raw, ext in data:
                fn(raw, ext)
            times.append(time.perf_counter() - t0)
        results[name] = {
            "cold_captions_per_s": len(data) / times[0],
            "captions_per_s": len(data) / statistics.median(times[1:]),
        }
    results["speedup"] = (
        results["clipforge"]["captions_per_s"] / results["peer_encode_decode"]["captions_per_s"]
    )
    # the two rules agree on length: ours never exceeds the budget
    over = sum(len(tok.encode(policy(r, e))) > max(1, len(tok.encode(r))) for r, e in data)
    results["pairs"], results["clipforge_over_budget"] = len(data), over
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
