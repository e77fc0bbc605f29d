"""Tests of the five-landmark similarity alignment against least squares and exact shifts."""

from __future__ import annotations

import numpy as np
import pytest

from pocketnas.errors import PocketNasError
from pocketnas.evaluation.ijb_align import (
    ARCFACE_TEMPLATE,
    align_face,
    similarity_transform,
    warp_affine,
)


def similarity_matrix(scale: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    angle = np.deg2rad(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([scale * rotation, np.array(shift)[:, None]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def lstsq_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Solve x' = a x - b y + tx, y' = b x + a y + ty by ordinary linear least squares."""
    rows, values = [], []
    for (x, y), (u, v) in zip(source, target):
        rows.append([x, -y, 1.0, 0.0])
        values.append(u)
        rows.append([y, x, 0.0, 1.0])
        values.append(v)
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), np.array(values), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def test_recovers_exact_similarity() -> None:
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 200, size=(5, 2))
    expected = similarity_matrix(1.3, 20.0, (5.0, -3.0))
    estimated = similarity_transform(source, apply(expected, source))
    np.testing.assert_allclose(estimated, expected, atol=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_matches_linear_least_squares(seed: int) -> None:
    rng = np.random.default_rng(seed)
    source = rng.uniform(0, 250, size=(5, 2))
    target = ARCFACE_TEMPLATE + rng.normal(scale=3.0, size=(5, 2))
    np.testing.assert_allclose(
        similarity_transform(source, target), lstsq_similarity(source, target), atol=1e-9
    )


def test_never_returns_reflection() -> None:
    mirrored = ARCFACE_TEMPLATE * np.array([-1.0, 1.0])
    matrix = similarity_transform(mirrored, ARCFACE_TEMPLATE)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_integer_shift_copies_pixels() -> None:
    rng = np.random.default_rng(1)
    canvas = rng.integers(0, 256, size=(160, 170, 3), dtype=np.uint8)
    landmarks = ARCFACE_TEMPLATE + np.array([17.0, 9.0])
    crop = align_face(canvas, landmarks).astype(int)
    # The estimated shift is exact up to float rounding, which Pillow's bilinear filter may turn
    # into an off-by-one value. A half-pixel error would blend random neighbours instead.
    difference = np.abs(crop - canvas[9 : 9 + 112, 17 : 17 + 112])
    assert difference.max() <= 1


def test_half_scale_samples_pixel_centres() -> None:
    """Scaling by 2 about the origin maps output pixel x to input pixel centre x / 2."""
    ramp = np.tile(np.arange(0, 200, 4, dtype=np.uint8), (50, 1))
    image = np.stack([ramp] * 3, axis=2)
    matrix = similarity_matrix(2.0, 0.0, (0.0, 0.0))
    warped = warp_affine(image, matrix, size=40)
    # Output x = 2 lands exactly on input pixel 1 (value 4); x = 3 halfway to pixel 2 (value 6).
    assert warped[10, 2, 0] == 4
    assert warped[10, 3, 0] == 6


def test_outside_pixels_are_black() -> None:
    image = np.full((112, 112, 3), 200, dtype=np.uint8)
    crop = align_face(image, ARCFACE_TEMPLATE + np.array([60.0, 0.0]))
    # The face sits 60 pixels right of the template, so the crop's right part has no source.
    assert crop[50, 0].tolist() == [200, 200, 200]
    assert crop[50, 111].tolist() == [0, 0, 0]


def test_rejects_bad_landmarks() -> None:
    image = np.zeros((112, 112, 3), dtype=np.uint8)
    with pytest.raises(PocketNasError, match="5 landmarks"):
        align_face(image, np.zeros((4, 2)))
    with pytest.raises(PocketNasError, match="one point"):
        align_face(image, np.ones((5, 2)))
    with pytest.raises(PocketNasError, match="NaN"):
        align_face(image, np.full((5, 2), np.nan))
