"""Batched greedy decoding that drops finished rows from the batch.

``transformers``' ``generate`` keeps every row of a batch until the last one finishes: when most answers are short
(an AITQE verdict on a good caption: ``{"Overall Score": "8<Overall>"``, ~12 tokens) and one row writes a long
recaption, the whole batch pays for its every step. Here a row leaves the batch (and the KV cache) on the step it
ends: on an EOS token, or when its generated text first contains a stop string (``transformers``'
``stop_strings`` rule: the string ends inside the newest token). Greedy choices are the argmax of the same logits,
so the tokens are the ones ``generate(do_sample=False)`` writes, up to floating-point ties.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["greedy_decode"]


@torch.no_grad()
def greedy_decode(
    llm: PreTrainedModel,
    inputs_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    stop_strings: Sequence[str] = (),
    tokenizer=None,
    on_logits: Callable[[list[int], torch.Tensor], None] | None = None,
) -> list[list[int]]:
    """The generated token ids of each row (its EOS or stop-completing token included, no padding).

    Args:
        llm: a causal LM taking ``inputs_embeds``, ``position_ids`` and a ``DynamicCache``.
        inputs_embeds: ``(B, L, d)`` left-padded prompt embeddings.
        attention_mask: ``(B, L)``, 0 on padding.
        max_new_tokens: most tokens per row.
        eos_token_ids: tokens that end a row.
        stop_strings: a row also ends when its generated text first contains one of these.
        tokenizer: decodes the generated tokens for ``stop_strings``.
        on_logits: called at every step with the original row indices of the rows still in the batch and their
            next-token logits ``(rows, V)`` (e.g. to record score probabilities).
    """
    from transformers import DynamicCache

    if stop_strings and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer")
    eos = {int(t) for t in eos_token_ids}
    # a stop string that was not in the text one step ago ends in the newest token and starts at most
    # len(stop) - 1 characters before it: the last len(stop) + 1 tokens hold it
    tail = max((len(s) for s in stop_strings), default=0) + 1
    device = inputs_embeds.device
    mask = attention_mask.to(device)
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=llm.config)
    logits = llm(
        inputs_embeds=inputs_embeds,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,
    ).logits[:, -1]
    rows = list(range(inputs_embeds.shape[0]))
    new: list[list[int]] = [[] for _ in rows]
    positions = positions[:, -1:]
    for step in range(max_new_tokens):
        if on_logits is not None:
            on_logits(rows, logits)
        tokens = logits.argmax(-1)
        keep = []
        for j, (row, token) in enumerate(zip(rows, tokens.tolist())):
            new[row].append(token)
            ended = token in eos or (
                stop_strings and any(s in tokenizer.decode(new[row][-tail:]) for s in stop_strings)
            )
            if not ended:
                keep.append(j)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(rows):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            rows = [rows[j] for j in keep]
            tokens, mask, positions = tokens[index], mask[index], positions[index]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
        positions = positions + 1
        logits = llm(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).logits[:, -1]
    return new
