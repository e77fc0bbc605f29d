"""Published accuracy, size and cost of the PocketNet models, for trade-off plots.

Source: the PocketNet paper, Boutros et al. 2021, "PocketNet: Extreme Lightweight Face
Recognition Network using Neural Architecture Search and Multi-Step Knowledge Distillation".
The values are those of the models trained with multi-step knowledge distillation. Accuracies
are in percent: 10-fold verification accuracy on the pair lists, and TAR at FAR 1e-4 on IJB-B
and IJB-C. MFLOPs are for one 3x112x112 image.
"""

from __future__ import annotations

from dataclasses import dataclass

PUBLISHED_SOURCE = "PocketNet paper (Boutros et al. 2021), multi-step KD models"
"""Short source line for plot legends and report captions."""

BENCHMARKS = ("lfw", "agedb_30", "calfw", "cplfw", "cfp_fp", "IJBB", "IJBC")
"""Benchmark keys, spelled like insightface's `.bin` file stems and the IJB folder names."""

BENCHMARK_TITLES = {
    "lfw": "LFW",
    "agedb_30": "AgeDB-30",
    "calfw": "CALFW",
    "cplfw": "CPLFW",
    "cfp_fp": "CFP-FP",
    "IJBB": "IJB-B (TAR at FAR 1e-4)",
    "IJBC": "IJB-C (TAR at FAR 1e-4)",
}
"""Display name of each benchmark key."""


@dataclass(frozen=True)
class PublishedModel:
    """One published network: its size, its cost and its accuracy per benchmark (percent)."""

    name: str
    params_millions: float
    mflops: float
    accuracy: dict[str, float]


def _model(name: str, params: float, mflops: float, *accuracies: float) -> PublishedModel:
    return PublishedModel(name, params, mflops, dict(zip(BENCHMARKS, accuracies, strict=True)))


PUBLISHED_MODELS = (
    _model("PocketNetS-128", 0.92, 587.11, 99.58, 96.10, 95.48, 89.63, 94.21, 89.44, 91.62),
    _model("PocketNetS-256", 0.99, 587.24, 99.66, 96.35, 95.50, 88.93, 93.34, 89.31, 91.33),
    _model("PocketNetM-128", 1.68, 1099.02, 99.65, 96.78, 95.67, 90.00, 95.07, 90.63, 92.63),
    _model("PocketNetM-256", 1.75, 1099.16, 99.58, 97.17, 95.63, 90.03, 95.56, 90.74, 92.70),
)
"""The four PocketNet models, smallest first."""
