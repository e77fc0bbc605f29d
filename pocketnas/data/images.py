"""Image decoding and encoding for record payloads and verification pairs.

Decoding always returns RGB, which is what arcface_torch trains on: it decodes with
`mx.image.imdecode`, whose default is RGB. OpenCV's `cv2.imdecode` would return BGR and silently
swap the channels.

JPEGs are decoded with simplejpeg (a thin libjpeg-turbo binding) when it is installed, because it
decodes a 112x112 face about 2.5 times as fast as Pillow. Everything else, and any JPEG that
simplejpeg rejects or cannot convert to RGB itself (CMYK, YCCK), goes through Pillow. Both use
libjpeg-turbo, so they give the same pixels as MXNet on insightface's JPEGs.
"""

from __future__ import annotations

import io
import logging
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from pocketnas.errors import DataError

try:
    import simplejpeg
except ImportError:  # optional: Pillow decodes everything, only slower
    simplejpeg = None

logger = logging.getLogger(__name__)

JPEG_DECODER = "pillow" if simplejpeg is None else "simplejpeg"
"""Name of the library that decodes JPEGs in `decode_image`: "simplejpeg" or "pillow"."""

# Colour spaces simplejpeg converts to RGB the way Pillow does. Pillow handles CMYK and YCCK.
_FAST_COLORSPACES = frozenset({"YCbCr", "Gray", "RGB"})


def _decode_jpeg_fast(data: bytes) -> np.ndarray | None:
    """Decode a JPEG with simplejpeg, or return None to leave it (and its error) to Pillow."""
    if simplejpeg is None or not simplejpeg.is_jpeg(data):
        return None
    try:
        _, _, colorspace, _ = simplejpeg.decode_jpeg_header(data)
        if colorspace not in _FAST_COLORSPACES:
            return None
        rgb: np.ndarray = simplejpeg.decode_jpeg(data, colorspace="RGB")
    except ValueError:
        return None
    return rgb


def decode_image(
    data: bytes, path: str | os.PathLike[str] = "<memory>", key: int | str | None = None
) -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) into a writable HWC uint8 RGB array.

    Grayscale, palette, CMYK and alpha images are converted to 3-channel RGB. `path` and `key`
    name the source in the error message: an int key is a record key, a string is used as is
    (for example "image 7").

    Raises:
        DataError: the bytes are empty, not an image, or a damaged image.
    """
    if key is None:
        where = "the data"
    elif isinstance(key, str):
        where = key
    else:
        where = f"the payload of record key {key}"
    if not data:
        raise DataError(path, f"{where} is empty, not an image")
    fast = _decode_jpeg_fast(data)
    if fast is not None:
        return fast
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            rgb = image.convert("RGB")
    except UnidentifiedImageError:
        # Pillow's message names an in-memory buffer, which means nothing to the user.
        raise DataError(path, f"{where} is not a readable image (unknown image format)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(path, f"{where} is not a readable image ({exc})") from exc
    except Image.DecompressionBombError as exc:
        raise DataError(path, f"{where} is too large to decode ({exc})") from exc
    return np.array(rgb, dtype=np.uint8)


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """Encode an HWC uint8 RGB array as a baseline JPEG.

    Quality 95 is what insightface's packing tools use.

    Raises:
        ValueError: the array is not HxWx3 uint8 or the quality is outside 1..100.
    """
    array = np.asarray(rgb)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(
            f"expected an HxWx3 uint8 RGB array, got shape {array.shape} and dtype {array.dtype}"
        )
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be within 1..100, got {quality}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def resize_image(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HWC uint8 RGB array to `size` = (height, width) with bilinear filtering.

    Returns the input unchanged when it already has that size.
    """
    height, width = size
    if rgb.shape[0] == height and rgb.shape[1] == width:
        return rgb
    image = Image.fromarray(np.ascontiguousarray(rgb))
    return np.array(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)
