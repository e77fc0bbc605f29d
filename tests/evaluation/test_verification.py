"""Tests of the vectorised verification protocol against its loop version and hand-made cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pocketnas.errors import PocketNasError
from pocketnas.evaluation._reference import reference_verification
from pocketnas.evaluation.embeddings import VerificationSet, verify
from pocketnas.evaluation.verification import (
    FAR_TARGET,
    ROC_THRESHOLDS,
    VAL_THRESHOLDS,
    VerificationResult,
    embed_images,
    evaluate_verification,
    kfold_assignment,
    pair_distances,
    pair_similarities,
    raw_pixel_embeddings,
)

SCALAR_FIELDS = ("accuracy", "accuracy_std", "val", "val_std", "far", "xnorm")
ARRAY_FIELDS = ("val_thresholds", "best_thresholds", "fold_accuracies", "tpr", "fpr")


def random_pairs(
    seed: int, n_pairs: int, dim: int, noise: float, positive_fraction: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """Return embeddings (2N, dim) whose same-person pairs differ by Gaussian noise."""
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(2 * n_pairs, dim)) * rng.uniform(0.5, 30.0)
    issame = rng.random(n_pairs) < positive_fraction
    first = embeddings[0::2]
    embeddings[1::2][issame] = first[issame] + noise * rng.normal(size=(int(issame.sum()), dim))
    return embeddings, issame


def unit_pair(distance: float) -> np.ndarray:
    """Return two 2-D unit vectors whose squared Euclidean distance is `distance`."""
    cosine = 1.0 - distance / 2.0
    return np.array([[1.0, 0.0], [cosine, np.sqrt(1.0 - cosine * cosine)]])


def pairs_at(distances: list[float]) -> np.ndarray:
    return np.concatenate([unit_pair(distance) for distance in distances])


def assert_results_equal(actual: VerificationResult, expected: VerificationResult) -> None:
    for name in SCALAR_FIELDS:
        assert getattr(actual, name) == pytest.approx(getattr(expected, name), abs=1e-9), name
    for name in ARRAY_FIELDS:
        np.testing.assert_allclose(
            getattr(actual, name), getattr(expected, name), rtol=0, atol=1e-9, err_msg=name
        )


def training_far(embeddings: np.ndarray, issame: np.ndarray, test_fold: int) -> np.ndarray:
    """Return the FAR over VAL_THRESHOLDS of all folds except `test_fold` (of 10)."""
    distances = pair_distances(embeddings)
    train = kfold_assignment(len(issame), 10) != test_fold
    negatives = distances[train & ~issame]
    return np.array([np.mean(negatives < threshold) for threshold in VAL_THRESHOLDS])


@pytest.mark.parametrize(
    ("seed", "n_pairs", "dim", "noise", "positive_fraction"),
    [
        (0, 600, 64, 1.0, 0.5),  # typical: overlapping distance distributions
        (1, 1237, 16, 2.0, 0.5),  # 1237 % 10 = 7 folds get one extra pair
        (2, 333, 128, 0.3, 0.7),
        (3, 50, 8, 5.0, 0.5),  # tiny folds, many accuracy ties
        (4, 3000, 32, 0.8, 0.9),  # few negatives: training FAR moves in coarse, repeated steps
    ],
)
def test_matches_loop_version(
    seed: int, n_pairs: int, dim: int, noise: float, positive_fraction: float
) -> None:
    embeddings, issame = random_pairs(seed, n_pairs, dim, noise, positive_fraction)

    actual = evaluate_verification(embeddings, issame)
    expected = reference_verification(embeddings, issame)

    assert_results_equal(actual, expected)


def test_repeated_far_values_interpolate() -> None:
    embeddings, issame = random_pairs(4, 3000, 32, 0.8, positive_fraction=0.9)
    far = training_far(embeddings, issame, test_fold=0)
    assert far.max() >= FAR_TARGET
    assert len(np.unique(far)) < len(far) / 10

    actual = evaluate_verification(embeddings, issame)

    assert_results_equal(actual, reference_verification(embeddings, issame))
    assert np.all(actual.val_thresholds > 0.0)


def test_far_below_target_gives_threshold_zero() -> None:
    # Different-person pairs are antipodal (distance 4), so no threshold below 4 accepts them.
    rng = np.random.default_rng(5)
    distances = [float(rng.uniform(0.0, 3.0)) for _ in range(100)] + [4.0] * 100
    embeddings = pairs_at(distances)
    issame = np.array([True] * 100 + [False] * 100)
    order = rng.permutation(200)
    embeddings = embeddings.reshape(200, 2, 2)[order].reshape(400, 2)
    issame = issame[order]

    actual = evaluate_verification(embeddings, issame)

    assert_results_equal(actual, reference_verification(embeddings, issame))
    np.testing.assert_array_equal(actual.val_thresholds, np.zeros(10))
    assert actual.val == 0.0
    assert actual.far == 0.0


def test_val_threshold_interpolation_by_hand() -> None:
    # Each of 2 folds: 1500 different-person pairs (two at distances 1.2345 and 2.5005, the rest
    # at 4) and 100 same-person pairs at 0.1. On the training fold FAR is 0 up to threshold 1.234,
    # 1/1500 from 1.235 to 2.500 and 2/1500 from 2.501, so FAR = 1e-3 falls between 2.500 and
    # 2.501, halfway: threshold 2.5 + 0.001 * (0.001 - 1/1500) / (1/1500) = 2.5005.
    fold = [1.2345, 2.5005] + [4.0] * 1498 + [0.1] * 100
    embeddings = pairs_at(fold + fold)
    issame = np.array(([False] * 1500 + [True] * 100) * 2)

    actual = evaluate_verification(embeddings, issame, n_folds=2)

    np.testing.assert_allclose(actual.val_thresholds, [2.5005, 2.5005], rtol=0, atol=1e-9)
    assert actual.val == 1.0
    assert_results_equal(actual, reference_verification(embeddings, issame, n_folds=2))


def test_val_threshold_exact_far_hit() -> None:
    # With 1000 different-person pairs per training fold, FAR is exactly 1e-3 from threshold
    # 1.235 to 2.500, so the last threshold at the target, 2.500, is used without interpolation.
    fold = [1.2345, 2.5005] + [4.0] * 998 + [0.1] * 100
    embeddings = pairs_at(fold + fold)
    issame = np.array(([False] * 1000 + [True] * 100) * 2)

    actual = evaluate_verification(embeddings, issame, n_folds=2)

    np.testing.assert_allclose(
        actual.val_thresholds, [VAL_THRESHOLDS[2500]] * 2, rtol=0, atol=1e-12
    )
    assert_results_equal(actual, reference_verification(embeddings, issame, n_folds=2))


def test_val_threshold_max_far_equals_target() -> None:
    # The training FAR reaches 1e-3 at 1.235 and stays there up to the last threshold, 3.999,
    # which has no next threshold to interpolate with and is used as it is.
    fold = [1.2345] + [4.0] * 999 + [0.1] * 100
    embeddings = pairs_at(fold + fold)
    issame = np.array(([False] * 1000 + [True] * 100) * 2)

    actual = evaluate_verification(embeddings, issame, n_folds=2)

    np.testing.assert_allclose(actual.val_thresholds, [VAL_THRESHOLDS[-1]] * 2, rtol=0, atol=0)
    assert_results_equal(actual, reference_verification(embeddings, issame, n_folds=2))


def test_perfect_separation() -> None:
    # Same-person pairs at distance 0.3, different-person pairs spread over 1.0 to 3.9.
    rng = np.random.default_rng(11)
    distances = [d for far in rng.uniform(1.0, 3.9, 150) for d in (0.3, float(far))]
    embeddings = pairs_at(distances)
    issame = np.array([True, False] * 150)

    result = evaluate_verification(embeddings, issame)

    assert result.accuracy == 1.0
    assert result.accuracy_std == 0.0
    # Thresholds from 0.31 up to the nearest different-person pair all separate the pairs, and
    # ties go to the first.
    np.testing.assert_array_equal(result.best_thresholds, np.full(10, ROC_THRESHOLDS[31]))
    assert result.val == 1.0
    assert_results_equal(result, reference_verification(embeddings, issame))


def test_single_fold_and_zero_rows() -> None:
    embeddings, issame = random_pairs(6, 200, 12, 1.0)
    embeddings[7] = 0.0
    embeddings[100] = 0.0

    for n_folds in (1, 2, 7):
        assert_results_equal(
            evaluate_verification(embeddings, issame, n_folds=n_folds),
            reference_verification(embeddings, issame, n_folds=n_folds),
        )


def test_accepts_integer_labels() -> None:
    embeddings, issame = random_pairs(7, 100, 8, 1.0)

    from_int = evaluate_verification(embeddings, issame.astype(np.int64))

    assert_results_equal(from_int, evaluate_verification(embeddings, issame))


def test_xnorm_uses_unnormalised_rows() -> None:
    embeddings = np.array([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [0.0, 2.0]])

    result = evaluate_verification(embeddings, np.array([True, False]), n_folds=2)

    assert result.xnorm == pytest.approx((5.0 + 1.0 + 10.0 + 2.0) / 4)


def test_result_arrays_are_read_only() -> None:
    embeddings, issame = random_pairs(8, 40, 4, 1.0)
    result = evaluate_verification(embeddings, issame)

    with pytest.raises(ValueError):
        result.tpr[0] = 1.0
    assert len(result.tpr) == len(ROC_THRESHOLDS)
    assert len(result.to_dict()["fold_accuracies"]) == 10


def test_kfold_assignment_sizes() -> None:
    folds = kfold_assignment(23, 10)

    np.testing.assert_array_equal(np.bincount(folds), [3, 3, 3, 2, 2, 2, 2, 2, 2, 2])
    assert np.all(np.diff(folds) >= 0)


def test_pair_similarities_are_cosines() -> None:
    embeddings = np.array([[2.0, 0.0], [0.0, 5.0], [1.0, 1.0], [3.0, 3.0]])

    np.testing.assert_allclose(pair_similarities(embeddings), [0.0, 1.0], atol=1e-12)
    np.testing.assert_allclose(pair_distances(embeddings), [2.0, 0.0], atol=1e-12)


@pytest.mark.parametrize(
    ("embeddings", "issame", "n_folds", "message"),
    [
        (np.zeros((21, 4)), np.zeros(10, bool), 10, "odd number of rows"),
        (np.ones((20, 4)), np.zeros(9, bool), 10, "issame has 9 entries but"),
        (np.ones(20), np.zeros(10, bool), 10, "must be a 2-D array"),
        (np.ones((20, 4)), np.zeros((10, 1), bool), 10, "issame must be a 1-D array"),
        (np.ones((20, 4)), np.full(10, 2), 10, "booleans or the integers 0 and 1"),
        (np.full((20, 4), np.nan), np.zeros(10, bool), 10, "NaN or infinite"),
        (np.ones((16, 4)), np.zeros(8, bool), 10, "10 folds need at least 10 pairs"),
        (np.ones((20, 4)), np.zeros(10, bool), 0, "n_folds must be a positive integer"),
    ],
)
def test_invalid_input_rejected(
    embeddings: np.ndarray, issame: np.ndarray, n_folds: int, message: str
) -> None:
    with pytest.raises(PocketNasError, match=message):
        evaluate_verification(embeddings, issame, n_folds=n_folds)


class _MeanColumnNet(nn.Module):
    """Embeds an image as the mean of each pixel column of channel 0, so flips are visible."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0].mean(dim=1)


