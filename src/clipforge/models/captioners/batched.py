"""``BatchedCaptioner``: the generation loop shared by every ``transformers``-based captioner.

A subclass loads its model in :meth:`BatchedCaptioner._load` and turns a chunk of images (+ raw captions) into
left-padded model inputs in :meth:`BatchedCaptioner._encode`; this class does the rest: it repeats every image
``num_captions`` times (each copy with its own sampling seed), runs one ``generate`` call per ``batch_size`` rows,
keeps only the new tokens, decodes, post-processes and attaches provenance.

With ``backend: vllm`` a subclass that implements :meth:`BatchedCaptioner._vllm_setup` and
:meth:`BatchedCaptioner._vllm_prompts` runs on a vLLM engine instead
(:mod:`clipforge.models.captioners.vllm_engine`): the same prompts and decoding preset, all rows of a
``generate`` call in one engine call (vLLM batches them itself), the returned token ids decoded and post-processed
by the same code.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image

from clipforge.models.captioners.base import Generation
from clipforge.models.captioners.decoding import Decoding, as_decoding, row_seed
from clipforge.models.captioners.decoding import postprocess as postprocess_rule

log = logging.getLogger("clipforge.recap")

__all__ = ["BACKENDS", "BatchedCaptioner", "count_new_tokens", "resolve_dtype"]

BACKENDS = ("hf", "vllm")
"""Generation engines of the batched captioners: ``transformers`` ``generate`` or a vLLM engine."""


def resolve_dtype(dtype: str) -> torch.dtype:
    """``"float32"`` / ``"bfloat16"`` / ``"float16"`` -> the ``torch.dtype``."""
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype name (float32, bfloat16, float16)")
    return value


def count_new_tokens(new_tokens: torch.Tensor, stop_ids: Sequence[int]) -> list[int]:
    """Generated tokens per row before the first stop token (EOS / padding), i.e. the caption's token count."""
    if new_tokens.shape[1] == 0:
        return [0] * new_tokens.shape[0]
    stop = torch.zeros_like(new_tokens, dtype=torch.bool)
    for i in set(stop_ids):
        stop |= new_tokens == i
    first = stop.float().argmax(1)  # index of the first stop token (0 when there is none)
    return [int(n) if hit else new_tokens.shape[1] for n, hit in zip(first, stop.any(1))]


