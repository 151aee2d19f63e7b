"""MiniGPT-4 as its official code computes it, and tiny checkpoints in its released file layout (tests only).

Re-stated from Vision-CAIR/MiniGPT-4 (``minigpt4/models/eva_vit.py`` ``VisionTransformer``/``Block``/``Attention``,
``Qformer.py`` ``BertEmbeddings``/``BertLayer`` on the query-only path, ``blip2.py`` ``LayerNorm`` /
``load_from_pretrained``, ``minigpt4.py`` ``encode_img``) and the recap seed's ``conversation.py`` (``Conversation``
in the ``SINGLE`` style, ``Chat.upload_img``/``ask``/``get_context_emb``/``batch_answer``), module by module with
the official parameter names, so ``state_dict()`` gives the released key layout and ``forward`` is the reference.
Nothing here imports clipforge's MiniGPT-4 code; the LLM is transformers' ``LlamaForCausalLM``, as in the official
model.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers.tiny_hf import TINY_DECODER

TINY = {
    "image_size": 28,
    "patch_size": 14,
    "vision_width": 32,
    "vision_depth": 2,  # blocks used; the eva file holds one more, as eva_vit_g.pth holds 40 for 39 used
    "vision_heads": 2,
    "mlp_ratio": 4.3637,
    "qformer_width": 24,
    "qformer_layers": 4,
    "qformer_heads": 2,
    "qformer_intermediate": 40,
    "cross_attention_freq": 2,
    "num_query_tokens": 4,
}


# -- EVA ViT-g (eva_vit.py) ---------------------------------------------------------------------------------------
class EvaAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class EvaMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class EvaBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EvaAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = EvaMlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class EvaPatchEmbed(nn.Module):
    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class EvaViT(nn.Module):
    """``VisionTransformer`` without head or final norm: the tokens after the last block."""

    def __init__(self, image_size, patch_size, dim, depth, heads, mlp_ratio) -> None:
        super().__init__()
        self.patch_embed = EvaPatchEmbed(patch_size, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, (image_size // patch_size) ** 2 + 1, dim) * 0.02)
        self.blocks = nn.ModuleList([EvaBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.num_features = dim

    def forward(self, x):
        x = self.patch_embed(x)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return x


class FP32LayerNorm(nn.LayerNorm):
    """``blip2.LayerNorm``: computed in float32."""

    def forward(self, x):
        return super().forward(x.float()).to(x.dtype)


# -- Q-Former (Qformer.py), the query-only path that MiniGPT-4 runs -----------------------------------------------
class BertSelfAttention(nn.Module):
    def __init__(self, width: int, kv_width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = (
            nn.Linear(width, width),
            nn.Linear(kv_width, width),
            nn.Linear(kv_width, width),
        )

    def _split(self, x):
        return x.view(*x.shape[:-1], self.heads, -1).permute(0, 2, 1, 3)

    def forward(self, x, context=None):
        context = x if context is None else context
        q, k, v = self._split(self.query(x)), self._split(self.key(context)), self._split(self.value(context))
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        out = scores.softmax(dim=-1) @ v
        return out.permute(0, 2, 1, 3).reshape(*x.shape[:-1], -1)


class BertDenseNorm(nn.Module):
    """``BertSelfOutput`` / ``BertOutput``: dense, then LayerNorm of (result + residual)."""

    def __init__(self, d_in: int, width: int) -> None:
        super().__init__()
        self.dense = nn.Linear(d_in, width)
        self.LayerNorm = nn.LayerNorm(width, eps=1e-12)

    def forward(self, x, residual):
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, width: int, kv_width: int, heads: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(width, kv_width, heads)
        self.output = BertDenseNorm(width, width)

    def forward(self, x, context=None):
        return self.output(self.self(x, context), x)


class BertIntermediate(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(width, hidden)

    def forward(self, x):
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, i: int, width: int, kv_width: int, heads: int, hidden: int, freq: int) -> None:
        super().__init__()
        self.attention = BertAttention(width, width, heads)
        self.has_cross_attention = i % freq == 0
        if self.has_cross_attention:
            self.crossattention = BertAttention(width, kv_width, heads)
        # the text FFN: in the BLIP-2 checkpoint, deleted by MiniGPT-4 (layer.intermediate = layer.output = None)
        self.intermediate, self.output = BertIntermediate(width, hidden), BertDenseNorm(hidden, width)
        self.intermediate_query, self.output_query = (
            BertIntermediate(width, hidden),
            BertDenseNorm(hidden, width),
        )

    def forward(self, queries, image):
        x = self.attention(queries)
        if self.has_cross_attention:
            x = self.crossattention(x, image)
        return self.output_query(self.intermediate_query(x), x)


class BertEmbeddings(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(60, width)  # deleted by MiniGPT-4; in the BLIP-2 file
        self.position_embeddings = nn.Embedding(16, width)
        self.LayerNorm = nn.LayerNorm(width, eps=1e-12)

    def forward(self, query_embeds):
        return self.LayerNorm(query_embeds)  # input_ids is None: the queries alone


class BertEncoder(nn.Module):
    def __init__(self, layers) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)


class BertModel(nn.Module):
    def __init__(self, cfg: dict, kv_width: int) -> None:
        super().__init__()
        w = cfg["qformer_width"]
        self.embeddings = BertEmbeddings(w)
        self.encoder = BertEncoder(
            [
                BertLayer(
                    i,
                    w,
                    kv_width,
                    cfg["qformer_heads"],
                    cfg["qformer_intermediate"],
                    cfg["cross_attention_freq"],
                )
                for i in range(cfg["qformer_layers"])
            ]
        )

    def forward(self, query_embeds, encoder_hidden_states):
        x = self.embeddings(query_embeds)
        for layer in self.encoder.layer:
            x = layer(x, encoder_hidden_states)
        return x


class QformerLM(nn.Module):
    """``BertLMHeadModel``: ``bert`` and an LM head ``cls`` (deleted by MiniGPT-4; in the BLIP-2 file)."""

    def __init__(self, cfg: dict, kv_width: int) -> None:
        super().__init__()
        self.bert = BertModel(cfg, kv_width)
        self.cls = nn.Module()
        self.cls.predictions = nn.Linear(cfg["qformer_width"], 60)


class OfficialMiniGPT4(nn.Module):
    """``MiniGPT4``'s image side + ``llama_model``; :meth:`forward` runs ``encode_img`` and ``get_context_emb``."""

    def __init__(self, cfg: dict, llm_hidden: int) -> None:
        super().__init__()
        self.visual_encoder = EvaViT(
            cfg["image_size"],
            cfg["patch_size"],
            cfg["vision_width"],
            cfg["vision_depth"],
            cfg["vision_heads"],
            cfg["mlp_ratio"],
        )
        self.ln_vision = FP32LayerNorm(cfg["vision_width"])
        self.Qformer = QformerLM(cfg, cfg["vision_width"])
        self.query_tokens = nn.Parameter(torch.randn(1, cfg["num_query_tokens"], cfg["qformer_width"]) * 0.02)
        self.llama_proj = nn.Linear(cfg["qformer_width"], llm_hidden)
        self.llama_model = None
        self.llama_tokenizer = None

    def encode_img(self, image):
        image_embeds = self.ln_vision(self.visual_encoder(image))
        query = self.query_tokens.expand(image_embeds.shape[0], -1, -1)
        return self.llama_proj(self.Qformer.bert(query_embeds=query, encoder_hidden_states=image_embeds))

    def context_emb(self, prompt: str, image_emb):
        """``Chat.get_context_emb`` for one image: BOS only on the first segment."""
        segs = prompt.split("<ImageHere>")
        tokens = [
            self.llama_tokenizer(s, return_tensors="pt", add_special_tokens=i == 0).input_ids
            for i, s in enumerate(segs)
        ]
        embeds = [self.llama_model.model.embed_tokens(t) for t in tokens]
        return torch.cat([embeds[0], image_emb, embeds[1]], dim=1), tokens

    def forward(self, image, prompt: str):
        """Logits of the LLM on ``prompt`` with ``image`` (one image, ``(1, 3, H, W)``)."""
        embs, _ = self.context_emb(prompt, self.encode_img(image))
        return self.llama_model(inputs_embeds=embs).logits


