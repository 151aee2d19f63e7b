"""Vision tower -> projector -> causal LM (enhance's AITQE, recap's ``mini_llava``); import its names from here.

Modules:

- :mod:`.model` — :class:`VisionLanguageModel` (construction, inputs, forward; the architecture).
- :mod:`.towers` — patch vision towers (:class:`SiglipPatchVision`, :class:`TimmPatchVision`), the square image
  transform, the tower of a saved folder.
- :mod:`.causal_lm` — :class:`CausalLMSpec` and the file-less :func:`byte_level_tokenizer`.
- :mod:`.spec` — :class:`VLMSpec` and the token conventions (:data:`IGNORE_INDEX`, :data:`IMAGE_POSITION`).
- :mod:`.aitqe_io` — the AITQE folder layout (``save_pretrained`` / ``from_pretrained``, :func:`save_tokenizer`).
- :mod:`.generation` — ``generate`` / ``generate_text``.
- :mod:`.weights` — dtype names, skipped initialisation, :func:`load_weights`.
"""

from clipforge.models.vlm.aitqe_io import SIGLIP_FOLDER, save_tokenizer
from clipforge.models.vlm.causal_lm import CausalLMSpec, byte_level_tokenizer
from clipforge.models.vlm.model import VisionLanguageModel
from clipforge.models.vlm.spec import AITQE_IMAGE, IGNORE_INDEX, IMAGE_POSITION, IMAGE_TOKEN_INDEX, VLMSpec
from clipforge.models.vlm.towers import (
    PatchVision,
    SiglipPatches,
    SiglipPatchVision,
    SquareImageTransform,
    TimmPatches,
    TimmPatchVision,
    folder_vision,
    patch_vision_from_config,
)
from clipforge.models.vlm.weights import load_weights

__all__ = [
    "AITQE_IMAGE",
    "IGNORE_INDEX",
    "IMAGE_POSITION",
    "IMAGE_TOKEN_INDEX",
    "SIGLIP_FOLDER",
    "CausalLMSpec",
    "PatchVision",
    "SiglipPatchVision",
    "SiglipPatches",
    "SquareImageTransform",
    "TimmPatchVision",
    "TimmPatches",
    "VLMSpec",
    "VisionLanguageModel",
    "byte_level_tokenizer",
    "folder_vision",
    "load_weights",
    "patch_vision_from_config",
    "save_tokenizer",
]
