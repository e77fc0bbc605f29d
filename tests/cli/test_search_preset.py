"""PocketNet's search preset (second order, 112x112, 8 cells of 16 channels) runs end to end."""

from __future__ import annotations

import json

import pytest

from pocketnas.cli import main
from pocketnas.search_space.genotype import load_genotype


@pytest.mark.slow
@pytest.mark.parametrize("arch_gradient", ["darts", "authors"])
def test_search_preset_on_fixtures(tmp_path, mxnet_rec_dir, arch_gradient):
    run = tmp_path / "search"
    args = ["-q", "search", "--preset", "pocketnet-search", "--order", "second"]
    args += ["--data", str(mxnet_rec_dir), "--out", str(run), "--epochs", "1"]
    args += ["--batch-size", "2", "--steps-per-epoch", "1", "--workers", "0"]
    assert main([*args, "--arch-gradient", arch_gradient]) == 0
    genotype = load_genotype(run / "genotype.json")
    assert len(genotype.normal) == 4
    assert (run / "checkpoints" / "last.pt").is_file()
    alphas = json.loads((run / "alphas" / "epoch_001.json").read_text())
    assert alphas["epoch"] == 1
