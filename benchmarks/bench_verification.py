"""Time the vectorised verification protocol against its loop version.

Run from the repository root:

    .venv/bin/python benchmarks/bench_verification.py [--pairs 6000] [--dim 512] [--repeats 5]

The embeddings are random: same-person pairs are a Gaussian vector plus Gaussian noise of 5 times
its scale, different-person pairs two independent vectors. That gives an accuracy near 0.99, so
the thresholds land inside the distance range as they do for a trained face model. Both
implementations must agree, so the script also checks that their metrics are equal to 1e-9. Each
time printed is the fastest of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from pocketnas.evaluation._reference import reference_verification
from pocketnas.evaluation.verification import VerificationResult, evaluate_verification


def make_embeddings(n_pairs: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Return random embeddings (2 * n_pairs, dim), half of the pairs showing the same person."""
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(2 * n_pairs, dim))
    issame = np.arange(n_pairs) % 2 == 0
    noise = rng.normal(scale=5.0, size=(int(issame.sum()), dim))
    embeddings[1::2][issame] = embeddings[0::2][issame] + noise
    return embeddings, issame


def best_time(
    function: Callable[[np.ndarray, np.ndarray], VerificationResult],
    embeddings: np.ndarray,
    issame: np.ndarray,
    repeats: int,
) -> tuple[float, VerificationResult]:
    """Return the fastest wall-clock time of `repeats` calls, and the result of the last one."""
    fastest = float("inf")
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function(embeddings, issame)
        fastest = min(fastest, time.perf_counter() - start)
    assert result is not None
    return fastest, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Time the vectorised verification protocol against its loop version."
    )
    parser.add_argument("--pairs", type=int, default=6000, help="number of pairs (default 6000)")
    parser.add_argument("--dim", type=int, default=512, help="embedding size (default 512)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per implementation")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args()

    embeddings, issame = make_embeddings(args.pairs, args.dim, args.seed)
    loop_seconds, expected = best_time(reference_verification, embeddings, issame, args.repeats)
    fast_seconds, actual = best_time(evaluate_verification, embeddings, issame, args.repeats)

    for name in ("accuracy", "accuracy_std", "val", "val_std", "far", "xnorm"):
        difference = abs(getattr(actual, name) - getattr(expected, name))
        if difference > 1e-9:
            raise SystemExit(f"{name} differs between the implementations by {difference:.3g}")

    print(f"{args.pairs} pairs of {args.dim}-d embeddings, fastest of {args.repeats} runs")
    print(f"loop version:       {loop_seconds:.4f} s")
    print(f"vectorised version: {fast_seconds:.4f} s")
    print(f"speed-up:           {loop_seconds / fast_seconds:.1f}x")
    print(f"accuracy {actual.accuracy:.4f}, VAL {actual.val:.4f} at FAR {actual.far:.5f}")


if __name__ == "__main__":
    main()
