"""Search, derive, render, retrain and evaluate through the CLI on files written by MXNet."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pocketnas.cli import main
from pocketnas.search_space.genotype import Genotype, load_genotype
from pocketnas.search_space.published import POCKETNET_GENOTYPE

PRESETS = Path(__file__).parent.parent / "fixtures" / "presets"


@pytest.fixture(scope="module")
def search_run(tmp_path_factory, mxnet_rec_dir) -> Path:
    run = tmp_path_factory.mktemp("runs") / "search"
    code = main(
        [
            "-q",
            "search",
            "--data",
            str(mxnet_rec_dir),
            "--out",
            str(run),
            "--preset",
            str(PRESETS / "tiny-search.yaml"),
        ]
    )
    assert code == 0
    return run


def test_search_writes_per_epoch_files(search_run: Path):
    assert (search_run / "genotypes" / "epoch_001.json").is_file()
    alphas = json.loads((search_run / "alphas" / "epoch_001.json").read_text())
    assert alphas["nodes"] == 2
    assert len(alphas["normal"]) == 5  # 2 + 3 edges
    assert all(abs(sum(row) - 1.0) < 1e-5 for row in alphas["normal"])
    assert (search_run / "checkpoints" / "last.pt").is_file()
    metrics = (search_run / "metrics.csv").read_text().splitlines()
    assert metrics[0].startswith("epoch,")
    assert len(metrics) == 2


def test_search_refuses_occupied_folder_then_resumes(search_run: Path, mxnet_rec_dir, capsys):
    args = ["-q", "search", "--data", str(mxnet_rec_dir), "--out", str(search_run)]
    args += ["--preset", str(PRESETS / "tiny-search.yaml")]
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    # Resuming a finished run changes nothing and ends at once.
    before = (search_run / "metrics.csv").read_text()
    assert main([*args, "--resume"]) == 0
    assert (search_run / "metrics.csv").read_text() == before


def test_derive_matches_search_genotype(search_run: Path, tmp_path: Path):
    out = tmp_path / "derived.json"
    assert main(["derive", str(search_run), "--out", str(out)]) == 0
    assert load_genotype(out) == load_genotype(search_run / "genotype.json")


def test_retrain_and_eval(search_run: Path, tmp_path: Path, mxnet_rec_dir, capsys):
    run = tmp_path / "retrain"
    bin_path = mxnet_rec_dir / "tiny_pairs.bin"
    code = main(
        [
            "-q",
            "retrain",
            "--genotype",
            str(search_run / "genotype.json"),
            "--data",
            str(mxnet_rec_dir),
            "--out",
            str(run),
            "--preset",
            str(PRESETS / "tiny-retrain.yaml"),
            "--bin",
            str(bin_path),
        ]
    )
    assert code == 0
    capsys.readouterr()
    checkpoint = run / "checkpoints" / "last.pt"
    assert checkpoint.is_file()
    assert main(["eval", "--checkpoint", str(checkpoint), "--bin", str(bin_path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    row = result["sets"]["tiny_pairs"]
    assert row["pairs"] == 40
    assert 0.0 <= row["accuracy"] <= 1.0


def test_render_writes_pictures(search_run: Path, tmp_path: Path):
    assert shutil.which("dot"), "graphviz's dot is missing: run scripts/setup.sh"
    out = tmp_path / "pictures"
    assert main(["render", str(search_run / "genotype.json"), "--out", str(out)]) == 0
    for name in ("normal.png", "normal.svg", "reduction.png", "reduction.svg"):
        assert (out / name).stat().st_size > 0


def test_inspect_fixture_lists_identities_and_images(mxnet_rec_dir, capsys):
    assert main(["data", "inspect", str(mxnet_rec_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["identities"] == 6
    assert info["images"] == 30


def test_retrain_takes_preset_genotype(tmp_path: Path, mxnet_rec_dir, capsys):
    preset = tmp_path / "tiny-with-genotype.yaml"
    text = (PRESETS / "tiny-retrain.yaml").read_text()
    preset.write_text(text + f"genotype: {json.dumps(POCKETNET_GENOTYPE.to_text())}\n")
    run = tmp_path / "retrain"
    args = ["-q", "retrain", "--data", str(mxnet_rec_dir), "--out", str(run)]
    assert main([*args, "--preset", str(preset)]) == 0
    assert (run / "checkpoints" / "last.pt").is_file()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert Genotype.from_text(saved["genotype"]) == POCKETNET_GENOTYPE


def test_retrain_without_any_genotype(tmp_path: Path, mxnet_rec_dir, capsys):
    args = ["retrain", "--data", str(mxnet_rec_dir), "--out", str(tmp_path / "run")]
    assert main([*args, "--preset", str(PRESETS / "tiny-retrain.yaml")]) == 2
    assert capsys.readouterr().err.strip() == (
        "pocketnas: error: the preset carries no genotype; give one with --genotype FILE"
    )
    assert not (tmp_path / "run").exists()
