"""Outputs of a tuning study: trial table, Pareto front, its plot and a retraining preset.

The front is taken over the completed trials with two criteria, verification accuracy (higher is
better) and cost (MFLOPs or parameters, lower is better), in either objective mode. A trial is on
the front when no other trial is at least as accurate and at most as costly, and strictly better
in one of the two. Trials that copied the result of an earlier trial with the same parameters are
left out of the front, because they are the same network.

The exported trial is the most accurate one whose cost is within the budget, or the most accurate
one when there is no budget. A tie goes to the cheaper trial, then to the lower trial number. That
trial is always on the front.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial, TrialState

from pocketnas.config import to_dict
from pocketnas.fileio import atomic_write_bytes, atomic_write_text
from pocketnas.tune.settings import TuneSettings

logger = logging.getLogger(__name__)

COST_LABELS = {"mflops": "MFLOPs", "params": "parameters"}


def format_cost(value: float, cost: str) -> str:
    """Return a cost with its unit: "89.97 MFLOPs" or "1,729,408 parameters"."""
    if cost == "mflops":
        return f"{value:.2f} MFLOPs"
    return f"{value:,.0f} parameters"


_DPI = 120
# Okabe-Ito colours, as in pocketnas.analysis.plots.
_FRONT_COLOUR = "#D55E00"
_OTHER_COLOUR = "#0072B2"
_CHOSEN_COLOUR = "#009E73"


@dataclass(frozen=True)
class TrialRow:
    """One trial of a study, as the CSV files list it."""

    number: int
    state: str
    channels: int | None
    layers: int | None
    embedding_size: int | None
    accuracy: float | None  # mean verification accuracy after the last proxy epoch
    mflops: float | None
    params: int | None
    retry_of: int | None  # the trial whose dead worker this trial replaces
    copy_of: int | None  # the completed trial with the same parameters whose result it copies
    seconds: float | None
    worker: str | None
    run_folder: str | None  # relative to the study folder

    def cost(self, kind: str) -> float | None:
        """Return the trial's MFLOPs or parameter count (`kind` is "mflops" or "params")."""
        return self.mflops if kind == "mflops" else self.params

    def describe(self) -> str:
        return f"{self.channels} channels, {self.layers} cells, embedding {self.embedding_size}"


def trial_rows(trials: Sequence[FrozenTrial]) -> list[TrialRow]:
    """Turn Optuna trials into rows, in trial-number order."""
    rows = []
    for trial in sorted(trials, key=lambda t: t.number):
        attrs = trial.user_attrs
        seconds = None
        if trial.datetime_start is not None and trial.datetime_complete is not None:
            seconds = (trial.datetime_complete - trial.datetime_start).total_seconds()
        rows.append(
            TrialRow(
                number=trial.number,
                state=trial.state.name,
                channels=trial.params.get("channels"),
                layers=attrs.get("layers"),
                embedding_size=trial.params.get("embedding_size"),
                accuracy=attrs.get("accuracy") if trial.state == TrialState.COMPLETE else None,
                mflops=attrs.get("mflops"),
                params=attrs.get("params"),
                # Set by Optuna's RetryHeartbeatStaleTrialCallback on the trial it queues.
                retry_of=trial.system_attrs.get("failed_trial"),
                copy_of=attrs.get("copy_of"),
                seconds=seconds,
                worker=attrs.get("worker"),
                run_folder=attrs.get("run_folder"),
            )
        )
    return rows


def _scored(rows: Sequence[TrialRow], cost: str) -> list[TrialRow]:
    return [
        row
        for row in rows
        if row.state == "COMPLETE" and row.accuracy is not None and row.cost(cost) is not None
    ]


def pareto_front(rows: Sequence[TrialRow], cost: str) -> list[TrialRow]:
    """Return the non-dominated completed trials, cheapest first."""
    candidates = [row for row in _scored(rows, cost) if row.copy_of is None]
    front = []
    for row in candidates:
        accuracy, price = row.accuracy, row.cost(cost)
        assert accuracy is not None and price is not None
        dominated = False
        for other in candidates:
            other_accuracy, other_price = other.accuracy, other.cost(cost)
            assert other_accuracy is not None and other_price is not None
            no_worse = other_accuracy >= accuracy and other_price <= price
            better = other_accuracy > accuracy or other_price < price
            if no_worse and better:
                dominated = True
                break
        if not dominated:
            front.append(row)
    return sorted(front, key=lambda r: (r.cost(cost), -(r.accuracy or 0.0), r.number))


def _shown_cost(row: TrialRow, cost: str) -> float:
    """Return the cost as the CSV files and messages show it: MFLOPs rounded to 2 decimals."""
    value = row.cost(cost) or 0.0
    return round(value, 2) if cost == "mflops" else value


def choose_trial(rows: Sequence[TrialRow], cost: str, budget: float | None) -> TrialRow | None:
    """Return the most accurate completed trial within the cost budget, or None if none fits."""
    fitting = [
        row
        for row in _scored(rows, cost)
        if row.copy_of is None and (budget is None or _shown_cost(row, cost) <= budget)
    ]
    if not fitting:
        return None
    return min(fitting, key=lambda r: (-(r.accuracy or 0.0), r.cost(cost), r.number))


_COLUMNS = (
    "trial",
    "state",
    "channels",
    "layers",
    "embedding_size",
    "accuracy",
    "mflops",
    "params",
    "retry_of",
    "copy_of",
    "seconds",
    "worker",
    "run_folder",
)


