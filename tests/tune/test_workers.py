"""Several worker processes on one study: SQLite and a real PostgreSQL server, and a worker
killed in the middle of a trial."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import optuna
import postgres_server
import pytest
from optuna.trial import TrialState
from tune_helpers import start_worker, tiny_space, tune_args

from pocketnas.cli import main
from pocketnas.fileio import load_checkpoint
from pocketnas.tune.storage import default_storage_url

WORKER_TIMEOUT_S = 300


def _run_two_workers(tune_data: Path, preset: Path, out: Path, storage: str) -> list[str]:
    """Create a study, run two workers of two trials each at once; return their outputs."""
    common = ["--storage", storage]
    assert (
        main(
            [
                "-q",
                *tune_args("shared", tune_data, out, "--trials", "0", *common),
                *tiny_space(preset),
            ]
        )
        == 0
    )
    workers = []
    for number in range(2):
        args = tune_args("shared", tune_data, out, "--trials", "2", "--resume", *common)
        workers.append(start_worker(args, out / f"worker-{number}.log"))
    for worker in workers:
        assert worker.wait(timeout=WORKER_TIMEOUT_S) == 0, (out / "worker-0.log").read_text()
    return [(out / f"worker-{n}.log").read_text() for n in range(2)]


def _check_shared_study(storage: str, logs: list[str]) -> None:
    for log in logs:
        assert "database is locked" not in log, log
        assert "Traceback" not in log, log
    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2  # both processes ran trials


@pytest.mark.slow
def test_two_workers_share_sqlite(tune_data, tiny_preset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    storage = default_storage_url(out)
    logs = _run_two_workers(tune_data, tiny_preset, out, storage)
    _check_shared_study(storage, logs)


@pytest.mark.slow
def test_two_workers_share_postgresql(tune_data, tiny_preset, tmp_path, postgres_url):
    out = tmp_path / "out"
    out.mkdir()
    logs = _run_two_workers(tune_data, tiny_preset, out, postgres_url)
    _check_shared_study(postgres_url, logs)
    password = postgres_url.split(":")[2].split("@")[0]
    for log in logs:
        assert "study shared in postgresql://postgres:***@127.0.0.1" in log
        assert password not in log
    assert (out / "shared" / "pareto.csv").is_file()


def _wait_for_first_epoch(run_dir: Path, worker) -> None:
    deadline = time.monotonic() + WORKER_TIMEOUT_S
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker ended before it could be killed"
        if (run_dir / "checkpoints" / "epoch_001.pt").is_file():
            return
        time.sleep(0.05)
    raise AssertionError(f"no epoch ended in {run_dir} within {WORKER_TIMEOUT_S} s")


def test_killed_worker_trial_retried(tune_data, tiny_preset, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    storage = default_storage_url(out)
    heartbeat = ["--heartbeat-interval", "1", "--grace-period", "2"]
    args = tune_args("killed", tune_data, out, "--trials", "1", "--proxy-epochs", "4", *heartbeat)
    worker = start_worker([*args, *tiny_space(tiny_preset)], out / "killed.log")
    run_dir = out / "killed" / "trials" / "trial_0000"
    try:
        _wait_for_first_epoch(run_dir, worker)
    finally:
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=60)
    # The worker may have finished more than the first epoch before the signal arrived.
    killed_step = int(load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"])
    study = optuna.load_study(study_name="killed", storage=storage)
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]
    time.sleep(3)  # past the grace period of 2 s since the last heartbeat

    # Without the heartbeat options: the worker takes them from the study.
    resume = tune_args("killed", tune_data, out, "--trials", "1", "--resume")
    assert main(["-q", *resume]) == 0, capsys.readouterr().err
    killed, retry = study.get_trials()
    assert killed.state == TrialState.FAIL
    assert retry.state == TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == 0
    assert retry.params == killed.params
    assert retry.user_attrs["run_folder"] == "trials/trial_0000"
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    # The retry continued the killed run from its checkpoint instead of starting over.
    # Epochs the killed worker reported before the signal are carried over; the rest are new.
    reported = set(retry.user_attrs["epoch_accuracy"])
    assert {str(epoch) for epoch in range(killed_step // 4 + 1, 5)} <= reported
    assert reported <= {"1", "2", "3", "4"}
    assert f"resuming retraining at step {killed_step} of 16" in (run_dir / "log.txt").read_text()


def test_missing_postgres_fails_with_hint(monkeypatch):
    monkeypatch.setattr(postgres_server, "find_server_programs", lambda: None)
    with pytest.raises(pytest.fail.Exception, match=r"bash scripts/setup\.sh --dev"):
        postgres_server.PostgresServer.start()
