"""Retraining across processes: two gloo ranks under torchrun, and SIGKILL then --resume."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pocketnas.fileio import load_checkpoint
from pocketnas.runs import CsvLog

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parents[1]), env.get("PYTHONPATH", "")])
    return env


def test_two_gloo_ranks_identical_weights(face_data: Path, tmp_path: Path):
    weights = tmp_path / "weights"
    weights.mkdir()
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        str(HERE / "ddp_worker.py"), str(face_data), str(out), str(weights),
    ]  # fmt: skip
    done = subprocess.run(command, env=child_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(weights / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys()
    for name, tensor in ranks[0].items():
        assert torch.equal(tensor, ranks[1][name]), name
    # Rank 0's last checkpoint contains those weights.
    state = load_checkpoint(out / "checkpoints" / "last.pt")
    assert state["step"] == 6
    assert state["world_size"] == 2
    for name, tensor in ranks[0].items():
        assert torch.equal(state["model"][name], tensor), name
    # Only rank 0 writes: one row per epoch, learning rate scaled for the global batch of 16.
    rows = CsvLog(out / "metrics.csv").rows
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert float(rows[0]["lr"]) == pytest.approx(0.2)


def _retrain_command(face_data: Path, out: Path, *extra: str) -> list[str]:
    preset = out.parent / "tiny.yaml"
    if not preset.exists():
        from pocketnas.search_space.published import POCKETNET_GENOTYPE

        preset.write_text(
            "kind: retrain\nchannels: 8\nlayers: 4\nembedding_size: 16\nimage_size: 32\n"
            "epochs: 3\nbatch_size: 16\nlr: 0.1\nlr_reference_batch: 16\nmilestones: [2]\n"
            "steps_per_epoch: 5\ncheckpoint_every_steps: 2\nworkers: 1\nmargin_s: 16.0\n"
            f'margin_m: 0.3\ndeterministic: true\ngenotype: "{POCKETNET_GENOTYPE.to_text()}"\n'
        )
    return [
        sys.executable, "-m", "pocketnas", "-q", "retrain", "--preset", str(preset),
        "--data", str(face_data), "--out", str(out), *extra,
    ]  # fmt: skip


def test_sigkill_then_resume_is_exact(face_data: Path, tmp_path: Path):
    whole = tmp_path / "whole"
    done = subprocess.run(
        _retrain_command(face_data, whole), env=child_env(), capture_output=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]

    cut = tmp_path / "cut"
    checkpoint = cut / "checkpoints" / "last.pt"
    process = subprocess.Popen(
        _retrain_command(face_data, cut), env=child_env(), stderr=subprocess.DEVNULL
    )
    try:
        # Checkpoints come at steps 2, 4, 5 (epoch end), 6, 8, 10, ...: kill once a mid-epoch
        # one of the second epoch is on disk.
        deadline = time.monotonic() + 240
        seen = -1
        while time.monotonic() < deadline and process.poll() is None:
            if checkpoint.is_file():
                seen = int(load_checkpoint(checkpoint)["step"])
                if seen >= 6:
                    break
            time.sleep(0.005)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    killed_at = int(load_checkpoint(checkpoint)["step"])
    assert 6 <= killed_at < 15, killed_at
    assert killed_at % 5 != 0, killed_at

    resumed = subprocess.run(
        _retrain_command(face_data, cut, "--resume"),
        env=child_env(),
        capture_output=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming retraining at step {killed_at} of 15" in (cut / "log.txt").read_text()
    left, right = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (whole, cut))
    assert left["step"] == right["step"] == 15
    for part in ("model", "head"):
        for name, tensor in left[part].items():
            assert torch.equal(tensor, right[part][name]), f"{part}.{name}"
    for index, buffers in left["optimizer"]["state"].items():
        assert torch.equal(
            buffers["momentum_buffer"], right["optimizer"]["state"][index]["momentum_buffer"]
        )
