"""Every command reports bad input in one line naming the file, exit status 2, no traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pocketnas.cli import main
from pocketnas.data.recordio import write_face_record_set

PRESETS = Path(__file__).parent.parent / "fixtures" / "presets"


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


def _assert_one_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def copied_set(tmp_path: Path, mxnet_rec_dir: Path) -> Path:
    folder = tmp_path / "set"
    folder.mkdir()
    for name in ("train.rec", "train.idx", "property"):
        shutil.copy(mxnet_rec_dir / name, folder / name)
    return folder


def _search_args(data: Path, out: Path) -> list[str]:
    preset = str(PRESETS / "tiny-search.yaml")
    return ["-q", "search", "--data", str(data), "--out", str(out), "--preset", preset]


def test_missing_data_folder(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    code, err = _run(_search_args(missing, tmp_path / "run"), capsys)
    assert code == 2
    _assert_one_line(err, str(missing))
    assert not (tmp_path / "run").exists()


def test_empty_data_folder(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, err = _run(_search_args(empty, tmp_path / "run"), capsys)
    assert code == 2
    _assert_one_line(err, str(empty))


def test_rec_without_idx(copied_set, tmp_path, capsys):
    (copied_set / "train.idx").unlink()
    code, err = _run(["data", "inspect", str(copied_set)], capsys)
    assert code == 2
    _assert_one_line(err, "train.idx")


def test_bad_magic(copied_set, capsys):
    data = bytearray((copied_set / "train.rec").read_bytes())
    data[0:4] = b"JUNK"
    (copied_set / "train.rec").write_bytes(bytes(data))
    code, err = _run(["data", "inspect", str(copied_set)], capsys)
    assert code == 2
    _assert_one_line(err, "train.rec", "magic")


def test_truncated_rec(copied_set, tmp_path, capsys):
    rec = copied_set / "train.rec"
    rec.write_bytes(rec.read_bytes()[:20000])
    code, err = _run(_search_args(copied_set, tmp_path / "run"), capsys)
    assert code == 2
    _assert_one_line(err, "train.rec")


def test_non_image_payload_in_worker(tmp_path, capsys):
    """A non-image record fails inside a DataLoader worker and still reads as one line."""
    folder = tmp_path / "set"
    folder.mkdir()
    samples = [(label, b"definitely not a jpeg") for label in (0, 0, 1, 1)]
    write_face_record_set(folder, samples, num_classes=2, image_size=(32, 32))
    preset = tmp_path / "search.yaml"
    preset.write_text(
        (PRESETS / "tiny-search.yaml").read_text().replace("workers: 0", "workers: 1")
    )
    args = ["-q", "search", "--data", str(folder), "--out", str(tmp_path / "run")]
    code, err = _run([*args, "--preset", str(preset)], capsys)
    assert code == 2
    _assert_one_line(err, "train.rec", "key")


def test_genotype_that_is_not_a_genotype(tmp_path, capsys):
    bad = tmp_path / "genotype.json"
    bad.write_text('{"normal": "conv"}')
    code, err = _run(["render", str(bad), "--out", str(tmp_path / "pictures")], capsys)
    assert code == 2
    _assert_one_line(err, str(bad))
    assert not (tmp_path / "pictures").exists()


def test_output_parent_missing(tmp_path, mxnet_rec_dir, capsys):
    out = tmp_path / "no" / "such" / "run"
    code, err = _run(_search_args(mxnet_rec_dir, out), capsys)
    assert code == 2
    _assert_one_line(err, str(out))
    code, err = _run(["demo", "--out", str(out)], capsys)
    assert code == 2
    _assert_one_line(err, str(out))


def test_derive_rejects_code_in_text(tmp_path, capsys):
    out = tmp_path / "g.json"
    code, err = _run(
        ["derive", "--from-string", "__import__('os').system('true')", "--out", str(out)], capsys
    )
    assert code == 2
    _assert_one_line(err)
    assert not out.exists()


def test_damaged_checkpoint(tmp_path, mxnet_rec_dir, capsys):
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"PK\x03\x04 truncated zip")
    args = ["eval", "--checkpoint", str(checkpoint), "--preset", "pocketnet-s128"]
    code, err = _run([*args, "--bin", str(mxnet_rec_dir / "tiny_pairs.bin")], capsys)
    assert code == 2
    _assert_one_line(err, str(checkpoint), "may be truncated or damaged")


def test_cut_checkpoint(tmp_path, mxnet_rec_dir, capsys):
    whole = tmp_path / "whole.pt"
    torch.save({"weight": torch.ones(1000)}, whole)
    checkpoint = tmp_path / "cut.pt"
    checkpoint.write_bytes(whole.read_bytes()[:2000])
    args = ["eval", "--checkpoint", str(checkpoint), "--preset", "pocketnet-s128"]
    code, err = _run([*args, "--bin", str(mxnet_rec_dir / "tiny_pairs.bin")], capsys)
    assert code == 2
    _assert_one_line(err, str(checkpoint), "may be truncated or damaged")


def test_process_exit_has_no_traceback(tmp_path):
    """The installed entry point, run as a process, prints one line and exits 2."""
    missing = tmp_path / "missing"
    result = subprocess.run(
        [sys.executable, "-m", "pocketnas.cli", "data", "inspect", str(missing)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    _assert_one_line(result.stderr, str(missing))


def test_inspect_reports_first_damaged_record(tmp_path, capsys):
    folder = tmp_path / "set"
    folder.mkdir()
    write_face_record_set(folder, [(0, b"not an image"), (1, b"neither")], 2, (32, 32))
    code = main(["data", "inspect", str(folder)])
    captured = capsys.readouterr()
    assert code == 2
    _assert_one_line(captured.err, "train.rec", "key 1", "2 damaged")
    assert "first_damaged_record" in captured.out
