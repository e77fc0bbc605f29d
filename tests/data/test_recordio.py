"""RecordIO reading and writing, checked against files written by MXNet 1.9.1."""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pocketnas.data import recordio
from pocketnas.data.images import encode_jpeg
from pocketnas.data.recordio import (
    MAGIC_BYTES,
    FaceRecordSet,
    IRHeader,
    RecordIOReader,
    RecordIOWriter,
    frame_record,
    pack_record,
    read_property,
    unpack_record,
    write_face_record_set,
    write_property,
)
from pocketnas.errors import DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mxnet_rec"
SET_NAMES = ["", "label_array", "no_header", "magic_split"]
SET_IDS = ["main", "label_array", "no_header", "magic_split"]


def load_manifest(name: str) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads((FIXTURES / name / "manifest.json").read_text())
    return manifest["recordio"]


def open_reader(name: str) -> RecordIOReader:
    return RecordIOReader(FIXTURES / name / "train.rec", FIXTURES / name / "train.idx")


def copy_set(name: str, destination: Path) -> Path:
    """Copy one fixture set's three files into `destination` so a test can damage them."""
    destination.mkdir(parents=True, exist_ok=True)
    for file_name in ("train.rec", "train.idx", "property"):
        shutil.copyfile(FIXTURES / name / file_name, destination / file_name)
    return destination


def framed_size(parts: list[dict[str, int]]) -> int:
    return sum(8 + part["length"] + (4 - part["length"] % 4) % 4 for part in parts)


# --- reading the MXNet fixtures ------------------------------------------------------------------


@pytest.mark.parametrize("name", SET_NAMES, ids=SET_IDS)
def test_reader_keys_follow_idx_line_order(name: str) -> None:
    manifest = load_manifest(name)
    with open_reader(name) as reader:
        assert reader.keys == manifest["idx_line_order"]
        assert len(reader) == len(manifest["records"])


@pytest.mark.parametrize("name", SET_NAMES, ids=SET_IDS)
def test_reader_records_match_manifest(name: str) -> None:
    manifest = load_manifest(name)
    with open_reader(name) as reader:
        assert reader.rec_size == manifest["rec_size"]
        for expected in manifest["records"]:
            key = expected["key"]
            assert reader.offset(key) == expected["offset"], key

            parts = reader.parts(key)
            assert [(part.cflag, part.length) for part in parts] == [
                (part["cflag"], part["length"]) for part in expected["parts"]
            ], key
            assert parts[0].offset == expected["offset"], key
            assert framed_size(expected["parts"]) == expected["framed_bytes"], key

            record = reader.read(key)
            assert len(record) == expected["record_len"], key
            assert struct.unpack_from("<f", record, 4)[0] == expected["label_field"], key

            header, payload = unpack_record(record, reader.rec_path, key)
            assert header.flag == expected["flag"], key
            if expected["flag"] == 0:
                assert header.label == expected["label"], key
            else:
                assert list(header.label) == expected["label"], key  # type: ignore[arg-type]
            assert header.id == expected["id"], key
            assert header.id2 == expected["id2"], key
            assert len(record) - len(payload) == expected["payload_offset_in_record"], key
            assert len(payload) == expected["payload_len"], key
            assert hashlib.sha256(payload).hexdigest() == expected["payload_sha256"], key

            assert reader.read_header(key) == header, key


def test_magic_split_record_keeps_unaligned_magic() -> None:
    with open_reader("magic_split") as reader:
        record = reader.read(1)
    aligned = [i for i in range(0, len(record) - 3, 4) if record[i : i + 4] == MAGIC_BYTES]
    unaligned = [
        i for i in range(len(record) - 3) if record[i : i + 4] == MAGIC_BYTES and i % 4 != 0
    ]
    # Three aligned magic words rebuilt between four parts, plus the unaligned copy.
    assert len(aligned) == 3
    assert len(unaligned) == 1


