"""Tiny stand-in of Qwen-VL's remote-code model: reads each image from the path inside its ``<img>`` span.

Like ``QWenLMHeadModel``, ``forward`` finds ``<img>`` ... ``</img>`` in ``input_ids``, decodes the path bytes between
them, opens the image file and writes its visual features over the span. No KV cache: every step re-runs the
whole sequence (the model is tiny), with positions counted over the attention mask so left padding is neutral.
"""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_qwen import QWenConfig


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
        h = h + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return h + self.mlp(self.ln2(h))


class QWenLMHeadModel(PreTrainedModel, GenerationMixin):
    config_class = QWenConfig
    base_model_prefix = "transformer"

    def __init__(self, config: QWenConfig) -> None:
        super().__init__(config)
        d, p = config.hidden_size, config.image_patch
        self.wte = nn.Embedding(config.vocab_size, d)
        self.wpe = nn.Embedding(config.max_position_embeddings, d)
        self.visual = nn.Linear(3 * p * p, d)
        self.blocks = nn.ModuleList(
            _Block(d, config.num_attention_heads) for _ in range(config.num_hidden_layers)
        )
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.post_init()

    def _encode_image(self, path: str) -> torch.Tensor:
        s, p = self.config.image_size, self.config.image_patch
        img = Image.open(path).convert("RGB").resize((s, s), Image.BICUBIC)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)  # (s, s, 3)
        patches = x.view(s // p, p, s // p, p, 3).permute(0, 2, 1, 3, 4).reshape(-1, 3 * p * p)
        return self.visual(patches.to(self.visual.weight))

    def forward(self, input_ids=None, attention_mask=None, **kwargs) -> CausalLMOutputWithPast:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        h = self.wte(input_ids)
        start, n_img = self.config.image_start_id, (self.config.image_size // self.config.image_patch) ** 2
        for i, a in zip(*torch.where(input_ids == start)):
            end = a + 1 + n_img
            if end >= input_ids.shape[1] or input_ids[i, end] != start + 1:
                continue  # an <img> the model generated itself, not a prompt's image span
            path = bytes(t for t in input_ids[i, a + 1 : end].tolist() if t < 256).decode("utf-8")
            h[i, a + 1 : end] = self._encode_image(path)
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        h = h + self.wpe(pos)
        n = input_ids.shape[1]
        causal = torch.ones(n, n, dtype=torch.bool, device=h.device).tril()
        mask = causal & attention_mask.bool()[:, None, :]
        mask |= torch.eye(n, dtype=torch.bool, device=h.device)  # padded queries see themselves (no NaN)
        for block in self.blocks:
            h = block(h, mask)
        return CausalLMOutputWithPast(logits=self.lm_head(self.ln_f(h)))

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs) -> dict:
        return {"input_ids": input_ids, "attention_mask": attention_mask}
