"""Five-landmark face alignment to the 112x112 ArcFace crop, for the IJB-B/IJB-C loose crops.

The similarity transform (rotation, uniform scale, translation) that maps the detected landmarks
onto `ARCFACE_TEMPLATE` is the least-squares solution of Umeyama (1991), "Least-squares estimation
of transformation parameters between two point patterns", IEEE TPAMI 13(4). The crop is then
resampled bilinearly with Pillow, and pixels that fall outside the source image are black.

Landmark coordinates use the convention of OpenCV and insightface: the centre of pixel (i, j) is
at x = j, y = i. Pillow puts pixel centres at half-integers, so the warp converts between the two.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pocketnas.errors import PocketNasError

CROP_SIZE = 112
"""Side of the aligned face crop in pixels."""

ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],  # left eye (in the image)
        [73.5318, 51.5014],  # right eye
        [56.0252, 71.7366],  # nose tip
        [41.5493, 92.3655],  # left mouth corner
        [70.7299, 92.2041],  # right mouth corner
    ]
)
"""Landmark positions (x, y) of the standard 112x112 ArcFace crop."""


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Estimate the similarity transform that maps `source` points onto `target` points.

    Args:
        source: Points (N, 2), N >= 2, for example the five detected landmarks.
        target: Points (N, 2) in the same order.

    Returns:
        The 2x3 matrix [s*R | t] minimising sum ||s*R @ source_i + t - target_i||^2.

    Raises:
        PocketNasError: the shapes differ, there are fewer than two points, a value is not
            finite, or all source points coincide.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if source.shape != target.shape or source.ndim != 2 or source.shape[1] != 2:
        raise PocketNasError(
            f"landmarks must be two (N, 2) arrays of one shape, got {source.shape} and "
            f"{target.shape}"
        )
    if len(source) < 2:
        raise PocketNasError(f"a similarity transform needs at least 2 points, got {len(source)}")
    if not (np.all(np.isfinite(source)) and np.all(np.isfinite(target))):
        raise PocketNasError("landmarks contain NaN or infinite values")

    source_mean = source.mean(axis=0)
    target_mean = target.mean(axis=0)
    source_centred = source - source_mean
    target_centred = target - target_mean
    source_variance = float(np.mean(np.sum(source_centred**2, axis=1)))
    if source_variance == 0.0:
        raise PocketNasError("all landmarks are at one point, so no transform fits them")

    covariance = target_centred.T @ source_centred / len(source)
    u, singular_values, vt = np.linalg.svd(covariance)
    # The sign correction keeps R a rotation (det +1) instead of a reflection.
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    scale = float(np.sum(singular_values * sign)) / source_variance
    translation = target_mean - scale * rotation @ source_mean

    matrix = np.empty((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = translation
    return matrix


def warp_affine(image: np.ndarray, matrix: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Resample `image` so that output pixel p shows input point q where matrix @ [q, 1] = p.

    Args:
        image: HWC uint8 RGB array.
        matrix: 2x3 forward transform in pixel-centre coordinates (see the module docstring).
        size: Side of the square output in pixels.

    Returns:
        The (size, size, 3) uint8 crop, black where the source has no pixels.
    """
    forward = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    # Pillow's coordinate u equals the pixel-centre coordinate x plus 0.5.
    shift = np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    unshift = np.array([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    # Pillow expects the inverse map: from an output coordinate to its input coordinate.
    inverse = np.linalg.inv(shift @ forward @ unshift)
    coefficients = tuple(float(value) for value in inverse[:2].ravel())
    warped = Image.fromarray(image).transform(
        (size, size),
        Image.Transform.AFFINE,
        data=coefficients,
        resample=Image.Resampling.BILINEAR,
        fillcolor=(0, 0, 0),
    )
    return np.array(warped, dtype=np.uint8)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """Warp a face so that its five `landmarks` (x, y) land on the ArcFace template.

    Args:
        image: HWC uint8 RGB array of the loose crop.
        landmarks: Array (5, 2): left eye, right eye, nose, left and right mouth corner.
        size: Output side in pixels; the template is scaled by size / 112.

    Raises:
        PocketNasError: the landmarks are not five finite, distinct points.
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise PocketNasError(f"expected 5 landmarks (x, y), got shape {landmarks.shape}")
    matrix = similarity_transform(landmarks, ARCFACE_TEMPLATE * (size / CROP_SIZE))
    return warp_affine(image, matrix, size)
