"""Otter as its official code computes it, and tiny folders in the released ``luodian/OTTER-Image-MPT7B`` layout.

Re-stated from Luodian/Otter ``src/otter_ai/models/otter/modeling_otter.py`` (``OtterPerceiverBlock``,
``OtterPerceiverResampler``, ``OtterMaskedCrossAttention``, ``OtterGatedCrossAttentionBlock``, ``OtterLayer``,
``OtterLMMixin.forward``'s media locations, ``_encode_vision_x``) and the MosaicML MPT it ships
(``src/otter_ai/models/mpt``: ``MPTBlock`` with ``low_precision_layernorm`` without bias, ``MultiheadAttention`` with
``attn_impl: torch``, ``build_alibi_bias`` / ``gen_slopes``, ``MPTModel._attn_bias``'s key padding, logits through
``wte``) with the official parameter names, so ``state_dict()`` is the released layout. The seed's ``Otter.py``
decoding (greedy, ``no_repeat_ngram_size=3``, EOS ``<|endofchunk|>``) and cut are :func:`official_greedy` and
:func:`seed_cut`. Nothing here imports clipforge's Otter code; the CLIP tower is transformers' ``CLIPVisionModel``
and the LLaMA variant transformers' ``LlamaForCausalLM``, as in the official model.
"""

from __future__ import annotations

import json
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

TINY_VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 224,  # CLIPImageProcessor() defaults crop to 224
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "projection_dim": 32,
}
TINY_MPT = {
    "d_model": 48,
    "n_heads": 6,  # not a power of two: exercises gen_slopes' interleaving
    "n_layers": 4,
    "expansion_ratio": 4,
    "max_seq_len": 128,
    "attn_config": {
        "alibi": True,
        "alibi_bias_max": 8,
        "attn_impl": "torch",
        "attn_pdrop": 0,
        "attn_type": "multihead_attention",
        "attn_uses_sequence_id": False,
        "clip_qkv": None,
        "prefix_lm": False,
        "qk_ln": False,
        "softmax_scale": None,
    },
    "no_bias": True,
    "norm_type": "low_precision_layernorm",
    "logit_scale": None,
    "embedding_fraction": 1.0,
    "learned_pos_emb": True,
    "emb_pdrop": 0,
    "resid_pdrop": 0,
    "init_device": "cpu",
    "tokenizer_name": "EleutherAI/gpt-neox-20b",
    "tie_word_embeddings": True,
    "use_cache": False,
    "architectures": ["MPTForCausalLM"],
    "model_type": "mpt",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.30.1",
}
TINY_LLAMA = {
    "model_type": "llama",
    "architectures": ["LlamaForCausalLM"],
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "use_cache": True,
}
CROSS_ATTN_EVERY = 2


def _ffn(dim: int, mult: int = 4) -> nn.ModuleList:
    return nn.ModuleList(
        [
            nn.LayerNorm(dim),
            nn.Linear(dim, dim * mult, bias=False),
            nn.GELU(),
            nn.Linear(dim * mult, dim, bias=False),
        ]
    )


def _split_heads(x, h):  # "... n (h d) -> ... h n d"
    return x.unflatten(-1, (h, -1)).movedim(-2, -3)


class OfficialPerceiverBlock(nn.Module):
    def __init__(self, dim: int, dim_head: int = 64, heads: int = 8) -> None:
        super().__init__()
        self.scale, self.heads = dim_head**-0.5, heads
        self.norm_media, self.norm_latents = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_kv = nn.Linear(dim, dim_head * heads * 2, bias=False)
        self.to_out = nn.Linear(dim_head * heads, dim, bias=False)
        self.feed_forward = _ffn(dim)

    def forward(self, x, latents):
        x = self.norm_media(x)
        residual_latents = latents
        latents = self.norm_latents(latents)
        q = _split_heads(self.to_q(latents), self.heads)  # b t h n d
        k, v = self.to_kv(torch.cat((x, latents), dim=-2)).chunk(2, dim=-1)
        k, v = _split_heads(k, self.heads), _split_heads(v, self.heads)
        sim = torch.einsum("...id,...jd->...ij", q * self.scale, k)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        out = torch.einsum("...ij,...jd->...id", sim.softmax(dim=-1), v)
        out = self.to_out(out.movedim(-3, -2).flatten(-2)) + residual_latents
        residual_out = out
        for layer in self.feed_forward:
            out = layer(out)
        return out + residual_out


