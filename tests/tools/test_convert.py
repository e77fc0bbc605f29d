"""Image folder <-> RecordIO conversion, alignment on the way in, and .bin files from pairs.txt."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pocketnas.cli import main
from pocketnas.data.align import ARCFACE_TEMPLATE_112
from pocketnas.data.images import decode_image, encode_jpeg
from pocketnas.data.recordio import FaceRecordSet, write_face_record_set
from pocketnas.data.verification_bin import load_verification_bin
from pocketnas.errors import DataError, PocketNasError
from pocketnas.tools.convert import (
    convert,
    folder_to_record_set,
    lfw_image_path,
    make_verification_bin,
    read_landmarks,
    read_lfw_pairs,
    record_set_to_folder,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mxnet_rec"
SET_FILES = ("train.rec", "train.idx", "property")


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


# --- RecordIO <-> folder -------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_main_set_round_trip_is_byte_identical(workers: int, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    packed = tmp_path / "packed"

    unpacked = convert(FIXTURES, folder, workers=workers)
    repacked = convert(folder, packed, workers=workers)

    assert (unpacked.images, unpacked.identities, unpacked.image_size) == (30, 6, (112, 112))
    assert (repacked.images, repacked.identities, repacked.image_size) == (30, 6, (112, 112))
    assert sorted(path.name for path in folder.iterdir()) == ["0", "1", "2", "3", "4", "5"]
    assert sorted(path.name for path in (folder / "0").iterdir())[:2] == ["01.jpg", "02.jpg"]
    for name in SET_FILES:
        assert (packed / name).read_bytes() == (FIXTURES / name).read_bytes(), name
    assert (packed / "identities.txt").read_text() == "0\n1\n2\n3\n4\n5\n"
    assert leftovers(tmp_path) == ["folder", "packed"]


@pytest.mark.parametrize("name", ["label_array", "no_header", "magic_split"])
def test_other_layouts_round_trip_images_and_labels(name: str, tmp_path: Path) -> None:
    convert(FIXTURES / name / "train.rec", tmp_path / "folder")
    convert(tmp_path / "folder", tmp_path / "packed")

    original = FaceRecordSet(FIXTURES / name)
    packed = FaceRecordSet(tmp_path / "packed")
    assert packed.layout == "header"
    assert packed.num_classes == original.num_classes
    assert packed.labels.tolist() == original.labels.tolist()
    assert [packed.read_image_bytes(i) for i in range(len(packed))] == [
        original.read_image_bytes(i) for i in range(len(original))
    ]


def test_class_without_images_keeps_its_id(tmp_path: Path) -> None:
    image = encode_jpeg(np.full((8, 8, 3), 90, dtype=np.uint8))
    write_face_record_set(tmp_path / "set", [(0, image), (2, image)], 3, (8, 8))

    record_set_to_folder(tmp_path / "set", tmp_path / "folder")
    folder_to_record_set(tmp_path / "folder", tmp_path / "packed")

    assert sorted(path.name for path in (tmp_path / "folder").iterdir()) == ["0", "1", "2"]
    assert list((tmp_path / "folder" / "1").iterdir()) == []
    for name in SET_FILES:
        assert (tmp_path / "packed" / name).read_bytes() == (tmp_path / "set" / name).read_bytes()


def test_png_images_are_stored_unchanged(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    (tmp_path / "faces" / "ann").mkdir(parents=True)
    (tmp_path / "faces" / "ann" / "a.png").write_bytes(buffer.getvalue())

    folder_to_record_set(tmp_path / "faces", tmp_path / "packed")
    record_set_to_folder(tmp_path / "packed", tmp_path / "back")

    packed = FaceRecordSet(tmp_path / "packed")
    assert packed.read_image_bytes(0) == buffer.getvalue()
    np.testing.assert_array_equal(packed.read_image(0), rgb)
    assert (tmp_path / "packed" / "property").read_text() == "1,8,6"
    assert (tmp_path / "back" / "0" / "1.png").read_bytes() == buffer.getvalue()


def test_mixed_sizes_write_nothing(tmp_path: Path) -> None:
    faces = tmp_path / "faces"
    (faces / "a").mkdir(parents=True)
    (faces / "b").mkdir()
    (faces / "a" / "1.jpg").write_bytes(encode_jpeg(np.zeros((8, 8, 3), np.uint8)))
    (faces / "b" / "1.jpg").write_bytes(encode_jpeg(np.zeros((9, 8, 3), np.uint8)))

    with pytest.raises(DataError, match=r"b/1\.jpg: image is 9x8 pixels, but .*a/1\.jpg is 8x8"):
        folder_to_record_set(faces, tmp_path / "packed", workers=2)
    assert leftovers(tmp_path) == ["faces"]


def test_broken_image_writes_nothing(tmp_path: Path) -> None:
    faces = tmp_path / "faces"
    (faces / "a").mkdir(parents=True)
    (faces / "a" / "1.jpg").write_bytes(encode_jpeg(np.zeros((8, 8, 3), np.uint8)))
    (faces / "a" / "2.jpg").write_bytes(b"\xff\xd8\xff broken")
    (tmp_path / "packed").mkdir()

    with pytest.raises(DataError, match=r"a/2\.jpg: the file is not a readable image"):
        folder_to_record_set(faces, tmp_path / "packed")
    assert leftovers(tmp_path) == ["faces", "packed"]
    assert list((tmp_path / "packed").iterdir()) == []


def test_existing_output_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(PocketNasError, match="output already exists"):
        convert(FIXTURES, tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "x"


def test_landmarks_only_for_folders(tmp_path: Path) -> None:
    with pytest.raises(PocketNasError, match="--landmarks applies to image folders"):
        convert(FIXTURES, tmp_path / "out", landmarks=tmp_path / "l.txt")


# --- alignment while packing ---------------------------------------------------------------------


def similarity(angle: float, scale: float, dx: float, dy: float) -> np.ndarray:
    cos, sin = math.cos(angle), math.sin(angle)
    return np.array([[scale * cos, -scale * sin, dx], [scale * sin, scale * cos, dy]])


def test_landmarks_align_faces_to_template(tmp_path: Path) -> None:
    faces = tmp_path / "faces"
    lines = ["# path x1 y1 ... x5 y5"]
    for number, (angle, scale) in enumerate([(0.3, 1.5), (-0.2, 2.2)]):
        matrix = similarity(angle, scale, 30.0 + 10 * number, 20.0)
        points = ARCFACE_TEMPLATE_112 @ matrix[:, :2].T + matrix[:, 2]
        rgb = np.zeros((300, 320, 3), dtype=np.uint8)
        for x, y in np.round(points).astype(int):
            rgb[y - 3 : y + 4, x - 3 : x + 4] = 255
        path = faces / f"person {number}" / "photo.png"
        path.parent.mkdir(parents=True)
        Image.fromarray(rgb).save(path)
        lines.append(f"person {number}/photo.png " + " ".join(f"{v:.3f}" for v in points.ravel()))
    (tmp_path / "landmarks.txt").write_text("\n".join(lines) + "\n")

    summary = folder_to_record_set(faces, tmp_path / "packed", landmarks=tmp_path / "landmarks.txt")

    assert summary.image_size == (112, 112)
    packed = FaceRecordSet(tmp_path / "packed")
    assert (tmp_path / "packed" / "property").read_text() == "2,112,112"
    for index in range(2):
        assert packed.read_image_bytes(index)[:3] == b"\xff\xd8\xff"  # re-encoded as JPEG
        aligned = packed.read_image(index)
        for x, y in ARCFACE_TEMPLATE_112:
            assert aligned[round(y), round(x)].min() > 180, (index, x, y)


def test_landmark_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.txt"
    bad.write_text("a.jpg 1 2 3\n")
    with pytest.raises(
        DataError, match=r"bad\.txt: line 1 is not an image path followed by 10 numbers"
    ):
        read_landmarks(bad, tmp_path)
    bad.write_text("a.jpg " + "1 " * 10 + "\n" + "./a.jpg " + "2 " * 10 + "\n")
    with pytest.raises(DataError, match=r"line 2 repeats the image \./a\.jpg"):
        read_landmarks(bad, tmp_path)
    with pytest.raises(DataError, match="landmark file not found"):
        read_landmarks(tmp_path / "absent.txt", tmp_path)

    faces = tmp_path / "faces"
    (faces / "a").mkdir(parents=True)
    for name in ("1.jpg", "2.jpg"):
        (faces / "a" / name).write_bytes(encode_jpeg(np.zeros((8, 8, 3), np.uint8)))
    partial = tmp_path / "partial.txt"
    partial.write_text("a/1.jpg " + " ".join(str(v) for v in ARCFACE_TEMPLATE_112.ravel()) + "\n")
    with pytest.raises(DataError, match=r"partial\.txt: no landmarks for .*a/2\.jpg"):
        folder_to_record_set(faces, tmp_path / "packed", landmarks=partial)
    assert not (tmp_path / "packed").exists()


# --- pairs.txt and .bin --------------------------------------------------------------------------

# Two folds of two same and two different pairs, tab- and space-separated like real files.
PAIRS_TXT = (
    "2\t2\n"
    "Abel\t1\t2\nAbel\t1\t3\nAbel\t2\tBea\t1\nCid\t1\tBea\t2\n"
    "Bea 1 2\nCid 1 2\nAbel 3 Cid 2\nBea 2 Abel 1\n"
)


def write_lfw_folder(root: Path) -> dict[tuple[str, int], bytes]:
    images = {}
    for identity, count in (("Abel", 3), ("Bea", 2), ("Cid", 2)):
        for number in range(1, count + 1):
            rgb = np.full((16, 16, 3), 30 * number, dtype=np.uint8)
            rgb[:, :, 1] = len(identity) * 20
            data = encode_jpeg(rgb)
            path = lfw_image_path(root, identity, number)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            images[identity, number] = data
    return images


def test_read_lfw_pairs(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text(PAIRS_TXT)
    pairs = read_lfw_pairs(path)
    assert len(pairs) == 8
    assert (
        pairs[0].first_name,
        pairs[0].first_number,
        pairs[0].second_name,
        pairs[0].second_number,
    ) == ("Abel", 1, "Abel", 2)
    assert (pairs[2].first_name, pairs[2].second_name, pairs[2].second_number) == ("Abel", "Bea", 1)
    assert [pair.same for pair in pairs] == [True, True, False, False, True, True, False, False]
    assert pairs[4].line == 6

    path.write_text("3\nA 1 2\nA 1 3\nB 1 2\nA 1 B 1\nA 2 B 1\nA 3 B 2\n")
    assert len(read_lfw_pairs(path)) == 6


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"line 1 must be 'FOLDS PAIRS' or 'PAIRS'"),
        ("ten 300\n", r"line 1 must be 'FOLDS PAIRS' or 'PAIRS'"),
        ("1 1\nAbel 1 2\nAbel 1 Bea\n", r"line 3 is neither 'name n1 n2' nor 'name1 n1 name2 n2'"),
        ("1 1\nAbel 0 2\nAbel 1 Bea 1\n", r"line 2 is neither"),
        (
            "1 2\nAbel 1 2\nAbel 1 Bea 1\n",
            r"line 1 announces 1 fold\(s\) of 2 same and 2 different pairs \(4 lines\), but "
            r"the file has 2",
        ),
    ],
)
def test_read_lfw_pairs_errors(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=rf"pairs\.txt: {message}"):
        read_lfw_pairs(path)


def test_make_bin_round_trip(tmp_path: Path) -> None:
    images = write_lfw_folder(tmp_path / "lfw")
    (tmp_path / "pairs.txt").write_text(PAIRS_TXT)

    count = make_verification_bin(tmp_path / "lfw", tmp_path / "pairs.txt", tmp_path / "lfw.bin")

    loaded, issame = load_verification_bin(tmp_path / "lfw.bin")
    pairs = read_lfw_pairs(tmp_path / "pairs.txt")
    assert count == 8
    assert issame.tolist() == [pair.same for pair in pairs]
    expected = []
    for pair in pairs:
        expected += [
            images[pair.first_name, pair.first_number],
            images[pair.second_name, pair.second_number],
        ]
    assert loaded == expected


def test_make_bin_reproduces_fixture_bin(tmp_path: Path) -> None:
    """The images of tiny_pairs.bin, laid out like LFW, make a .bin with the same content."""
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    entry = next(item for item in manifest["bins"] if item["file"] == "tiny_pairs.bin")
    original, issame = load_verification_bin(FIXTURES / "tiny_pairs.bin")

    # Number the distinct images of each synthetic identity 1, 2, ... as LFW does.
    numbers: dict[tuple[str, bytes], int] = {}
    lines = ["4 5"]  # 4 folds of 5 same and 5 different pairs
    for pair, identities in enumerate(entry["pair_plan_identity_ids"]):
        places = []
        for side, identity in enumerate(identities):
            name, data = f"id{identity}", original[2 * pair + side]
            if (name, data) not in numbers:
                numbers[name, data] = 1 + sum(1 for known, _ in numbers if known == name)
                path = lfw_image_path(tmp_path / "faces", name, numbers[name, data])
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            places.append((name, numbers[name, data]))
        (name_a, n_a), (name_b, n_b) = places
        lines.append(
            f"{name_a}\t{n_a}\t{n_b}" if issame[pair] else f"{name_a}\t{n_a}\t{name_b}\t{n_b}"
        )
    (tmp_path / "pairs.txt").write_text("\n".join(lines) + "\n")

    make_verification_bin(tmp_path / "faces", tmp_path / "pairs.txt", tmp_path / "out.bin")

    loaded, loaded_issame = load_verification_bin(tmp_path / "out.bin")
    assert loaded == original
    assert loaded_issame.tolist() == issame.tolist()


def test_make_bin_missing_image_names_line(tmp_path: Path) -> None:
    write_lfw_folder(tmp_path / "lfw")
    (tmp_path / "lfw" / "Bea" / "Bea_0002.jpg").unlink()
    (tmp_path / "pairs.txt").write_text(PAIRS_TXT)
    with pytest.raises(
        DataError, match=r"Bea/Bea_0002\.jpg: image not found \(line 5 of pairs\.txt\)"
    ):
        make_verification_bin(tmp_path / "lfw", tmp_path / "pairs.txt", tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()


def test_make_bin_with_landmarks_aligns(tmp_path: Path) -> None:
    write_lfw_folder(tmp_path / "lfw")
    (tmp_path / "pairs.txt").write_text(PAIRS_TXT)
    points = " ".join(f"{v / 7:.3f}" for v in ARCFACE_TEMPLATE_112.ravel())
    names = [("Abel", 3), ("Bea", 2), ("Cid", 2)]
    lines = [
        f"{name}/{name}_{n:04d}.jpg {points}" for name, count in names for n in range(1, count + 1)
    ]
    (tmp_path / "landmarks.txt").write_text("\n".join(lines) + "\n")

    make_verification_bin(
        tmp_path / "lfw",
        tmp_path / "pairs.txt",
        tmp_path / "out.bin",
        landmarks=tmp_path / "landmarks.txt",
    )

    loaded, _ = load_verification_bin(tmp_path / "out.bin")
    assert {decode_image(data).shape for data in loaded} == {(112, 112, 3)}


# --- command line --------------------------------------------------------------------------------


def test_cli_convert_and_make_bin(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["-q", "data", "convert", str(FIXTURES), str(tmp_path / "folder"), "--workers", "2"])
        == 0
    )
    assert main(["-q", "data", "convert", str(tmp_path / "folder"), str(tmp_path / "packed")]) == 0
    write_lfw_folder(tmp_path / "lfw")
    (tmp_path / "pairs.txt").write_text(PAIRS_TXT)
    args = ["-q", "data", "make-bin", str(tmp_path / "lfw"), "--pairs", str(tmp_path / "pairs.txt")]
    assert main([*args, "--out", str(tmp_path / "lfw.bin")]) == 0

    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"wrote 30 images of 6 identities (112x112) to {tmp_path / 'folder'}",
        f"wrote 30 images of 6 identities (112x112) to {tmp_path / 'packed'}",
        f"wrote 8 pairs to {tmp_path / 'lfw.bin'}",
    ]
    assert (tmp_path / "packed" / "train.rec").read_bytes() == (FIXTURES / "train.rec").read_bytes()
