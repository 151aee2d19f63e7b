"""MNTP: masking statistics and invariants, the shifted loss against a full-logits reference, token blocks, the
block datamodule, and one optimisation step of the module on a tiny Llama."""

from __future__ import annotations

import functools
import json

import pytest
import torch
import torch.nn.functional as F

from clipforge.data.caption_groups import CaptionGroup
from clipforge.data.text_blocks import TextBlockDataModule, mntp_texts, token_blocks
from clipforge.losses.mntp import mntp_loss
from clipforge.tasks.llm2clip.mntp import MNTPModule, mntp_mask
from tests.helpers.tiny_hf import save_tiny_llm


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> str:
    return save_tiny_llm(tmp_path_factory.mktemp("tiny_llama"), "llama")


def test_mask_invariants_and_proportions():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 1000, (64, 256), generator=g)
    ids[:, 0] = 1  # BOS
    ids[:, 100] = 2  # an EOS inside a block
    inputs, labels = mntp_mask(
        ids,
        mask_id=999_999,
        vocab_size=1000,
        probability=0.2,
        special_ids=[1, 2],
        generator=torch.Generator().manual_seed(1),
    )
    selected = labels != -100
    assert (
        not selected[:, 0].any() and not selected[:, 100].any()
    )  # position 0 and special tokens never asked
    assert torch.equal(labels[selected], ids[selected])  # labels are the original tokens
    assert torch.equal(inputs[~selected], ids[~selected])  # nothing else is touched
    eligible = 64 * 254
    rate = selected.sum().item() / eligible
    assert rate == pytest.approx(0.2, abs=0.01)
    n = selected.sum().item()
    masked = (inputs == 999_999).sum().item() / n
    kept = (inputs[selected] == ids[selected]).sum().item() / n
    assert masked == pytest.approx(0.8, abs=0.02)
    assert kept == pytest.approx(0.1 + 0.1 / 1000, abs=0.02)  # 10% kept + random draws that hit the same id
    again = mntp_mask(ids, 999_999, 1000, 0.2, [1, 2], torch.Generator().manual_seed(1))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)


def test_loss_predicts_token_i_from_position_i_minus_1():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 5, 8, generator=g, requires_grad=True)
    head = torch.nn.Linear(8, 11, bias=False)
    labels = torch.full((2, 5), -100)
    labels[0, 2], labels[1, 4], labels[1, 1] = 7, 3, 0
    loss, accuracy = mntp_loss(hidden, head, labels)
    logits = head(hidden)  # reference: full logits, position i - 1 scores token i
    ref = F.cross_entropy(torch.stack([logits[0, 1], logits[1, 3], logits[1, 0]]), torch.tensor([7, 3, 0]))
    torch.testing.assert_close(loss, ref)
    preds = torch.stack([logits[0, 1], logits[1, 3], logits[1, 0]]).argmax(-1)
    assert accuracy.item() == pytest.approx((preds == torch.tensor([7, 3, 0])).float().mean().item())
    loss.backward()
    assert hidden.grad[0, 2].abs().sum() == 0 and hidden.grad[0, 1].abs().sum() > 0
    nothing, _ = mntp_loss(hidden, head, torch.full((2, 5), -100))
    assert nothing.item() == 0.0 and nothing.requires_grad


def test_token_blocks_and_text_choice():
    blocks = token_blocks([[1, 2, 3], [4, 5], [6, 7, 8, 9]], 4)
    assert blocks.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]  # the last partial block (9) is dropped
    groups = [CaptionGroup(str(i), [f"a{i}", f"b{i}", f"c{i}"]) for i in range(20)]
    texts = mntp_texts(groups, seed=3)
    assert texts == mntp_texts(groups, seed=3) and sorted(texts) != texts  # deterministic, shuffled
    assert {t[1:] for t in texts} == {str(i) for i in range(20)}  # one caption of every group


def _coco(path, n: int) -> str:
    images = [{"id": i, "file_name": f"{i}.jpg"} for i in range(n)]
    anns = [
        {"id": 3 * i + j, "image_id": i, "caption": f"a cat number {i} take {j}"}
        for i in range(n)
        for j in range(3)
    ]
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return str(path)


def test_block_datamodule_splits_groups_by_key(llama_dir, tmp_path):
    from clipforge.models.llm_encoder import LLMEncoderSpec

    tok = LLMEncoderSpec(name_or_path=llama_dir).tokenizer()
    dm = TextBlockDataModule(
        train={"path": _coco(tmp_path / "c.json", 40), "text_only": True},
        block_size=8,
        batch_size=4,
        holdout_fraction=0.25,
    )
    dm.connect(tok)
    dm.setup("fit")
    train_keys = {g.key for g in dm.read_groups("train")[0]}
    val_keys = {g.key for g in dm.read_groups("val")[0]}
    assert train_keys and val_keys and not train_keys & val_keys and len(train_keys | val_keys) == 40
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (4, 8) and batch["input_ids"].dtype == torch.long
    blocks = dm.datasets["train"][0].blocks
    assert (blocks == tok.hf.bos_token_id).any()  # each text keeps its BOS in the token stream
    assert len(dm.val_dataloader().dataset) > 0


def test_module_step_lowers_loss_on_a_fixed_batch(llama_dir):
    opt = functools.partial(torch.optim.AdamW, lr=5e-3)
    module = MNTPModule({"name_or_path": llama_dir}, opt, lora={"r": 4, "dropout": 0.0}, mask_probability=0.5)
    module.configure_model()
    assert module.mask_token_id() == module.tokenizer.hf("_", add_special_tokens=False)["input_ids"][0]
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    ids = module.tokenizer(["a cat sitting on a sofa in the park"] * 4)["input_ids"]
    optimizer = module.configure_optimizers()
    losses = []
    for _ in range(8):
        out = module._shared_step({"input_ids": ids}, stream=0)  # same masking each time
        optimizer.zero_grad()
        out["mntp_loss"].backward()
        optimizer.step()
        losses.append(out["mntp_loss"].item())
    assert losses[-1] < losses[0]