def official_prompt(question: str = "Describe in English:") -> str:
    """``CONV_VISION_Vicuna0`` after ``upload_img`` + ``ask(question)`` + the empty assistant turn (``get_prompt``)."""
    system = (
        "Give the following image: <Img>ImageContent</Img>. You will be able to see the image once I provide it "
        "to you. Please answer my questions."
    )
    roles, sep = ("Human: ", "Assistant: "), "###"
    messages = [[roles[0], "<Img><ImageHere></Img>"]]
    if messages[-1][1][-6:] == "</Img>":  # ask(): the question joins the image message
        messages[-1][1] = " ".join([messages[-1][1], question])
    messages.append([roles[1], None])
    out = system + sep
    for role, message in messages:
        out += role + message + sep if message else role
    return out


def batch_answer_text(token_ids: list[int], tokenizer) -> str:
    """``Chat.batch_answer`` on one generated row: drop a leading 0 (``<unk>``) then 1 (``<s>``), decode, cut."""
    if token_ids and token_ids[0] == tokenizer.unk_token_id:
        token_ids = token_ids[1:]
    if token_ids and token_ids[0] == tokenizer.bos_token_id:
        token_ids = token_ids[1:]
    text = tokenizer.decode(token_ids, skip_special_tokens=False)
    text = text.split("###")[0].split(".")[0]
    return text.split("Assistant:")[-1].strip().replace("\n", "").replace("\u200b", "")


