"""Five-point face alignment to the 112x112 crop that ArcFace-style training sets use.

A face is aligned by a similarity transform (rotation, uniform scale, translation). The
transform maps its five landmarks (left eye, right eye, nose tip, left and right mouth corner, as
seen in the image) closest to fixed template points in the least-squares sense. It is estimated
in closed form (Umeyama, "Least-squares estimation of transformation parameters between two point
patterns", IEEE TPAMI 13(4), 1991) and the image is resampled bilinearly.

Coordinates are in pixels with the centre of the top-left pixel at (0, 0), the convention of
OpenCV's `warpAffine` and of the landmark detectors used with it.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

ARCFACE_TEMPLATE_112 = np.array(
    [
        [38.2946, 51.6963],  # left eye (image left)
        [73.5318, 51.5014],  # right eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ],
    dtype=np.float64,
)
"""The standard five landmark positions (x, y) of the 112x112 aligned face crop."""

ALIGNED_SIZE = (112, 112)
"""(height, width) of the crop that ARCFACE_TEMPLATE_112 describes."""


def estimate_similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Estimate the similarity transform that maps `source` points onto `target` points.

    Args:
        source: (N, 2) points, N >= 2, for example detected landmarks.
        target: (N, 2) points in the same order, for example ARCFACE_TEMPLATE_112.

    Returns:
        A 2x3 float64 matrix M with target ≈ M[:, :2] @ source + M[:, 2], minimising the sum of
        squared distances. Its left 2x2 block is a rotation times a positive scale (no
        reflection).

    Raises:
        ValueError: the shapes differ or are not (N, 2) with N >= 2, a value is not finite, all
            source points coincide, or the points are so far apart that float64 overflows.
    """
    src = np.asarray(source, dtype=np.float64)
    dst = np.asarray(target, dtype=np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(
            f"expected two (N, 2) point arrays with N >= 2, got {src.shape} and {dst.shape}"
        )
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise ValueError("landmark coordinates must be finite numbers")

    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_centered = src - src_mean
    dst_centered = dst - dst_mean
    with np.errstate(over="ignore", invalid="ignore"):
        src_variance = (src_centered**2).sum() / len(src)
    if not np.isfinite(src_variance):
        raise ValueError("the points are too far apart for a transform to be computed")
    if src_variance <= 1e-12:
        raise ValueError("the source points all coincide, so no transform is defined")

    covariance = dst_centered.T @ src_centered / len(src)
    if not np.isfinite(covariance).all():
        raise ValueError("the points are too far apart for a transform to be computed")
    u, singular_values, vt = np.linalg.svd(covariance)
    # Flip the last axis when the best orthogonal fit is a reflection, as Umeyama's method does.
    signs = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        signs[-1] = -1.0
    rotation = u @ np.diag(signs) @ vt
    scale = float((singular_values * signs).sum() / src_variance)
    translation = dst_mean - scale * rotation @ src_mean

    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = translation
    return matrix


def warp_affine(rgb: np.ndarray, matrix: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resample an HWC uint8 image so that input point p lands at output point M @ [p, 1].

    Output pixels whose source lies outside the input are black. `size` is (height, width).

    Raises:
        ValueError: the matrix is not a finite, invertible 2x3 affine transform.
    """
    affine = np.asarray(matrix, dtype=np.float64)
    if affine.shape != (2, 3):
        raise ValueError(f"expected a 2x3 affine matrix, got shape {affine.shape}")
    forward = np.vstack([affine, [0.0, 0.0, 1.0]])
    # The message stays on one line because the command line prints it after a file name.
    if not np.isfinite(forward).all() or abs(np.linalg.det(forward)) < 1e-12:
        raise ValueError("the affine matrix is not finite and invertible")
    inverse = np.linalg.inv(forward)
    # Pillow samples output pixel centres at (x + 0.5, y + 0.5) and reads input pixel centres at
    # half-integers, so shift by half a pixel on both sides to keep pixel centres at integers.
    half = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    half_back = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    pillow_matrix = half @ inverse @ half_back
    height, width = size
    image = Image.fromarray(np.ascontiguousarray(rgb))
    warped = image.transform(
        (width, height),
        Image.Transform.AFFINE,
        data=tuple(pillow_matrix[:2].ravel()),
        resample=Image.Resampling.BILINEAR,
        fillcolor=(0, 0, 0),
    )
    return np.array(warped, dtype=np.uint8)


def align_face(
    rgb: np.ndarray,
    landmarks: np.ndarray,
    template: np.ndarray = ARCFACE_TEMPLATE_112,
    size: tuple[int, int] = ALIGNED_SIZE,
) -> np.ndarray:
    """Crop and align a face to `size` from its five landmarks (x, y), in template order.

    `landmarks` may be a (5, 2) array or the ten numbers x1 y1 ... x5 y5.

    Raises:
        ValueError: the landmarks are not five finite (x, y) points, they all coincide, or they
            are so far apart that float64 overflows.
    """
    values = np.asarray(landmarks, dtype=np.float64)
    if values.size != template.size:
        raise ValueError(
            f"expected {len(template)} (x, y) landmarks ({template.size} numbers), "
            f"got {values.size} numbers"
        )
    points = values.reshape(template.shape)
    return warp_affine(rgb, estimate_similarity(points, template), size)