def test_embed_images_adds_flipped_embedding() -> None:
    rng = np.random.default_rng(9)
    images = rng.integers(0, 256, size=(5, 4, 6, 3), dtype=np.uint8)
    model = _MeanColumnNet()
    model.train()

    embeddings = embed_images(model, images, batch_size=2)
    plain = embed_images(model, images, batch_size=3, flip=False)

    scaled = (images[..., 0].astype(np.float64) / 255.0 - 0.5) / 0.5
    expected_plain = scaled.mean(axis=1)
    np.testing.assert_allclose(plain, expected_plain, atol=1e-6)
    np.testing.assert_allclose(embeddings, expected_plain + expected_plain[:, ::-1], atol=1e-6)
    assert embeddings.dtype == np.float32
    assert model.training


def test_embed_images_rejects_bad_input() -> None:
    model = _MeanColumnNet()

    with pytest.raises(PocketNasError, match="dtype uint8"):
        embed_images(model, np.zeros((2, 4, 4, 3), dtype=np.float32))
    with pytest.raises(PocketNasError, match=r"\(N, H, W, 3\)"):
        embed_images(model, np.zeros((2, 3, 4, 4), dtype=np.uint8))
    with pytest.raises(PocketNasError, match="must return embeddings"):
        embed_images(nn.Identity(), np.zeros((2, 4, 4, 3), dtype=np.uint8))


