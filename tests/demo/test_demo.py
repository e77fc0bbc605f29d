"""End-to-end runs of `pocketnas demo`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pocketnas.cli import main
from pocketnas.data.inspect import inspect_path
from pocketnas.search_space.genotype import Genotype

PRESETS = Path(__file__).parent.parent / "fixtures" / "presets"

STAGES = (
    "synth",
    "baseline",
    "search",
    "render",
    "teacher",
    "retrain",
    "retrain_without_kd",
    "evaluate",
    "report",
    "total",
)


def _check_outputs(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    Genotype.from_dict(summary["genotype"])
    assert summary["params"] > 0
    assert summary["mflops"] > 0
    assert set(STAGES) <= set(summary["seconds"])
    for name in ("normal", "reduction"):
        for suffix in ("png", "svg", "dot"):
            assert (out / "pictures" / f"{name}.{suffix}").stat().st_size > 0
    assert (out / "pictures" / "normal.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "search" / "checkpoints" / "last.pt").is_file()
    assert (out / "retrain" / "checkpoints" / "last.pt").is_file()
    assert (out / "report.md").is_file()
    distillation = summary["distillation"]
    assert distillation["kind"] == "multi-step"
    teacher = out / "teacher"
    epochs = distillation["teacher"]["epochs"]
    for epoch in range(1, epochs + 1):
        assert (teacher / "checkpoints" / f"epoch_{epoch:03d}.pt").is_file()
    assert distillation["teacher"]["channels"] > distillation["with_kd"]["channels"]
    assert distillation["with_kd"]["accuracy"] == summary["verification"]["accuracy"]
    assert distillation["accuracy_gain"] == pytest.approx(
        distillation["with_kd"]["accuracy"] - distillation["without_kd"]["accuracy"]
    )
    with_kd = (out / "retrain" / "metrics.csv").read_text().splitlines()
    without_kd = (out / "retrain-without-kd" / "metrics.csv").read_text().splitlines()
    assert "kd_loss" in with_kd[0]
    assert "kd_loss" not in without_kd[0]
    for run in ("search", "teacher", "retrain", "retrain-without-kd"):
        assert (out / run / "report.html").is_file()
        assert (out / run / "plots" / "curves.png").is_file()
    assert (out / "search" / "plots" / "cells.gif").is_file()
    assert (out / "retrain" / "plots" / "roc.png").is_file()
    assert (out / "comparison" / "comparison.html").is_file()
    return summary


@pytest.mark.slow
def test_tiny_demo_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out), "--preset", str(PRESETS / "demo-tiny.yaml")]) == 0
    printed = capsys.readouterr().out
    assert "verification accuracy" in printed
    assert str(out / "pictures") in printed
    summary = _check_outputs(out)
    assert summary["verification"]["pairs"] == 200
    data = inspect_path(out / "data")
    assert data["identities"] == 40
    assert data["images"] == 240
    # A second run into the same folder is refused instead of mixing two demos.
    assert main(["-q", "demo", "--out", str(out), "--preset", str(PRESETS / "demo-tiny.yaml")]) == 2


@pytest.mark.slow
def test_full_demo_learns_unseen_identities(tmp_path):
    """The shipped demo preset: the learned network verifies unseen identities, pixels do not."""
    out = tmp_path / "demo"
    assert main(["-q", "demo", "--out", str(out)]) == 0
    summary = _check_outputs(out)
    assert summary["verification"]["pairs"] == 1200
    assert summary["baseline"]["raw_pixel_accuracy"] <= 0.75
    assert summary["verification"]["accuracy"] >= 0.90
