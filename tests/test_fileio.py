from __future__ import annotations

import pytest
import torch

from pocketnas.errors import CheckpointError, PocketNasError
from pocketnas.fileio import atomic_open, atomic_torch_save, atomic_write_text, load_checkpoint


def test_failed_write_leaves_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "file.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_open(target, "w") as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_missing_parent_is_a_user_error(tmp_path):
    with pytest.raises(PocketNasError, match="does not exist"):
        atomic_write_text(tmp_path / "no" / "file.txt", "x")


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_torch_save(path, {"weights": torch.arange(3), "epoch": 2})
    state = load_checkpoint(path)
    assert state["epoch"] == 2
    assert torch.equal(state["weights"], torch.arange(3))


class _Payload:
    def __reduce__(self):
        return (print, ("ran",))


def test_checkpoint_with_code_is_rejected(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"x": _Payload()}, path)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_written_files_follow_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        target = tmp_path / "report.md"
        atomic_write_text(target, "shared")
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644


def test_pickle_that_is_not_a_checkpoint(tmp_path):
    import pickle

    path = tmp_path / "pairs.bin"
    path.write_bytes(pickle.dumps(([b"jpeg"], [True]), protocol=4))
    with pytest.raises(CheckpointError, match="weights_only=True") as info:
        load_checkpoint(path)
    assert "weights_only=False" not in str(info.value)
