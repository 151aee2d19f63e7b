"""Security faults: credentials sent to another origin, code run by loading a data folder or a checkpoint."""

from __future__ import annotations

import pathlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
from PIL import Image

from clipforge.tasks.enhance.teacher import ChatTeacher
from clipforge.utils.hydra import compose

TINY = ["experiment=clip_demo", "debug=tiny_clip"]

KEY_ENV = "CLIPFORGE_FAULTS_TEST_KEY"


class _Recorder:
    """An HTTP server on a free local port; ``redirect_to`` set: every request gets ``status`` with that
    Location, else a chat-completions answer. Records method, path and headers of every request."""

    def __init__(self, redirect_to: str | None = None, status: int = 302) -> None:
        self.requests: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                server.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers)}
                )
                if redirect_to:
                    self.send_response(status)
                    self.send_header("Location", redirect_to + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = b'{"choices": [{"message": {"role": "assistant", "content": "stolen"}}]}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _answer  # noqa: N815 - http.server's naming

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_the_api_key_never_follows_a_redirect_to_another_origin(status, monkeypatch):
    """Server A (the configured endpoint) redirects to server B on another port: B must never see the key; the
    call fails with an error that says why."""
    monkeypatch.setenv(KEY_ENV, "sk-secret-value")
    b = _Recorder()
    a = _Recorder(redirect_to=b.origin, status=status)
    try:
        teacher = ChatTeacher("m", base_url=a.origin + "/v1", api_key_env=KEY_ENV, max_retries=0)
        (reply,) = teacher.score([Image.new("RGB", (8, 8))], ["a caption"], ["k"])
    finally:
        a.close()
        b.close()
    assert a.requests and a.requests[0]["headers"]["Authorization"] == "Bearer sk-secret-value"
    assert not any("Authorization" in r["headers"] for r in b.requests)
    assert b.requests == []  # refused before any request to the other origin
    assert reply.text is None
    assert "redirect" in reply.error and b.origin in reply.error and "sk-secret" not in reply.error


class _Payload:
    """Unpickling this object creates ``marker`` (a crafted file would run any other call the same way)."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def _crafted(path: pathlib.Path, obj: object, marker: pathlib.Path) -> pathlib.Path:
    """Save ``obj`` and check that the file is live: an unrestricted unpickler runs its payload."""
    torch.save(obj, path)
    torch.load(path, weights_only=False)
    assert marker.exists(), "the crafted file must run its payload when unpickled without restriction"
    marker.unlink()
    return path


def test_a_crafted_embedding_shard_never_runs_its_payload(tmp_path):
    from clipforge.data.datamodule import ImageTextDataModule
    from clipforge.data.embeddings import load_text_embeddings
    from clipforge.data.errors import DataConfigError
    from tests.unit.test_data_fixtures import FakeTrainer

    folder, marker = tmp_path / "cache", tmp_path / "payload-ran"
    folder.mkdir()
    rows = [{"key": "0", "captions": ["a"], "text_embedding": torch.zeros(1, 4), "meta": _Payload(marker)}]
    shard = _crafted(folder / "shard-00000.pt", rows, marker)
    with pytest.raises(DataConfigError, match="shard-00000.pt") as info:
        load_text_embeddings(str(folder))
    assert "\n" not in str(info.value)
    dm = ImageTextDataModule(
        train={"path": "synthetic", "limit": 4, "text_embeddings": str(folder)}, batch_size=2
    )
    dm.trainer = FakeTrainer()
    with pytest.raises(DataConfigError, match=str(shard)):
        dm.setup("fit")  # what data.train.text_embeddings=<folder> does in every entry point
    assert not marker.exists()


def test_generated_pt_shards_are_plain_data(tmp_path):
    """What the writer stores loads under ``weights_only=True``; values that are no tensor become plain data."""
    import numpy as np

    from clipforge.data.shards import read_shard, write_shard

    rows = [{"key": "k", "text_embedding": torch.ones(2, 3), "score": np.float32(0.5), "ids": np.arange(3)}]
    path = str(tmp_path / "shard-00000.pt")
    write_shard(rows, path, "pt", torch.float16)
    (loaded,) = torch.load(path, weights_only=True)
    (read,) = read_shard(path)
    assert set(loaded) == set(read) == {"key", "text_embedding", "score", "ids"}
    assert loaded["key"] == "k" and loaded["score"] == read["score"] == 0.5 and loaded["ids"] == [0, 1, 2]
    assert loaded["text_embedding"].dtype == torch.float16
    assert torch.equal(read["text_embedding"], torch.ones(2, 3, dtype=torch.float16))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny finished training run (1 epoch) and its objects."""
    from clipforge.cli.train import train

    out = tmp_path_factory.mktemp("run")
    _, objects = train(compose([*TINY, "trainer.max_epochs=1"], output_dir=str(out)))
    return out, objects


def test_checkpoints_are_plain_data_and_hold_the_config_that_rebuilds_the_run(trained):
    from hydra.utils import instantiate

    out, objects = trained
    for name in ("last.ckpt", "epoch_000.ckpt"):
        state = torch.load(out / "checkpoints" / name, map_location="cpu", weights_only=True)
        hp, dm_hp = state["hyper_parameters"], state["datamodule_hyper_parameters"]
        assert hp["_target_"] == "clipforge.tasks.shared.clip.CLIPModule"
        model = instantiate(hp, _convert_="all")
        assert repr(model.vision_spec) == repr(objects["model"].vision_spec)
        assert model.hparams.embed_dim == objects["model"].hparams.embed_dim
        assert (
            instantiate(dm_hp, _convert_="all").hparams.batch_size == objects["datamodule"].hparams.batch_size
        )


def _refused(run, capsys) -> str:
    """Run an entry point that must stop with one line (exit 2); returns that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    return lines[0]


def test_a_crafted_checkpoint_never_runs_its_payload(trained, tmp_path, capsys):
    from clipforge.cli.eval import evaluate
    from clipforge.cli.generate import generate
    from clipforge.cli.train import train
    from clipforge.utils.checkpoint import UntrustedCheckpointError
    from clipforge.utils.runs import find_checkpoint, load_run

    out, _ = trained
    marker = tmp_path / "payload-ran"
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state["hyper_parameters"]["note"] = _Payload(marker)
    run_dir = tmp_path / "crafted_run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "config.yaml").write_text((out / "config.yaml").read_text())
    ckpt = _crafted(run_dir / "checkpoints" / "last.ckpt", state, marker)
    jobs = {
        "train": lambda: train(compose([*TINY, f"ckpt_path={ckpt}"], output_dir=str(tmp_path / "t"))),
        "eval": lambda: evaluate(
            compose([*TINY, f"ckpt_path={ckpt}"], "eval", output_dir=str(tmp_path / "e"))
        ),
        "generate": lambda: generate(
            compose(
                [*TINY, f"ckpt_path={ckpt}", "data.predict.path=synthetic", "+data.predict.limit=4"],
                "generate",
                output_dir=str(tmp_path / "g"),
            )
        ),
    }
    for name, job in jobs.items():
        line = _refused(job, capsys)
        assert str(ckpt) in line and "trust_checkpoint=true" in line, (name, line)
        assert not marker.exists(), name
    for load in (lambda: find_checkpoint(str(run_dir), "best"), lambda: load_run(str(run_dir), "last")):
        with pytest.raises(UntrustedCheckpointError, match="trust_checkpoint"):
            load()
        assert not marker.exists()


def test_a_checkpoint_of_pickled_objects_resumes_only_when_trusted(trained, tmp_path, capsys, monkeypatch):
    """A checkpoint whose hyper-parameters are pickled objects (as clipforge wrote them before) is refused by
    default and resumes with the documented opt-in: ``trust_checkpoint=true`` or ``CLIPFORGE_TRUST_CHECKPOINT=1``."""
    from clipforge.cli.train import train

    out, objects = trained
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    state["hyper_parameters"] = dict(objects["model"].hparams)  # tower specs, loss module, optimizer builder
    old = tmp_path / "old.ckpt"
    torch.save(state, old)
    resume = [*TINY, "trainer.max_epochs=2", f"ckpt_path={old}", "evaluate=false"]
    line = _refused(lambda: train(compose(resume, output_dir=str(tmp_path / "a"))), capsys)
    assert str(old) in line and "TimmVision" in line
    _, resumed = train(compose([*resume, "trust_checkpoint=true"], output_dir=str(tmp_path / "b")))
    assert resumed["trainer"].current_epoch == 2
    monkeypatch.setenv("CLIPFORGE_TRUST_CHECKPOINT", "1")
    _, resumed = train(compose(resume, output_dir=str(tmp_path / "c")))
    assert resumed["trainer"].current_epoch == 2
