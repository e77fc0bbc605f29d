"""Five-point similarity alignment against hand-made transforms and a plain bilinear warp."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pocketnas.data.align import ARCFACE_TEMPLATE_112, align_face, estimate_similarity, warp_affine


def similarity(angle: float, scale: float, dx: float, dy: float) -> np.ndarray:
    cos, sin = math.cos(angle), math.sin(angle)
    return np.array([[scale * cos, -scale * sin, dx], [scale * sin, scale * cos, dy]])


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def reference_warp(
    rgb: np.ndarray, matrix: np.ndarray, size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear warp written out pixel by pixel, with pixel centres at integer coordinates.

    Returns the warped float image and a mask of the output pixels whose four source pixels all
    lie inside the input. Libraries differ at the edges, so the tests compare only those pixels.
    """
    inverse = np.linalg.inv(np.vstack([matrix, [0.0, 0.0, 1.0]]))
    height, width = size
    out = np.zeros((height, width, 3), dtype=np.float64)
    inside = np.zeros((height, width), dtype=bool)
    source = rgb.astype(np.float64)
    for y in range(height):
        for x in range(width):
            sx, sy, _ = inverse @ [x, y, 1.0]
            x0, y0 = math.floor(sx), math.floor(sy)
            if not (0 <= x0 < rgb.shape[1] - 1 and 0 <= y0 < rgb.shape[0] - 1):
                continue
            fx, fy = sx - x0, sy - y0
            top = (1 - fx) * source[y0, x0] + fx * source[y0, x0 + 1]
            bottom = (1 - fx) * source[y0 + 1, x0] + fx * source[y0 + 1, x0 + 1]
            out[y, x] = (1 - fy) * top + fy * bottom
            inside[y, x] = True
    return out, inside


@pytest.mark.parametrize(
    ("angle", "scale", "dx", "dy"),
    [
        (0.0, 1.0, 0.0, 0.0),
        (0.4, 1.7, -30.0, 12.5),
        (-2.5, 0.35, 80.0, -4.0),
        (math.pi, 2.0, 1.0, 1.0),
    ],
)
def test_estimate_recovers_known_transform(
    angle: float, scale: float, dx: float, dy: float
) -> None:
    known = similarity(angle, scale, dx, dy)
    landmarks = apply(known, ARCFACE_TEMPLATE_112)

    # Landmarks made from the template by `known` are mapped back by its inverse.
    estimated = estimate_similarity(landmarks, ARCFACE_TEMPLATE_112)
    expected = np.linalg.inv(np.vstack([known, [0.0, 0.0, 1.0]]))[:2]
    np.testing.assert_allclose(estimated, expected, atol=1e-10)
    np.testing.assert_allclose(
        estimate_similarity(ARCFACE_TEMPLATE_112, landmarks), known, atol=1e-10
    )


def test_estimate_is_least_squares_under_noise() -> None:
    rng = np.random.default_rng(0)
    known = similarity(0.3, 1.2, 5.0, -7.0)
    target = apply(known, ARCFACE_TEMPLATE_112) + rng.normal(0, 0.5, (5, 2))
    estimated = estimate_similarity(ARCFACE_TEMPLATE_112, target)
    best = ((apply(estimated, ARCFACE_TEMPLATE_112) - target) ** 2).sum()
    # Any nearby similarity fits no better.
    for _ in range(200):
        angle, scale, dx, dy = rng.normal(0, [0.01, 0.01, 0.2, 0.2])
        a, b = estimated[0, 0], estimated[1, 0]
        base_angle, base_scale = math.atan2(b, a), math.hypot(a, b)
        trial = similarity(
            base_angle + angle, base_scale + scale, estimated[0, 2] + dx, estimated[1, 2] + dy
        )
        assert ((apply(trial, ARCFACE_TEMPLATE_112) - target) ** 2).sum() >= best - 1e-9


