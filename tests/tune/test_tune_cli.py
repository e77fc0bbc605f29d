"""`pocketnas tune` end to end on tiny networks: outputs, exported preset, pruning, bad input."""

from __future__ import annotations

import csv
import shutil
import sqlite3
from pathlib import Path

import optuna
import pytest
import yaml
from tune_helpers import tiny_space, tune_args

from pocketnas.cli import main
from pocketnas.tune.objective import TrialObjective
from pocketnas.tune.settings import TuneRequest, new_settings
from pocketnas.tune.storage import default_storage_url


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["-q", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def _assert_one_line(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _dominated(row: dict[str, str], rows: list[dict[str, str]]) -> bool:
    accuracy, cost = float(row["accuracy"]), float(row["mflops"])
    return any(
        float(o["accuracy"]) >= accuracy
        and float(o["mflops"]) <= cost
        and (float(o["accuracy"]) > accuracy or float(o["mflops"]) < cost)
        for o in rows
    )


def test_tune_writes_front_and_preset(tune_data, tiny_preset, tmp_path, capsys):
    out = tmp_path / "out"
    args = tune_args("widths", tune_data, out, "--trials", "3", "--seed", "0")
    code, stdout, err = _run([*args, *tiny_space(tiny_preset)], capsys)
    assert code == 0, err
    folder = out / "widths"
    assert "Pareto front (accuracy, MFLOPs)" in stdout
    assert f"plot: {folder / 'pareto.png'}" in stdout

    trials = _read_csv(folder / "trials.csv")
    assert [t["state"] for t in trials] == ["COMPLETE"] * 3
    trained = [t for t in trials if not t["copy_of"]]
    for trial in trained:
        metrics = _read_csv(folder / trial["run_folder"] / "metrics.csv")
        assert [m["epoch"] for m in metrics] == ["1", "2"]  # the proxy schedule's 2 epochs
        assert float(trial["accuracy"]) == pytest.approx(
            float(metrics[-1]["verification_accuracy"]), abs=1e-6
        )
    expected = sorted(
        (t for t in trained if not _dominated(t, trained)),
        key=lambda t: (float(t["mflops"]), -float(t["accuracy"]), int(t["trial"])),
    )
    front = _read_csv(folder / "pareto.csv")
    assert [f["trial"] for f in front] == [t["trial"] for t in expected]
    assert (folder / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The exported preset: the most accurate trial, with the base preset's full schedule.
    best = max(trained, key=lambda t: (float(t["accuracy"]), -float(t["mflops"])))
    preset = yaml.safe_load((folder / "best.yaml").read_text())
    assert preset["kind"] == "retrain"
    assert preset["channels"] == int(best["channels"])
    assert preset["layers"] == int(best["layers"])
    assert preset["embedding_size"] == int(best["embedding_size"])
    assert preset["epochs"] == 3
    assert preset["genotype"].startswith("Genotype(")

    # A budget picks the most accurate trial that costs at most that many MFLOPs.
    cheapest = min(trained, key=lambda t: (float(t["mflops"]), -float(t["accuracy"])))
    budget = ["--trials", "0", "--resume", "--budget", cheapest["mflops"]]
    code, stdout, err = _run(tune_args("widths", tune_data, out, *budget), capsys)
    assert code == 0, err
    assert f"exported trial {cheapest['trial']} " in stdout
    budgeted = yaml.safe_load((folder / "best.yaml").read_text())
    assert budgeted["channels"] == int(cheapest["channels"])
    assert budgeted["embedding_size"] == int(cheapest["embedding_size"])
    code, stdout, err = _run(tune_args("widths", tune_data, out, *budget[:-1], "0.5"), capsys)
    assert code == 0, err
    assert "no completed trial costs at most 0.50 MFLOPs" in err
    assert not (folder / "best.yaml").exists()
    no_data = tmp_path / "no-data"
    code, _, err = _run(tune_args("widths", no_data, out, "--trials", "0", "--resume"), capsys)
    assert code == 0, err  # rewriting the outputs reads no data
    assert (folder / "best.yaml").is_file()

    run = tmp_path / "retrain"
    bin_file = str(tune_data / "verification.bin")
    retrain_args = ["retrain", "--preset", str(folder / "best.yaml"), "--data", str(tune_data)]
    code, stdout, err = _run([*retrain_args, "--out", str(run), "--bin", bin_file], capsys)
    assert code == 0, err
    assert "verification_accuracy:" in stdout
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["channels"] == int(best["channels"])
    assert config["layers"] == int(best["layers"])
    assert config["embedding_size"] == int(best["embedding_size"])
    assert len(_read_csv(run / "metrics.csv")) == 3


def test_accuracy_objective_reports_epochs(tune_data, tiny_preset, tmp_path, capsys):
    """One width and one embedding size: trial 1 repeats trial 0 and copies its result."""
    out = tmp_path / "out"
    options = ["--objective", "accuracy", "--pruner", "none", "--trials", "2"]
    space = ["--preset", str(tiny_preset), "--widths", "4:8", "--embedding-sizes", "16"]
    code, _, err = _run([*tune_args("single", tune_data, out, *options), *space], capsys)
    assert code == 0, err
    study = optuna.load_study(study_name="single", storage=default_storage_url(out))
    first, second = study.trials
    assert first.state == optuna.trial.TrialState.COMPLETE
    assert sorted(first.intermediate_values) == [1, 2]
    assert first.intermediate_values[2] == pytest.approx(first.value)
    assert second.user_attrs["copy_of"] == 0
    assert second.value == first.value
    assert "run_folder" not in second.user_attrs
    assert [row["trial"] for row in _read_csv(out / "single" / "pareto.csv")] == ["0"]


def test_pruned_trial_stops_training(tune_data, tiny_preset, tmp_path):
    request = TuneRequest(
        study="pruned",
        data=str(tune_data),
        out=str(tmp_path),
        trials=1,
        preset=str(tiny_preset),
        objective="accuracy",
        widths="4:8",
        embedding_sizes=[16],
        proxy_epochs=3,
    )
    settings = new_settings(request)
    # Accuracy never reaches 1.01, so the trial is pruned at its first report.
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(lower=1.01))
    bins = [tune_data / "verification.bin"]
    objective = TrialObjective(settings, tune_data, tmp_path, bins, show_progress=False)
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]
    metrics = _read_csv(tmp_path / trial.user_attrs["run_folder"] / "metrics.csv")
    assert len(metrics) == 1  # stopped after epoch 1 of 3


def test_existing_study_needs_resume(tune_data, tiny_preset, tmp_path, capsys):
    args = [*tune_args("s", tune_data, tmp_path / "out", "--trials", "0"), *tiny_space(tiny_preset)]
    code, stdout, err = _run(args, capsys)
    assert code == 0, err
    assert "study s in sqlite:///" in stdout
    code, _, err = _run(args, capsys)
    assert code == 2
    _assert_one_line(err, "study 's' already exists", "--resume")
    code, _, err = _run([*args, "--resume", "--objective", "accuracy"], capsys)
    assert code == 2
    _assert_one_line(err, "another --objective")
    code, _, err = _run([*tune_args("s", tune_data, tmp_path / "out", "--trials", "0")], capsys)
    assert code == 2
    _assert_one_line(err, "already exists")


def test_heartbeat_settings_stored_in_study(tune_data, tiny_preset, tmp_path, capsys):
    out = tmp_path / "out"
    heartbeat = ["--heartbeat-interval", "3", "--grace-period", "9"]
    args = [*tune_args("s", tune_data, out, "--trials", "0", *heartbeat), *tiny_space(tiny_preset)]
    code, _, err = _run(args, capsys)
    assert code == 0, err
    study = optuna.load_study(study_name="s", storage=default_storage_url(out))
    stored = study.user_attrs["pocketnas_tune"]
    assert stored["heartbeat_interval"] == 3
    assert stored["grace_period"] == 9
    resume = tune_args("s", tune_data, out, "--trials", "0", "--resume")
    code, _, err = _run([*resume, "--grace-period", "60"], capsys)
    assert code == 2
    _assert_one_line(err, "another --grace-period")
    code, _, err = _run([*resume, "--grace-period", "9"], capsys)
    assert code == 0, err


def test_resume_unknown_study(tune_data, tiny_preset, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = _run(tune_args("a", tune_data, out, "--trials", "1", "--resume"), capsys)
    assert code == 2
    _assert_one_line(err, "tune.db: study database not found")
    assert not out.exists()

    code, _, err = _run(
        [*tune_args("a", tune_data, out, "--trials", "0"), *tiny_space(tiny_preset)], capsys
    )
    assert code == 0, err
    code, _, err = _run(tune_args("b", tune_data, out, "--trials", "1", "--resume"), capsys)
    assert code == 2
    _assert_one_line(err, "study 'b' not found", "studies there: a")


@pytest.mark.parametrize(
    ("storage", "fragment"),
    [
        ("postgresql//broken", "invalid storage URL"),
        ("oracle+nosuchdriver://u:pw@127.0.0.1/x", "storage"),
        ("sqlite:////nonexistent-folder/tune.db", "does not exist"),
    ],
)
def test_bad_storage_url(storage, fragment, tune_data, tiny_preset, tmp_path, capsys):
    args = tune_args("s", tune_data, tmp_path / "out", "--trials", "1", "--storage", storage)
    code, _, err = _run([*args, *tiny_space(tiny_preset)], capsys)
    assert code == 2
    _assert_one_line(err, fragment)
    assert ":pw@" not in err


def _overwrite_root_page(database: Path, name: str) -> None:
    """Overwrite the root page of the table or index `name` with 0xff bytes, as a bad disk might."""
    connection = sqlite3.connect(database)
    try:
        query = "SELECT rootpage FROM sqlite_master WHERE name = ?"
        (page,) = connection.execute(query, (name,)).fetchone()
        (page_size,) = connection.execute("PRAGMA page_size").fetchone()
    finally:
        connection.close()
    with database.open("r+b") as handle:
        handle.seek((page - 1) * page_size)
        handle.write(b"\xff" * page_size)


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("study_user_attributes", "database disk image is malformed"),  # a table
        ("ix_studies_study_name", "btreeInitPage() returns error code 11"),  # an index
    ],
)
def test_damaged_page_in_storage(name, problem, tune_data, tiny_preset, tmp_path, capsys):
    out = tmp_path / "out"
    args = [*tune_args("s", tune_data, out, "--trials", "0"), *tiny_space(tiny_preset)]
    code, _, err = _run(args, capsys)
    assert code == 0, err
    (out / "s" / "trials.csv").unlink()
    _overwrite_root_page(out / "tune.db", name)
    code, _, err = _run(tune_args("s", tune_data, out, "--trials", "0", "--resume"), capsys)
    assert code == 2
    _assert_one_line(err, str(out / "tune.db"), "damaged SQLite database", problem)
    assert "in database main" not in err
    assert not (out / "s" / "trials.csv").exists()


