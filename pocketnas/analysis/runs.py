"""Run folders as reports read them: configuration, metrics, genotype, size and evaluation.

A search or retraining run folder contains `config.yaml` and `metrics.csv`. A search run adds
`genotype.json`, `genotypes/` and `alphas/`, and a retraining run `checkpoints/last.pt`, which
records the network settings. `evaluation.json` is optional and contains the output of
`pocketnas eval --out` or `pocketnas report --bin`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pocketnas.errors import DataError
from pocketnas.fileio import load_checkpoint
from pocketnas.retrain.train import build_network
from pocketnas.search_space.genotype import Genotype, load_genotype
from pocketnas.tools.flops import count_complexity

EVALUATION_FILE = "evaluation.json"
"""File in a run folder with the results of `pocketnas eval --out` or `pocketnas report --bin`."""

_KINDS = ("search", "retrain")


@dataclass
class RunInfo:
    """Contents of one run folder that a report shows.

    Attributes:
        path: The run folder.
        kind: "search" or "retrain".
        config: The resolved configuration from `config.yaml`.
        metrics: The rows of `metrics.csv`.
        genotype: The final genotype, if the run has one.
        complexity: Parameters and MFLOPs, at the run's image size and at 112x112.
        evaluation: Results in the form of `evaluate_checkpoint`, if any.
        figures: Written figures as (caption, path), in report order.
    """

    path: Path
    kind: str
    config: dict[str, Any]
    metrics: pd.DataFrame
    genotype: Genotype | None
    complexity: dict[str, Any] | None
    evaluation: dict[str, Any] | None
    figures: list[tuple[str, Path]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.resolve().name


def load_run(path: str | os.PathLike[str]) -> RunInfo:
    """Read a run folder's configuration, metrics, genotype and stored evaluation.

    Raises:
        DataError: the folder, its `metrics.csv` or its `config.yaml` is missing or unreadable.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DataError(folder, "run folder not found")
    metrics = _read_metrics(folder / "metrics.csv")
    config = _read_config(folder / "config.yaml")
    kind = config["kind"]
    genotype, spec = _genotype_and_spec(folder, kind, config)
    complexity = _complexity(spec) if spec is not None else None
    evaluation = _read_evaluation(folder / EVALUATION_FILE)
    return RunInfo(folder, kind, config, metrics, genotype, complexity, evaluation)


def _read_metrics(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(
            path, "metrics file not found; a search or retraining run writes it after each epoch"
        )
    try:
        metrics = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(path, f"not a readable CSV file ({detail})") from None
    if "epoch" not in metrics.columns:
        raise DataError(path, "has no epoch column")
    if metrics.empty:
        raise DataError(path, "has no rows")
    for column in metrics.columns:
        if not pd.api.types.is_numeric_dtype(metrics[column]):
            raise DataError(path, f"column {column!r} contains values that are not numbers")
    return metrics.sort_values("epoch").reset_index(drop=True)


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DataError(path, "config file not found; is this a pocketnas run folder?")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not a readable YAML file ({type(exc).__name__})") from None
    if not isinstance(config, dict) or config.get("kind") not in _KINDS:
        raise DataError(path, f"not a run configuration: kind must be one of {', '.join(_KINDS)}")
    return config


def _read_evaluation(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        evaluation = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"not a readable JSON file ({exc})") from None
    if not isinstance(evaluation, dict) or not isinstance(evaluation.get("sets"), dict):
        raise DataError(path, "not an evaluation result: it has no 'sets' object")
    evaluation.setdefault("ijb", {})
    return evaluation


def _genotype_and_spec(
    folder: Path, kind: str, config: dict[str, Any]
) -> tuple[Genotype | None, dict[str, Any] | None]:
    """Return the run's genotype and the settings of its network (for parameters and FLOPs).

    A search run's network is the derived genotype built at the search width and depth.
    """
    if kind == "search":
        candidates = [folder / "genotype.json", *sorted((folder / "genotypes").glob("*.json"))]
        existing = [path for path in candidates if path.is_file()]
        if not existing:
            return None, None
        # genotype.json is written when the search ends; else the latest epoch's genotype.
        chosen = existing[0] if existing[0].name == "genotype.json" else existing[-1]
        genotype = load_genotype(chosen)
        spec = {
            "genotype": genotype.to_dict(),
            "channels": config["channels"],
            "layers": config["layers"],
            "stem_multiplier": config["stem_multiplier"],
            "embedding_size": config["embedding_size"],
            "image_size": config["image_size"],
        }
        return genotype, spec
    checkpoint = folder / "checkpoints" / "last.pt"
    if not checkpoint.is_file():
        return None, None
    state = load_checkpoint(checkpoint)
    if not isinstance(state, dict) or not isinstance(state.get("network"), dict):
        raise DataError(checkpoint, "not a pocketnas retraining checkpoint")
    spec = state["network"]
    return Genotype.from_dict(spec["genotype"]), spec


def _complexity(spec: dict[str, Any]) -> dict[str, Any]:
    image_size = int(spec["image_size"])
    at_size = count_complexity(build_network(spec), image_size)
    at_112 = count_complexity(build_network({**spec, "image_size": 112}), 112)
    return {
        "image_size": image_size,
        "params": at_size.params,
        "mflops": at_size.mflops,
        "params_at_112": at_112.params,
        "mflops_at_112": at_112.mflops,
    }


def accuracy_rows(run: RunInfo) -> list[dict[str, Any]]:
    """Return one row per evaluated set: set, source, pairs, accuracy and spread in percent.

    Rows come from the stored evaluation when there is one, otherwise from the verification
    columns of the last row of `metrics.csv`.
    """
    rows: list[dict[str, Any]] = []
    if run.evaluation is not None:
        for name, result in run.evaluation["sets"].items():
            rows.append(
                {
                    "set": name,
                    "pairs": result.get("pairs"),
                    "accuracy": 100 * result["accuracy"],
                    "std": 100 * result["accuracy_std"],
                    "val_at_far_1e-3": 100 * result["val_at_far_1e-3"],
                    "xnorm": result.get("xnorm"),
                    "source": EVALUATION_FILE,
                }
            )
        for name, result in run.evaluation["ijb"].items():
            rows.append(
                {
                    "set": name,
                    "pairs": result.get("pairs"),
                    "accuracy": 100 * result["tar_at_far"]["1e-04"],
                    "tar_at_far": result["tar_at_far"],
                    "source": EVALUATION_FILE,
                }
            )
        return rows
    last = run.metrics.iloc[-1]
    for column in run.metrics.columns:
        if column.endswith("_accuracy") and column not in ("train_accuracy", "val_accuracy"):
            std = last.get(f"{column}_std")
            rows.append(
                {
                    "set": column.removesuffix("_accuracy"),
                    "accuracy": 100 * float(last[column]),
                    "std": None if std is None else 100 * float(std),
                    "source": f"metrics.csv, epoch {int(last['epoch'])}",
                }
            )
    return rows
