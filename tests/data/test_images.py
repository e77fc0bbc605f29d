"""JPEG decoding: the fast decoder agrees with Pillow, and Pillow takes over where it cannot."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pocketnas.data import images
from pocketnas.data.images import decode_image, encode_jpeg
from pocketnas.data.recordio import FaceRecordSet
from pocketnas.errors import DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mxnet_rec"


def pillow_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))


def test_fast_decoder_is_installed() -> None:
    # simplejpeg is pinned in requirements.txt; without it every decode falls back to Pillow.
    assert images.JPEG_DECODER == "simplejpeg"


def test_decoded_fixtures_close_to_pillow() -> None:
    record_set = FaceRecordSet(FIXTURES)
    for index in range(len(record_set)):
        data = record_set.read_image_bytes(index)
        decoded = decode_image(data)
        reference = pillow_rgb(data)
        assert decoded.shape == reference.shape
        assert decoded.dtype == np.uint8
        difference = np.abs(decoded.astype(np.int16) - reference.astype(np.int16))
        assert difference.mean() < 0.5, index
        assert difference.max() <= 8, index


def test_pillow_fallback_without_simplejpeg(monkeypatch: pytest.MonkeyPatch) -> None:
    data = FaceRecordSet(FIXTURES).read_image_bytes(0)
    fast = decode_image(data)
    monkeypatch.setattr(images, "simplejpeg", None)
    slow = decode_image(data)
    np.testing.assert_array_equal(slow, pillow_rgb(data))
    assert np.abs(fast.astype(np.int16) - slow.astype(np.int16)).mean() < 0.5


@pytest.mark.parametrize("mode", ["L", "CMYK"])
def test_other_jpeg_colour_spaces_decode_to_rgb(mode: str) -> None:
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert(mode)
    buffer = io.BytesIO()
    source.save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()

    decoded = decode_image(data)

    assert decoded.shape == (16, 16, 3)
    assert np.abs(decoded.astype(np.int16) - pillow_rgb(data).astype(np.int16)).mean() < 1.0


def test_png_decodes_exactly() -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    np.testing.assert_array_equal(decode_image(buffer.getvalue()), rgb)


def test_truncated_jpeg_raises_with_key() -> None:
    data = encode_jpeg(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"^x\.rec: the payload of record key 4 is not a readable"):
        decode_image(data[: len(data) // 2], path="x.rec", key=4)


def test_garbage_raises() -> None:
    with pytest.raises(DataError, match=r"^x\.rec: image 3 is not a readable image"):
        decode_image(b"\xff\xd8\xffgarbage", path="x.rec", key="image 3")
