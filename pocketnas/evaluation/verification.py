"""Face-verification accuracy with the insightface protocol, vectorised with numpy.

The protocol is the one of insightface's `recognition/arcface_torch/eval/verification.py`, which
face-recognition papers report for LFW, CFP-FP, AgeDB-30 and the other pair lists:

* Rows 2i and 2i+1 of the embedding matrix form pair i. The caller sums the embeddings of each
  image and of its horizontally flipped copy, and this module L2-normalises the sums.
* The score of a pair is the squared Euclidean distance of its normalised embeddings (0 to 4), and
  a pair is predicted "same" when the distance is strictly below the threshold.
* The pairs are split into 10 contiguous folds without shuffling, like scikit-learn's `KFold`.
* Accuracy: for each fold, the threshold in 0, 0.01, ..., 3.99 with the best accuracy on the other
  folds (the first one on ties) is applied to the fold itself.
* VAL at FAR = 1e-3: for each fold, a threshold is interpolated from the FAR of the other folds
  over 0, 0.001, ..., 3.999, and VAL (true accept rate) and FAR are measured on the fold itself.

insightface loops over folds and thresholds in Python, which makes about 48,000 numpy passes over
subsets of the pairs for 10 folds. Here every pair is placed once on the sorted threshold grid with
`np.searchsorted`, and the counts of accepted pairs for all thresholds and folds come from one
`np.bincount` and a cumulative sum. `pocketnas.evaluation._reference` keeps a loop version of the
same protocol for the tests, and `benchmarks/bench_verification.py` times the two.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pocketnas.errors import PocketNasError

logger = logging.getLogger(__name__)

ROC_THRESHOLDS = np.arange(0, 4, 0.01)
"""Distance thresholds searched for the accuracy, and the points of the ROC curve."""

VAL_THRESHOLDS = np.arange(0, 4, 0.001)
"""Distance thresholds over which the training FAR is interpolated for VAL."""

FAR_TARGET = 1e-3
"""False accept rate at which VAL (the true accept rate) is reported."""

# Values per float64 temporary (2 MiB) while normalising embeddings chunk by chunk. Small chunks
# stay in CPU cache, which made 6,000 pairs of 512-d embeddings about twice as fast as one pass on
# an AMD EPYC, and they bound the float64 copy of wide float32 inputs such as raw pixels.
_CHUNK_VALUES = 1 << 18


@dataclass(frozen=True, eq=False)
class VerificationResult:
    """Verification metrics of one pair list, with read-only arrays.

    Attributes:
        accuracy: Mean over folds of the test-fold accuracy, in 0..1.
        accuracy_std: Population standard deviation of the per-fold accuracies.
        val: Mean over folds of the true accept rate at the FAR = 1e-3 threshold.
        val_std: Population standard deviation of the per-fold VAL values.
        far: Mean over folds of the false accept rate measured at that threshold.
        val_thresholds: Distance threshold of each fold for VAL, shape (n_folds,); 0.0 where the
            training FAR never reaches 1e-3.
        best_thresholds: Distance threshold chosen for each fold's accuracy, shape (n_folds,).
        fold_accuracies: Test-fold accuracy of each fold, shape (n_folds,).
        xnorm: Mean L2 norm of the given (flip-summed) embeddings before normalisation.
            insightface's XNorm averages the norms of the plain and flipped embeddings
            separately instead, and `pocketnas.evaluation.embeddings.verify` reports that.
        tpr: True positive rate at each of `ROC_THRESHOLDS`, averaged over the test folds.
        fpr: False positive rate at each of `ROC_THRESHOLDS`, averaged over the test folds.
    """

    accuracy: float
    accuracy_std: float
    val: float
    val_std: float
    far: float
    val_thresholds: np.ndarray
    best_thresholds: np.ndarray
    fold_accuracies: np.ndarray
    xnorm: float
    tpr: np.ndarray
    fpr: np.ndarray

    def __post_init__(self) -> None:
        for name in ("val_thresholds", "best_thresholds", "fold_accuracies", "tpr", "fpr"):
            array = np.array(getattr(self, name), dtype=np.float64)
            array.setflags(write=False)
            object.__setattr__(self, name, array)

    def to_dict(self) -> dict[str, Any]:
        """Return the scalar metrics and per-fold values as JSON-ready Python types."""
        return {
            "accuracy": self.accuracy,
            "accuracy_std": self.accuracy_std,
            "val": self.val,
            "val_std": self.val_std,
            "far": self.far,
            "far_target": FAR_TARGET,
            "xnorm": self.xnorm,
            "val_thresholds": self.val_thresholds.tolist(),
            "best_thresholds": self.best_thresholds.tolist(),
            "fold_accuracies": self.fold_accuracies.tolist(),
        }


def evaluate_verification(
    embeddings: np.ndarray, issame: np.ndarray, n_folds: int = 10
) -> VerificationResult:
    """Compute accuracy, VAL at FAR = 1e-3 and the ROC curve of a pair list.

    Args:
        embeddings: Array of shape (2N, D), already summed over each image and its flipped copy.
            Rows 2i and 2i+1 are the two images of pair i. Rows are L2-normalised here, and a row
            of zeros stays zero.
        issame: N booleans (or 0/1 integers), true where pair i shows the same person.
        n_folds: Number of cross-validation folds. With 1, the threshold is chosen and measured
            on all pairs, as insightface does.

    Returns:
        The metrics, see `VerificationResult`.

    Raises:
        PocketNasError: the shapes do not form N pairs with N labels, the embeddings hold NaN or
            infinite values, or there are fewer pairs than folds.
    """
    embeddings = np.asarray(embeddings)
    labels = _validate_pairs(embeddings, issame, n_folds)
    distances, xnorm = _normalised_pair_distances(embeddings)

    fold_of_pair = kfold_assignment(len(labels), n_folds)
    roc_test, roc_train = _accept_counts(distances, labels, fold_of_pair, n_folds, ROC_THRESHOLDS)
    fold_accuracies, best_thresholds, tpr, fpr = _accuracy_and_roc(roc_test, roc_train)

    val_test, val_train = _accept_counts(distances, labels, fold_of_pair, n_folds, VAL_THRESHOLDS)
    del val_test  # VAL is measured at an interpolated threshold, not at a grid point.
    fold_val_thresholds = _val_thresholds(val_train)
    val, far = _val_far_at(distances, labels, fold_of_pair, n_folds, fold_val_thresholds)

    return VerificationResult(
        accuracy=float(np.mean(fold_accuracies)),
        accuracy_std=float(np.std(fold_accuracies)),
        val=float(np.mean(val)),
        val_std=float(np.std(val)),
        far=float(np.mean(far)),
        val_thresholds=fold_val_thresholds,
        best_thresholds=best_thresholds,
        fold_accuracies=fold_accuracies,
        xnorm=xnorm,
        tpr=tpr,
        fpr=fpr,
    )


def pair_distances(embeddings: np.ndarray) -> np.ndarray:
    """Compute the squared Euclidean distance (0 to 4) of each pair of L2-normalised rows.

    Raises:
        PocketNasError: `embeddings` is not a 2-D array with an even number of finite rows.
    """
    embeddings = np.asarray(embeddings)
    _validate_embeddings(embeddings)
    distances, _ = _normalised_pair_distances(embeddings)
    return distances


def pair_similarities(embeddings: np.ndarray) -> np.ndarray:
    """Compute the cosine similarity (-1 to 1) of each pair of rows 2i and 2i+1.

    For unit vectors the squared distance d and the cosine s satisfy d = 2 - 2s, so ranking pairs
    by similarity gives the same decisions as the distance thresholds of the protocol.
    """
    return 1.0 - pair_distances(embeddings) / 2.0


def kfold_assignment(n_items: int, n_folds: int) -> np.ndarray:
    """Return the fold index of each item for contiguous, unshuffled K-fold splitting.

    The first `n_items % n_folds` folds get one extra item, as in scikit-learn's `KFold`.
    """
    sizes = np.full(n_folds, n_items // n_folds, dtype=np.int64)
    sizes[: n_items % n_folds] += 1
    return np.repeat(np.arange(n_folds), sizes)


def embed_images(
    model: nn.Module,
    images: np.ndarray,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    flip: bool = True,
) -> np.ndarray:
    """Compute the embeddings of face crops, summed with those of their mirror images.

    Pixels are scaled to [-1, 1] with (x / 255 - 0.5) / 0.5, the normalisation that ArcFace
    training uses. The model runs in eval mode under `torch.inference_mode`, and its previous
    training mode is restored afterwards.

    Args:
        model: Network mapping a float batch (B, 3, H, W) to embeddings (B, D). It must already
            be on `device`.
        images: Array (N, H, W, 3) of uint8 RGB face crops.
        batch_size: Images per forward pass.
        device: Device that the batches are moved to.
        flip: Add the embedding of each horizontally flipped image, as the verification protocol
            expects. With False, the plain embeddings are returned.

    Returns:
        Float32 array (N, D) of embeddings, not normalised.

    Raises:
        PocketNasError: `images` is not a non-empty NHWC uint8 RGB array, `batch_size` is not
            positive, or the model does not return a (B, D) tensor.
    """
    _validate_images(images)
    if batch_size < 1:
        raise PocketNasError(f"batch_size must be at least 1, got {batch_size}")

    was_training = model.training
    model.eval()
    outputs = []
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
                batch = batch.to(device).permute(0, 3, 1, 2).float()
                batch = (batch / 255.0 - 0.5) / 0.5
                embedding = _forward_embedding(model, batch)
                if flip:
                    embedding = embedding + _forward_embedding(model, torch.flip(batch, dims=[3]))
                outputs.append(embedding.float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(outputs, axis=0)


def raw_pixel_embeddings(images: np.ndarray) -> np.ndarray:
    """Return each image's flattened pixels minus its own mean, a "no learning" baseline.

    Evaluated with `evaluate_verification`, this gives the accuracy that comparing pixels alone
    reaches, which any trained network should clearly beat. Subtracting the mean removes overall
    brightness, so the cosine of two rows is their pixel correlation.

    Returns:
        Float32 array (N, H * W * C).

    Raises:
        PocketNasError: `images` is not a non-empty NHWC uint8 RGB array.
    """
    _validate_images(images)
    flat = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    return flat - flat.mean(axis=1, keepdims=True)


def _validate_embeddings(embeddings: np.ndarray) -> None:
    if embeddings.ndim != 2:
        raise PocketNasError(
            f"embeddings must be a 2-D array (2N, D), got shape {tuple(embeddings.shape)}"
        )
    if embeddings.shape[0] % 2 != 0:
        raise PocketNasError(
            f"embeddings have an odd number of rows ({embeddings.shape[0]}); "
            "rows 2i and 2i+1 must form pair i"
        )
    if embeddings.shape[1] == 0:
        raise PocketNasError("embeddings have no columns")
    if not np.issubdtype(embeddings.dtype, np.number) or np.issubdtype(
        embeddings.dtype, np.complexfloating
    ):
        raise PocketNasError(f"embeddings must be real numbers, got dtype {embeddings.dtype}")
    if not np.all(np.isfinite(embeddings)):
        raise PocketNasError("embeddings contain NaN or infinite values")


def _validate_pairs(embeddings: np.ndarray, issame: np.ndarray, n_folds: int) -> np.ndarray:
    """Check the inputs of `evaluate_verification` and return the labels as int64 0/1."""
    _validate_embeddings(embeddings)
    n_pairs = embeddings.shape[0] // 2
    labels = np.asarray(issame)
    if labels.ndim != 1:
        raise PocketNasError(f"issame must be a 1-D array, got shape {tuple(labels.shape)}")
    if len(labels) != n_pairs:
        raise PocketNasError(
            f"issame has {len(labels)} entries but the embeddings form {n_pairs} pairs"
        )
    if labels.dtype != np.bool_ and not (
        np.issubdtype(labels.dtype, np.integer) and np.isin(labels, (0, 1)).all()
    ):
        raise PocketNasError("issame must contain booleans or the integers 0 and 1")
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 1:
        raise PocketNasError(f"n_folds must be a positive integer, got {n_folds!r}")
    if n_pairs < n_folds:
        raise PocketNasError(f"{n_folds} folds need at least {n_folds} pairs, got {n_pairs}")
    return labels.astype(np.int64)


def _validate_images(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[3] != 3:
        shape = getattr(images, "shape", None)
        raise PocketNasError(
            f"images must be a uint8 array (N, H, W, 3) of RGB pixels, got shape {shape}"
        )
    if images.dtype != np.uint8:
        raise PocketNasError(f"images must have dtype uint8, got {images.dtype}")
    if len(images) == 0:
        raise PocketNasError("images is empty")


def _forward_embedding(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    output = model(batch)
    if not isinstance(output, torch.Tensor) or output.ndim != 2 or len(output) != len(batch):
        shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
        raise PocketNasError(
            f"the model must return embeddings of shape ({len(batch)}, D), got {shape}"
        )
    return output


def _normalised_pair_distances(embeddings: np.ndarray) -> tuple[np.ndarray, float]:
    """Return the pair distances of the L2-normalised rows and the mean norm before that.

    Rows are processed in chunks so that a wide float32 input is never copied whole to float64.
    Every row is reduced on its own, so the chunking does not change a single bit of the result.
    """
    n_pairs = embeddings.shape[0] // 2
    chunk_pairs = max(1, _CHUNK_VALUES // (2 * embeddings.shape[1]))
    distances = np.empty(n_pairs, dtype=np.float64)
    norm_sum = 0.0
    for start in range(0, n_pairs, chunk_pairs):
        stop = min(start + chunk_pairs, n_pairs)
        rows = np.asarray(embeddings[2 * start : 2 * stop], dtype=np.float64)
        norms = np.sqrt(np.sum(rows * rows, axis=1))
        norm_sum += float(np.sum(norms))
        # A row of zeros is divided by 1 and stays zero, as in sklearn.preprocessing.normalize.
        unit = rows / np.where(norms == 0.0, 1.0, norms)[:, None]
        difference = unit[0::2] - unit[1::2]
        distances[start:stop] = np.sum(difference * difference, axis=1)
    return distances, norm_sum / embeddings.shape[0]


@dataclass(frozen=True)
class _FoldCounts:
    """Pair counts per fold, where `tp` and `fp` have shape (n_folds, n_thresholds)."""

    tp: np.ndarray  # same-person pairs with distance < threshold
    fp: np.ndarray  # different-person pairs with distance < threshold
    positives: np.ndarray  # same-person pairs per fold, shape (n_folds,)
    negatives: np.ndarray  # different-person pairs per fold, shape (n_folds,)


def _accept_counts(
    distances: np.ndarray,
    labels: np.ndarray,
    fold_of_pair: np.ndarray,
    n_folds: int,
    thresholds: np.ndarray,
) -> tuple[_FoldCounts, _FoldCounts]:
    """Count the accepted pairs of each fold (test) and of the other folds (train) per threshold."""
    n_thresholds = len(thresholds)
    # A pair is accepted (distance < threshold) exactly at the thresholds with index >= first.
    first = np.searchsorted(thresholds, distances, side="right")
    key = (fold_of_pair * 2 + labels) * (n_thresholds + 1) + first
    histogram = np.bincount(key, minlength=n_folds * 2 * (n_thresholds + 1))
    accepted = np.cumsum(histogram.reshape(n_folds, 2, n_thresholds + 1), axis=2)
    test = _FoldCounts(
        tp=accepted[:, 1, :n_thresholds],
        fp=accepted[:, 0, :n_thresholds],
        positives=accepted[:, 1, n_thresholds],
        negatives=accepted[:, 0, n_thresholds],
    )
    if n_folds == 1:
        return test, test  # insightface trains and tests on all pairs when there is one fold.
    train = _FoldCounts(
        tp=test.tp.sum(axis=0) - test.tp,
        fp=test.fp.sum(axis=0) - test.fp,
        positives=test.positives.sum() - test.positives,
        negatives=test.negatives.sum() - test.negatives,
    )
    return test, train


def _rate(count: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Divide count by total, giving 0 where total is 0 (insightface's convention for TPR/FPR)."""
    count = np.asarray(count, dtype=np.float64)
    total = np.broadcast_to(np.asarray(total, dtype=np.float64), count.shape)
    return np.divide(count, total, out=np.zeros_like(count), where=total > 0)