def lstsq_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Solve u = a x - b y + tx, v = b x + a y + ty for (a, b, tx, ty) by linear least squares."""
    rows, values = [], []
    for (x, y), (u, v) in zip(source, target, strict=True):
        rows.append([x, -y, 1.0, 0.0])
        values.append(u)
        rows.append([y, x, 0.0, 1.0])
        values.append(v)
    (a, b, tx, ty), *_ = np.linalg.lstsq(np.array(rows), np.array(values), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


@pytest.mark.parametrize("seed", range(5))
def test_estimate_matches_linear_least_squares(seed: int) -> None:
    rng = np.random.default_rng(seed)
    source = rng.uniform(0, 250, size=(5, 2))
    target = ARCFACE_TEMPLATE_112 + rng.normal(scale=3.0, size=(5, 2))
    np.testing.assert_allclose(
        estimate_similarity(source, target), lstsq_similarity(source, target), atol=1e-9
    )


def test_estimate_never_reflects() -> None:
    mirrored = ARCFACE_TEMPLATE_112 * [-1.0, 1.0]
    estimated = estimate_similarity(mirrored, ARCFACE_TEMPLATE_112)
    assert np.linalg.det(estimated[:, :2]) > 0


def test_estimate_rejects_degenerate_points() -> None:
    with pytest.raises(ValueError, match="coincide"):
        estimate_similarity(np.ones((5, 2)), ARCFACE_TEMPLATE_112)
    with pytest.raises(ValueError, match="finite"):
        estimate_similarity(np.full((5, 2), np.nan), ARCFACE_TEMPLATE_112)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        estimate_similarity(np.ones((5, 3)), ARCFACE_TEMPLATE_112)
    # Finite but so large that the squared distances overflow float64.
    with pytest.raises(ValueError, match="too far apart"):
        estimate_similarity(ARCFACE_TEMPLATE_112 * 1e300, ARCFACE_TEMPLATE_112)


def test_warp_rejects_bad_matrix() -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"got shape \(3, 3\)"):
        warp_affine(rgb, np.eye(3), (4, 4))
    with pytest.raises(ValueError, match=r"^the affine matrix is not finite and invertible$"):
        warp_affine(rgb, np.zeros((2, 3)), (4, 4))
    with pytest.raises(ValueError, match=r"^the affine matrix is not finite and invertible$"):
        warp_affine(rgb, np.full((2, 3), np.inf), (4, 4))


def test_warp_matches_plain_bilinear() -> None:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:40, 0:36]
    smooth = np.stack([xx * 6, yy * 5, (xx + yy) * 3], axis=-1) + rng.integers(0, 8, (40, 36, 3))
    rgb = smooth.clip(0, 255).astype(np.uint8)
    matrix = similarity(0.35, 0.9, 6.3, -2.6)

    warped = warp_affine(rgb, matrix, (30, 28))
    expected, inside = reference_warp(rgb, matrix, (30, 28))

    assert inside.sum() > 400
    difference = np.abs(warped.astype(np.float64) - expected)[inside]
    # Pillow interpolates in fixed point and rounds to uint8, so allow about one level.
    assert difference.mean() < 0.6
    assert difference.max() <= 1.5


def test_align_face_puts_landmarks_on_template() -> None:
    known = similarity(-0.5, 1.6, 40.0, 25.0)
    landmarks = apply(known, ARCFACE_TEMPLATE_112)
    rgb = np.zeros((260, 240, 3), dtype=np.uint8)
    for x, y in np.round(landmarks).astype(int):
        rgb[y - 2 : y + 3, x - 2 : x + 3] = 255

    aligned = align_face(rgb, np.round(landmarks))

    assert aligned.shape == (112, 112, 3)
    for x, y in ARCFACE_TEMPLATE_112:
        patch = aligned[round(y) - 1 : round(y) + 2, round(x) - 1 : round(x) + 2, 0]
        assert patch.max() > 200, (x, y)
    # Nothing bright lies away from the five points.
    mask = np.ones((112, 112), dtype=bool)
    for x, y in ARCFACE_TEMPLATE_112:
        mask[round(y) - 4 : round(y) + 5, round(x) - 4 : round(x) + 5] = False
    assert aligned[mask].max() < 30


def test_align_face_integer_shift_copies_pixels() -> None:
    rng = np.random.default_rng(1)
    canvas = rng.integers(0, 256, size=(160, 170, 3), dtype=np.uint8)
    landmarks = ARCFACE_TEMPLATE_112 + np.array([17.0, 9.0])

    crop = align_face(canvas, landmarks).astype(int)

    # The estimated shift is exact up to float rounding, which Pillow's bilinear filter may turn
    # into an off-by-one value. A half-pixel error would blend random neighbours instead.
    difference = np.abs(crop - canvas[9 : 9 + 112, 17 : 17 + 112])
    assert difference.max() <= 1


def test_align_face_fills_outside_black() -> None:
    rgb = np.full((112, 112, 3), 200, dtype=np.uint8)
    # The face sits 60 pixels right of the template, so the right part of the crop has no source.
    crop = align_face(rgb, ARCFACE_TEMPLATE_112 + np.array([60.0, 0.0]))
    assert crop[50, 0].tolist() == [200, 200, 200]
    assert crop[50, 111].tolist() == [0, 0, 0]


@pytest.mark.parametrize(
    ("landmarks", "message"),
    [
        (np.zeros(8), r"expected 5 \(x, y\) landmarks \(10 numbers\), got 8 numbers"),
        (np.zeros((4, 2)), "got 8 numbers"),
        (np.zeros(9), "got 9 numbers"),
        (np.ones((5, 2)), "coincide"),
        (np.full((5, 2), np.nan), "finite"),
    ],
)
def test_align_face_rejects_bad_landmarks(landmarks: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        align_face(np.zeros((8, 8, 3), np.uint8), landmarks)
