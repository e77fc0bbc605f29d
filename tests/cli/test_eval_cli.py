"""`pocketnas eval` on run folders, search checkpoints and damaged `.bin` files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from pocketnas.cli import main
from pocketnas.config import SearchConfig, to_dict
from pocketnas.data.images import encode_jpeg
from pocketnas.fileio import atomic_torch_save
from pocketnas.search_space.networks import SearchNetwork
from pocketnas.search_space.operations import PRIMITIVES

TINY_BIN = Path(__file__).parent.parent / "fixtures" / "mxnet_rec" / "tiny_pairs.bin"


def write_bin(path: Path, images: int, pairs: int) -> Path:
    rng = np.random.default_rng(0)
    jpeg = [encode_jpeg(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(images)]
    flags = [index % 2 == 0 for index in range(pairs)]
    path.write_bytes(pickle.dumps((jpeg, flags), protocol=4))
    return path


@pytest.fixture(scope="module")
def search_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A search checkpoint written the way the search loop writes one, for a tiny supernet."""
    config = SearchConfig(channels=4, layers=4, nodes=2, embedding_size=8, image_size=32)
    supernet = SearchNetwork(
        5, channels=4, layers=4, nodes=2, stem_multiplier=3, embedding_size=8, image_size=32
    )
    path = tmp_path_factory.mktemp("search") / "last.pt"
    atomic_torch_save(
        path,
        {
            "kind": "search",
            "epoch": 1,
            "config": to_dict(config),
            "model": supernet.state_dict(),
            "primitives": list(PRIMITIVES),
            "nodes": 2,
        },
    )
    return path


def test_eval_search_checkpoint(search_checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "evaluation.json"
    args = ["-q", "eval", "--checkpoint", str(search_checkpoint), "--bin", str(TINY_BIN)]
    assert main([*args, "--out", str(out)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["set", "pairs", "accuracy", "std", "VAL@1e-3", "XNorm"]
    assert table[1].split()[:2] == ["tiny_pairs", "40"]
    saved = json.loads(out.read_text())
    assert saved["checkpoint"] == str(search_checkpoint)
    assert 0.0 <= saved["sets"]["tiny_pairs"]["accuracy"] <= 1.0
    assert len(saved["sets"]["tiny_pairs"]["roc"]["tpr"]) == 400


def test_eval_run_folder_uses_last(search_checkpoint: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(search_checkpoint.read_bytes())
    assert main(["-q", "eval", "--checkpoint", str(run), "--bin", str(TINY_BIN), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["checkpoint"] == str(run / "checkpoints" / "last.pt")
    assert result["ijb"] == {}


def test_eval_needs_bin_or_ijb(search_checkpoint: Path, capsys) -> None:
    assert main(["eval", "--checkpoint", str(search_checkpoint)]) == 2
    assert capsys.readouterr().err == (
        "pocketnas: error: give verification files with --bin FILE..., or --ijb DIR...\n"
    )


def test_bin_with_odd_image_count(search_checkpoint: Path, tmp_path: Path, capsys) -> None:
    damaged = write_bin(tmp_path / "odd.bin", images=41, pairs=20)
    assert main(["eval", "--checkpoint", str(search_checkpoint), "--bin", str(damaged)]) == 2
    assert capsys.readouterr().err == (
        f"pocketnas: error: {damaged}: 41 images for 20 pairs; expected exactly 2 images per pair\n"
    )


def test_bin_with_wrong_pair_list(search_checkpoint: Path, tmp_path: Path, capsys) -> None:
    damaged = write_bin(tmp_path / "short.bin", images=40, pairs=25)
    assert main(["eval", "--checkpoint", str(search_checkpoint), "--bin", str(damaged)]) == 2
    assert capsys.readouterr().err == (
        f"pocketnas: error: {damaged}: 40 images for 25 pairs; expected exactly 2 images per pair\n"
    )


def test_run_folder_without_checkpoint(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    assert main(["eval", "--checkpoint", str(run), "--bin", str(TINY_BIN)]) == 2
    last = run / "checkpoints" / "last.pt"
    assert capsys.readouterr().err == (
        f"pocketnas: error: {last}: checkpoint not found; is {run} a pocketnas run folder?\n"
    )
