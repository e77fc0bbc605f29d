"""Whole-file and set-level manifest fields of the MXNet fixtures that the per-record tests skip."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pocketnas.data.dataset import load_verification_images
from pocketnas.data.recordio import FaceRecordSet

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mxnet_rec"
SET_NAMES = ["", "label_array", "no_header", "magic_split"]
SET_IDS = ["main", "label_array", "no_header", "magic_split"]


def manifest(name: str = "") -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((FIXTURES / name / "manifest.json").read_text())
    return loaded


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", SET_NAMES, ids=SET_IDS)
def test_set_files_match_manifest(name: str) -> None:
    expected = manifest(name)["recordio"]
    folder = FIXTURES / name
    assert sha256(folder / expected["rec"]) == expected["rec_sha256"]
    assert sha256(folder / expected["idx"]) == expected["idx_sha256"]
    assert (folder / expected["property"]).read_text() == expected["property_bytes"]


@pytest.mark.parametrize("name", SET_NAMES, ids=SET_IDS)
def test_header_and_identity_ranges_match_manifest(name: str) -> None:
    expected = manifest(name)["recordio"]
    header0 = expected["header0"]
    by_key = {record["key"]: record for record in expected["records"]}
    record_set = FaceRecordSet(FIXTURES / name)

    if header0 is None:
        assert record_set.layout == "no-header"
        assert record_set.identity_ranges is None
        return
    assert record_set.layout == "header"
    assert list(record_set.reader.read_header(0).label) == header0["label"]
    first, end = header0["image_keys"]
    assert record_set.image_keys == list(range(first, end))
    assert len(record_set.image_keys) + 1 == header0["first_identity_key"]
    assert record_set.num_classes == header0["end_key"] - header0["first_identity_key"]

    assert record_set.identity_ranges is not None
    for class_id, (start, stop) in enumerate(record_set.identity_ranges.tolist()):
        identity_record = by_key[header0["first_identity_key"] + class_id]
        assert [float(start), float(stop)] == identity_record["label"], class_id
        labels = [by_key[key]["label"] for key in range(start, stop)]
        classes = [label[0] if isinstance(label, list) else label for label in labels]
        assert classes == [class_id] * (stop - start), class_id


@pytest.mark.parametrize(
    "file_name", ["tiny_pairs.bin", "tiny_pairs_py3.bin", "tiny_pairs_ndarray.bin"]
)
def test_bin_decoded_images_match_manifest(file_name: str) -> None:
    entry = next(item for item in manifest()["bins"] if item["file"] == file_name)
    path = FIXTURES / file_name
    assert path.stat().st_size == entry["size"]

    images, issame = load_verification_images(path)

    assert issame.tolist() == entry["issame"]
    assert images.shape[0] == entry["num_images"]
    for image, expected in zip(images, entry["images"], strict=True):
        index = expected["index"]
        assert index // 2 == expected["pair"]
        assert list(image.shape) == expected["image_shape"], index
        mean = image.reshape(-1, 3).mean(axis=0)
        corner = image[3:13, 3:13].reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(mean, expected["decoded_mean_rgb"], atol=1.5, err_msg=str(index))
        np.testing.assert_allclose(
            corner, expected["decoded_corner_mean_rgb"], atol=1.5, err_msg=str(index)
        )
