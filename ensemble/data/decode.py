"""Robust image decoding: any mode becomes 8-bit RGB, EXIF orientation applied."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .shards import read_member


class DecodeError(Exception):
    """An image that cannot be read (missing, empty, truncated, not an image, too large)."""


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if arr.max() > 255 else 255.0
        return Image.fromarray(np.clip(arr / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        return Image.fromarray(np.clip(arr * (255.0 if arr.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)).convert("RGB")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def _source(path: str):
    """A file path, or the bytes of a WebDataset shard member (`shard.tar@offset:size`) as a stream."""
    data = read_member(path)
    return path if data is None else io.BytesIO(data)


def decode_image(path: str, draft_px: int | None = None) -> np.ndarray:
    """Decode `path` to an HxWx3 uint8 RGB array.

    draft_px: for JPEGs, let libjpeg downscale in the DCT domain to a size >= draft_px
    on the short side (much cheaper than decoding full size and resizing).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(_source(path)) as img:
                if draft_px and img.format == "JPEG":
                    ratio = draft_px / max(min(img.size), 1)
                    img.draft("RGB", tuple(max(1, int(round(side * ratio))) for side in img.size))
                img = ImageOps.exif_transpose(img)
                return np.asarray(_to_rgb(img))
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except UnidentifiedImageError:  # its own text names the stream object of a shard member, not the image
        raise DecodeError("cannot identify image file (not an image, or a format PIL does not read)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DecodeError("image too large (decompression-bomb limit)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
