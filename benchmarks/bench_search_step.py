"""Seconds per DARTS search step and peak memory, first and second order.

Run from the repository root:

    .venv/bin/python benchmarks/bench_search_step.py [--configs small paper] [--steps 5]

Each measurement runs in a fresh Python process, which builds the supernet, takes one warm-up
step and then times `--steps` steps on random 112x112 batches (the median is printed). Peak
memory is the process's maximum resident set size (`ru_maxrss`, what `/usr/bin/time -v` prints),
so it includes the Python interpreter and PyTorch itself.

Configurations:

* small: 5 cells, 8 initial channels, 4 nodes, stem multiplier 3, 100 classes, batch 4 for the
  weight batch and 4 for the architecture batch.
* paper: PocketNet's search supernet (8 cells, 16 channels, 4 nodes, stem multiplier 3) with
  CASIA-WebFace's 10,572 classes, batch 8 for each half.

Implementations, both computing the same DARTS step:

* per-edge: one module per candidate operation (`SearchNetwork(fused=False)`), the architecture
  step computing its own training gradient and the weight step a second one, as DARTS
  implementations usually do.
* pocketnas: the fused search cell and one shared training pass (`Architect.search_step`).

The PocketNet authors' search code was measured on another 2-core machine by pocketnas's
maintainers at the small configuration:
4.1 s per second-order step (1.7 s first order) with peaks of 1.15 GB (0.88 GB), and at the
paper configuration 16-20 s per second-order step with a 5.2 GB peak. Those figures are printed
beside the ratios for reference; they were not re-measured by this script.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

CONFIGS = {
    "small": {"layers": 5, "channels": 8, "classes": 100, "batch": 4},
    "paper": {"layers": 8, "channels": 16, "classes": 10572, "batch": 8},
}

# The authors' code as measured elsewhere: (seconds per step, peak GB) per config and order.
AUTHORS = {
    ("small", "second"): (4.1, 1.15),
    ("small", "first"): (1.7, 0.88),
    ("paper", "second"): (18.0, 5.2),
}


def measure(config_name: str, order: str, implementation: str, steps: int) -> dict[str, float]:
    """Time `steps` search steps in this process; return seconds per step and peak RSS."""
    from pocketnas.search_space.networks import SearchNetwork
    from pocketnas.searchers.darts import Architect

    config = CONFIGS[config_name]
    torch.manual_seed(0)
    fused = implementation == "pocketnas"
    model = SearchNetwork(
        config["classes"],
        channels=config["channels"],
        layers=config["layers"],
        nodes=4,
        stem_multiplier=3,
        embedding_size=128,
        image_size=112,
        fused=fused,
    )
    w_optimizer = torch.optim.SGD(model.weights(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    a_optimizer = torch.optim.Adam(model.alphas(), lr=1.2e-3, betas=(0.5, 0.999), weight_decay=1e-3)
    architect = Architect(model, a_optimizer, order)
    batch = config["batch"]
    train = (torch.randn(batch, 3, 112, 112), torch.randint(0, config["classes"], (batch,)))
    val = (torch.randn(batch, 3, 112, 112), torch.randint(0, config["classes"], (batch,)))

    def step() -> None:
        if fused:
            architect.search_step(train, val, xi=0.1, w_optimizer=w_optimizer, grad_clip=5.0)
            return
        architect.step(train, val, xi=0.1, w_optimizer=w_optimizer)
        w_optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(train[0]), train[1])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.weights(), 5.0)
        w_optimizer.step()

    step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"seconds": statistics.median(times), "peak_gb": peak_kb / 1024**2}


def run_child(config_name: str, order: str, implementation: str, steps: int) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", config_name, order, implementation, str(steps)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return dict(json.loads(output.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["small", "paper"], choices=CONFIGS)
    parser.add_argument("--orders", nargs="+", default=["first", "second"])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        config_name, order, implementation, steps = args.child
        print(json.dumps(measure(config_name, order, implementation, int(steps))))
        return

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    header = (
        f"{'config':<7} {'order':<7} {'per-edge s':>11} {'pocketnas s':>12} {'speed-up':>9} "
        f"{'per-edge GB':>12} {'pocketnas GB':>13} {'authors s':>10} {'vs authors':>11} "
        f"{'authors GB':>11}"
    )
    print(header)
    for config_name in args.configs:
        for order in args.orders:
            plain = run_child(config_name, order, "per-edge", args.steps)
            ours = run_child(config_name, order, "pocketnas", args.steps)
            authors = AUTHORS.get((config_name, order))
            authors_s = f"{authors[0]:>10.2f}" if authors else f"{'-':>10}"
            versus = f"{authors[0] / ours['seconds']:>10.1f}x" if authors else f"{'-':>11}"
            authors_gb = f"{authors[1]:>11.2f}" if authors else f"{'-':>11}"
            print(
                f"{config_name:<7} {order:<7} {plain['seconds']:>11.3f} {ours['seconds']:>12.3f} "
                f"{plain['seconds'] / ours['seconds']:>8.2f}x {plain['peak_gb']:>12.3f} "
                f"{ours['peak_gb']:>13.3f} {authors_s} {versus} {authors_gb}",
                flush=True,
            )


if __name__ == "__main__":
    main()
