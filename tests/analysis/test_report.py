"""Run reports and comparisons: files, embedded images and the evaluation table."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image
from run_folders import write_retrain_run, write_search_run

from pocketnas.analysis.report import comparison_table, write_reports
from pocketnas.analysis.runs import EVALUATION_FILE, accuracy_rows, load_run
from pocketnas.cli import main
from pocketnas.errors import DataError

TINY_BIN = Path(__file__).parent.parent / "fixtures" / "mxnet_rec" / "tiny_pairs.bin"
needs_graphviz = pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz is missing")


def embedded_images(page: str) -> list[Image.Image]:
    """Decode every data-URI image of an HTML page."""
    images = []
    for data in re.findall(r'src="data:image/[a-z]+;base64,([^"]+)"', page):
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        images.append(image)
    return images


def markdown_images(path: Path) -> list[Path]:
    return [path.parent / link for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", path.read_text())]


@needs_graphviz
def test_search_report_contains_figures(tmp_path: Path) -> None:
    run = write_search_run(tmp_path / "search", epochs=3)
    written = write_reports([run])
    assert written["reports"] == [run / "report.html", run / "report.md"]
    assert written["comparison"] == []

    plots = run / "plots"
    for name in ("curves.png", "alphas_normal.png", "alphas_reduce.png", "cells.gif"):
        assert (plots / name).stat().st_size > 0, name
    for epoch in (1, 2, 3):
        for cell in ("normal", "reduction"):
            assert (plots / "cells" / f"epoch_{epoch:03d}_{cell}.png").is_file()
    with Image.open(plots / "cells.gif") as animation:
        assert animation.n_frames == 3

    page = (run / "report.html").read_text()
    images = embedded_images(page)
    # curves, two heat maps, the last normal and reduction cells, and the animation
    assert len(images) == 6
    assert [image.format for image in images].count("GIF") == 1
    assert 'src="plots/' not in page  # nothing outside the page is needed
    assert "Genotype(normal=" in page
    assert "No verification results" in page

    links = markdown_images(run / "report.md")
    assert len(links) == 6
    for link in links:
        assert link.is_file(), link


def test_retrain_report_evaluates_bin(tmp_path: Path) -> None:
    run = write_retrain_run(tmp_path / "retrain")
    write_reports([run], bins=[TINY_BIN])

    evaluation = json.loads((run / EVALUATION_FILE).read_text())
    result = evaluation["sets"]["tiny_pairs"]
    assert result["pairs"] == 40
    assert len(result["roc"]["fpr"]) == 400
    for name in ("curves.png", "roc.png", "tradeoff.png"):
        assert (run / "plots" / name).stat().st_size > 0, name

    markdown = (run / "report.md").read_text()
    accuracy = round(100 * result["accuracy"], 2)
    assert f"| tiny_pairs | 40 | {accuracy} |" in markdown
    assert "MFLOPs at 112x112" in markdown
    assert len(embedded_images((run / "report.html").read_text())) >= 3


def test_accuracy_rows_fall_back_to_metrics(tmp_path: Path) -> None:
    run = load_run(write_retrain_run(tmp_path / "retrain"))
    rows = accuracy_rows(run)
    assert len(rows) == 1
    assert rows[0]["set"] == "tiny_pairs"
    assert rows[0]["accuracy"] == pytest.approx(66.0)
    assert rows[0]["std"] == pytest.approx(9.0)
    assert rows[0]["source"] == "metrics.csv, epoch 2"


def test_comparison_of_two_runs(tmp_path: Path) -> None:
    search = write_search_run(tmp_path / "search", epochs=2)
    retrain = write_retrain_run(tmp_path / "retrain")
    out = tmp_path / "comparison"
    written = write_reports([search, retrain], comparison_dir=out)
    assert written["comparison"] == [
        out / "comparison.html",
        out / "comparison.md",
        out / "tradeoff.png",
    ]

    table = comparison_table([load_run(search), load_run(retrain)])
    assert table["run"].tolist() == ["search", "retrain"]
    assert table["kind"].tolist() == ["search", "retrain"]
    assert table["epochs"].tolist() == [2, 2]
    assert table["tiny_pairs (%)"].iloc[1] == pytest.approx(66.0)

    page = (out / "comparison.html").read_text()
    assert 'href="../search/report.html"' in page
    assert 'href="../retrain/report.html"' in page
    assert len(embedded_images(page)) == 1


def test_run_names_are_escaped(tmp_path: Path) -> None:
    run = write_retrain_run(tmp_path / "<b>run")
    write_reports([run])
    page = (run / "report.html").read_text()
    assert "&lt;b&gt;run" in page
    assert "<b>run" not in page


def test_run_without_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = write_retrain_run(tmp_path / "retrain")
    (run / "metrics.csv").unlink()
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"pocketnas: error: {run / 'metrics.csv'}: metrics file not found; a search or "
        "retraining run writes it after each epoch\n"
    )
    assert not (run / "report.html").exists()


def test_damaged_metrics(tmp_path: Path) -> None:
    run = write_retrain_run(tmp_path / "retrain")
    (run / "metrics.csv").write_text("epoch,train_loss\n1,abc\n")
    with pytest.raises(DataError, match="column 'train_loss' contains values that are not"):
        load_run(run)
    (run / "metrics.csv").write_text("loss\n1.0\n")
    with pytest.raises(DataError, match="has no epoch column"):
        load_run(run)


def test_missing_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere"
    assert main(["report", str(missing)]) == 2
    assert capsys.readouterr().err == f"pocketnas: error: {missing}: run folder not found\n"
