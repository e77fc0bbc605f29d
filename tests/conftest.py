"""Shared test fixtures: paths to the bundled reference data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from pocketnas.data.synth import synthesize

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def mxnet_rec_dir() -> Path:
    """insightface-layout files written by the real MXNet 1.9.1 library."""
    return FIXTURES / "mxnet_rec"


@pytest.fixture(scope="session")
def published() -> dict[str, Any]:
    """PocketNet's published genotype, parameter counts, MFLOPs and state-dict shapes."""
    return json.loads((FIXTURES / "reference" / "pocketnet_published.json").read_text())


@pytest.fixture(
    params=[
        "pocketnet-s128",
        "pocketnet-s256",
        "pocketnet-s512",
        "pocketnet-m128",
        "pocketnet-m256",
        "pocketnet-m512",
    ]
)
def published_preset(request: pytest.FixtureRequest) -> str:
    """Name of each PocketNet preset whose published figures are in the reference data."""
    return str(request.param)


@pytest.fixture(scope="session")
def face_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 synthetic identities of 8 images at 32x32, plus a 100-pair verification.bin."""
    folder = tmp_path_factory.mktemp("faces")
    synthesize(
        folder,
        identities=24,
        images_per_identity=8,
        pairs=100,
        seed=1,
        image_size=32,
        workers=1,
        show_progress=False,
    )
    return folder


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)
