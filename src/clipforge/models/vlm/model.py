"""Vision tower -> projector -> causal LM: the model of enhance's AITQE and recap's ``mini_llava``.

Architecture (AITQE, arXiv 2410.16166; official ``modeling_mm.py``): patch features of a vision tower (SigLIP: the
penultimate layer, every one of the 27 x 27 = 729 patch tokens of so400m-patch14-384) go through the projector
``Linear -> GELU -> Linear(bias=False)`` into the LLM's embedding width. A prompt's image placeholder is expanded
to that many positions (id :data:`IMAGE_POSITION`), whose token embeddings are replaced by the projected features
in order; the causal LM (Qwen2 in the paper, any ``AutoModelForCausalLM`` here) does the rest. One image per
prompt; a prompt without a placeholder gets its image first. AITQE's ``<img_start>{json}<img_end>`` tags are
placeholders too, tokenized as the official processor does (``data_processor.py``): it wraps the tag in
``<noloss_start>...<noloss_end>``, so its newline rule inserts ``"\\n"`` right after ``<img_end>``, and every piece is
tokenized on its own: ``[image, "\\n", "\\nEvaluate the caption: ..."]`` for the official prompt (one token more than
the image followed by the prompt's own text).

The parts: :mod:`.towers` (patch vision towers), :mod:`.causal_lm` (the LLM spec), :mod:`.spec` (:class:`VLMSpec`
and the token conventions), :mod:`.aitqe_io` (the saved folder's layout), :mod:`.generation`, :mod:`.weights`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import torch
from PIL import Image
from torch import nn

from clipforge.models.projector import build_projector, init_projector_as_lookup
from clipforge.models.vlm.aitqe_io import folder_config, load_folder, official_vision_name, save_folder
from clipforge.models.vlm.causal_lm import input_embeddings
from clipforge.models.vlm.generation import VLMGeneration
from clipforge.models.vlm.spec import AITQE_IMAGE, IGNORE_INDEX, IMAGE_POSITION, VLMSpec
from clipforge.models.vlm.towers import PatchVision
from clipforge.models.vlm.weights import parse_dtype

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["VisionLanguageModel"]


class VisionLanguageModel(VLMGeneration, nn.Module):
    """Vision tower + projector + causal LM with the official AITQE module names (see the module docstring).

    Args:
        vision_model: the tower module (``images -> (B, N, C)``), e.g. from ``PatchVision.build()``.
        mm_projector: ``C -> hidden`` projector.
        model: the causal LM.
        tokenizer: its tokenizer (must have a pad token).
        vision: the tower's spec (image transform and ``config.json`` entries).
        language_model_name_or_path: where the LLM came from (provenance in ``config.json``).
        image_placeholder: the string that marks the image in prompts.
        eos_token_id: end-of-answer token (default: the tokenizer's).
    """

    image_newline: torch.Tensor  # a buffer

    def __init__(
        self,
        vision_model: nn.Module,
        mm_projector: nn.Sequential,
        model: PreTrainedModel,
        tokenizer,
        vision: PatchVision,
        language_model_name_or_path: str = "",
        image_placeholder: str = "<image>",
        eos_token_id: int | None = None,
    ) -> None:
        super().__init__()
        self.vision_model, self.mm_projector, self.model = vision_model, mm_projector, model
        hidden = input_embeddings(model).embedding_dim
        self.register_buffer("image_newline", torch.zeros(hidden, dtype=input_embeddings(model).weight.dtype))
        self.tokenizer, self.vision = tokenizer, vision
        self.language_model_name_or_path, self.image_placeholder = (
            language_model_name_or_path,
            image_placeholder,
        )
        self.eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        if tokenizer.pad_token_id is None or self.eos_token_id is None:
            raise ValueError("the tokenizer needs a pad token and an EOS token")
        self.num_image_tokens = vision.num_tokens
        self._placeholder = re.compile(
            f"(?P<plain>{re.escape(image_placeholder)})|(?P<aitqe>{AITQE_IMAGE})", re.DOTALL
        )

    # -- construction ----------------------------------------------------------------------------------------------
    @classmethod
    def build(cls, spec: VLMSpec, empty: bool = False) -> VisionLanguageModel:
        """Pretrained tower and LLM (or random ones, for specs with configs) and a new projector.

        Args:
            spec: what to build.
            empty: allocate uninitialised weights (the caller loads a saved model's weights next).
        """
        dtype = parse_dtype(spec.dtype)
        tokenizer = spec.llm.load_tokenizer()
        llm = spec.llm.build(len(tokenizer), dtype, empty=empty)
        vision_model = spec.vision.build(dtype, empty=empty)
        hidden = input_embeddings(llm).embedding_dim
        projector = build_projector("mlp", spec.vision.feature_dim, hidden).to(dtype)
        vlm = cls(
            vision_model,
            projector,
            llm,
            tokenizer,
            spec.vision,
            spec.llm.name_or_path or "",
            spec.image_placeholder,
        )
        if spec.projector_init == "class_names" and not empty:
            names = spec.class_names
            if names is None:
                from clipforge.utils.zero_shot_metadata import imagenet_classnames

                names = imagenet_classnames()
            init_projector_as_lookup(projector, vlm.text_embeddings(names))
        return vlm

    @classmethod
    def from_pretrained(
        cls,
        path: str,
        dtype: str | None = None,
        vision_model_name_or_path: str | None = None,
        attn_implementation: str | None = None,
    ) -> VisionLanguageModel:
        """Load a folder in the AITQE layout (ours or the released ``HymanH/AITQE``; :func:`.aitqe_io.load_folder`).

        Args:
            path: the folder.
            dtype: weight dtype; ``None`` = the one in ``config.json`` (float32 if absent).
            vision_model_name_or_path: a local copy of the SigLIP checkpoint that a released folder's
                ``vision_model_name_or_path`` names (its config and preprocessor config are read; weights come
                from ``path``) — instead of editing ``config.json`` as the official README suggests.
            attn_implementation: the LLM's attention implementation.
        """
        return load_folder(cls, path, dtype, vision_model_name_or_path, attn_implementation)

    def official_vision_name(self, path: str | None = None) -> str:
        """``vision_model_name_or_path`` of a folder saved at ``path`` (:func:`.aitqe_io.official_vision_name`)."""
        return official_vision_name(self, path)

    def config_dict(self, path: str | None = None) -> dict:
        """The ``config.json`` of :meth:`save_pretrained` (``path``: where it is saved, see
        :meth:`official_vision_name`)."""
        return folder_config(self, path)

    def save_pretrained(self, path: str, max_shard_size: str = "5GB") -> str:
        """Write the folder (``config.json``, safetensors weights with LoRA adapters merged, tokenizer and, for a
        SigLIP tower not named "siglip", :data:`.aitqe_io.SIGLIP_FOLDER`); returns ``path``. The live model is not
        changed (:func:`.aitqe_io.save_folder`)."""
        return save_folder(self, path, max_shard_size)

    @torch.no_grad()
    def text_embeddings(self, texts: Sequence[str]) -> torch.Tensor:
        """``(len(texts), hidden)``: each text's mean input-token embedding (tokenized after a space, as a word
        inside a sentence)."""
        table = input_embeddings(self.model).weight
        rows = []
        for text in texts:
            ids = self._tokens(" " + text.strip())
            if not ids:
                raise ValueError(f"{text!r} has no tokens")
            rows.append(table[ids].float().mean(0))
        return torch.stack(rows)

    # -- inputs ----------------------------------------------------------------------------------------------------
    def image_transform(self, train: bool = False) -> Callable:
        """The vision tower's ``PIL -> Tensor`` transform."""
        return self.vision.image_transform(train)

    @property
    def device(self) -> torch.device:
        return self.image_newline.device

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """``(B, 3, H, W)`` tensor of PIL images (converted to RGB)."""
        tf = self.image_transform(False)
        return torch.stack([tf(im.convert("RGB")) for im in images])

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _prompt_ids(self, prompt: str) -> list[int]:
        found = list(self._placeholder.finditer(prompt))
        if len(found) > 1:
            raise ValueError(f"one image per prompt: {len(found)} placeholders in {prompt!r}")
        image = [IMAGE_POSITION] * self.num_image_tokens
        if not found:
            return image + self._tokens(prompt)
        tag = found[0]
        # AITQE's processor wraps the tag in <noloss_start>...<noloss_end>, so its newline rule adds "\n" right
        # after <img_end> inside that span, and the pieces are tokenized one by one: image, "\n", the text after
        newline = self._tokens("\n") if tag.lastgroup == "aitqe" else []
        return self._tokens(prompt[: tag.start()]) + image + newline + self._tokens(prompt[tag.end() :])

    def build_inputs(
        self,
        prompts: Sequence[str],
        answers: Sequence[str] | None = None,
        padding_side: str = "right",
        max_length: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Token ids with expanded image positions, attention mask and (with ``answers``) labels.

        A prompt is tokenized around its placeholder without special tokens added (AITQE: no BOS/EOS), with the
        ``"\\n"`` the official processor adds after an AITQE ``<img_end>`` (see the module docstring); an answer
        is tokenized on its own and followed by the EOS token. Labels are the answer tokens and the EOS,
        :data:`IGNORE_INDEX` elsewhere.

        Args:
            prompts: one prompt per image.
            answers: training targets, one per prompt.
            padding_side: ``right`` (training) or ``left`` (generation).
            max_length: cut answers so that no row is longer (a longer prompt is an error).

        Returns:
            ``input_ids`` (:data:`IMAGE_POSITION` at image positions), ``attention_mask`` and, with answers,
            ``labels``; all ``(B, L)`` long tensors on the CPU.
        """
        if answers is not None and len(answers) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        rows = []
        for i, prompt in enumerate(prompts):
            ids = self._prompt_ids(prompt)
            labels = [IGNORE_INDEX] * len(ids)
            if max_length is not None and len(ids) >= max_length:
                raise ValueError(f"prompt of {len(ids)} tokens (image included) >= max_length={max_length}")
            if answers is not None:
                target = self._tokens(answers[i]) + [self.eos_token_id]
                ids, labels = (ids + target)[:max_length], (labels + target)[:max_length]
            rows.append((ids, labels))
        width = max(len(ids) for ids, _ in rows)
        pad = self.tokenizer.pad_token_id
        out = {
            k: torch.full((len(rows), width), v, dtype=torch.long)
            for k, v in (("input_ids", pad), ("attention_mask", 0), ("labels", IGNORE_INDEX))
        }
        for b, (ids, labels) in enumerate(rows):
            span = slice(width - len(ids), width) if padding_side == "left" else slice(0, len(ids))
            out["input_ids"][b, span] = torch.tensor(ids)
            out["attention_mask"][b, span] = 1
            out["labels"][b, span] = torch.tensor(labels)
        if answers is None:
            del out["labels"]
        return out

    # -- forward -----------------------------------------------------------------------------------------------------
    def encode_images(self, images: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Projected patch features ``(B, N, hidden)``, ``chunk_size`` images per tower call (``None``: all; a CNN
        tower on a CPU runs faster in small chunks than in one large batch)."""
        dtype = cast(nn.Linear, self.mm_projector[0]).weight.dtype
        images = images.to(device=self.device, dtype=dtype)
        if chunk_size is None or len(images) <= chunk_size:
            feats = self.vision_model(images)
        else:
            chunks = images.split(chunk_size)
            feats = torch.cat([self.vision_model(chunk) for chunk in chunks])
        return self.mm_projector(feats.to(dtype))

    def embed(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        image_index: torch.Tensor | None = None,
        vision_chunk_size: int | None = None,
    ) -> torch.Tensor:
        """Token embeddings with every row's :data:`IMAGE_POSITION` slots replaced, in order, by its image's
        projected features (the official ``index_put_`` splice).

        Args:
            images: pixel values, one image per row, or (with ``image_index``) each distinct image once.
            input_ids: ``(B, L)`` ids from :meth:`build_inputs`.
            image_index: ``(B,)`` row -> its image in ``images``: rows that share an image share one tower pass.
            vision_chunk_size: images per tower call (:meth:`encode_images`).
        """
        feats = self.encode_images(images, vision_chunk_size)
        if image_index is not None:
            feats = feats[torch.as_tensor(image_index, device=feats.device)]
        embeds = input_embeddings(self.model)(input_ids.clamp(min=0))
        slots = input_ids == IMAGE_POSITION
        if not bool((slots.sum(1) == feats.shape[1]).all()):
            raise ValueError(
                f"every row needs exactly {feats.shape[1]} image positions, got {slots.sum(1).tolist()}"
            )
        return embeds.masked_scatter(slots.unsqueeze(-1), feats.to(embeds.dtype))

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        logits_to_keep: int = 0,
    ) -> torch.Tensor:
        """Next-token logits ``(B, L, V)`` (only the last ``logits_to_keep`` positions when > 0).

        Positions count from each row's first real token, so left and right padding give the same logits.
        """
        embeds = self.embed(images, input_ids)
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=logits_to_keep,
            use_cache=False,
        )
        return out.logits
