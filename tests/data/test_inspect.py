"""inspect_path summaries of the fixtures and of damaged data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pocketnas.data.images import encode_jpeg
from pocketnas.data.inspect import inspect_path
from pocketnas.data.recordio import write_face_record_set
from pocketnas.data.verification_bin import write_verification_bin
from pocketnas.errors import DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mxnet_rec"


def test_inspect_main_set() -> None:
    summary = inspect_path(FIXTURES)

    assert summary["kind"] == "recordio"
    assert summary["identities"] == 6
    assert summary["images"] == 30
    assert summary["records"] == 37
    assert summary["layout"] == "header"
    assert summary["label_form"] == "scalar"
    assert summary["image_size_property"] == [112, 112]
    assert summary["image_size_decoded"] == [112, 112]
    assert summary["rec_size"] == 154132
    assert summary["images_per_identity"] == {"min": 5, "max": 5}
    assert summary["damaged_records"] == 0
    assert summary["first_damaged_record"] is None
    json.dumps(summary)


@pytest.mark.parametrize(
    ("path", "layout", "label_form", "records", "images", "identities"),
    [
        ("label_array", "header", "vector", 37, 30, 6),
        ("no_header", "no-header", "scalar", 30, 30, 6),
        ("magic_split", "no-header", "scalar", 4, 4, 4),
        ("magic_split/train.rec", "no-header", "scalar", 4, 4, 4),
        ("no_header/train.idx", "no-header", "scalar", 30, 30, 6),
    ],
)
def test_inspect_other_sets(
    path: str, layout: str, label_form: str, records: int, images: int, identities: int
) -> None:
    summary = inspect_path(FIXTURES / path)
    assert summary["layout"] == layout
    assert summary["label_form"] == label_form
    assert summary["records"] == records
    assert summary["images"] == images
    assert summary["identities"] == identities
    assert summary["damaged_records"] == 0
    json.dumps(summary)


@pytest.mark.parametrize(
    ("file_name", "pairs", "same"),
    [("tiny_pairs.bin", 40, 20), ("tiny_pairs_py3.bin", 4, 4), ("tiny_pairs_ndarray.bin", 4, 4)],
)
def test_inspect_bin(file_name: str, pairs: int, same: int) -> None:
    summary = inspect_path(FIXTURES / file_name)
    assert summary["kind"] == "verification_bin"
    assert summary["pairs"] == pairs
    assert summary["images"] == 2 * pairs
    assert summary["same_pairs"] == same
    assert summary["different_pairs"] == pairs - same
    assert summary["image_size"] == [112, 112]
    assert summary["image_sizes"] == [[112, 112]]
    assert summary["damaged_images"] == 0
    json.dumps(summary)


def test_inspect_reports_first_damaged_record(tmp_path: Path) -> None:
    image = encode_jpeg(np.zeros((8, 8, 3), dtype=np.uint8))
    samples = [(0, image), (0, b"not a jpeg"), (1, image), (1, b"also not")]
    write_face_record_set(tmp_path, samples, num_classes=2, image_size=(8, 8))

    summary = inspect_path(tmp_path)

    assert summary["images"] == 4
    assert summary["damaged_records"] == 2
    assert summary["first_damaged_record"]["key"] == 2
    assert "payload of record key 2" in summary["first_damaged_record"]["problem"]
    assert summary["image_size_decoded"] == [8, 8]
    json.dumps(summary)


def test_inspect_reports_damaged_bin_image(tmp_path: Path) -> None:
    image = encode_jpeg(np.zeros((8, 8, 3), dtype=np.uint8))
    path = tmp_path / "pairs.bin"
    write_verification_bin(path, [image, image, image, b"broken"], [True, False])

    summary = inspect_path(path)

    assert summary["same_pairs"] == 1
    assert summary["damaged_images"] == 1
    assert summary["first_damaged_image"]["index"] == 3
    assert summary["first_damaged_image"]["pair"] == 1


def test_inspect_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"absent: not found"):
        inspect_path(tmp_path / "absent")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"empty: folder is empty"):
        inspect_path(empty)

    no_rec = tmp_path / "no_rec"
    no_rec.mkdir()
    (no_rec / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match=r"no_rec: no \.rec file found"):
        inspect_path(no_rec)
    with pytest.raises(DataError, match=r"notes\.txt: unsupported file"):
        inspect_path(no_rec / "notes.txt")

    rec_only = tmp_path / "rec_only"
    rec_only.mkdir()
    shutil.copyfile(FIXTURES / "train.rec", rec_only / "train.rec")
    shutil.copyfile(FIXTURES / "property", rec_only / "property")
    with pytest.raises(DataError, match=r"rec_only: missing train\.idx"):
        inspect_path(rec_only)
