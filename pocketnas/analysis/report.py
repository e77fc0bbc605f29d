"""Reports of search and retraining runs: one HTML page and one Markdown file per run.

A run report contains the resolved configuration, the genotype and its cell pictures, the
parameters and MFLOPs of the network, and the evaluation table. It also shows the figures that
apply to the run: training curves, the cells of every search epoch and their animation, heat maps
of the architecture weights, ROC curves and the accuracy/cost trade-off beside the published
PocketNets.
Figures are written to the run's `plots/` folder. The HTML page embeds them as base64 data URIs,
so it opens offline on its own, and the Markdown file links them relatively.

Several runs are also compared in one table and one trade-off plot.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pocketnas.analysis import plots
from pocketnas.analysis.published_results import PUBLISHED_SOURCE
from pocketnas.analysis.render import render_genotype
from pocketnas.analysis.runs import EVALUATION_FILE, RunInfo, accuracy_rows, load_run
from pocketnas.errors import DataError, PocketNasError
from pocketnas.evaluation.evaluate import evaluate_checkpoint
from pocketnas.fileio import atomic_write_json, atomic_write_text
from pocketnas.search_space.genotype import Genotype, load_genotype

logger = logging.getLogger(__name__)


def evaluate_run(
    run: RunInfo,
    bins: Sequence[str | os.PathLike[str]],
    ijb: Sequence[str | os.PathLike[str]] = (),
    show_progress: bool = False,
) -> dict[str, Any]:
    """Evaluate the run's last checkpoint and store the results in its `evaluation.json`."""
    evaluation = evaluate_checkpoint(run.path, bins, ijb=ijb, show_progress=show_progress)
    atomic_write_json(run.path / EVALUATION_FILE, evaluation)
    run.evaluation = evaluation
    return evaluation


def write_run_figures(run: RunInfo) -> list[tuple[str, Path]]:
    """Draw every figure that applies to the run into its `plots/` folder."""
    folder = run.path / "plots"
    folder.mkdir(exist_ok=True)
    figures: list[tuple[str, Path]] = []

    curves = plots.plot_training_curves(
        run.metrics, f"Training curves of the {run.kind} run {run.name}"
    )
    figures.append(("Training curves", plots.save_figure(curves, folder / "curves.png")))

    if run.kind == "search":
        figures += _search_figures(run, folder)
    elif run.genotype is not None:
        figures += _cell_figures(run.genotype, folder / "cells")

    curves_roc = _roc_curves(run)
    if curves_roc:
        figure = plots.plot_roc(curves_roc, f"ROC curves of the {run.kind} run {run.name}")
        figures.append(("ROC curves", plots.save_figure(figure, folder / "roc.png")))

    points = tradeoff_points(run)
    if points:
        figure = plots.plot_tradeoff(points, "Accuracy and cost (MFLOPs at 112x112)")
        figures.append(
            ("Accuracy/cost trade-off", plots.save_figure(figure, folder / "tradeoff.png"))
        )
    run.figures = figures
    return figures


def _cell_figures(genotype: Genotype, folder: Path) -> list[tuple[str, Path]]:
    folder.mkdir(exist_ok=True)
    rendered = render_genotype(genotype, folder, formats=("png",), stem="final")
    if rendered.hint:
        logger.warning("%s", rendered.hint)
    return [
        (f"{path.stem.removeprefix('final_').capitalize()} cell", path)
        for path in rendered.image_files
    ]


