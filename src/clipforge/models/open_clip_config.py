"""open_clip model configs as tower settings: the ``vision_cfg`` / ``text_cfg`` of a named config, overridden."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["open_clip_tower_config"]


def open_clip_tower_config(
    owner: str, part: str, model_name: str | None, overrides: Mapping | None, embed_dim: int | None
) -> tuple[dict, int]:
    """The ``{part}_cfg`` of the open_clip config ``model_name`` with ``overrides`` applied, and the output width.

    Args:
        owner: the tower class, for the error message.
        part: ``vision`` or ``text``.
        model_name: an open_clip model config name (``open_clip.list_models()``), e.g. ``ViT-B-32``; ``None`` =
            ``overrides`` alone.
        overrides: explicit ``CLIPVisionCfg`` / ``CLIPTextCfg`` fields (over the named config's).
        embed_dim: output width; ``None`` = the named config's ``embed_dim``.

    Returns:
        ``(tower config fields, embed_dim)``.

    Raises:
        ValueError: an unknown ``model_name``, or neither ``model_name`` nor ``embed_dim``.
    """
    import open_clip

    base: dict = {}
    if model_name:
        cfg = open_clip.get_model_config(model_name)
        if cfg is None:
            raise ValueError(f"unknown open_clip model config {model_name!r}")
        base, embed_dim = dict(cfg[f"{part}_cfg"]), embed_dim or cfg["embed_dim"]
    if embed_dim is None:
        raise ValueError(f"{owner} needs model_name or embed_dim")
    return {**base, **(overrides or {})}, int(embed_dim)
