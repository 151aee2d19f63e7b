"""What a VLM is built from (:class:`VLMSpec`) and the token conventions of its inputs (:data:`IGNORE_INDEX`, the
label without loss, is the answer loss's: :mod:`clipforge.losses.answer`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from clipforge.losses.answer import IGNORE_INDEX
from clipforge.models.vlm.causal_lm import CausalLMSpec
from clipforge.models.vlm.towers import PatchVision
from clipforge.models.vlm.weights import parse_dtype

__all__ = ["AITQE_IMAGE", "IGNORE_INDEX", "IMAGE_POSITION", "IMAGE_TOKEN_INDEX", "VLMSpec"]

IMAGE_POSITION = -1
"""Token id of the expanded image positions (the official code's marker); never looked up in the embedding."""
IMAGE_TOKEN_INDEX = -200
"""``image_token_index`` written to ``config.json``: the id of an unexpanded image (LLaVA's convention)."""
AITQE_IMAGE = r"<img_start>.*?<img_end>"
"""AITQE's image reference in prompts (``<img_start>{json}<img_end>``), treated as a placeholder."""


class VLMSpec:
    """What a :class:`VisionLanguageModel` is built from.

    Args:
        vision: the vision tower (:class:`~.towers.SiglipPatchVision`, :class:`~.towers.TimmPatchVision`).
        llm: the causal LM.
        image_placeholder: the string that marks the image in prompts.
        dtype: weight dtype of every part (``float32``, ``bfloat16``, ``float16``).
        projector_init: ``random`` (default init), or ``class_names`` for a tower with ``class_probs``: the
            projector starts as a lookup of each class name's mean token embedding weighted by the token's class
            probabilities (:func:`~clipforge.models.projector.init_projector_as_lookup`), so a frozen LLM reads
            the image as soft words before any training.
        class_names: the tower's class names in label order (default: ImageNet-1k's, for 1000 classes).
    """

    def __init__(
        self,
        vision: PatchVision,
        llm: CausalLMSpec,
        image_placeholder: str = "<image>",
        dtype: str = "float32",
        projector_init: str = "random",
        class_names: Sequence[str] | None = None,
    ) -> None:
        parse_dtype(dtype)
        if projector_init not in ("random", "class_names"):
            raise ValueError(f"projector_init must be 'random' or 'class_names', got {projector_init!r}")
        if projector_init == "class_names" and not getattr(vision, "class_probs", False):
            raise ValueError("projector_init='class_names' needs a tower with class_probs=True")
        self.vision, self.llm, self.image_placeholder, self.dtype = vision, llm, image_placeholder, dtype
        self.projector_init = projector_init
        self.class_names = list(class_names) if class_names is not None else None

    def image_transform(self, train: bool) -> Callable:
        """The vision tower's ``PIL -> Tensor`` transform."""
        return self.vision.image_transform(train)

    def __repr__(self) -> str:
        return f"VLMSpec({self.vision!r}, {self.llm!r})"
