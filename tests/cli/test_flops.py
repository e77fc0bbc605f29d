"""`pocketnas flops` prints the published parameter counts and MFLOPs."""

from __future__ import annotations

import json

import pytest

from pocketnas.cli import main


def test_flops_json_matches_published(published_preset, published, capsys):
    assert main(["flops", "--preset", published_preset, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    reference = published["presets"][published_preset]
    assert result["params"] == reference["params"]
    assert result["mflops"] == pytest.approx(reference["mflops"], abs=0.01)


def test_flops_s128_prints_paper_figures(capsys):
    assert main(["flops", "--preset", "pocketnet-s128", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] == 925632
    assert result["mflops"] == 587.11


def test_flops_teacher_params(published, capsys):
    assert main(["flops", "--arch", "iresnet50", "--embedding", "256", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] == published["teachers"]["iresnet50-256"]["params"]


def test_flops_unknown_teacher_one_line(capsys):
    assert main(["flops", "--arch", "resnet3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [
        "pocketnas: error: unknown teacher architecture 'resnet3'; expected one of "
        "('iresnet18', 'iresnet34', 'iresnet50', 'iresnet100', 'iresnet200')"
    ]
