"""Image loading: any ``ImageRef`` -> an RGB ``PIL.Image``, or an ``ImageLoadError`` with a reason.

Reasons: ``no_image`` (an empty image cell), ``missing_file`` (a dangling symlink included), ``not_a_file`` (a
folder, a FIFO, a device), ``symlink_loop``, ``zero_byte``, ``unreadable`` (not an image: no known format),
``corrupt_image`` (an image format whose data is damaged), ``truncated`` (the file ends before its format's end
marker or declared size), ``too_many_pixels`` (checked from the header, before pixels are decoded). Truncation is
read from the file itself (JPEG, PNG, GIF, WebP, BMP), not from the decoder's message, which also says "truncated"
for a segment length that runs past the end of a complete file. Truncated files stay errors:
``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is never set. Conversions to RGB: CMYK; L/LA/P/PA/1; alpha composited onto
white; 16-bit (``I;16*``) and 32-bit integer (``I``) scaled to 8 bits (divide by 257, no clipping); float
(``F``) scaled from [0, 1] (or its min-max range when outside).
"""

from __future__ import annotations

import errno
import functools
import io
import os
import stat
import struct
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from clipforge.data.errors import ImageLoadError
from clipforge.data.records import HFImageRef, ImageRef, SyntheticRef, TarMemberRef
from clipforge.utils.transforms import ImageTransform

DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb threshold


def read_tar_member(ref: TarMemberRef) -> bytes:
    """The bytes of a tar member, by seeking to its data offset (``truncated`` if the shard ends inside it)."""
    try:
        with open(ref.tar, "rb") as f:
            f.seek(ref.offset)
            data = f.read(ref.size)
    except FileNotFoundError as e:
        raise ImageLoadError("missing_file", ref.tar) from e
    if len(data) < ref.size:
        raise ImageLoadError("truncated", f"{ref.tar}@{ref.offset}: {len(data)} of {ref.size} bytes")
    return data


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
    if cell.get("bytes") is not None:  # b"" included: a zero_byte image, not a missing one
        return cell["bytes"]
    if cell.get("path"):
        return cell["path"]
    raise ImageLoadError("no_image", f"{ref.path}#{ref.row}: empty image cell")


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


def _format_of(head: bytes) -> str | None:
    """Image format from the file's magic bytes (the formats whose end can be checked), else ``None``."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and len(head) >= 6:
        return "BMP"
    return None


def _head_tail_size(source: io.BytesIO | str) -> tuple[bytes, bytes, int]:
    if isinstance(source, str):
        with open(source, "rb") as f:
            head = f.read(16)
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 16))
            return head, f.read(16), size
    data = source.getvalue()
    return data[:16], data[-16:], len(data)


def cut_short(source: io.BytesIO | str) -> bool | None:
    """Whether an encoded image ends before its format's end: JPEG's EOI marker, PNG's IEND chunk, GIF's
    trailer, or the size WebP (RIFF) and BMP headers declare. ``None`` when the format is none of these."""
    head, tail, size = _head_tail_size(source)
    fmt = _format_of(head)
    tail = tail.rstrip(b"\0")  # zero padding after the end marker (some writers pad files)
    if fmt == "JPEG":
        return not tail.endswith(b"\xff\xd9")
    if fmt == "PNG":
        return not tail.endswith(b"IEND\xaeB`\x82")
    if fmt == "GIF":
        return not tail.endswith(b";")
    if fmt == "WEBP":
        return size < struct.unpack("<I", head[4:8])[0] + 8
    if fmt == "BMP":
        return size < struct.unpack("<I", head[2:6])[0]
    return None


def _decode_error(source: io.BytesIO | str, error: Exception, identified: bool) -> str:
    """Reason of a file that failed to decode: ``truncated``, ``corrupt_image`` or ``unreadable``.

    ``identified``: PIL recognised the format (the error came while reading its data, not while guessing it).
    """
    try:
        cut = cut_short(source)
    except OSError:  # the file went away or cannot be read again: judge by the message alone
        cut = None
    if cut is None:
        if not identified:
            return "unreadable"
        return "truncated" if "truncat" in str(error).lower() else "corrupt_image"
    return "truncated" if cut else "corrupt_image"


def _check_path(path: str) -> None:
    """``missing_file``, ``symlink_loop``, ``not_a_file`` or ``zero_byte`` before anything is opened."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError) as e:
        raise ImageLoadError("missing_file", path) from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ImageLoadError("symlink_loop", path) from e
        raise ImageLoadError("unreadable", f"{path}: {e.strerror}") from e
    if not stat.S_ISREG(st.st_mode):
        raise ImageLoadError("not_a_file", path)
    if st.st_size == 0:
        raise ImageLoadError("zero_byte", path)


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
        _check_path(path)
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
        ImageLoadError: with ``reason`` one of :data:`~clipforge.data.errors.IMAGE_ERROR_REASONS` (see the
            module docstring).
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
            raise ImageLoadError(_decode_error(source, e, identified=False), f"{where}: {e}") from e
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise ImageLoadError(_decode_error(source, e, identified=True), f"{where}: {e}") from e


class DefaultImageTransform(ImageTransform):
    """Fallback transform when the model provides none: resize the short side, centre-crop, scale to [0, 1].

    Args:
        size: output height and width.
    """

    def __init__(self, size: int = 224) -> None:
        super().__init__(size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
