"""The whole pipeline on synthetic face identities, sized for a laptop CPU.

synth -> raw-pixel baseline -> search -> derive -> render -> teacher -> student with multi-step
distillation -> the same student without distillation -> evaluate -> run reports -> summary.
Each stage writes into its own subfolder of the output folder, and `summary.json` is written last,
atomically, so a folder with a summary contains a finished demo.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from pocketnas.analysis.render import render_genotype
from pocketnas.analysis.report import write_reports
from pocketnas.analysis.runs import EVALUATION_FILE
from pocketnas.config import DemoConfig, RetrainConfig, load_preset, to_dict
from pocketnas.data.synth import synthesize
from pocketnas.errors import PocketNasError
from pocketnas.evaluation.embeddings import VerificationSet
from pocketnas.evaluation.evaluate import evaluate_checkpoint
from pocketnas.evaluation.verification import evaluate_verification, raw_pixel_embeddings
from pocketnas.fileio import atomic_write_json, atomic_write_text
from pocketnas.retrain.train import build_network, network_spec, run_retrain
from pocketnas.searchers.search import run_search
from pocketnas.tools.flops import count_complexity

logger = logging.getLogger(__name__)


class _Stopwatch:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, function: Any, *args: Any, **kwargs: Any) -> Any:
        logger.info("demo: %s ...", name)
        started = time.perf_counter()
        result = function(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - started, 2)
        logger.info("demo: %s done in %.1f s", name, self.seconds[name])
        return result


def _prepare_out(out: Path) -> None:
    if not out.parent.is_dir():
        raise PocketNasError(f"{out}: parent folder {out.parent} does not exist")
    if out.exists() and any(out.iterdir()):
        raise PocketNasError(f"{out}: folder is not empty; choose a new output folder")
    out.mkdir(exist_ok=True)


def run_demo(
    out_dir: str | os.PathLike[str], preset: str = "demo", show_progress: bool = True
) -> dict[str, Any]:
    """Run the demo pipeline into `out_dir` and return the summary written to `summary.json`."""
    config = load_preset(DemoConfig, preset)
    out = Path(out_dir)
    _prepare_out(out)
    clock = _Stopwatch()
    started = time.perf_counter()

    data_dir = out / "data"
    data_dir.mkdir()
    synth = config.synth
    clock.run(
        "synth",
        synthesize,
        data_dir,
        identities=synth.identities,
        images_per_identity=synth.images_per_identity,
        pairs=synth.pairs,
        seed=synth.seed,
        image_size=synth.image_size,
        show_progress=show_progress,
        workers=synth.workers,
    )
    bin_path = data_dir / "verification.bin"

    def baseline() -> Any:
        verification_set = VerificationSet.load(bin_path)
        return evaluate_verification(
            raw_pixel_embeddings(verification_set.images), verification_set.issame
        )

    raw = clock.run("baseline", baseline)

    search = clock.run(
        "search",
        run_search,
        config.search,
        data_dir,
        out / "search",
        show_progress=show_progress,
    )
    genotype = search.genotype
    genotype_path = out / "genotype.json"
    atomic_write_text(genotype_path, genotype.to_json())

    pictures = clock.run("render", render_genotype, genotype, out / "pictures")
    if pictures.hint:
        logger.warning("%s", pictures.hint)

    bins = [bin_path]
    teacher = clock.run(
        "teacher",
        run_retrain,
        config.teacher,
        genotype,
        data_dir,
        out / "teacher",
        verification_bins=bins,
        show_progress=show_progress,
    )
    student = replace(config.retrain, kd="multi-step", teacher=str(teacher.run_dir))
    retrain = clock.run(
        "retrain",
        run_retrain,
        student,
        genotype,
        data_dir,
        out / "retrain",
        verification_bins=bins,
        show_progress=show_progress,
    )
    plain = replace(config.retrain, kd="none", teacher=None)
    without_kd = clock.run(
        "retrain_without_kd",
        run_retrain,
        plain,
        genotype,
        data_dir,
        out / "retrain-without-kd",
        verification_bins=bins,
        show_progress=show_progress,
    )

    # The last epoch is reported: picking the best epoch on the same pairs would flatter it.
    def evaluate_all() -> dict[str, dict[str, Any]]:
        results = {}
        for run in (teacher, retrain, without_kd):
            evaluation = evaluate_checkpoint(run.checkpoint, bins)
            atomic_write_json(run.run_dir / EVALUATION_FILE, evaluation)
            results[run.run_dir.name] = evaluation["sets"][bin_path.stem]
        return results

    evaluations = clock.run("evaluate", evaluate_all)
    result = evaluations["retrain"]
    checkpoint = retrain.checkpoint
    reports = clock.run(
        "report",
        write_reports,
        [search.run_dir, teacher.run_dir, retrain.run_dir, without_kd.run_dir],
        comparison_dir=out / "comparison",
    )

    model = build_network(network_spec(genotype, config.retrain))
    at_demo_size = count_complexity(model, config.retrain.image_size)
    full = build_network(network_spec(genotype, _full_size(config)))
    at_112 = count_complexity(full, 112)

    report_path = out / "report.md"
    summary: dict[str, Any] = {
        "genotype": genotype.to_dict(),
        "genotype_text": genotype.to_text(),
        "params": at_demo_size.params,
        "mflops": round(at_demo_size.mflops, 3),
        "image_size": config.retrain.image_size,
        "mflops_at_112": round(at_112.mflops, 2),
        "params_at_112": at_112.params,
        "verification": {
            "set": str(bin_path),
            "pairs": result["pairs"],
            "accuracy": result["accuracy"],
            "accuracy_std": result["accuracy_std"],
            "val_at_far_1e-3": result["val_at_far_1e-3"],
            "checkpoint": str(checkpoint),
        },
        "baseline": {
            "raw_pixel_accuracy": raw.accuracy,
            "raw_pixel_accuracy_std": raw.accuracy_std,
        },
        "distillation": {
            "kind": "multi-step",
            "weight": student.kd_weight,
            "teacher": _run_summary(teacher.run_dir, evaluations["teacher"], config.teacher),
            "with_kd": _run_summary(retrain.run_dir, result, student),
            "without_kd": _run_summary(
                without_kd.run_dir, evaluations["retrain-without-kd"], plain
            ),
            "accuracy_gain": result["accuracy"] - evaluations["retrain-without-kd"]["accuracy"],
        },
        "search": {"run": str(search.run_dir), "val_accuracy": search.val_accuracy},
        "retrain": {"run": str(retrain.run_dir)},
        "pictures": {
            "folder": str(out / "pictures"),
            "files": [str(p) for p in pictures.files],
        },
        "report": str(report_path),
        "run_reports": [str(path) for path in reports["reports"] if path.suffix == ".html"],
        "comparison": [str(path) for path in reports["comparison"] if path.suffix == ".html"],
        "seconds": {**clock.seconds, "total": round(time.perf_counter() - started, 2)},
        "config": to_dict(config),
    }
    atomic_write_text(report_path, _report(summary))
    atomic_write_json(out / "summary.json", summary)
    return summary


def _full_size(config: DemoConfig) -> Any:
    return replace(config.retrain, image_size=112)


def _run_summary(run_dir: Path, result: dict[str, Any], config: RetrainConfig) -> dict[str, Any]:
    return {
        "run": str(run_dir),
        "arch": config.arch,
        "channels": config.channels,
        "layers": config.layers,
        "epochs": config.epochs,
        "accuracy": result["accuracy"],
        "accuracy_std": result["accuracy_std"],
        "val_at_far_1e-3": result["val_at_far_1e-3"],
    }


def _relative(path: str, summary: dict[str, Any]) -> str:
    return Path(path).relative_to(Path(summary["report"]).parent).as_posix()


def _report(summary: dict[str, Any]) -> str:
    verification = summary["verification"]
    distillation = summary["distillation"]
    lines = [
        "# pocketnas demo",
        "",
        f"Genotype: `{summary['genotype_text']}`",
        "",
        f"- parameters: {summary['params']:,} (at 112x112: {summary['params_at_112']:,})",
        f"- MFLOPs at {summary['image_size']}x{summary['image_size']}: {summary['mflops']}"
        f" (at 112x112: {summary['mflops_at_112']})",
        f"- verification accuracy (unseen identities, {verification['pairs']} pairs, 10-fold): "
        f"{verification['accuracy']:.4f} +- {verification['accuracy_std']:.4f}",
        f"- raw-pixel baseline: {summary['baseline']['raw_pixel_accuracy']:.4f}",
        "",
        "Multi-step distillation (the student learns from the teacher's checkpoint of each epoch):",
        "",
        "| network | channels x cells | accuracy | VAL at FAR 1e-3 |",
        "|---|---|---|---|",
        *[
            f"| {label} | {row['channels']} x {row['layers']} | {row['accuracy']:.4f} +- "
            f"{row['accuracy_std']:.4f} | {row['val_at_far_1e-3']:.3f} |"
            for label, row in (
                ("teacher", distillation["teacher"]),
                ("student with distillation", distillation["with_kd"]),
                ("student without distillation", distillation["without_kd"]),
            )
        ],
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {name} | {seconds} |" for name, seconds in summary["seconds"].items()],
        "",
        "Run reports, with figures (open in a browser): "
        + ", ".join(
            f"[{Path(p).parent.name}]({_relative(p, summary)})" for p in summary["run_reports"]
        )
        + ", and their [comparison]("
        + ", ".join(_relative(p, summary) for p in summary["comparison"])
        + ").",
        "",
        "Cells:",
        "",
        *[
            f"![{Path(p).stem}]({Path(p).relative_to(Path(summary['report']).parent)})"
            for p in summary["pictures"]["files"]
            if p.endswith(".png")
        ],
        "",
    ]
    return "\n".join(lines)