class OfficialPerceiverResampler(nn.Module):
    def __init__(self, dim: int, depth: int = 6, num_latents: int = 64) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, dim))
        self.layers = nn.ModuleList([OfficialPerceiverBlock(dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):  # (b, T, F, v, D), no frame / media-time embeddings (Otter-Image)
        b, T = x.shape[:2]
        x = x.flatten(2, 3)
        latents = self.latents[None, None].repeat(b, T, 1, 1)
        for block in self.layers:
            latents = block(x, latents)
        return self.norm(latents)


class OfficialMaskedCrossAttention(nn.Module):
    def __init__(self, dim: int, dim_visual: int, dim_head: int = 64, heads: int = 8) -> None:
        super().__init__()
        self.scale, self.heads = dim_head**-0.5, heads
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim_head * heads, bias=False)
        self.to_kv = nn.Linear(dim_visual, dim_head * heads * 2, bias=False)
        self.to_out = nn.Linear(dim_head * heads, dim, bias=False)

    def forward(self, x, media, media_locations, no_media_from=None):
        _, t_img, n = media.shape[:3]
        q = _split_heads(self.to_q(self.norm(x)), self.heads) * self.scale
        k, v = self.to_kv(media.flatten(1, 2)).chunk(2, dim=-1)
        k, v = _split_heads(k, self.heads), _split_heads(v, self.heads)
        sim = torch.einsum("...id,...jd->...ij", q, k)
        text_time = media_locations.cumsum(dim=-1)
        if no_media_from is not None:  # cached generation: each new token is forwarded alone, without <image>
            text_time[:, no_media_from:] = 0
        media_time = torch.arange(t_img) + 1
        mask = text_time[:, None, :, None] == media_time.repeat_interleave(n)[None, None, None, :]
        sim = sim.masked_fill(~mask, -torch.finfo(sim.dtype).max)
        sim = sim - sim.amax(dim=-1, keepdim=True).detach()
        attn = sim.softmax(dim=-1).masked_fill((text_time == 0)[:, None, :, None], 0.0)
        out = torch.einsum("...ij,...jd->...id", attn, v)
        return self.to_out(out.movedim(-3, -2).flatten(-2))


class OfficialGatedCrossAttentionBlock(nn.Module):
    def __init__(self, dim: int, dim_visual: int) -> None:
        super().__init__()
        self.attn = OfficialMaskedCrossAttention(dim, dim_visual)
        self.attn_gate = nn.Parameter(torch.tensor([0.0]))
        self.feed_forward = _ffn(dim)
        self.ff_gate = nn.Parameter(torch.tensor([0.0]))

    def forward(self, x, media, media_locations, no_media_from=None):
        x = self.attn(x, media, media_locations, no_media_from) * self.attn_gate.tanh() + x
        residual_x = x
        for ff in self.feed_forward:
            x = ff(x)
        return x * self.ff_gate.tanh() + residual_x


class OfficialOtterLayer(nn.Module):
    def __init__(self, gated_cross_attn_layer, decoder_layer) -> None:
        super().__init__()
        self.gated_cross_attn_layer = gated_cross_attn_layer
        self.decoder_layer = decoder_layer
        self.vis_x = self.media_locations = self.no_media_from = None

    def forward(self, lang_x, *args, **kwargs):
        if self.gated_cross_attn_layer is not None:
            lang_x = self.gated_cross_attn_layer(lang_x, self.vis_x, self.media_locations, self.no_media_from)
        return self.decoder_layer(lang_x, *args, **kwargs)


# -- MosaicML MPT (attn_impl torch, ALiBi, no biases) -------------------------------------------------------------
class BiaslessLayerNorm(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, None, 1e-5)


class MosaicAttention(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.Wqkv = nn.Linear(d, 3 * d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)

    def forward(self, x, attn_bias):
        q, k, v = self.Wqkv(x).chunk(3, dim=2)
        q = _split_heads(q, self.heads)  # b h s d
        k = _split_heads(k, self.heads).transpose(-1, -2)  # b h d s
        v = _split_heads(v, self.heads)
        s_q, s_k = q.shape[2], k.shape[-1]
        w = q.matmul(k) * (1 / math.sqrt(q.shape[-1])) + attn_bias[:, :, -s_q:, -s_k:]
        causal = ~torch.ones(s_q, s_k, dtype=torch.bool).tril()
        w = w.masked_fill(causal, torch.finfo(q.dtype).min).softmax(dim=-1)
        return self.out_proj(w.matmul(v).movedim(1, 2).flatten(2))


class MosaicMLP(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.up_proj, self.act, self.down_proj = (
            nn.Linear(d, 4 * d, bias=False),
            nn.GELU(),
            nn.Linear(4 * d, d, bias=False),
        )

    def forward(self, x):
        return self.down_proj(self.act(self.up_proj(x)))


class MosaicBlock(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.norm_1, self.attn = BiaslessLayerNorm(d), MosaicAttention(d, heads)
        self.norm_2, self.ffn = BiaslessLayerNorm(d), MosaicMLP(d)

    def forward(self, x, attn_bias=None):
        x = x + self.attn(self.norm_1(x), attn_bias)
        return x + self.ffn(self.norm_2(x))


def mosaic_alibi(heads: int, seq_len: int, alibi_bias_max: int = 8):
    """``build_alibi_bias(full=False)`` with ``gen_slopes``: ``(1, heads, 1, seq_len)``."""
    n = 2 ** math.ceil(math.log2(heads))
    slopes = 1.0 / torch.pow(2, torch.arange(1, n + 1, dtype=torch.float32) * (alibi_bias_max / n))
    if n != heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:heads]
    return torch.arange(1 - seq_len, 1, dtype=torch.int32).view(1, 1, 1, seq_len) * slopes.view(
        1, heads, 1, 1
    )


class MosaicTransformer(nn.Module):
    def __init__(self, cfg: dict, vocab: int) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, cfg["d_model"])
        self.blocks = nn.ModuleList(
            [MosaicBlock(cfg["d_model"], cfg["n_heads"]) for _ in range(cfg["n_layers"])]
        )
        self.norm_f = BiaslessLayerNorm(cfg["d_model"])
        self.heads, self.max_seq_len = cfg["n_heads"], cfg["max_seq_len"]


class MosaicMPTForCausalLM(nn.Module):
    def __init__(self, cfg: dict, vocab: int) -> None:
        super().__init__()
        self.transformer = MosaicTransformer(cfg, vocab)

    def forward(self, input_ids, attention_mask):
        t = self.transformer
        bias = mosaic_alibi(t.heads, t.max_seq_len)[..., -input_ids.shape[1] :]
        bias = bias.masked_fill(
            ~attention_mask.bool().view(input_ids.shape[0], 1, 1, -1), torch.finfo(torch.float32).min
        )
        x = t.wte(input_ids)
        for block in t.blocks:
            x = block(x, attn_bias=bias)
        return F.linear(t.norm_f(x), t.wte.weight)


class OfficialOtter(nn.Module):
    """``OtterForConditionalGeneration`` (MPT or LLaMA language model) for one forward / a greedy loop."""

    def __init__(self, config: dict, vocab: int, media_token_id: int) -> None:
        from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

        super().__init__()
        self.vision_encoder = CLIPVisionModel(CLIPVisionConfig(**config["vision_config"]))
        vis_dim = config["vision_config"]["hidden_size"]  # the official hard-codes 1024 (CLIP ViT-L)
        self.perceiver = OfficialPerceiverResampler(vis_dim)
        text = config["text_config"]
        self.is_mpt = text["model_type"] == "mpt"
        if self.is_mpt:
            self.lang_encoder = MosaicMPTForCausalLM(text, vocab)
            holder, hidden = self.lang_encoder.transformer, text["d_model"]
            layers = holder.blocks
        else:
            cfg = {k: v for k, v in text.items() if k not in ("model_type", "architectures", "vocab_size")}
            self.lang_encoder = LlamaForCausalLM(LlamaConfig(**cfg, vocab_size=vocab))
            holder, hidden = self.lang_encoder.model, text["hidden_size"]
            layers = holder.layers
        wrapped = [
            OfficialOtterLayer(
                OfficialGatedCrossAttentionBlock(hidden, vis_dim)
                if (i + 1) % config["cross_attn_every_n_layers"] == 0
                else None,
                layer,
            )
            for i, layer in enumerate(layers)
        ]
        if self.is_mpt:
            holder.blocks = nn.ModuleList(wrapped)
        else:
            holder.layers = nn.ModuleList(wrapped)
        self.otter_layers = wrapped
        self.media_token_id = media_token_id

    def forward(self, vision_x, lang_x, attention_mask, no_media_from=None):
        """Logits; ``no_media_from``: positions from there on get no cross-attention (cached generation)."""
        b, T, Fr = vision_x.shape[:3]
        feats = self.vision_encoder(vision_x.flatten(0, 2))[0][:, 1:, :]
        vis_x = self.perceiver(feats.unflatten(0, (b, T, Fr)))
        for layer in self.otter_layers:
            layer.vis_x, layer.media_locations, layer.no_media_from = (
                vis_x,
                lang_x == self.media_token_id,
                no_media_from,
            )
        if self.is_mpt:
            return self.lang_encoder(lang_x, attention_mask)
        return self.lang_encoder(input_ids=lang_x, attention_mask=attention_mask).logits


@torch.no_grad()
def official_greedy(model, vision_x, lang_x, attention_mask, eoc_id, max_new_tokens=30, cached=False):
    """``generate(num_beams=1, no_repeat_ngram_size=3, max_new_tokens=30, eos_token_id=eoc)`` greedy; finished
    rows continue with ``eoc`` (no pad id is passed). ``cached``: the KV-cached semantics (new tokens alone)."""
    from transformers import NoRepeatNGramLogitsProcessor

    ngram = NoRepeatNGramLogitsProcessor(3)
    ids, mask = lang_x.clone(), attention_mask.clone()
    prompt = ids.shape[1]
    done = torch.zeros(ids.shape[0], dtype=torch.bool)
    for _ in range(max_new_tokens):
        logits = model(vision_x, ids, mask, no_media_from=prompt if cached else None)[:, -1].float()
        nxt = ngram(ids, logits).argmax(-1)
        nxt = torch.where(done, torch.full_like(nxt, eoc_id), nxt)
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        done |= nxt == eoc_id
        if done.all():
            break
    return ids


def seed_cut(decoded: str) -> str:
    """``Otter.py``: words not starting with ``<``, after ``GPT:``, cut at ``<|endofchunk|>`` and at ``.``."""
    output = [x for x in decoded.split(" ") if not x.startswith("<")]
    out_label = output.index("GPT:")
    output = " ".join(output[out_label + 1 :])
    return output.split("<|endofchunk|>")[0].split(".")[0]


# -- tiny released folders ----------------------------------------------------------------------------------------
def save_tiny_neox_tokenizer(path) -> str:
    """A byte-level BPE tokenizer shaped like ``mosaicml/mpt-7b-instruct``'s: ``<|endoftext|>`` as BOS/EOS/UNK, no
    pad token and none of Otter's special tokens (the model class adds them)."""
    from tests.helpers.tiny_vlms import _bpe

    tok = _bpe(
        ["<|endoftext|>"], eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )
    tok.save_pretrained(path)
    return os.fspath(path)


def otter_tokenizer(path):
    """The tokenizer as ``OtterForConditionalGeneration.__init__`` leaves it, and its media / end-of-chunk ids."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    tok.add_special_tokens({"additional_special_tokens": ["<|endofchunk|>", "<image>", "<answer>"]})
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": "<PAD>"})
    tok.padding_side = "left"
    return tok, tok.encode("<image>")[-1], tok.encode("<|endofchunk|>")[-1]


def save_official_otter(path, language_model: str = "mpt", seed: int = 0, shards: int = 2) -> dict:
    """An Otter folder in the released layout: ``config.json`` (``OtterConfig.to_dict`` shape) and the weights
    as ``shards`` safetensors files with ``model.safetensors.index.json``; its tokenizer in ``<path>-tokenizer``
    (the official MPT Otter reads ``mosaicml/mpt-7b-instruct``, not the model folder). Returns the paths, the
    config and the reference model with the saved weights."""
    from safetensors.torch import save_file

    from tests.helpers.tiny_vlms import _bpe

    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)
    tok_dir = path + "-tokenizer"
    if language_model == "mpt":
        save_tiny_neox_tokenizer(tok_dir)
        text = dict(TINY_MPT)
    else:
        _bpe(
            ["<unk>", "<s>", "</s>"], bos="<s>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
        ).save_pretrained(tok_dir)
        text = dict(TINY_LLAMA)
    tok, media_id, _ = otter_tokenizer(tok_dir)
    vocab = 64 * math.ceil(
        (len(tok) + 10) / 64
    )  # a padded embedding matrix, as MPT-7B's 50432 > 50281 tokens
    text["vocab_size"] = vocab
    config = {
        "_name_or_path": "tiny-otter",
        "architectures": ["OtterForConditionalGeneration"],
        "model_type": "otter",
        "cross_attn_every_n_layers": CROSS_ATTN_EVERY,
        "use_media_placement_augmentation": True,
        "only_attend_previous": True,
        "text_config": text,
        "vision_config": {
            **TINY_VISION,
            "model_type": "clip_vision_model",
            "_name_or_path": "openai/clip-vit-large-patch14",
        },
        "torch_dtype": "float32",
    }
    torch.manual_seed(seed)
    model = OfficialOtter(config, vocab, media_id).eval()
    with torch.no_grad():
        for p in model.parameters():  # gates start at 0 (no cross-attention): move everything off its init
            p.add_(torch.randn_like(p) * 0.1)
    state = {
        k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith("rotary_emb.inv_freq")
    }
    state["vision_encoder.vision_model.embeddings.position_ids"] = torch.arange(50)[
        None
    ]  # older transformers
    keys = sorted(state)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i::shards]}
        save_file(part, os.path.join(path, name))
        weight_map.update(dict.fromkeys(part, name))
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return {"path": path, "tokenizer": tok_dir, "config": config, "reference": model}
