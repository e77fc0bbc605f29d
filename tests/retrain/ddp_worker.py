"""Run by torchrun in the two-process test: a tiny retraining, then each rank's final weights.

Usage: torchrun --nproc-per-node 2 ddp_worker.py DATA OUT WEIGHTS_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from pocketnas.retrain.train import run_retrain
from pocketnas.search_space.published import POCKETNET_GENOTYPE

sys.path.insert(0, str(Path(__file__).parent))
from retrain_helpers import tiny_config


def main() -> None:
    data, out, weights = (Path(arg) for arg in sys.argv[1:4])
    config = tiny_config(epochs=2, steps_per_epoch=3, checkpoint_every_steps=2)
    result = run_retrain(
        config, POCKETNET_GENOTYPE, data, out, [data / "verification.bin"], show_progress=False
    )
    parameters = {name: p.detach().clone() for name, p in result.model.named_parameters()}
    torch.save(parameters, weights / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main()