def _search_figures(run: RunInfo, folder: Path) -> list[tuple[str, Path]]:
    figures: list[tuple[str, Path]] = []
    alpha_files = sorted((run.path / "alphas").glob("epoch_*.json"))
    if alpha_files:
        documents = []
        for path in alpha_files:
            try:
                documents.append(json.loads(path.read_text(encoding="utf-8")))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(path, f"not a readable JSON file ({exc})") from None
        for cell, title in (("normal", "Normal cell"), ("reduce", "Reduction cell")):
            figure = plots.plot_alpha_heatmaps(
                documents, cell, f"{title}: softmax of the architecture weights per edge"
            )
            path = plots.save_figure(figure, folder / f"alphas_{cell}.png")
            figures.append((f"{title} architecture weights over epochs", path))

    genotype_files = sorted((run.path / "genotypes").glob("epoch_*.json"))
    if not genotype_files or shutil.which("dot") is None:
        if genotype_files:
            logger.warning("graphviz's dot is not installed, so the cell pictures are skipped")
        return figures
    cells_folder = folder / "cells"
    cells_folder.mkdir(exist_ok=True)
    frames = []
    for path in genotype_files:
        rendered = render_genotype(load_genotype(path), cells_folder, ("png",), stem=path.stem)
        epoch = int(path.stem.removeprefix("epoch_"))
        frames.append((f"epoch {epoch} of {len(genotype_files)}", list(rendered.image_files)))
    animation = plots.cell_animation(frames, folder / "cells.gif")
    last_normal, last_reduction = frames[-1][1]
    figures.append(("Normal cell after the last epoch", last_normal))
    figures.append(("Reduction cell after the last epoch", last_reduction))
    figures.append(("Cells of every epoch (animation)", animation))
    return figures


def _roc_curves(run: RunInfo) -> list[plots.RocCurve]:
    if run.evaluation is None:
        return []
    curves = []
    for name, result in run.evaluation["sets"].items():
        if "roc" in result:
            curves.append(plots.RocCurve(name, result["roc"]["fpr"], result["roc"]["tpr"]))
    for name, result in run.evaluation["ijb"].items():
        if "roc" in result:
            curves.append(plots.RocCurve(name, result["roc"]["far"], result["roc"]["tar"]))
    return curves


def tradeoff_points(run: RunInfo) -> list[plots.TradeoffPoint]:
    """Return the run's accuracy per set with its parameters and MFLOPs at 112x112."""
    if run.complexity is None:
        return []
    return [
        plots.TradeoffPoint(
            label=run.name,
            params=run.complexity["params_at_112"],
            mflops=run.complexity["mflops_at_112"],
            image_size=112,
            accuracy=row["accuracy"],
            benchmark=row["set"],
        )
        for row in accuracy_rows(run)
    ]


def write_run_report(run: RunInfo) -> list[Path]:
    """Write the run's figures, `report.html` and `report.md`; return the two report files."""
    write_run_figures(run)
    html_path = run.path / "report.html"
    markdown_path = run.path / "report.md"
    atomic_write_text(html_path, _run_html(run))
    atomic_write_text(markdown_path, _run_markdown(run))
    logger.info("wrote %s and %s", html_path, markdown_path)
    return [html_path, markdown_path]


def comparison_table(runs: Sequence[RunInfo]) -> pd.DataFrame:
    """Return one row per run: kind, epochs, size, cost and accuracy (percent) per set."""
    records = []
    for run in runs:
        record: dict[str, Any] = {
            "run": run.name,
            "kind": run.kind,
            "epochs": int(run.metrics["epoch"].max()),
        }
        if run.complexity is not None:
            record["image size"] = run.complexity["image_size"]
            record["params"] = run.complexity["params"]
            record["MFLOPs"] = round(run.complexity["mflops"], 2)
            record["params at 112"] = run.complexity["params_at_112"]
            record["MFLOPs at 112"] = round(run.complexity["mflops_at_112"], 2)
        for row in accuracy_rows(run):
            record[f"{row['set']} (%)"] = round(row["accuracy"], 2)
        records.append(record)
    return pd.DataFrame.from_records(records)


