"""A tiny tuning setup: a base preset, width table and embedding sizes that train in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from pocketnas.search_space.published import POCKETNET_GENOTYPE

REPO = Path(__file__).resolve().parents[2]

TINY_PRESET = {
    "kind": "retrain",
    "channels": 4,
    "layers": 4,
    "embedding_size": 16,
    "image_size": 32,
    "epochs": 3,
    "batch_size": 8,
    "lr": 0.1,
    "lr_reference_batch": 8,
    "milestones": [2],
    "margin_s": 16.0,
    "margin_m": 0.3,
    "steps_per_epoch": 4,
    "log_every_steps": 2,
    "workers": 0,
    "genotype": POCKETNET_GENOTYPE.to_text(),
}
# channels * cells = 32 in both rows, as the default table keeps it at 288.
TINY_WIDTHS = "4:8,8:4"
TINY_EMBEDDINGS = ["16", "32"]


def write_tiny_preset(path: Path) -> Path:
    path.write_text(yaml.safe_dump(TINY_PRESET, sort_keys=False), encoding="utf-8")
    return path


def tune_args(study: str, data: Path, out: Path, *extra: str) -> list[str]:
    """Arguments of `pocketnas tune` for a tiny study; `extra` adds or repeats options."""
    return ["tune", "--study", study, "--data", str(data), "--out", str(out), *extra]


def tiny_space(preset: Path) -> list[str]:
    """Options that create a study of tiny networks with the tiny base preset."""
    return [
        "--preset",
        str(preset),
        "--widths",
        TINY_WIDTHS,
        "--embedding-sizes",
        *TINY_EMBEDDINGS,
    ]


def start_worker(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start `python -m pocketnas -q ARGS` as a separate worker process, output into `log`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    with log.open("wb") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "pocketnas", "-q", *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
        )
