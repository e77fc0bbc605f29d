"""A small synthetic face set for the NNI experiment tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pocketnas.data.synth import synthesize


@pytest.fixture(scope="session")
def face_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 identities of 8 images at 32x32, plus a 100-pair verification.bin."""
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