@pytest.mark.parametrize("name", SET_NAMES, ids=SET_IDS)
def test_face_record_set_matches_manifest(name: str) -> None:
    manifest = load_manifest(name)
    record_set = FaceRecordSet(FIXTURES / name)
    by_key = {record["key"]: record for record in manifest["records"]}
    image_keys = [key for key in manifest["idx_line_order"] if by_key[key]["image_shape"]]
    if manifest["header0"] is not None:
        first, end = manifest["header0"]["image_keys"]
        image_keys = list(range(first, end))

    assert record_set.folder == FIXTURES / name
    assert record_set.num_classes == manifest["num_classes"]
    assert list(record_set.image_size) == manifest["image_size_hw"]
    assert record_set.layout == ("header" if manifest["header0"] else "no-header")
    assert record_set.label_form == ("vector" if name == "label_array" else "scalar")
    assert record_set.image_keys == image_keys
    assert len(record_set) == len(image_keys)
    assert record_set.labels.dtype == np.int64

    for index, key in enumerate(image_keys):
        label = by_key[key]["label"]
        expected_class = label[0] if isinstance(label, list) else label
        assert record_set.labels[index] == int(expected_class), key


@pytest.mark.parametrize("name", SET_NAMES, ids=SET_IDS)
def test_decoded_images_match_manifest(name: str) -> None:
    manifest = load_manifest(name)
    record_set = FaceRecordSet(FIXTURES / name)
    by_key = {record["key"]: record for record in manifest["records"]}
    for index, key in enumerate(record_set.image_keys):
        expected = by_key[key]
        payload = record_set.read_image_bytes(index)
        assert hashlib.sha256(payload).hexdigest() == expected["payload_sha256"], key

        image = record_set.read_image(index)
        assert list(image.shape) == expected["image_shape"], key
        assert image.dtype == np.uint8
        mean = image.reshape(-1, 3).mean(axis=0)
        corner = image[3:13, 3:13].reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(mean, expected["decoded_mean_rgb"], atol=1.5, err_msg=str(key))
        np.testing.assert_allclose(
            corner, expected["decoded_corner_mean_rgb"], atol=1.5, err_msg=str(key)
        )
        assert corner[0] > 240, f"key {key}: red canary too dark; channels swapped (BGR)?"
        assert corner[2] < 15, f"key {key}: blue in the red canary; channels swapped (BGR)?"


# --- writing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SET_NAMES, ids=SET_IDS)
def test_writer_reproduces_fixture_bytes(name: str, tmp_path: Path) -> None:
    rec_path = tmp_path / "out.rec"
    idx_path = tmp_path / "out.idx"
    with open_reader(name) as reader, RecordIOWriter(rec_path, idx_path) as writer:
        for key in reader.keys:
            writer.write(key, reader.read(key))

    assert rec_path.read_bytes() == (FIXTURES / name / "train.rec").read_bytes()
    assert idx_path.read_bytes() == (FIXTURES / name / "train.idx").read_bytes()


def test_write_face_record_set_reproduces_main_set(tmp_path: Path) -> None:
    source = FaceRecordSet(FIXTURES)
    samples = (
        (int(source.labels[index]), source.read_image_bytes(index)) for index in range(len(source))
    )

    count = write_face_record_set(tmp_path / "out", samples, num_classes=6, image_size=(112, 112))

    assert count == 30
    for file_name in ("train.rec", "train.idx", "property"):
        assert (tmp_path / "out" / file_name).read_bytes() == (FIXTURES / file_name).read_bytes()


