"""The weight/architecture split of a search: stratified per identity, and rejected when empty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pocketnas.cli import main
from pocketnas.data.dataset import FaceRecordDataset
from pocketnas.errors import PocketNasError
from pocketnas.searchers.search import search_halves, stratified_halves


def _synth(folder: Path, images_per_identity: int) -> Path:
    args = ["data", "synth", str(folder), "--identities", "6", "--pairs", "2", "--seed", "0"]
    args += ["--images-per-identity", str(images_per_identity), "--image-size", "32"]
    assert main(["-q", *args]) == 0
    return folder


def test_halves_split_each_identity(tmp_path: Path) -> None:
    dataset = FaceRecordDataset(_synth(tmp_path / "faces", 5), train=True)
    weight_idx, arch_idx = search_halves(dataset, seed=0)
    labels = np.asarray(dataset.record_set.labels)
    assert sorted(np.concatenate([weight_idx, arch_idx]).tolist()) == list(range(len(labels)))
    for label in np.unique(labels):
        assert np.count_nonzero(labels[weight_idx] == label) == 3  # the odd image goes to weights
        assert np.count_nonzero(labels[arch_idx] == label) == 2


def test_single_image_identities_rejected(tmp_path: Path) -> None:
    folder = _synth(tmp_path / "single", 1)
    with pytest.raises(PocketNasError, match="every identity has a single image"):
        search_halves(FaceRecordDataset(folder, train=True), seed=0)


@pytest.mark.parametrize("searcher", ["darts", "nni-darts"])
def test_search_cli_rejects_single_images(
    searcher: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _synth(tmp_path / "single", 1)
    capsys.readouterr()
    run = tmp_path / "run"
    code = main(["-q", "search", "--data", str(folder), "--out", str(run), "--searcher", searcher])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert str(folder) in err
    assert "two or more images per identity" in err
    assert not run.exists() or not any(run.iterdir())


def _halves_per_label(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The split written plainly: one scan of the labels per identity."""
    rng = np.random.default_rng(seed)
    weight_half, arch_half = [], []
    for label in np.unique(labels):
        indices = np.flatnonzero(labels == label)
        rng.shuffle(indices)
        cut = (len(indices) + 1) // 2
        weight_half.append(indices[:cut])
        arch_half.append(indices[cut:])
    return np.sort(np.concatenate(weight_half)), np.sort(np.concatenate(arch_half))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_halves_match_per_label_split(seed: int) -> None:
    labels = np.random.default_rng(100 + seed).integers(0, 40, size=500)
    fast = stratified_halves(labels, seed)
    plain = _halves_per_label(labels, seed)
    assert np.array_equal(fast[0], plain[0])
    assert np.array_equal(fast[1], plain[1])
