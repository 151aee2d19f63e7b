"""Image loading: any ``ImageRef`` -> an RGB ``PIL.Image``, or an ``ImageLoadError`` with a reason.

Reasons: ``missing_file``, ``zero_byte``, ``unreadable`` (not an image, corrupt), ``truncated``,
``too_many_pixels`` (checked from the header, before pixels are decoded). Truncated files stay errors:
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is never set. Conversions to RGB: CMYK; L/LA/P/PA/1; alpha composited onto
white; 16-bit (``I;16*``) and 32-bit integer (``I``) scaled to 8 bits (divide by 257, no clipping); float
(``F``) scaled from [0, 1] (or its min-max range when outside).
"""

from __future__ import annotations

import functools
import io
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipforge.data.errors import ImageLoadError
from clipforge.data.records import HFImageRef, ImageRef, SyntheticRef, TarMemberRef
from clipforge.data.transforms import ImageTransform

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb threshold


def read_tar_member(ref: TarMemberRef) -> bytes:
    """The bytes of a tar member, by seeking to its data offset."""
    try:
        with open(ref.tar, "rb") as f:
            f.seek(ref.offset)
            return f.read(ref.size)
    except FileNotFoundError as e:
        raise ImageLoadError("missing_file", ref.tar) from e


@functools.lru_cache(maxsize=8)
def _saved_dataset(path: str):
    import datasets

    return datasets.load_from_disk(path).with_format("arrow")


def read_hf_cell(ref: HFImageRef) -> bytes | str:
    """Bytes (or a path) of an ``Image`` cell of a saved dataset, without decoding it."""
    try:
        table = _saved_dataset(ref.path)[ref.row]
    except FileNotFoundError as e:
        raise ImageLoadError("missing_file", ref.path) from e
    cell = table.column(ref.column)[0].as_py() or {}
    if cell.get("bytes"):
        return cell["bytes"]
    if cell.get("path"):
        return cell["path"]
    raise ImageLoadError("missing_file", f"{ref.path}#{ref.row}: empty image cell")


def _scale_to_uint8(arr: np.ndarray, is_int16: bool) -> np.ndarray:
    arr = arr.astype(np.float64)
    if is_int16 or (arr.size and arr.min() >= 0 and arr.max() <= 65535):
        arr = arr / 257.0  # 16-bit range -> 8-bit range (65535 -> 255, 32896 -> 128); "I" PNGs are 16-bit
    elif arr.size and (arr.min() < 0 or arr.max() > 255):
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return np.clip(np.round(arr), 0, 255).astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (alpha composited onto white, high bit depths scaled, not clipped)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16") or mode == "I":
        grey = _scale_to_uint8(np.asarray(img), is_int16=mode.startswith("I;16"))
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        if lo >= 0.0 and hi <= 1.0:
            lo, hi = 0.0, 1.0
        arr = np.nan_to_num((arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr))
        return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L").convert("RGB")
    if (mode == "P" and "transparency" in img.info) or mode in ("PA", "LA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")


def _open_source(ref: ImageRef) -> io.BytesIO | str:
    if isinstance(ref, HFImageRef):
        ref = read_hf_cell(ref)
    if isinstance(ref, TarMemberRef):
        if ref.size == 0:
            raise ImageLoadError("zero_byte", f"{ref.tar}@{ref.offset}")
        ref = read_tar_member(ref)
    if isinstance(ref, bytes | bytearray | memoryview):
        if len(ref) == 0:
            raise ImageLoadError("zero_byte", "empty bytes")
        return io.BytesIO(ref)
    if isinstance(ref, str | os.PathLike):
        path = os.fspath(ref)
        if not os.path.isfile(path):
            raise ImageLoadError("missing_file", path)
        if os.path.getsize(path) == 0:
            raise ImageLoadError("zero_byte", path)
        return path
    raise ImageLoadError("missing_file", f"no image reference ({type(ref).__name__})")


def load_image(ref: ImageRef, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open, fully decode and convert an image to RGB.

    Args:
        ref: a path, encoded bytes, a ``TarMemberRef``, ``HFImageRef`` or ``SyntheticRef``.
        max_pixels: largest ``width * height`` accepted, checked from the header before decoding.

    Returns:
        An RGB image whose pixels are loaded.

    Raises:
        ImageLoadError: with ``reason`` ``missing_file``, ``zero_byte``, ``unreadable``, ``truncated`` or
            ``too_many_pixels``.
    """
    if isinstance(ref, SyntheticRef):
        from clipforge.data.synthetic import render

        return render(ref)
    source = _open_source(ref)
    where = source if isinstance(source, str) else type(ref).__name__
    with warnings.catch_warnings():
        # PIL warns between 1x and 2x its own limit and raises above; both mean "too many pixels" unless the
        # caller explicitly allows more than PIL's default (then only our own check applies).
        action = "error" if max_pixels <= DEFAULT_MAX_PIXELS else "ignore"
        warnings.simplefilter(action, Image.DecompressionBombWarning)
        try:
            with Image.open(source) as img:
                width, height = img.size
                if width * height > max_pixels:
                    raise ImageLoadError("too_many_pixels", f"{where}: {width}x{height} > {max_pixels}")
                img.load()
                return to_rgb(img)
        except ImageLoadError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
            raise ImageLoadError("too_many_pixels", f"{where}: {e}") from e
        except UnidentifiedImageError as e:
            raise ImageLoadError("unreadable", f"{where}: {e}") from e
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            reason = "truncated" if "truncat" in str(e).lower() else "unreadable"
            raise ImageLoadError(reason, f"{where}: {e}") from e


class DefaultImageTransform(ImageTransform):
    """Fallback transform when the model provides none: resize the short side, centre-crop, scale to [0, 1].

    Args:
        size: output height and width.
    """

    def __init__(self, size: int = 224) -> None:
        super().__init__(size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
