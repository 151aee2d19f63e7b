"""``CaptionPolicy``: which of a record's captions a model trains and is evaluated on.

The shared datamodule reads every source the same way (:class:`~clipforge.data.specs.DatasetSpec`); the choice of
caption belongs to the stages: recap trains on raw + sheared extended captions and sweeps the rewriting / removal
ratios, llm2clip mixes dense captions at a ratio. Those knobs live here, in one typed value the datamodule takes
(``data.caption_policy.*`` in the configs), validated when it is built. Like ``DatasetSpec``, Hydra passes it as a
dict and jsonargparse as the dataclass; :func:`as_caption_policy` normalises both.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clipforge.data.dataset import CAPTION_SAMPLING
from clipforge.data.shear import Shear

WEIGHTED_SAMPLING = ("random_one", "raw_only", "ext_only")
"""Sampling modes that draw one caption at random, the only ones ``source_weights`` applies to."""


def _sources(name: str, value: Sequence[str] | str | None) -> list[str] | None:
    if value is None:
        return None
    names = [value] if isinstance(value, str) else [str(s) for s in value]
    if not names:
        raise ValueError(f"CaptionPolicy.{name}=[] names no source; give at least one, or null for all")
    return names


def _ratio(name: str, value: Any, upper_open: bool) -> None:
    bad = isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    if bad or value < 0 or value > 1 or (upper_open and value == 1):
        interval = "[0, 1)" if upper_open else "[0, 1]"
        raise ValueError(f"CaptionPolicy.{name}={value} must be a number in {interval}")


@dataclass(frozen=True)
class CaptionPolicy:
    """Which captions of a record train and evaluate a model.

    A record's caption sources are ``raw`` (its first caption column: the human captions) and the names of its other
    columns (a recap table's captioners, a ``dense`` column): :attr:`~clipforge.data.records.Record.sources`.

    Attributes:
        sampling: how a training row picks its caption(s), one of
            :data:`~clipforge.data.dataset.CAPTION_SAMPLING` (see :class:`~clipforge.data.dataset.ImageTextDataset`):
            ``random_one`` (a new caption each epoch), ``first``, ``raw_only``, ``ext_only``, ``all_pairs`` (every
            caption once per epoch), ``multi_positive`` (``captions_per_image`` captions of an image per row).
        sources: training caption sources (``[raw, label_llm]``); ``None`` = all.
        source_weights: weight of each source when one caption is drawn (``{raw: 0.5, dense: 0.5}``: LLM2CLIP's
            dense-caption ratio); ``None`` = uniform over a record's captions. Only with ``random_one``,
            ``raw_only``, ``ext_only``.
        eval_sources: caption sources of val/test sets (``[raw]``: the human captions); ``None`` = all.
        shear: text shearing of extended training captions (recap): a :class:`~clipforge.data.shear.Shear` or its
            fields; ``None`` = none.
        rewrite_ratio: fraction of training images (by key) that get only extended captions, the rest only raw ones
            (recap's rewriting sweep, Fig. 1b); ``None`` = off. Not with ``raw_only`` / ``ext_only``, which fix the
            sources themselves.
        remove_ratio: fraction of training images (by key) left out (recap's removal sweep, Fig. 1a); ``0`` = none.
        captions_per_image: captions per row with ``sampling=multi_positive``.

    Raises:
        ValueError: one line naming the field and its value (``CaptionPolicy.remove_ratio=1.5 must be ...``).
    """

    sampling: str = "random_one"
    sources: list[str] | None = None
    source_weights: dict[str, float] | None = None
    eval_sources: list[str] | None = None
    shear: Shear | None = None
    rewrite_ratio: float | None = None
    remove_ratio: float = 0.0
    captions_per_image: int = 2

    def __post_init__(self) -> None:
        if self.sampling not in CAPTION_SAMPLING:
            raise ValueError(
                f"CaptionPolicy.sampling={self.sampling!r} is not one of: {', '.join(CAPTION_SAMPLING)}"
            )
        set_ = object.__setattr__  # frozen: normalise in place once
        set_(self, "sources", _sources("sources", self.sources))
        set_(self, "eval_sources", _sources("eval_sources", self.eval_sources))
        if self.source_weights is not None:
            if not isinstance(self.source_weights, Mapping):
                raise ValueError(
                    f"CaptionPolicy.source_weights={self.source_weights!r} must map sources to weights "
                    "({raw: 0.5, dense: 0.5})"
                )
            weights = {str(k): v for k, v in self.source_weights.items()}
            for source, w in weights.items():
                if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) or w < 0:
                    raise ValueError(f"CaptionPolicy.source_weights.{source}={w} must be a number >= 0")
            if not any(w > 0 for w in weights.values()):
                raise ValueError(f"CaptionPolicy.source_weights={weights}: at least one weight must be > 0")
            if self.sampling not in WEIGHTED_SAMPLING:
                raise ValueError(
                    f"CaptionPolicy.source_weights applies to sampling {', '.join(WEIGHTED_SAMPLING)}, "
                    f"not {self.sampling}"
                )
            set_(self, "source_weights", {k: float(w) for k, w in weights.items()})
        if isinstance(self.shear, Mapping):
            set_(self, "shear", Shear(**self.shear))
        elif self.shear is not None and not isinstance(self.shear, Shear):
            raise ValueError(f"CaptionPolicy.shear={self.shear!r} must be a Shear, its fields, or null")
        if self.rewrite_ratio is not None:
            _ratio("rewrite_ratio", self.rewrite_ratio, upper_open=False)
            if self.sampling in ("raw_only", "ext_only"):
                raise ValueError(
                    f"CaptionPolicy.rewrite_ratio={self.rewrite_ratio} does nothing with sampling={self.sampling} "
                    "(which fixes the sources); use random_one, first, all_pairs or multi_positive"
                )
        _ratio("remove_ratio", self.remove_ratio, upper_open=True)
        n = self.captions_per_image
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"CaptionPolicy.captions_per_image={n} must be a positive integer")

    def dataset_options(self) -> dict[str, Any]:
        """Keyword arguments of :class:`~clipforge.data.dataset.ImageTextDataset` for a training set."""
        return {
            "caption_sampling": self.sampling,
            "caption_sources": self.sources,
            "source_weights": self.source_weights,
            "shear": self.shear,
            "rewrite_ratio": self.rewrite_ratio,
            "remove_ratio": self.remove_ratio,
            "captions_per_image": self.captions_per_image,
        }


FIELDS = tuple(f.name for f in dataclasses.fields(CaptionPolicy))
"""Field names of :class:`CaptionPolicy` (its config keys under ``data.caption_policy``)."""


def as_caption_policy(policy: CaptionPolicy | Mapping | None) -> CaptionPolicy:
    """Normalise a policy given as the dataclass, a mapping (Hydra, jsonargparse) or ``None`` (the defaults).

    Raises:
        ValueError: an unknown field (one line listing the fields), or a value :class:`CaptionPolicy` rejects.
        TypeError: neither a policy, a mapping nor ``None``.
    """
    if policy is None:
        return CaptionPolicy()
    if isinstance(policy, CaptionPolicy):
        return policy
    if isinstance(policy, Mapping):
        unknown = [str(k) for k in policy if k not in FIELDS]
        if unknown:
            raise ValueError(f"CaptionPolicy: unknown field {unknown[0]!r} (fields: {', '.join(FIELDS)})")
        return CaptionPolicy(**policy)
    raise TypeError(f"expected CaptionPolicy, a mapping or None, got {type(policy).__name__}")