def test_write_face_record_set_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    payloads = [encode_jpeg(rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)) for _ in range(5)]
    labels = [0, 0, 2, 3, 3]  # class 1 has no images

    count = write_face_record_set(
        tmp_path, zip(labels, payloads, strict=True), num_classes=5, image_size=(8, 6)
    )

    record_set = FaceRecordSet(tmp_path)
    assert count == 5
    assert record_set.layout == "header"
    assert record_set.label_form == "scalar"
    assert record_set.image_keys == [1, 2, 3, 4, 5]
    assert record_set.labels.tolist() == labels
    assert record_set.image_size == (8, 6)
    assert [record_set.read_image_bytes(i) for i in range(5)] == payloads
    assert record_set.read_image(0).shape == (8, 6, 3)
    identity_ranges = [record_set.reader.read_header(6 + c).label for c in range(5)]
    assert identity_ranges == [(1.0, 3.0), (3.0, 3.0), (3.0, 4.0), (4.0, 6.0), (6.0, 6.0)]
    assert record_set.reader.read_header(0).label == (6.0, 11.0)
    assert (tmp_path / "property").read_text() == "5,8,6"


def test_write_face_record_set_rejects_bad_samples(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="ascending"):
        write_face_record_set(tmp_path / "a", [(1, b"x"), (0, b"y")], 2, (4, 4))
    with pytest.raises(ValueError, match="outside"):
        write_face_record_set(tmp_path / "b", [(2, b"x")], 2, (4, 4))
    with pytest.raises(ValueError, match="no samples"):
        write_face_record_set(tmp_path / "c", [], 2, (4, 4))
    for folder in ("a", "b", "c"):
        assert list((tmp_path / folder).iterdir()) == [], folder


@pytest.mark.parametrize(
    ("record", "expected_parts"),
    [
        (b"abcdefgh", [b"abcdefgh"]),
        (MAGIC_BYTES + b"abcd", [b"", b"abcd"]),
        (b"abcd" + MAGIC_BYTES + MAGIC_BYTES + b"ef", [b"abcd", b"", b"ef"]),
        (b"abcd" + MAGIC_BYTES, [b"abcd", b""]),
        (MAGIC_BYTES, [b"", b""]),
        (b"ab" + MAGIC_BYTES + b"cd", [b"ab" + MAGIC_BYTES + b"cd"]),  # unaligned: kept
        (b"abcde" + MAGIC_BYTES[:3], [b"abcde" + MAGIC_BYTES[:3]]),
        (b"", [b""]),
    ],
    ids=[
        "none",
        "at-start",
        "two-in-a-row",
        "at-end",
        "only-magic",
        "unaligned",
        "partial",
        "empty",
    ],
)
def test_frame_record_splits_at_aligned_magic(
    record: bytes, expected_parts: list[bytes], tmp_path: Path
) -> None:
    framed = frame_record(record)
    assert len(framed) % 4 == 0

    rec_path, idx_path = tmp_path / "x.rec", tmp_path / "x.idx"
    with RecordIOWriter(rec_path, idx_path) as writer:
        writer.write(7, record)
    with RecordIOReader(rec_path, idx_path) as reader:
        parts = reader.parts(7)
        assert reader.read(7) == record

    assert rec_path.read_bytes() == framed
    assert [part.length for part in parts] == [len(piece) for piece in expected_parts]
    if len(expected_parts) == 1:
        assert [part.cflag for part in parts] == [0]
    else:
        assert [part.cflag for part in parts] == [1] + [2] * (len(expected_parts) - 2) + [3]


