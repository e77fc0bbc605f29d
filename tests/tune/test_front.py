"""The Pareto front, the exported trial, the CSV files, the plot and the preset."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import optuna
import pytest
from matplotlib.figure import Figure

from pocketnas.config import RetrainConfig, load_preset
from pocketnas.tune.front import (
    TrialRow,
    choose_trial,
    export_preset,
    pareto_front,
    plot_front,
    trial_rows,
    write_front_csv,
    write_trials_csv,
)
from pocketnas.tune.settings import TuneRequest, new_settings

DISTRIBUTIONS = {
    "channels": optuna.distributions.CategoricalDistribution([8, 16, 24, 32]),
    "embedding_size": optuna.distributions.CategoricalDistribution([128, 256, 512]),
}
LAYERS = {8: 36, 16: 18, 24: 12, 32: 9}


def _row(number: int, accuracy: float | None, mflops: float, **changes: object) -> TrialRow:
    values: dict[str, object] = {
        "number": number,
        "state": "COMPLETE" if accuracy is not None else "PRUNED",
        "channels": 16,
        "layers": 18,
        "embedding_size": 128,
        "accuracy": accuracy,
        "mflops": mflops,
        "params": int(mflops * 1000),
        "retry_of": None,
        "copy_of": None,
        "seconds": 1.0,
        "worker": "host:1",
        "run_folder": f"trials/trial_{number:04d}",
    }
    values.update(changes)
    return TrialRow(**values)  # type: ignore[arg-type]


def _study_with_random_trials(count: int, seed: int) -> optuna.Study:
    """A two-objective study of completed trials with random accuracy and cost."""
    generator = random.Random(seed)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for _ in range(count):
        channels = generator.choice([8, 16, 24, 32])
        embedding = generator.choice([128, 256, 512])
        accuracy = round(generator.uniform(0.5, 1.0), 2)  # rounding makes ties likely
        mflops = float(generator.choice([300, 600, 900, 1200]))
        study.add_trial(
            optuna.create_trial(
                state=optuna.trial.TrialState.COMPLETE,
                values=[accuracy, mflops],
                params={"channels": channels, "embedding_size": embedding},
                distributions=DISTRIBUTIONS,
                user_attrs={
                    "accuracy": accuracy,
                    "mflops": mflops,
                    "params": int(mflops * 1000),
                    "layers": LAYERS[channels],
                },
            )
        )
    return study


@pytest.mark.parametrize("seed", range(5))
def test_front_matches_optuna_best_trials(seed: int) -> None:
    study = _study_with_random_trials(30, seed)
    front = pareto_front(trial_rows(study.get_trials()), "mflops")
    assert {row.number for row in front} == {trial.number for trial in study.best_trials}


def test_front_sorted_cheapest_first() -> None:
    rows = [_row(0, 0.9, 900.0), _row(1, 0.8, 300.0), _row(2, 0.85, 600.0), _row(3, 0.7, 600.0)]
    front = pareto_front(rows, "mflops")
    assert [row.number for row in front] == [1, 2, 0]


def test_front_skips_copies_and_unfinished() -> None:
    rows = [
        _row(0, 0.9, 900.0),
        _row(1, 0.9, 900.0, copy_of=0),
        _row(2, None, 100.0),
        _row(3, 0.95, 100.0, state="FAIL"),
    ]
    assert [row.number for row in pareto_front(rows, "mflops")] == [0]


def test_front_by_params() -> None:
    rows = [_row(0, 0.9, 900.0, params=10), _row(1, 0.8, 300.0, params=20)]
    assert [row.number for row in pareto_front(rows, "params")] == [0]
    assert [row.number for row in pareto_front(rows, "mflops")] == [1, 0]


def test_choose_most_accurate_within_budget() -> None:
    rows = [_row(0, 0.9, 900.0), _row(1, 0.8, 300.0), _row(2, 0.85, 600.0), _row(3, 0.9, 700.0)]
    assert choose_trial(rows, "mflops", None).number == 3  # type: ignore[union-attr]
    assert choose_trial(rows, "mflops", 650).number == 2  # type: ignore[union-attr]
    assert choose_trial(rows, "mflops", 300).number == 1  # type: ignore[union-attr]
    assert choose_trial(rows, "mflops", 299) is None
    assert choose_trial([], "mflops", None) is None


def test_chosen_trial_is_on_front() -> None:
    study = _study_with_random_trials(40, 7)
    rows = trial_rows(study.get_trials())
    front = pareto_front(rows, "mflops")
    for budget in (None, 300, 600, 900, 1200):
        chosen = choose_trial(rows, "mflops", budget)
        assert chosen in front


def test_csv_files_list_rows(tmp_path: Path) -> None:
    rows = [_row(0, 0.9, 900.123), _row(1, None, 300.0), _row(2, 0.8, 300.0, retry_of=1)]
    write_trials_csv(tmp_path / "trials.csv", rows)
    write_front_csv(tmp_path / "pareto.csv", pareto_front(rows, "mflops"))
    with (tmp_path / "trials.csv").open() as handle:
        trials = list(csv.DictReader(handle))
    with (tmp_path / "pareto.csv").open() as handle:
        front = list(csv.DictReader(handle))
    assert [t["state"] for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE"]
    assert trials[0]["mflops"] == "900.12"
    assert trials[1]["accuracy"] == ""
    assert trials[2]["retry_of"] == "1"
    assert [f["trial"] for f in front] == ["2", "0"]
    assert list(front[0]) == [
        "trial",
        "channels",
        "layers",
        "embedding_size",
        "accuracy",
        "mflops",
        "params",
    ]


def test_empty_front_csv_has_header(tmp_path: Path) -> None:
    write_front_csv(tmp_path / "pareto.csv", [])
    assert (tmp_path / "pareto.csv").read_text().startswith("trial,channels,layers")


def test_plot_draws_points() -> None:
    rows = [_row(0, 0.9, 900.0), _row(1, 0.8, 300.0), _row(2, 0.7, 600.0)]
    front = pareto_front(rows, "mflops")
    figure = plot_front(rows, front, front[-1], "mflops", "study", 112)
    assert isinstance(figure, Figure)
    axes = figure.axes[0]
    assert axes.get_xlabel() == "MFLOPs (one 112x112 image)"
    offsets = [collection.get_offsets() for collection in axes.collections]
    assert [len(points) for points in offsets] == [1, 2, 1]  # other, front, chosen
    labels = {text.get_text() for text in axes.texts}
    assert labels == {"#1: C16 L18 E128", "#0: C16 L18 E128"}


def test_plot_without_trials() -> None:
    figure = plot_front([], [], None, "params", "study", 112)
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert texts == ["no completed trial yet"]


def test_exported_preset_loads(tmp_path: Path) -> None:
    settings = new_settings(TuneRequest(study="s", data="d", out="o", trials=1))
    chosen = _row(4, 0.91, 839.86, channels=24, layers=12, embedding_size=256)
    export_preset(tmp_path / "best.yaml", settings, chosen, "s", 1000.0)
    text = (tmp_path / "best.yaml").read_text()
    assert text.startswith("# Exported by pocketnas tune from study s, trial 4")
    assert "within the budget of 1000.00 MFLOPs" in text
    config = load_preset(RetrainConfig, tmp_path / "best.yaml")
    assert config.channels == 24
    assert config.layers == 12
    assert config.embedding_size == 256
    assert config.genotype == settings.genotype
    # The full schedule of the base preset, not the proxy's.
    assert config.epochs == 26
    assert config.milestones == [8, 14, 20, 25]


def test_budget_compares_shown_mflops() -> None:
    rows = [_row(0, 0.9, 587.1100160), _row(1, 0.8, 340.79)]
    assert choose_trial(rows, "mflops", 587.11).number == 0  # type: ignore[union-attr]
    assert choose_trial(rows, "mflops", 587.10).number == 1  # type: ignore[union-attr]