def _accuracy_and_roc(
    test: _FoldCounts, train: _FoldCounts
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return per-fold accuracies and chosen thresholds, and the fold-averaged TPR and FPR."""
    n_folds = len(test.positives)
    train_correct = train.tp + (train.negatives[:, None] - train.fp)
    train_size = (train.positives + train.negatives)[:, None]
    best = np.argmax(train_correct / train_size, axis=1)  # first maximum on ties

    folds = np.arange(n_folds)
    test_correct = test.tp[folds, best] + test.negatives - test.fp[folds, best]
    fold_accuracies = test_correct / (test.positives + test.negatives)

    tpr = np.mean(_rate(test.tp, test.positives[:, None]), axis=0)
    fpr = np.mean(_rate(test.fp, test.negatives[:, None]), axis=0)
    return fold_accuracies, ROC_THRESHOLDS[best], tpr, fpr


def _val_thresholds(train: _FoldCounts) -> np.ndarray:
    """Interpolate, per fold, the distance threshold at which the training FAR reaches 1e-3.

    insightface calls scipy.interpolate.interp1d(far_train, thresholds, kind="slinear"). Because
    FAR is a step function of the threshold, far_train repeats values, and SciPy 1.9.3 and later
    reject such input with "Expect x to not have duplicates". Older SciPy built a degree-1 spline
    on the repeated points. Evaluated at the target, that spline interpolates linearly between the
    last threshold whose FAR is at most the target and the next threshold. This function
    reproduces that result without SciPy, and on 300 random FAR curves it matched SciPy 1.9.2 to
    within 1e-16. When the last threshold itself is that point (its FAR equals the target
    exactly), its threshold is used. A fold whose maximum training FAR stays below the target
    gets threshold 0.0, as in insightface, which accepts no pair.
    """
    far_train = _rate(train.fp, train.negatives[:, None])
    n_thresholds = far_train.shape[1]
    # FAR never decreases with the threshold, so the count of FARs <= target locates the last one.
    last = np.count_nonzero(far_train <= FAR_TARGET, axis=1) - 1
    after = np.minimum(last + 1, n_thresholds - 1)
    folds = np.arange(len(far_train))

    far_low, far_high = far_train[folds, last], far_train[folds, after]
    low, high = VAL_THRESHOLDS[last], VAL_THRESHOLDS[after]
    has_next = after > last
    span = np.where(has_next, far_high - far_low, 1.0)
    interpolated = np.where(has_next, low + (high - low) * (FAR_TARGET - far_low) / span, low)

    reaches_target = far_train.max(axis=1) >= FAR_TARGET
    return np.where(reaches_target, interpolated, 0.0)


def _val_far_at(
    distances: np.ndarray,
    labels: np.ndarray,
    fold_of_pair: np.ndarray,
    n_folds: int,
    fold_thresholds: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Measure VAL and FAR of each test fold at that fold's own threshold."""
    accepted = distances < fold_thresholds[fold_of_pair]
    positives = np.bincount(fold_of_pair, weights=labels, minlength=n_folds)
    negatives = np.bincount(fold_of_pair, weights=1 - labels, minlength=n_folds)
    if np.any(positives == 0) or np.any(negatives == 0):
        # insightface raises ZeroDivisionError here, but pocketnas reports 0 for that fold.
        logger.warning(
            "some verification folds have no same-person or no different-person pairs; "
            "their VAL or FAR is reported as 0"
        )
    true_accepts = np.bincount(fold_of_pair, weights=accepted & (labels == 1), minlength=n_folds)
    false_accepts = np.bincount(fold_of_pair, weights=accepted & (labels == 0), minlength=n_folds)
    return _rate(true_accepts, positives), _rate(false_accepts, negatives)