def write_comparison(runs: Sequence[RunInfo], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Write `comparison.html`, `comparison.md` and `tradeoff.png` for several runs."""
    folder = Path(out_dir)
    if not folder.parent.is_dir():
        raise PocketNasError(f"{folder}: parent folder {folder.parent} does not exist")
    folder.mkdir(exist_ok=True)
    table = comparison_table(runs)
    figures: list[tuple[str, Path]] = []
    points = [point for run in runs for point in tradeoff_points(run)]
    if points:
        figure = plots.plot_tradeoff(points, "Accuracy and cost of the runs (MFLOPs at 112x112)")
        figures.append(
            ("Accuracy/cost trade-off", plots.save_figure(figure, folder / "tradeoff.png"))
        )
    links = [(run.name, Path(os.path.relpath(run.path / "report.html", folder))) for run in runs]

    html_path = folder / "comparison.html"
    markdown_path = folder / "comparison.md"
    body = [
        "<h1>Comparison of runs</h1>",
        table.to_html(index=False, escape=True, na_rep="", border=0, classes="table"),
        "<p>Run reports: "
        + ", ".join(
            f'<a href="{html.escape(link.as_posix())}">{html.escape(name)}</a>'
            for name, link in links
        )
        + "</p>",
        *[_html_figure(caption, path) for caption, path in figures],
        f"<p class=note>Published points: {html.escape(PUBLISHED_SOURCE)}.</p>",
    ]
    atomic_write_text(html_path, _html_page("Comparison of runs", body))
    markdown = [
        "# Comparison of runs",
        "",
        _markdown_table(table),
        "",
        "Run reports: " + ", ".join(f"[{name}]({link.as_posix()})" for name, link in links),
        "",
        *[f"![{caption}]({path.name})\n" for caption, path in figures],
        f"Published points: {PUBLISHED_SOURCE}.",
        "",
    ]
    atomic_write_text(markdown_path, "\n".join(markdown))
    return [html_path, markdown_path, *(path for _, path in figures)]


def write_reports(
    runs: Sequence[str | os.PathLike[str]],
    comparison_dir: str | os.PathLike[str] | None = None,
    bins: Sequence[str | os.PathLike[str]] = (),
    ijb: Sequence[str | os.PathLike[str]] = (),
    show_progress: bool = False,
) -> dict[str, list[Path]]:
    """Write a report for every run and, for several runs, their comparison.

    Args:
        runs: Search or retraining run folders.
        comparison_dir: Folder for the comparison; default `comparison` in the current folder.
            Ignored for a single run, unless given.
        bins: Verification `.bin` files to evaluate every run on first.
        ijb: IJB folders to evaluate every run on first.
        show_progress: Show progress bars while evaluating.

    Returns:
        {"reports": the run reports, "comparison": the comparison files (maybe empty)}.

    Raises:
        PocketNasError: a run folder or its files are missing or damaged.
    """
    if not runs:
        raise PocketNasError("no run folder given")
    infos = [load_run(path) for path in runs]
    for run in infos:
        if bins or ijb:
            evaluate_run(run, bins, ijb, show_progress)
    reports = [path for run in infos for path in write_run_report(run)]
    comparison: list[Path] = []
    if len(infos) > 1 or comparison_dir is not None:
        comparison = write_comparison(infos, comparison_dir or Path("comparison"))
    return {"reports": reports, "comparison": comparison}


def _image_uri(path: Path) -> str:
    mime = {"png": "image/png", "gif": "image/gif", "svg": "image/svg+xml"}[path.suffix[1:]]
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def _html_figure(caption: str, path: Path) -> str:
    return (
        f'<figure><img src="{_image_uri(path)}" alt="{html.escape(caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


_STYLE = """
body { font-family: Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
pre, code { background: #f7f7f7; font-size: 0.9em; }
pre { padding: 0.8em; overflow-x: auto; }
.note { color: #555; font-size: 0.9em; }
"""


def _html_page(title: str, body: Sequence[str]) -> str:
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title>",
            f"<style>{_STYLE}</style></head><body>",
            *body,
            "</body></html>",
            "",
        ]
    )


def _size_rows(run: RunInfo) -> list[tuple[str, str]]:
    if run.complexity is None:
        return []
    size = run.complexity["image_size"]
    network = "derived network at search width" if run.kind == "search" else "network"
    return [
        (f"parameters ({network})", f"{run.complexity['params']:,}"),
        (f"MFLOPs at {size}x{size}", f"{run.complexity['mflops']:.2f}"),
        ("parameters at 112x112", f"{run.complexity['params_at_112']:,}"),
        ("MFLOPs at 112x112", f"{run.complexity['mflops_at_112']:.2f}"),
    ]


def _evaluation_frame(run: RunInfo) -> pd.DataFrame:
    records = []
    for row in accuracy_rows(run):
        record: dict[str, Any] = {"set": row["set"], "pairs": row.get("pairs")}
        if "tar_at_far" in row:
            for far, tar in row["tar_at_far"].items():
                record[f"TAR@{far} (%)"] = round(100 * tar, 2)
        else:
            record["accuracy (%)"] = round(row["accuracy"], 2)
            record["std (%)"] = None if row.get("std") is None else round(row["std"], 2)
            if "val_at_far_1e-3" in row:
                record["VAL@1e-3 (%)"] = round(row["val_at_far_1e-3"], 2)
                record["XNorm"] = round(row["xnorm"], 3)
        record["source"] = row["source"]
        records.append(record)
    return pd.DataFrame.from_records(records)


def _run_html(run: RunInfo) -> str:
    title = f"pocketnas {run.kind} run {run.name}"
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Folder: <code>{html.escape(str(run.path))}</code></p>",
    ]
    if run.genotype is not None:
        body += ["<h2>Genotype</h2>", f"<pre>{html.escape(run.genotype.to_text())}</pre>"]

    size_rows = _size_rows(run)
    if size_rows:
        body.append("<h2>Size and cost</h2><table>")
        body += [
            f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in size_rows
        ]
        body.append("</table>")

    evaluation = _evaluation_frame(run)
    body.append("<h2>Evaluation</h2>")
    if evaluation.empty:
        body.append(
            "<p>No verification results. Pass <code>--bin FILE</code> to "
            "<code>pocketnas report</code> to evaluate the run.</p>"
        )
    else:
        body.append(evaluation.to_html(index=False, escape=True, na_rep="", border=0))

    body.append("<h2>Figures</h2>")
    body += [_html_figure(caption, path) for caption, path in run.figures]
    if any(path.name == "tradeoff.png" for _, path in run.figures):
        body.append(f"<p class=note>Published points: {html.escape(PUBLISHED_SOURCE)}.</p>")

    config_text = yaml.safe_dump(run.config, sort_keys=False)
    body += ["<h2>Configuration</h2>", f"<pre>{html.escape(config_text)}</pre>"]
    return _html_page(title, body)


def _markdown_table(frame: pd.DataFrame) -> str:
    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            return ""
        return str(value).replace("|", "\\|")

    header = "| " + " | ".join(cell(column) for column in frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = [
        "| " + " | ".join(cell(value) for value in row) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([header, rule, *rows])


def _run_markdown(run: RunInfo) -> str:
    lines = [f"# pocketnas {run.kind} run {run.name}", "", f"Folder: `{run.path}`", ""]
    if run.genotype is not None:
        lines += ["## Genotype", "", f"`{run.genotype.to_text()}`", ""]
    size_rows = _size_rows(run)
    if size_rows:
        lines += ["## Size and cost", "", "| | |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in size_rows]
        lines.append("")
    evaluation = _evaluation_frame(run)
    lines += ["## Evaluation", ""]
    lines.append("No verification results." if evaluation.empty else _markdown_table(evaluation))
    lines += ["", "## Figures", ""]
    for caption, path in run.figures:
        lines += [f"![{caption}]({path.relative_to(run.path).as_posix()})", "", f"*{caption}*", ""]
    config_text = yaml.safe_dump(run.config, sort_keys=False)
    lines += ["## Configuration", "", "```yaml", config_text.rstrip(), "```", ""]
    return "\n".join(lines)