def _row_dict(row: TrialRow) -> dict[str, Any]:
    data = dataclasses.asdict(row)
    data["trial"] = data.pop("number")
    if row.accuracy is not None:
        data["accuracy"] = round(row.accuracy, 6)
    if row.mflops is not None:
        data["mflops"] = round(row.mflops, 2)
    if row.seconds is not None:
        data["seconds"] = round(row.seconds, 1)
    return {column: data[column] for column in _COLUMNS}


_FRONT_COLUMNS = ("trial", "channels", "layers", "embedding_size", "accuracy", "mflops", "params")


def _write_rows(
    path: str | os.PathLike[str], columns: Sequence[str], rows: Sequence[TrialRow]
) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        values = _row_dict(row)
        writer.writerow(["" if values[c] is None else values[c] for c in columns])
    atomic_write_text(path, buffer.getvalue())


def write_trials_csv(path: str | os.PathLike[str], rows: Sequence[TrialRow]) -> None:
    """Write every trial, one row each, with its state and results."""
    _write_rows(path, _COLUMNS, rows)


def write_front_csv(path: str | os.PathLike[str], front: Sequence[TrialRow]) -> None:
    """Write the Pareto front, cheapest trial first."""
    _write_rows(path, _FRONT_COLUMNS, front)


def plot_front(
    rows: Sequence[TrialRow],
    front: Sequence[TrialRow],
    chosen: TrialRow | None,
    cost: str,
    title: str,
    image_size: int,
) -> Figure:
    """Draw accuracy against cost: every completed trial, the front as a step line, the choice."""
    figure = Figure(figsize=(7.5, 5), layout="constrained")
    axes = figure.subplots()
    scale = 1e6 if cost == "params" else 1.0
    label = "parameters (millions)"
    if cost == "mflops":
        label = f"MFLOPs (one {image_size}x{image_size} image)"

    def point(row: TrialRow) -> tuple[float, float]:
        return (row.cost(cost) or 0.0) / scale, row.accuracy or 0.0

    on_front = {row.number for row in front}
    others = [r for r in _scored(rows, cost) if r.number not in on_front and r.copy_of is None]
    if others:
        xs, ys = zip(*(point(r) for r in others), strict=True)
        axes.scatter(xs, ys, color=_OTHER_COLOUR, alpha=0.6, label="other completed trials")
    if front:
        xs, ys = zip(*(point(r) for r in front), strict=True)
        axes.step(xs, ys, where="post", color=_FRONT_COLOUR, alpha=0.7)
        axes.scatter(xs, ys, color=_FRONT_COLOUR, zorder=3, label="Pareto front")
        _label_front(axes, [point(row) for row in front], front)
    if chosen is not None:
        x, y = point(chosen)
        axes.scatter(
            [x],
            [y],
            marker="*",
            s=260,
            facecolors="none",
            edgecolors=_CHOSEN_COLOUR,
            linewidths=1.8,
            zorder=4,
            label=f"exported: trial {chosen.number}",
        )
    if not front:
        axes.text(0.5, 0.5, "no completed trial yet", ha="center", transform=axes.transAxes)
    axes.set_title(title)
    axes.set_xlabel(label)
    axes.set_ylabel("verification accuracy (proxy schedule)")
    axes.grid(True, alpha=0.3)
    axes.margins(x=0.12, y=0.1)  # room for the labels of the outermost points
    if front or others:
        axes.legend(loc="lower right", fontsize=8)
    return figure


def _label_front(axes: Any, points: list[tuple[float, float]], front: Sequence[TrialRow]) -> None:
    """Label the front's points below them, or above when the cheaper neighbour is close.

    Along the front both cost and accuracy rise, so of two close points the costlier one is the
    higher one, and its label goes above it.
    """
    costs = [x for x, _ in points]
    close = 0.05 * (max(costs) - min(costs))
    below_previous = False
    for index, (row, xy) in enumerate(zip(front, points, strict=True)):
        above = index > 0 and below_previous and xy[0] - points[index - 1][0] < close
        axes.annotate(
            f"#{row.number}: C{row.channels} L{row.layers} E{row.embedding_size}",
            xy,
            textcoords="offset points",
            xytext=(6, 5) if above else (6, -12),
            fontsize=8,
        )
        below_previous = not above


def save_png(figure: Figure, path: str | os.PathLike[str]) -> None:
    """Write `figure` as a PNG atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_DPI)
    atomic_write_bytes(path, buffer.getvalue())


def export_preset(
    path: str | os.PathLike[str],
    settings: TuneSettings,
    chosen: TrialRow,
    study: str,
    budget: float | None,
) -> None:
    """Write the chosen trial as a retraining preset with the base preset's full schedule."""
    config = dataclasses.replace(
        settings.base,
        arch="derived",
        channels=int(chosen.channels or 0),
        layers=int(chosen.layers or 0),
        embedding_size=int(chosen.embedding_size or 0),
        genotype=settings.genotype,
    )
    config.validate()
    within = "" if budget is None else f" within the budget of {format_cost(budget, settings.cost)}"
    epochs = f"{settings.proxy_epochs} epoch{'s' if settings.proxy_epochs != 1 else ''}"
    header = (
        f"# Exported by pocketnas tune from study {study}, trial {chosen.number}: the most "
        f"accurate completed trial{within}.\n"
        f"# Proxy schedule ({epochs}): verification accuracy "
        f"{chosen.accuracy:.4f}, {chosen.mflops:.2f} MFLOPs, {chosen.params:,} parameters.\n"
        "# The schedule below is the base preset's full one: "
        "pocketnas retrain --preset THIS_FILE --data DIR --out RUN\n"
    )
    atomic_write_text(path, header + yaml.safe_dump(to_dict(config), sort_keys=False))
