"""Damaged and hostile face data: `pocketnas data ...` prints exactly one line and exits 2."""

from __future__ import annotations

import json
import os
import pickle
import shlex
import shutil
from pathlib import Path

import numpy as np
import pytest

from pocketnas.cli import main
from pocketnas.data.images import encode_jpeg
from pocketnas.data.recordio import (
    RecordIOReader,
    RecordIOWriter,
    pack_record,
    write_face_record_set,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mxnet_rec"


def copy_set(name: str, destination: Path) -> Path:
    destination.mkdir()
    for file_name in ("train.rec", "train.idx", "property"):
        shutil.copyfile(FIXTURES / name / file_name, destination / file_name)
    return destination


def offset_of(name: str, key: int) -> int:
    with RecordIOReader(FIXTURES / name / "train.rec", FIXTURES / name / "train.idx") as reader:
        return reader.offset(key)


def error_line(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the command line, check the exit status and that stderr is one line; return it."""
    code = main(["-q", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def inspect_error(folder: Path, capsys: pytest.CaptureFixture[str]) -> str:
    return error_line(["data", "inspect", str(folder)], capsys)


def test_truncated_rec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = copy_set("no_header", tmp_path / "set")
    offset = offset_of("no_header", 29)  # the last record in the file
    manifest = json.loads((FIXTURES / "no_header" / "manifest.json").read_text())
    length = next(r for r in manifest["recordio"]["records"] if r["key"] == 29)["record_len"]
    os.truncate(folder / "train.rec", offset + 100)
    assert inspect_error(folder, capsys) == (
        f"pocketnas: error: {folder}/train.rec: truncated record at offset {offset} (key 29): "
        f"the part at offset {offset} needs {length} data bytes, but the file ends at byte "
        f"{offset + 100}"
    )


def test_truncated_rec_before_header_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = copy_set("", tmp_path / "set")
    offset = offset_of("", 30)
    os.truncate(folder / "train.rec", offset + 100)
    assert inspect_error(folder, capsys) == (
        f"pocketnas: error: {folder}/train.rec: offset 154092 of key 0 in train.idx is past the "
        f"end of the file ({offset + 100} bytes); the .rec file is truncated or the index "
        "belongs to another file"
    )


def test_wrong_magic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = copy_set("", tmp_path / "set")
    offset = offset_of("", 5)
    with open(folder / "train.rec", "r+b") as handle:
        handle.seek(offset)
        handle.write(b"JUNK")
    assert inspect_error(folder, capsys) == (
        f"pocketnas: error: {folder}/train.rec: bad magic at offset {offset} (record key 5): "
        "found 0x4B4E554A, expected 0xCED7230A"
    )


def test_index_offset_past_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = copy_set("no_header", tmp_path / "set")
    lines = (folder / "train.idx").read_text().splitlines()
    lines[3] = "3\t99999996"
    (folder / "train.idx").write_text("\n".join(lines) + "\n")
    size = (folder / "train.rec").stat().st_size
    assert inspect_error(folder, capsys) == (
        f"pocketnas: error: {folder}/train.rec: offset 99999996 of key 3 in train.idx is past "
        f"the end of the file ({size} bytes); the .rec file is truncated or the index belongs "
        "to another file"
    )


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ("this is not an index line", "'this is not an index line'"),
        ("7\t12\t3", "'7\\t12\\t3'"),
        ("-\t0", "'-\\t0'"),
    ],
)
def test_garbage_index_line(
    line: str, shown: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = copy_set("", tmp_path / "set")
    lines = (folder / "train.idx").read_text().splitlines()
    lines.insert(4, line)
    (folder / "train.idx").write_text("\n".join(lines) + "\n")
    assert inspect_error(folder, capsys) == (
        f"pocketnas: error: {folder}/train.idx: line 5 is not 'key<TAB>offset' with two "
        f"integers: {shown}"
    )


def test_payload_not_an_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = encode_jpeg(np.zeros((8, 8, 3), dtype=np.uint8))
    write_face_record_set(tmp_path, [(0, image), (1, b"not an image"), (1, image)], 2, (8, 8))
    assert inspect_error(tmp_path, capsys) == (
        f"pocketnas: error: {tmp_path}/train.rec: 1 damaged record(s); first: the payload of "
        "record key 2 is not a readable image (unknown image format)"
    )
    assert error_line(["data", "convert", str(tmp_path), str(tmp_path / "out")], capsys) == (
        f"pocketnas: error: {tmp_path}/train.rec: the payload of record key 2 is not a readable "
        "image (unknown image format)"
    )
    assert not (tmp_path / "out").exists()


def test_label_outside_class_range(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = copy_set("no_header", tmp_path / "set")
    (folder / "property").write_text("3,112,112\n")
    assert inspect_error(folder, capsys) == (
        f"pocketnas: error: {folder}/train.rec: record key 15 has label 3, outside 0..2 "
        "(num_classes 3 from property)"
    )


def test_label_outside_identity_record_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = encode_jpeg(np.zeros((8, 8, 3), dtype=np.uint8))
    with RecordIOWriter(tmp_path / "train.rec", tmp_path / "train.idx") as writer:
        for key, label in ((1, 0), (2, 1), (3, 1)):
            writer.write(key, pack_record(float(label), image, id=key))
        writer.write(4, pack_record([1, 3], b"", id=4))  # claims key 2 for class 0
        writer.write(5, pack_record([3, 4], b"", id=5))
        writer.write(0, pack_record([4, 6], b""))
    (tmp_path / "property").write_text("2,8,8")
    assert inspect_error(tmp_path, capsys) == (
        f"pocketnas: error: {tmp_path}/train.rec: record key 2 has label 1, but identity record "
        "key 4 gives keys 1..2 to class 0"
    )


def test_property_disagrees_with_header(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = copy_set("", tmp_path / "set")
    (folder / "property").write_text("5,112,112")
    assert inspect_error(folder, capsys) == (
        f"pocketnas: error: {folder}/property: property says 5 classes, but header record key 0 "
        "of train.rec lists 6 identities (keys 31..36)"
    )


def test_property_disagrees_with_image_size(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = copy_set("", tmp_path / "set")
    (folder / "property").write_text("6,96,96")
    assert inspect_error(folder, capsys) == (
        f"pocketnas: error: {folder}/train.rec: 30 damaged record(s); first: record key 1 is "
        "112x112 pixels, but property says 96x96"
    )


def test_empty_set(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "train.rec").write_bytes(b"")
    (tmp_path / "train.idx").write_bytes(b"")
    (tmp_path / "property").write_text("1,112,112")
    assert inspect_error(tmp_path, capsys) == (
        f"pocketnas: error: {tmp_path}/train.idx: the index lists no records; the set is empty"
    )


def test_empty_image_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "faces" / "someone").mkdir(parents=True)
    assert error_line(
        ["data", "convert", str(tmp_path / "faces"), str(tmp_path / "out")], capsys
    ) == (
        f"pocketnas: error: {tmp_path}/faces: the identity folders contain no images "
        "(.bmp, .jpeg, .jpg, .png, .webp)"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["faces"]


class _Reduce:
    def __init__(self, function: object, args: tuple[object, ...]) -> None:
        self.function = function
        self.args = args

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return self.function, self.args


def test_hostile_bin_is_refused_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "created-by-pickle"
    payload = _Reduce(os.system, (f"touch {shlex.quote(str(marker))}",))
    path = tmp_path / "lfw.bin"
    path.write_bytes(pickle.dumps(([payload, b"x"], [True]), protocol=2))

    assert error_line(["data", "inspect", str(path)], capsys) == (
        f"pocketnas: error: {path}: refusing to load: the pickle references posix.system; a "
        "verification .bin may only contain bytes, bools and numpy uint8 arrays"
    )
    assert not marker.exists()


def test_pairs_file_with_bad_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "lfw").mkdir()
    (tmp_path / "pairs.txt").write_text("1 1\nAbel 1 2\nAbel 1 Bea\n")
    args = ["data", "make-bin", str(tmp_path / "lfw"), "--pairs", str(tmp_path / "pairs.txt")]
    assert error_line([*args, "--out", str(tmp_path / "out.bin")], capsys) == (
        f"pocketnas: error: {tmp_path}/pairs.txt: line 3 is neither 'name n1 n2' nor "
        "'name1 n1 name2 n2' with image numbers from 1: 'Abel 1 Bea'"
    )
    assert not (tmp_path / "out.bin").exists()


def test_broken_image_in_convert_worker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    faces = tmp_path / "faces"
    for name in ("a", "b"):
        (faces / name).mkdir(parents=True)
        for number in range(4):
            (faces / name / f"{number}.jpg").write_bytes(encode_jpeg(np.zeros((8, 8, 3), np.uint8)))
    (faces / "b" / "2.jpg").write_bytes(b"\xff\xd8\xff broken")
    args = ["data", "convert", str(faces), str(tmp_path / "out"), "--workers", "2"]
    assert error_line(args, capsys) == (
        f"pocketnas: error: {faces}/b/2.jpg: the file is not a readable image "
        "(unknown image format)"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["faces"]