def test_foreign_sqlite_file_untouched(tune_data, tiny_preset, tmp_path, capsys):
    database = tmp_path / "people.db"
    connection = sqlite3.connect(database)
    connection.execute("CREATE TABLE people (name TEXT)")
    connection.commit()
    connection.close()
    before = database.read_bytes()
    storage = f"sqlite:///{database}"
    args = tune_args("s", tune_data, tmp_path / "out", "--trials", "0", "--storage", storage)
    code, _, err = _run([*args, *tiny_space(tiny_preset)], capsys)
    assert code == 2
    _assert_one_line(err, "not an Optuna database", "people")
    assert database.read_bytes() == before


def test_damaged_sqlite_storage(tune_data, tiny_preset, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "tune.db").write_text("not a database\n" * 100)
    code, _, err = _run(
        [*tune_args("s", tune_data, out, "--trials", "1"), *tiny_space(tiny_preset)], capsys
    )
    assert code == 2
    _assert_one_line(err, "not an Optuna database")


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--pruner", "median"], "needs --objective accuracy"),
        (["--widths", "8:2"], "at least 4 cells"),
        (["--widths", "0:9"], "invalid --widths '0:9'"),
        (["--widths", ""], "invalid width"),
        (["--proxy-epochs", "0"], "proxy epochs must be positive"),
        (["--embedding-sizes", "0"], "embedding sizes must be positive"),
        (["--study", "../escape"], "invalid study name"),
        (["--trials", "-1"], "--trials must be 0 or more"),
        (["--heartbeat-interval", "60", "--grace-period", "30"], "shorter than the grace period"),
    ],
)
def test_bad_option(extra, fragment, tune_data, tiny_preset, tmp_path, capsys):
    args = [*tune_args("s", tune_data, tmp_path / "out", "--trials", "1"), *tiny_space(tiny_preset)]
    code, _, err = _run([*args, *extra], capsys)
    assert code == 2
    _assert_one_line(err, fragment)


def test_missing_data_folder(tiny_preset, tmp_path, capsys):
    missing = tmp_path / "no-such-data"
    code, _, err = _run(
        [*tune_args("s", missing, tmp_path / "out", "--trials", "1"), *tiny_space(tiny_preset)],
        capsys,
    )
    assert code == 2
    _assert_one_line(err, str(missing), "training data folder not found")


def test_missing_verification_set(tune_data, tiny_preset, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.rec", "train.idx", "property"):
        shutil.copy(tune_data / name, data / name)
    code, _, err = _run(
        [*tune_args("s", data, tmp_path / "out", "--trials", "1"), *tiny_space(tiny_preset)], capsys
    )
    assert code == 2
    _assert_one_line(err, "verification.bin does not exist", "--bin")
    code, _, err = _run(
        [
            *tune_args("s", data, tmp_path / "out", "--trials", "1", "--bin", str(data / "x.bin")),
            *tiny_space(tiny_preset),
        ],
        capsys,
    )
    assert code == 2
    _assert_one_line(err, "x.bin")