def test_writer_round_trips_random_records(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    records = {}
    for key in range(20):
        buffer = bytearray(rng.integers(0, 256, int(rng.integers(0, 200)), dtype=np.uint8))
        for _ in range(int(rng.integers(0, 4))):
            position = int(rng.integers(0, len(buffer) + 1))
            buffer[position:position] = MAGIC_BYTES
        records[key * 3] = bytes(buffer)
    rec_path, idx_path = tmp_path / "r.rec", tmp_path / "r.idx"
    with RecordIOWriter(rec_path, idx_path) as writer:
        for key, record in reversed(records.items()):
            writer.write(key, record)

    with RecordIOReader(rec_path, idx_path) as reader:
        assert reader.keys == list(reversed(records))
        for key, record in records.items():
            assert reader.read(key) == record, key


def test_writer_leaves_nothing_after_exception(tmp_path: Path) -> None:
    rec_path, idx_path = tmp_path / "a.rec", tmp_path / "a.idx"
    with pytest.raises(RuntimeError), RecordIOWriter(rec_path, idx_path) as writer:
        writer.write(0, b"data")
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_writer_keeps_old_files_until_close(tmp_path: Path) -> None:
    rec_path, idx_path = tmp_path / "a.rec", tmp_path / "a.idx"
    rec_path.write_bytes(b"old")
    idx_path.write_bytes(b"old")
    writer = RecordIOWriter(rec_path, idx_path)
    writer.write(0, b"new record")
    assert rec_path.read_bytes() == b"old"
    writer.abort()
    assert rec_path.read_bytes() == b"old"
    assert idx_path.read_bytes() == b"old"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.idx", "a.rec"]


def test_writer_rejects_repeated_key(tmp_path: Path) -> None:
    with RecordIOWriter(tmp_path / "a.rec", tmp_path / "a.idx") as writer:
        writer.write(3, b"x")
        with pytest.raises(ValueError, match="already written"):
            writer.write(3, b"y")


# --- records and headers -------------------------------------------------------------------------


def test_pack_record_scalar_label() -> None:
    record = pack_record(5, b"payload", id=9, id2=1)
    assert len(record) == 24 + 7
    assert unpack_record(record) == (IRHeader(0, 5.0, 9, 1), b"payload")


def test_pack_record_vector_label() -> None:
    for label in ([3.0, 1.0], (3, 1), np.array([3.0, 1.0])):
        record = pack_record(label, b"jpeg", id=4)
        assert struct.unpack_from("<If", record) == (2, 0.0)
        assert unpack_record(record) == (IRHeader(2, (3.0, 1.0), 4, 0), b"jpeg")


def test_pack_record_rejects_empty_label_and_bad_id() -> None:
    with pytest.raises(ValueError, match="at least one value"):
        pack_record([], b"")
    with pytest.raises(ValueError, match="64-bit"):
        pack_record(0, b"", id=-1)


def test_unpack_record_too_short_names_file_and_key() -> None:
    with pytest.raises(DataError, match=r"^data/x\.rec: record key 12 is 10 bytes"):
        unpack_record(b"\0" * 10, path="data/x.rec", key=12)
    vector_header = struct.pack("<IfQQ", 3, 0.0, 0, 0) + b"\0" * 4
    with pytest.raises(DataError, match=r"record key 4 .*flag 3"):
        unpack_record(vector_header, path="x.rec", key=4)


def test_property_read_and_write(tmp_path: Path) -> None:
    path = tmp_path / "property"
    write_property(path, 85742, 112, 96)
    assert path.read_bytes() == b"85742,112,96"
    assert read_property(path) == (85742, 112, 96)
    path.write_text(" 7, 112 ,112\n")
    assert read_property(path) == (7, 112, 112)


@pytest.mark.parametrize("text", ["7,112", "a,b,c", "0,112,112", ""])
def test_property_invalid_raises(text: str, tmp_path: Path) -> None:
    path = tmp_path / "property"
    path.write_text(text)
    with pytest.raises(DataError, match=r"property: "):
        read_property(path)


# --- handles, pickling, processes -----------------------------------------------------------------


def test_reader_pickles_without_handle() -> None:
    reader = open_reader("magic_split")
    expected = reader.read(1)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._handle is None
    assert clone.read(1) == expected
    reader.close()
    clone.close()


def test_reader_reopens_after_pid_change(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = open_reader("magic_split")
    reader.read(0)
    first_handle = reader._handle
    expected = open_reader("magic_split").read(3)
    monkeypatch.setattr(recordio.os, "getpid", lambda: -1)
    record = reader.read(3)
    monkeypatch.undo()

    assert record == expected
    assert reader._handle is not first_handle
    assert reader._handle_pid == -1
    assert first_handle is not None
    assert first_handle.closed
    reader.close()


# --- damaged or inconsistent input ----------------------------------------------------------------


def test_truncated_rec_raises(tmp_path: Path) -> None:
    folder = copy_set("", tmp_path)
    with open_reader("") as reader:
        offset = reader.offset(30)
    with open(folder / "train.rec", "r+b") as handle:
        handle.truncate(offset + 100)

    reader = RecordIOReader(folder / "train.rec", folder / "train.idx")
    with pytest.raises(
        DataError, match=rf"train\.rec: truncated record at offset {offset} \(key 30\)"
    ):
        reader.read(30)
    with pytest.raises(DataError, match=r"train\.rec: .*key 0 .*past the end"):
        reader.read(0)
    with pytest.raises(DataError, match=r"train\.rec"):
        FaceRecordSet(folder)
    reader.close()


def test_truncated_multipart_record_raises(tmp_path: Path) -> None:
    folder = copy_set("magic_split", tmp_path)
    with open(folder / "train.rec", "r+b") as handle:
        handle.truncate(5208 + 60)  # inside the third part of key 1
    reader = RecordIOReader(folder / "train.rec", folder / "train.idx")
    with pytest.raises(DataError, match=r"truncated record at offset 5208 \(key 1\)"):
        reader.read(1)
    reader.close()


def test_wrong_magic_raises(tmp_path: Path) -> None:
    folder = copy_set("", tmp_path)
    with open_reader("") as reader:
        offset = reader.offset(5)
    with open(folder / "train.rec", "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\0\0\0\0")

    reader = RecordIOReader(folder / "train.rec", folder / "train.idx")
    with pytest.raises(
        DataError, match=rf"train\.rec: bad magic at offset {offset} \(record key 5\)"
    ):
        reader.read(5)
    reader.close()
    with pytest.raises(DataError, match=r"bad magic .*record key 5"):
        FaceRecordSet(folder)


def test_wrong_magic_in_middle_part_raises(tmp_path: Path) -> None:
    folder = copy_set("magic_split", tmp_path)
    with open(folder / "train.rec", "r+b") as handle:
        handle.seek(5248)  # second part of key 1
        handle.write(b"XXXX")
    with RecordIOReader(folder / "train.rec", folder / "train.idx") as reader:
        assert reader.read(0)
        with pytest.raises(DataError, match=r"bad magic at offset 5248 \(record key 1\)"):
            reader.read(1)


def test_idx_offset_past_end_raises(tmp_path: Path) -> None:
    folder = copy_set("no_header", tmp_path)
    lines = (folder / "train.idx").read_text().splitlines()
    lines[3] = "3\t99999996"
    (folder / "train.idx").write_text("\n".join(lines) + "\n")

    with pytest.raises(DataError, match=r"train\.rec: offset 99999996 of key 3 in train\.idx"):
        FaceRecordSet(folder)


def test_garbage_idx_line_raises(tmp_path: Path) -> None:
    folder = copy_set("", tmp_path)
    lines = (folder / "train.idx").read_text().splitlines()
    lines.insert(4, "this is not an index line")
    (folder / "train.idx").write_text("\n".join(lines) + "\n")

    with pytest.raises(DataError, match=r"train\.idx: line 5 is not 'key<TAB>offset'"):
        FaceRecordSet(folder)


def test_repeated_idx_key_raises(tmp_path: Path) -> None:
    folder = copy_set("magic_split", tmp_path)
    with open(folder / "train.idx", "a") as handle:
        handle.write("2\t0\n")
    with pytest.raises(DataError, match=r"train\.idx: line 5 repeats key 2"):
        FaceRecordSet(folder)


def test_non_image_payload_raises_on_read(tmp_path: Path) -> None:
    image = encode_jpeg(np.zeros((4, 4, 3), dtype=np.uint8))
    write_face_record_set(tmp_path, [(0, image), (1, b"not an image")], 2, (4, 4))
    record_set = FaceRecordSet(tmp_path)
    assert record_set.read_image(0).shape == (4, 4, 3)
    with pytest.raises(DataError, match=r"train\.rec: the payload of record key 2 is not"):
        record_set.read_image(1)


def test_label_outside_range_raises(tmp_path: Path) -> None:
    folder = copy_set("no_header", tmp_path)
    (folder / "property").write_text("3,112,112\n")
    with pytest.raises(DataError, match=r"train\.rec: record key 15 has label 3, outside 0\.\.2"):
        FaceRecordSet(folder)


def test_property_disagreeing_with_header_raises(tmp_path: Path) -> None:
    folder = copy_set("", tmp_path)
    (folder / "property").write_text("5,112,112")
    with pytest.raises(DataError, match=r"property: property says 5 classes.* 6 identities"):
        FaceRecordSet(folder)


def test_empty_set_raises(tmp_path: Path) -> None:
    (tmp_path / "train.rec").write_bytes(b"")
    (tmp_path / "train.idx").write_bytes(b"")
    (tmp_path / "property").write_text("1,112,112")
    with pytest.raises(DataError, match=r"train\.idx: the index lists no records"):
        FaceRecordSet(tmp_path)


def test_header_without_images_raises(tmp_path: Path) -> None:
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        writer.write(1, pack_record([1, 1], b"", id=1))
        writer.write(0, pack_record([1, 2], b""))
    write_property(tmp_path / "property", 1, 112, 112)
    with pytest.raises(DataError, match=r"train\.rec: the set contains no images"):
        FaceRecordSet(tmp_path)


def test_rec_without_idx_raises(tmp_path: Path) -> None:
    shutil.copyfile(FIXTURES / "train.rec", tmp_path / "train.rec")
    shutil.copyfile(FIXTURES / "property", tmp_path / "property")
    with pytest.raises(DataError, match=r"missing train\.idx"):
        FaceRecordSet(tmp_path)
    with pytest.raises(DataError, match=r"train\.idx: index file not found"):
        RecordIOReader(tmp_path / "train.rec", tmp_path / "train.idx")


def test_missing_folder_and_files_raise(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="folder not found"):
        FaceRecordSet(tmp_path / "absent")
    with pytest.raises(DataError, match=r"missing train\.rec, train\.idx, property"):
        FaceRecordSet(tmp_path)


def test_no_header_set_with_vector_labels(tmp_path: Path) -> None:
    image = encode_jpeg(np.zeros((4, 4, 3), dtype=np.uint8))
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        for key, label in enumerate([0, 0, 1]):
            writer.write(key, pack_record([label, 1.0], image, id=key))
    write_property(tmp_path / "property", 2, 4, 4)

    record_set = FaceRecordSet(tmp_path)

    assert record_set.layout == "no-header"
    assert record_set.label_form == "vector"
    assert record_set.image_keys == [0, 1, 2]
    assert record_set.labels.tolist() == [0, 0, 1]


def test_identity_ranges_from_header_records() -> None:
    record_set = FaceRecordSet(FIXTURES)
    assert record_set.identity_ranges is not None
    assert record_set.identity_ranges.tolist() == [
        [1, 6],
        [6, 11],
        [11, 16],
        [16, 21],
        [21, 26],
        [26, 31],
    ]


def test_missing_identity_record_raises(tmp_path: Path) -> None:
    folder = copy_set("", tmp_path)
    lines = [
        line
        for line in (folder / "train.idx").read_text().splitlines()
        if not line.startswith("33\t")
    ]
    (folder / "train.idx").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataError,
        match=r"train\.idx: header record key 0 lists identity records 31\.\.36, but key 33",
    ):
        FaceRecordSet(folder)


def test_identity_record_with_payload_raises(tmp_path: Path) -> None:
    image = encode_jpeg(np.zeros((4, 4, 3), dtype=np.uint8))
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        writer.write(1, pack_record(0.0, image, id=1))
        writer.write(2, pack_record([1, 2], b"extra", id=2))
        writer.write(0, pack_record([2, 3], b""))
    write_property(tmp_path / "property", 1, 4, 4)
    with pytest.raises(
        DataError,
        match=r"identity record key 2 \(class 0\) has label \[1\.0, 2\.0\] and a 5-byte payload",
    ):
        FaceRecordSet(tmp_path)
