"""The vLLM backend of the batched captioners (``backend: vllm``): one ``vllm.LLM`` engine per captioner.

vLLM lives in its own environment (``make setup-vllm`` builds ``.venv-vllm``: vLLM pins its own torch and
transformers), so it is imported only when an engine is built; without it, ``backend: vllm`` fails with one line
saying how to get it. A captioner on this backend builds the same prompts as on the HF backend (token ids from
the captioner's own tokenizer and chat template; images as vLLM ``multi_modal_data``), maps its
:class:`~clipforge.models.captioners.decoding.Decoding` to one ``SamplingParams`` per row
(:func:`sampling_kwargs`), sends all rows of a batch in one ``LLM.generate`` call and decodes the returned token
ids with its own tokenizer, so captions, token counts and provenance mean the same on both backends.

Sampling draws from vLLM's per-request generator seeded with the row's :func:`~.decoding.row_seed` (the HF
backend's seed of the same ``(seed, key, caption index)``): a caption depends on its key only, not on batching,
and a rerun writes the same captions, but the two backends draw different samples (different random streams).
Greedy decoding is the same search on both; see BENCHMARKS.md / the ``vllm`` test tier for how close they are.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from clipforge.models.captioners.decoding import Decoding

__all__ = [
    "VLLM_MISSING",
    "VLLMEngine",
    "generation_config",
    "import_vllm",
    "sampling_kwargs",
    "sampling_params",
]

VLLM_MISSING = (
    "backend=vllm needs vLLM, which is not installed in this Python environment: build .venv-vllm with "
    "`make setup-vllm` and run .venv-vllm/bin/clipforge (or pip install vllm)"
)


def import_vllm() -> Any:
    """The ``vllm`` module, or a one-line ``ModuleNotFoundError`` saying how to install it."""
    try:
        import vllm
    except ImportError as e:
        raise ModuleNotFoundError(VLLM_MISSING) from e
    return vllm


def sampling_kwargs(decoding: Decoding, stop_token_ids: Sequence[int]) -> dict:
    """``vllm.SamplingParams`` arguments of a decoding preset (without the per-row seed).

    ``max_new_tokens`` / ``min_new_tokens`` become ``max_tokens`` / ``min_tokens``; ``repetition_penalty`` is the
    same CTRL-style penalty over prompt and generated tokens on both backends; greedy decoding is temperature 0;
    sampling keeps ``temperature``, ``top_k`` (0 = off on both) and ``top_p``. Generation stops at
    ``stop_token_ids`` (the HF backend's EOS ids). Beam search and ``no_repeat_ngram_size`` have no
    ``SamplingParams`` equivalent and are refused. Token ids come back undetokenized (the captioner decodes them).
    """
    if decoding.num_beams > 1:
        raise ValueError(
            f"backend=vllm: num_beams={decoding.num_beams} (beam search) has no vLLM SamplingParams equivalent; "
            "use backend=hf"
        )
    if decoding.no_repeat_ngram_size:
        raise ValueError(
            f"backend=vllm: no_repeat_ngram_size={decoding.no_repeat_ngram_size} has no vLLM equivalent; "
            "use backend=hf"
        )
    kwargs: dict[str, Any] = {
        "max_tokens": decoding.max_new_tokens,
        "min_tokens": decoding.min_new_tokens,
        "repetition_penalty": decoding.repetition_penalty,
        "stop_token_ids": sorted(set(stop_token_ids)),
        "detokenize": False,
    }
    if decoding.do_sample:
        kwargs.update(temperature=decoding.temperature, top_k=decoding.top_k, top_p=decoding.top_p)
    else:
        kwargs.update(temperature=0.0, top_k=0, top_p=1.0)
    return kwargs


def sampling_params(decoding: Decoding, seeds: Sequence[int], stop_token_ids: Sequence[int]) -> list:
    """One ``vllm.SamplingParams`` per row; sampled rows get their own seed (``seeds``, one per row)."""
    params_cls = import_vllm().SamplingParams
    kwargs = sampling_kwargs(decoding, stop_token_ids)
    if not decoding.do_sample:
        return [params_cls(**kwargs) for _ in seeds]
    return [params_cls(**kwargs, seed=int(s)) for s in seeds]


def generation_config(path: str, trust_remote_code: bool = False) -> Any:
    """The ``GenerationConfig`` ``from_pretrained`` gives the HF model of ``path`` (its EOS ids), without weights."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(path)
    except OSError:  # no generation_config.json: transformers derives it from the model config
        return GenerationConfig.from_model_config(
            AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        )


@contextlib.contextmanager
def _visible_device(device: str) -> Iterator[None]:
    """``CUDA_VISIBLE_DEVICES`` = this rank's GPU while the engine starts (its worker processes inherit it)."""
    index = device.partition(":")[2]
    if not device.startswith("cuda") or not index:
        yield
        return
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    visible = old.split(",") if old else None
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[int(index)] if visible else index
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


class VLLMEngine:
    """A ``vllm.LLM`` over a model folder: prompts (token ids, optional images) in, generated token ids out.

    Args:
        model: model folder (or hub id) vLLM loads.
        dtype: weight dtype (``float32``, ``bfloat16``, ``float16``).
        seed: the engine's seed (rows that sample carry their own).
        device: the trainer's device for this rank; ``cuda:<i>`` runs the engine on GPU ``i`` (with
            ``tensor_parallel_size`` > 1 in ``engine_args`` the engine takes the visible GPUs instead).
        trust_remote_code: let vLLM run Python code shipped with the model folder.
        multimodal: the prompts carry one image each.
        processor_kwargs: arguments of the model's HF processor (vLLM's ``mm_processor_kwargs``).
        engine_args: any other ``vllm.LLM`` / ``EngineArgs`` arguments (``tensor_parallel_size``,
            ``gpu_memory_utilization``, ``max_model_len``, ``max_num_seqs``, ``enforce_eager``, ...).
    """

    def __init__(
        self,
        model: str,
        dtype: str,
        seed: int,
        device: str = "cpu",
        trust_remote_code: bool = False,
        multimodal: bool = False,
        processor_kwargs: Mapping | None = None,
        engine_args: Mapping | None = None,
    ) -> None:
        vllm = import_vllm()
        kwargs: dict[str, Any] = {
            "model": model,
            "tokenizer": model,
            "dtype": dtype,
            "seed": seed,
            "trust_remote_code": trust_remote_code,
        }
        if multimodal:
            kwargs["limit_mm_per_prompt"] = {"image": 1}
            if processor_kwargs:
                kwargs["mm_processor_kwargs"] = dict(processor_kwargs)
        kwargs.update(engine_args or {})
        tensor_parallel = int(kwargs.get("tensor_parallel_size", 1)) > 1
        with contextlib.nullcontext() if tensor_parallel else _visible_device(device):
            self.llm = vllm.LLM(**kwargs)

    def generate(self, prompts: Sequence[dict], params: Sequence) -> list[list[int]]:
        """Generated token ids of each prompt (``{"prompt_token_ids": [...], "multi_modal_data": {...}}``)."""
        outputs = self.llm.generate(list(prompts), list(params), use_tqdm=False)
        return [list(out.outputs[0].token_ids) for out in outputs]
