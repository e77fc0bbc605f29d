"""A real NNI experiment: nnictl starts the multi-trial NAS experiment with two tiny trials.

NNI's web server listens on every interface without authentication; the test talks to it on
127.0.0.1 only and stops it in a `finally` block. HOME, NNI_CONFIG_DIR and the experiment's
working folder point into tmp_path, so NNI writes nothing into the user's home folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from nni_helpers import REPOSITORY, TINY_RETRAIN, require_nni

TERMINAL_STATES = {"SUCCEEDED", "FAILED", "USER_CANCELED", "SYS_CANCELED", "EARLY_STOPPED"}
TIMEOUT_SECONDS = 600


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(port: int, path: str):
    url = f"http://127.0.0.1:{port}/api/v1/nni/{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _nnictl(environment: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    nnictl = Path(sys.executable).with_name("nnictl")
    return subprocess.run(
        [str(nnictl), *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def _experiments(home: Path) -> dict:
    """The experiments that nnictl recorded in HOME/nni-experiments/.experiment."""
    manifest = home / "nni-experiments" / ".experiment"
    return json.loads(manifest.read_text()) if manifest.is_file() else {}


def _stop(environment: dict[str, str], home: Path) -> None:
    """Stop every experiment of this HOME; kill the manager by process id if nnictl fails."""
    for experiment_id, entry in _experiments(home).items():
        if entry.get("status") == "STOPPED":
            continue
        done = _nnictl(environment, "stop", experiment_id)
        if _experiments(home).get(experiment_id, {}).get("status") != "STOPPED":
            pid = entry.get("pid")
            print(f"nnictl stop {experiment_id} failed ({done.stderr}); killing process {pid}")
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGTERM)


def _write_config(tmp_path: Path, face_data: Path) -> Path:
    config = yaml.safe_load((REPOSITORY / "experiments" / "nas_multi_trial.yml").read_text())
    command = [
        sys.executable,
        "-m",
        "pocketnas.experiments.trial",
        "nas",
        "--data",
        str(face_data),
        "--bin",
        str(face_data / "verification.bin"),
        "--preset",
        str(TINY_RETRAIN),
        "--epochs",
        "2",
        "--steps-per-epoch",
        "2",
    ]
    config.update(
        searchSpaceFile=str(REPOSITORY / "experiments" / config["searchSpaceFile"]),
        trialCodeDirectory=str(REPOSITORY),
        trialCommand=" ".join(command),
        trialConcurrency=1,
        maxTrialNumber=2,
        experimentWorkingDirectory=str(tmp_path / "experiments"),
    )
    path = tmp_path / "experiment.yml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.slow
def test_nas_experiment_two_trials(face_data, tmp_path):
    require_nni()
    home = tmp_path / "home"
    home.mkdir()
    environment = {name: value for name, value in os.environ.items() if not name.startswith("NNI_")}
    environment.update(
        HOME=str(home),
        NNI_CONFIG_DIR=str(tmp_path / "nni-config"),
        PYTHONPATH=str(REPOSITORY),
    )
    config = _write_config(tmp_path, face_data)
    port = _free_port()
    try:
        created = _nnictl(environment, "create", "--config", str(config), "--port", str(port))
        assert created.returncode == 0, created.stdout + created.stderr
        assert len(_experiments(home)) == 1

        deadline = time.monotonic() + TIMEOUT_SECONDS
        trials: list[dict] = []
        while time.monotonic() < deadline:
            status = _get(port, "check-status")
            assert status["status"] != "ERROR", status
            trials = _get(port, "trial-jobs")
            if len(trials) == 2 and all(t["status"] in TERMINAL_STATES for t in trials):
                break
            time.sleep(2)
        else:
            pytest.fail(f"experiment did not finish in {TIMEOUT_SECONDS} s: {trials}")

        assert [t["status"] for t in trials] == ["SUCCEEDED", "SUCCEEDED"]
        for job in trials:
            (final,) = job["finalMetricData"]
            metric = json.loads(json.loads(final["data"]))
            assert 0.0 <= metric["default"] <= 1.0
            assert metric["params"] > 0

            trial_folder = Path(job["logPath"])
            assert tmp_path in trial_folder.parents
            record = json.loads((trial_folder / "trial.json").read_text())
            assert record["under_nni"] is True
            assert record["final"]["default"] == metric["default"]
            assert [row["epoch"] for row in record["intermediate"]] == [1, 2]
            assert (trial_folder / "genotype.json").is_file()

        intermediate = [m for m in _get(port, "metric-data") if m["type"] == "PERIODICAL"]
        assert len(intermediate) == 4
    finally:
        _stop(environment, home)
    assert all(entry["status"] == "STOPPED" for entry in _experiments(home).values())
    with pytest.raises(urllib.error.URLError):
        _get(port, "check-status")