def test_raw_pixel_embeddings_are_centred() -> None:
    rng = np.random.default_rng(10)
    images = rng.integers(0, 256, size=(6, 5, 4, 3), dtype=np.uint8)

    embeddings = raw_pixel_embeddings(images)

    assert embeddings.shape == (6, 60)
    np.testing.assert_allclose(embeddings.mean(axis=1), 0.0, atol=1e-4)
    np.testing.assert_allclose(
        embeddings[2] + images[2].mean(), images[2].reshape(-1).astype(np.float32), atol=1e-3
    )


def test_verify_reports_insightface_xnorm() -> None:
    """XNorm averages the norms of the plain and flipped embeddings, each on its own."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 3, 5))
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(40, 4, 4, 3), dtype=np.uint8)
    issame = np.arange(20) % 2 == 0
    verification_set = VerificationSet("random", Path("random.bin"), images, issame)

    result = verify(model, verification_set, batch_size=7)

    plain = embed_images(model, images, flip=False)
    flipped = embed_images(model, images[:, :, ::-1].copy(), flip=False)
    norms = np.concatenate([np.linalg.norm(plain, axis=1), np.linalg.norm(flipped, axis=1)])
    assert result.xnorm == pytest.approx(float(norms.mean()), rel=1e-6)
    summed = evaluate_verification(embed_images(model, images, batch_size=7), issame)
    assert result.accuracy == summed.accuracy
    assert result.val == summed.val
    assert result.xnorm < summed.xnorm  # the norm of a sum is at most the sum of the norms
