"""Verification .bin loading: the three writer variants and the safe unpickler."""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import pickle
import shlex
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pocketnas.data.verification_bin import load_verification_bin, write_verification_bin
from pocketnas.errors import DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mxnet_rec"
BIN_FILES = ["tiny_pairs.bin", "tiny_pairs_py3.bin", "tiny_pairs_ndarray.bin"]


def bin_manifest(file_name: str) -> dict[str, Any]:
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    entries: dict[str, dict[str, Any]] = {entry["file"]: entry for entry in manifest["bins"]}
    return entries[file_name]


class _Reduce:
    """Pickles as a call of `function(*args)`, like a hostile .bin would."""

    def __init__(self, function: Any, args: tuple[Any, ...]) -> None:
        self.function = function
        self.args = args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.function, self.args


@pytest.mark.parametrize("file_name", BIN_FILES)
def test_bin_matches_manifest(file_name: str) -> None:
    expected = bin_manifest(file_name)
    path = FIXTURES / file_name
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected["sha256"]

    images, issame = load_verification_bin(path)

    assert issame.dtype == np.bool_
    assert issame.tolist() == expected["issame"]
    assert len(issame) == expected["num_pairs"]
    assert len(images) == expected["num_images"]
    for image, image_expected in zip(images, expected["images"], strict=True):
        assert isinstance(image, bytes)
        assert len(image) == image_expected["len"]
        assert hashlib.sha256(image).hexdigest() == image_expected["sha256"]


def test_ndarray_bin_loads_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, _ = load_verification_bin(FIXTURES / "tiny_pairs_ndarray.bin")
    python2_images, _ = load_verification_bin(FIXTURES / "tiny_pairs.bin")
    assert images == python2_images[:8]


def test_protocol_2_bytes_from_python3_load(tmp_path: Path) -> None:
    images = [b"\xff\xd8 first", b"\xff\xd8 second"]
    path = tmp_path / "p2.bin"
    path.write_bytes(pickle.dumps((images, [False]), protocol=2))
    loaded, issame = load_verification_bin(path)
    assert loaded == images
    assert issame.tolist() == [False]


def test_protocol_2_ndarray_loads(tmp_path: Path) -> None:
    arrays = [np.frombuffer(b"\xff\xd8abc", dtype=np.uint8), np.frombuffer(b"xyz", np.uint8)]
    path = tmp_path / "nd2.bin"
    path.write_bytes(pickle.dumps((arrays, [True]), protocol=2))
    loaded, _ = load_verification_bin(path)
    assert loaded == [b"\xff\xd8abc", b"xyz"]


def test_write_round_trip(tmp_path: Path) -> None:
    images, issame = load_verification_bin(FIXTURES / "tiny_pairs_py3.bin")
    path = tmp_path / "copy.bin"
    write_verification_bin(path, images, issame.tolist())
    loaded, loaded_issame = load_verification_bin(path)
    assert loaded == images
    assert loaded_issame.tolist() == issame.tolist()
    assert path.read_bytes()[:2] == b"\x80\x04"  # pickle protocol 4
    assert [p.name for p in tmp_path.iterdir()] == ["copy.bin"]


def test_write_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 per pair"):
        write_verification_bin(tmp_path / "a.bin", [b"x"], [True])
    with pytest.raises(ValueError, match="expected bytes"):
        write_verification_bin(tmp_path / "a.bin", ["text", "text"], [True])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="expected a bool"):
        write_verification_bin(tmp_path / "a.bin", [b"x", b"y"], [1])  # type: ignore[list-item]
    assert not (tmp_path / "a.bin").exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_hostile_pickle_refused_os_system(protocol: int, tmp_path: Path) -> None:
    marker = tmp_path / "created-by-pickle"
    payload = _Reduce(os.system, (f"touch {shlex.quote(str(marker))}",))
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(([payload, b"x"], [True]), protocol=protocol))

    with pytest.raises(DataError) as caught:
        load_verification_bin(path)

    message = str(caught.value)
    assert message.startswith(f"{path}: refusing to load: the pickle references ")
    assert ".system" in message
    assert "\n" not in message
    assert not marker.exists()


def test_hostile_pickle_refused_open(tmp_path: Path) -> None:
    marker = tmp_path / "created-by-pickle"
    path = tmp_path / "evil.bin"
    path.write_bytes(pickle.dumps(_Reduce(open, (str(marker), "w")), protocol=2))

    with pytest.raises(DataError, match=r"refusing to load: the pickle references io\.open"):
        load_verification_bin(path)
    assert not marker.exists()


def test_codecs_encode_other_than_latin1_refused(tmp_path: Path) -> None:
    path = tmp_path / "rot13.bin"
    path.write_bytes(pickle.dumps(([_Reduce(codecs.encode, ("abc", "rot13"))], []), protocol=2))
    with pytest.raises(DataError, match=r"not a readable verification pickle .*latin-1"):
        load_verification_bin(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"images": []}, "expected a pickled 2-tuple"),
        (([b"a", b"b"], [True], "extra"), "expected a pickled 2-tuple"),
        ((b"ab", [True]), "images is a bytes; expected a list"),
        (([b"a", b"b", b"c"], [True]), "3 images for 1 pairs"),
        (([b"a", b"b"], [1]), r"issame\[0\] is 1 \(int\); expected a bool"),
        (([b"a", 5], [True]), "image 1 is a int"),
        (([], []), "contains no pairs"),
    ],
    ids=["dict", "3-tuple", "images-bytes", "count", "int-flag", "int-image", "empty"],
)
def test_invalid_content_raises(content: Any, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.bin"
    path.write_bytes(pickle.dumps(content, protocol=4))
    with pytest.raises(DataError, match=message) as caught:
        load_verification_bin(path)
    assert caught.value.path == str(path)


def test_truncated_and_missing_files_raise(tmp_path: Path) -> None:
    path = tmp_path / "cut.bin"
    path.write_bytes((FIXTURES / "tiny_pairs.bin").read_bytes()[:1000])
    with pytest.raises(DataError, match=r"cut\.bin: not a readable verification pickle"):
        load_verification_bin(path)
    with pytest.raises(DataError, match=r"absent\.bin: verification file not found"):
        load_verification_bin(tmp_path / "absent.bin")