def eval_pixels(image, size: int):
    """``Blip2ImageEvalProcessor``: square bicubic resize, to tensor, OpenAI-CLIP normalisation."""
    from torchvision import transforms

    t = transforms.Compose(
        [
            transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.ToTensor(),
            transforms.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        ]
    )
    return t(image)


# -- tiny released files ------------------------------------------------------------------------------------------
def save_tiny_llama_vicuna(path) -> str:
    """A 2-layer Llama folder with a Llama-like tokenizer: ``<unk>`` 0, ``<s>`` 1 (BOS added), ``</s>`` 2."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers.tiny_vlms import _bpe

    tok = _bpe(["<unk>", "<s>", "</s>"], bos="<s>", unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    cfg = LlamaConfig(
        vocab_size=len(tok), **TINY_DECODER, max_position_embeddings=256, bos_token_id=1, eos_token_id=2
    )
    torch.manual_seed(1)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return os.fspath(path)


@torch.no_grad()
def _perturb(model: nn.Module) -> None:
    """Move every tensor away from its init (zero biases, unit norms, zero q/v biases) so a dropped or swapped
    tensor changes the outputs."""
    for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.1)


def save_official_minigpt4(root, cfg: dict | None = None, seed: int = 0) -> dict:
    """Write ``eva_vit_g.pth``, ``blip2_pretrained_flant5xxl.pth``, ``pretrained_minigpt4.pth`` and ``llm/`` under
    ``root`` in the released layouts; returns their paths."""
    cfg = {**TINY, **(cfg or {})}
    root = os.fspath(root)
    os.makedirs(root, exist_ok=True)
    llm = save_tiny_llama_vicuna(os.path.join(root, "llm"))
    torch.manual_seed(seed)
    model = OfficialMiniGPT4(cfg, TINY_DECODER["hidden_size"])
    _perturb(model)
    extra_block = EvaBlock(
        cfg["vision_width"], cfg["vision_heads"], cfg["mlp_ratio"]
    )  # the unused 40th block
    state = model.state_dict()
    eva = {k.removeprefix("visual_encoder."): v for k, v in state.items() if k.startswith("visual_encoder.")}
    eva.update({f"blocks.{cfg['vision_depth']}.{k}": v for k, v in extra_block.state_dict().items()})
    blip2 = {k: v for k, v in state.items() if k.split(".")[0] in ("ln_vision", "Qformer", "query_tokens")}
    blip2.update(
        {
            "vision_proj.weight": torch.randn(8, cfg["qformer_width"]),
            "text_proj.weight": torch.randn(8, cfg["qformer_width"]),
            "itm_head.weight": torch.randn(2, cfg["qformer_width"]),
            "temp": torch.tensor(0.07),
            "Qformer.bert.embeddings.position_ids": torch.arange(16)[None],
        }
    )
    proj = {k: v for k, v in state.items() if k.startswith("llama_proj.")}
    files = {
        "eva_vit": os.path.join(root, "eva_vit_g.pth"),
        "qformer": os.path.join(root, "blip2_pretrained_flant5xxl.pth"),
        "checkpoint": os.path.join(root, "pretrained_minigpt4.pth"),
    }
    torch.save(eva, files["eva_vit"])
    torch.save({"model": blip2, "config": {"arch": "blip2"}, "epoch": 9}, files["qformer"])
    torch.save({"model": proj, "epoch": 4}, files["checkpoint"])
    return {**files, "llm": llm, "cfg": cfg}


def load_official_minigpt4(files: dict) -> OfficialMiniGPT4:
    """The official loading sequence: build, eva file into ``visual_encoder`` (strict=False), the BLIP-2 file and
    the MiniGPT-4 checkpoint into the model (strict=False, later wins), ``LlamaForCausalLM`` + tokenizer."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    llama = LlamaForCausalLM.from_pretrained(files["llm"]).eval()
    model = OfficialMiniGPT4(files["cfg"], llama.config.hidden_size)
    model.visual_encoder.load_state_dict(torch.load(files["eva_vit"], weights_only=True), strict=False)
    for key in ("qformer", "checkpoint"):
        model.load_state_dict(torch.load(files[key], weights_only=True)["model"], strict=False)
    model.llama_model = llama
    model.llama_tokenizer = AutoTokenizer.from_pretrained(files["llm"])
    return model.eval()
