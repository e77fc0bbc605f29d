"""Paths and the NNI requirement shared by the NNI experiment tests."""

from __future__ import annotations

from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
TINY_RETRAIN = REPOSITORY / "tests" / "fixtures" / "presets" / "tiny-retrain.yaml"
TINY_SEARCH = REPOSITORY / "tests" / "fixtures" / "presets" / "tiny-search.yaml"


def require_nni() -> None:
    """Fail the test, instead of skipping it, when NNI or pytorch-lightning is missing."""
    try:
        from pocketnas.experiments.nni_support import filter_nni_warnings

        filter_nni_warnings()
        import nni  # noqa: F401
        import pytorch_lightning  # noqa: F401
    except ImportError as exc:
        pytest.fail(f"NNI is not installed ({exc}); run bash scripts/setup.sh --dev")
