"""Shared fixtures. Nothing here (or in any test) may reach a model hub: the hub is switched off below."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the configs' paths.data_dir (CLIPFORGE_DATA_DIR) follows the tests' shared data dir (tests/helpers/shared_data.py)
if os.environ.get("CLIPFORGE_SHARED_DATA"):
    os.environ.setdefault("CLIPFORGE_DATA_DIR", os.environ["CLIPFORGE_SHARED_DATA"])

import pytest  # noqa: E402

from tests.helpers.tiny_hf import save_tiny_hf_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> str:
    """A 2-layer BERT with a WordPiece tokenizer, saved with save_pretrained (loaded like a user's folder)."""
    return save_tiny_hf_model(tmp_path_factory.mktemp("tiny_bert"), "bert")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> str:
    """A 2-layer Llama (SmolLM2's architecture class) with a byte-level BPE tokenizer, saved to disk."""
    return save_tiny_hf_model(tmp_path_factory.mktemp("tiny_llama"), "llama")
