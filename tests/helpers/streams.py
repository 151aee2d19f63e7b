"""Synthetic webdataset shards and loopback servers (S3 via moto, plain http) for the streaming tests."""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import io
import json
import logging
import os
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image


def png(seed: int, size: int = 8) -> bytes:
    """A tiny deterministic PNG."""
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def tar_bytes(members: list[tuple[str, bytes]], gz: bool = False) -> bytes:
    """An uncompressed (or gzip) tar of ``(name, data)`` members, in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tf.addfile(info, io.BytesIO(data))
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if gz else raw


def sample_members(key: str, index: int, caption: str | None = None) -> list[tuple[str, bytes]]:
    """img2dataset-style members of one sample: ``.jpg`` (a PNG inside, as PIL reads by content), ``.txt``,
    ``.json``."""
    caption = caption if caption is not None else f"a photo number {index}"
    meta = json.dumps({"key": key, "caption": caption}).encode()
    return [(f"{key}.jpg", png(index)), (f"{key}.txt", caption.encode()), (f"{key}.json", meta)]


def make_shards(n_shards: int, per_shard: int, gz: bool = True, prefix: str = "shard") -> dict[str, bytes]:
    """``{shard file name: bytes}`` of ``n_shards`` shards of ``per_shard`` samples keyed ``{shard:05d}{i:04d}``."""
    ext = ".tar.gz" if gz else ".tar"
    out = {}
    for s in range(n_shards):
        members = []
        for i in range(per_shard):
            members += sample_members(f"{s:05d}{i:04d}", s * per_shard + i)
        out[f"{prefix}-{s:05d}{ext}"] = tar_bytes(members, gz)
    return out


def write_shards(folder: Path, shards: dict[str, bytes]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in shards.items():
        (folder / name).write_bytes(data)
    return sorted(str(folder / n) for n in shards)


def keys_of(shards: dict[str, bytes]) -> list[str]:
    """Every ``__key__`` of the shards (reference multiset)."""
    keys = []
    for data in shards.values():
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tf:
            keys += [m.name.split(".")[0] for m in tf.getmembers() if m.name.endswith(".jpg")]
    return keys


@contextlib.contextmanager
def s3_server(bucket: str, objects: dict[str, bytes]) -> Iterator[dict[str, str]]:
    """A moto S3 server on loopback holding ``objects`` in ``bucket``; yields the environment that points s3fs /
    boto at it (also set in ``os.environ`` while the server runs)."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        import urllib.request

        import s3fs

        # moto's backends are per process, not per server: start empty; s3fs caches clients across endpoints
        urllib.request.urlopen(
            urllib.request.Request(f"{env['AWS_ENDPOINT_URL']}/moto-api/reset", method="POST")
        )
        s3fs.S3FileSystem.clear_instance_cache()
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        client.create_bucket(Bucket=bucket)
        for name, data in objects.items():
            client.put_object(Bucket=bucket, Key=name, Body=data)
        yield env
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@contextlib.contextmanager
def http_server(folder: Path) -> Iterator[str]:
    """A loopback http server of ``folder``; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


import lightning as L  # noqa: E402 - only the callback below needs it


class KeyLog(L.Callback):
    """Lightning callback: appends ``{"epoch", "step", "keys"}`` of every trained batch to ``path`` (flushed and
    synced per batch, so a SIGKILL loses nothing that was trained)."""

    def __init__(self, path: str, kill_at_step: int | None = None) -> None:
        super().__init__()
        self.path, self.kill_at_step = path, kill_at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        # after step ``kill_at_step``'s checkpoint (saved at that step's end): die like a preempted node
        if self.kill_at_step is not None and trainer.global_step == self.kill_at_step:
            os.kill(os.getpid(), 9)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        line = json.dumps({"epoch": trainer.current_epoch, "step": trainer.global_step, "keys": batch["key"]})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def key_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