class BatchedCaptioner(abc.ABC):
    """Base of the batched ``generate`` captioners (HF VLMs, remote-code Qwen-VL, the label-conditioned LLM).

    Args:
        name: column name of this captioner's captions.
        model_id: provenance: what the model is (HF id, folder, alias).
        prompt_id: provenance: name/version of the prompt template.
        decoding: generation parameters (:class:`~clipforge.models.captioners.decoding.Decoding` fields).
        postprocess: ``first_sentence`` (official scripts) or ``strip``.
        num_captions: captions per image; more than one needs ``decoding.do_sample``.
        batch_size: rows per ``generate`` call (``num_captions`` copies of an image count as rows); the vLLM
            backend sends every row of a call at once (its scheduler batches, see ``engine_args.max_num_seqs``).
        backend: ``hf`` (``transformers`` ``generate``) or ``vllm`` (needs vLLM: ``make setup-vllm``).
        engine_args: extra ``vllm.LLM`` arguments of the vLLM backend (``tensor_parallel_size``,
            ``gpu_memory_utilization``, ``max_model_len``, ``enforce_eager``, ...).
    """

    def __init__(
        self,
        name: str,
        model_id: str,
        prompt_id: str,
        decoding: Decoding | Mapping | None,
        postprocess: str,
        num_captions: int,
        batch_size: int,
        backend: str = "hf",
        engine_args: Mapping | None = None,
    ) -> None:
        self.name, self.model_id, self.prompt_id = name, model_id, prompt_id
        self.decoding = as_decoding(decoding)
        self.postprocess = postprocess
        self._post = self._postprocess_rule(postprocess)
        if num_captions < 1 or batch_size < 1:
            raise ValueError(f"{name}: num_captions and batch_size must be >= 1")
        if num_captions > 1 and not self.decoding.do_sample:
            raise ValueError(
                f"{name}: num_captions={num_captions} needs decoding.do_sample=true (greedy decoding writes the "
                "same caption every time)"
            )
        self.num_captions, self.batch_size = num_captions, batch_size
        self.engine_args = dict(engine_args or {})
        self.use_backend(backend)
        self.device = torch.device("cpu")
        # loaded by setup(): any transformers model / tokenizer (typed Any: their classes differ per captioner)
        self.model: Any = None
        self.tokenizer: Any = None
        self.engine: Any = None  # the vLLM backend's VLLMEngine
        self.generation_config: Any = None  # the HF generation config (EOS ids) on both backends

    def use_backend(self, backend: str) -> None:
        """Run on ``backend`` (``hf`` | ``vllm``); refuses an unknown one, ``vllm`` for a captioner without a vLLM
        path, and decoding settings vLLM cannot run, before anything loads."""
        if backend not in BACKENDS:
            raise ValueError(f"{self.name}: backend={backend!r} is not one of {BACKENDS}")
        if backend == "vllm" and type(self)._vllm_prompts is BatchedCaptioner._vllm_prompts:
            raise ValueError(
                f"{self.name}: backend=vllm is not available for {type(self).__name__}; use backend=hf"
            )
        if backend == "vllm":
            from clipforge.models.captioners.vllm_engine import sampling_kwargs

            sampling_kwargs(self.decoding, [])
        self.backend = backend

    # -- subclass API -----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _load(self, device: torch.device) -> None:
        """Load ``self.model`` (eval mode, on ``device``) and ``self.tokenizer`` (left padding, a pad token)."""

    @abc.abstractmethod
    def _encode(self, images: Sequence[Image.Image], captions: Sequence[str]) -> tuple[dict, list[dict]]:
        """Left-padded ``generate`` inputs of these rows, and per-row extra provenance (``{}`` if none)."""

    def _vllm_setup(self, device: torch.device) -> dict:
        """vLLM backend: load the tokenizer / processor (and any non-LLM part) like :meth:`_load` does, set
        ``self.generation_config``, and return the :class:`~.vllm_engine.VLLMEngine` arguments (``model``, ...)."""
        raise NotImplementedError

    def _vllm_prompts(
        self, images: Sequence[Image.Image], captions: Sequence[str]
    ) -> tuple[list[dict], list[dict]]:
        """vLLM backend: the rows' prompts (``prompt_token_ids`` as :meth:`_encode` tokenizes them, plus
        ``multi_modal_data``), and per-row extra provenance."""
        raise NotImplementedError

    def _postprocess_rule(self, rule: str):
        """The function ``text -> caption`` named ``rule`` (subclasses add their models' official rules)."""
        return postprocess_rule(rule)

    def _decode(self, sequences: torch.Tensor, prompt_length: int) -> tuple[list[str], list[str]]:
        """``(decoded new tokens, captions)`` of ``generate``'s output rows (prompt + new tokens).

        The default decodes the new tokens without special tokens and applies the post-processing rule; a model
        whose official script cuts the decoded *whole* sequence (special tokens kept) overrides this.
        """
        texts = self.tokenizer.batch_decode(sequences[:, prompt_length:], skip_special_tokens=True)
        return texts, [self._post(t) for t in texts]

    def _generate_kwargs(self) -> dict:
        """Keyword arguments of ``model.generate`` (the decoding's; subclasses add model-specific ones)."""
        return self.decoding.generate_kwargs()

    def _eos_ids(self) -> list[int]:
        """The token ids ``generate`` stops at (the generation config's EOS)."""
        ids = self.generation_config.eos_token_id
        return list(ids) if isinstance(ids, list | tuple) else ([] if ids is None else [ids])

    def _stop_ids(self) -> list[int]:
        return [*self._eos_ids(), self.tokenizer.pad_token_id]

    # -- protocol -----------------------------------------------------------------------------------------------
    def setup(self, device: str = "cpu") -> None:
        """Load the weights on ``device`` (once; later calls only move them)."""
        self.device = torch.device(device)
        if self.backend == "vllm":
            if self.engine is None:
                from clipforge.models.captioners.vllm_engine import VLLMEngine, import_vllm

                import_vllm()  # the one-line error before anything loads
                log.info("%s: starting a vLLM engine for %s", self.name, self.model_id)
                kwargs = self._vllm_setup(self.device)
                self.engine = VLLMEngine(
                    seed=self.decoding.seed, device=str(self.device), engine_args=self.engine_args, **kwargs
                )
            return
        if self.model is None:
            log.info("%s: loading %s", self.name, self.model_id)
            self._load(self.device)
            loaded: Any = self.model  # set by _load
            self.generation_config = loaded.generation_config
        else:
            self._to(self.device)

    def _to(self, device: torch.device) -> None:
        """Move loaded weights to ``device``."""
        self.model.to(device)

    @torch.inference_mode()
    def generate(
        self, images: Sequence[Image.Image], captions: Sequence[str], keys: Sequence[str]
    ) -> list[list[Generation]]:
        """``num_captions`` generations per image, in input order."""
        if not len(images) == len(captions) == len(keys):
            raise ValueError(f"{self.name}: {len(images)} images, {len(captions)} captions, {len(keys)} keys")
        if self.model is None and self.engine is None:
            raise RuntimeError(f"{self.name}: call setup(device) before generate()")
        rows = [(i, j) for i in range(len(images)) for j in range(self.num_captions)]
        out: list[list[Generation]] = [[] for _ in images]
        step = max(1, len(rows)) if self.engine is not None else self.batch_size
        for start in range(0, len(rows), step):
            chunk = rows[start : start + step]
            seeds = [row_seed(self.decoding.seed, keys[i], j) for i, j in chunk]
            gens = self._generate_chunk([images[i] for i, _ in chunk], [captions[i] for i, _ in chunk], seeds)
            for (i, _), gen in zip(chunk, gens):
                out[i].append(gen)
        return out

    def _generate_chunk(
        self, images: Sequence[Image.Image], captions: Sequence[str], seeds: Sequence[int]
    ) -> list[Generation]:
        if self.engine is not None:
            return self._generate_chunk_vllm(images, captions, seeds)
        inputs, extras = self._encode(images, captions)
        inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        sampler = self.decoding.sampler(seeds)
        kwargs = self._generate_kwargs()
        if sampler is not None:
            kwargs["logits_processor"] = [sampler]
        out = self.model.generate(**inputs, **kwargs, pad_token_id=self.tokenizer.pad_token_id)
        out = out.cpu()
        prompt_length = inputs["input_ids"].shape[1]
        texts, cuts = self._decode(out, prompt_length)
        counts = count_new_tokens(out[:, prompt_length:], self._stop_ids())
        return self._generations(texts, cuts, counts, seeds, extras, self.decoding.to_dict())

    def _generate_chunk_vllm(
        self, images: Sequence[Image.Image], captions: Sequence[str], seeds: Sequence[int]
    ) -> list[Generation]:
        from clipforge.models.captioners.vllm_engine import sampling_params

        prompts, extras = self._vllm_prompts(images, captions)
        new = self.engine.generate(prompts, sampling_params(self.decoding, seeds, self._eos_ids()))
        # the new tokens as generate() returns them: right-padded rows (padding is a stop id, skipped in decoding)
        out = torch.full((len(new), max((len(t) for t in new), default=0)), self.tokenizer.pad_token_id)
        for row, tokens in zip(out, new):
            row[: len(tokens)] = torch.tensor(tokens, dtype=out.dtype)
        texts, cuts = self._decode(out, 0)
        counts = count_new_tokens(out, self._stop_ids())
        return self._generations(
            texts, cuts, counts, seeds, extras, {**self.decoding.to_dict(), "backend": "vllm"}
        )

    def _generations(
        self,
        texts: Sequence[str],
        cuts: Sequence[str],
        counts: Sequence[int],
        seeds: Sequence[int],
        extras: Sequence[dict],
        params: dict,
    ) -> list[Generation]:
        return [
            Generation(
                text=cut,
                raw_text=text,
                model_id=self.model_id,
                prompt_id=self.prompt_id,
                params={**params, "row_seed": seed, **extra}
                if self.decoding.do_sample
                else {**params, **extra},
                num_tokens=n,
            )
            for text, cut, n, seed, extra in zip(texts, cuts, counts, seeds, extras)
        ]
