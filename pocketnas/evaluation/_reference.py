"""Loop version of the verification protocol, kept to check and time the vectorised one.

It follows the structure of insightface's `eval/verification.py`: a Python loop over the folds and,
inside it, one numpy pass over the pairs for every threshold. It is slow (about a second for 6,000
pairs on a 2-core AMD EPYC) but each step can be read against the protocol.
`tests/evaluation/test_verification.py` compares `evaluate_verification` with it, and
`benchmarks/bench_verification.py` times both. Inputs are not validated here.
"""

from __future__ import annotations

import numpy as np

from pocketnas.evaluation.verification import (
    FAR_TARGET,
    ROC_THRESHOLDS,
    VAL_THRESHOLDS,
    VerificationResult,
)


def reference_verification(
    embeddings: np.ndarray, issame: np.ndarray, n_folds: int = 10
) -> VerificationResult:
    """Evaluate a pair list with plain loops, with the same contract as `evaluate_verification`."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    issame = np.asarray(issame).astype(bool)

    norms = np.sqrt(np.sum(embeddings * embeddings, axis=1))
    xnorm = float(np.mean(norms))
    norms[norms == 0.0] = 1.0
    unit = embeddings / norms[:, None]
    difference = unit[0::2] - unit[1::2]
    dist = np.sum(difference * difference, axis=1)

    splits = _kfold_splits(len(issame), n_folds)

    n_roc = len(ROC_THRESHOLDS)
    tprs = np.zeros((n_folds, n_roc))
    fprs = np.zeros((n_folds, n_roc))
    accuracies = np.zeros(n_folds)
    best_thresholds = np.zeros(n_folds)
    for fold, (train, test) in enumerate(splits):
        train_accuracy = np.zeros(n_roc)
        for index, threshold in enumerate(ROC_THRESHOLDS):
            _, _, train_accuracy[index] = _accuracy(threshold, dist[train], issame[train])
        best = 0
        for index in range(n_roc):
            if train_accuracy[index] > train_accuracy[best]:
                best = index
        best_thresholds[fold] = ROC_THRESHOLDS[best]
        for index, threshold in enumerate(ROC_THRESHOLDS):
            tprs[fold, index], fprs[fold, index], _ = _accuracy(threshold, dist[test], issame[test])
        _, _, accuracies[fold] = _accuracy(ROC_THRESHOLDS[best], dist[test], issame[test])

    vals = np.zeros(n_folds)
    fars = np.zeros(n_folds)
    val_thresholds = np.zeros(n_folds)
    for fold, (train, test) in enumerate(splits):
        far_train = np.zeros(len(VAL_THRESHOLDS))
        for index, threshold in enumerate(VAL_THRESHOLDS):
            _, far_train[index] = _val_far(threshold, dist[train], issame[train])
        threshold = _interpolate_threshold(far_train) if far_train.max() >= FAR_TARGET else 0.0
        val_thresholds[fold] = threshold
        vals[fold], fars[fold] = _val_far(threshold, dist[test], issame[test])

    return VerificationResult(
        accuracy=float(np.mean(accuracies)),
        accuracy_std=float(np.std(accuracies)),
        val=float(np.mean(vals)),
        val_std=float(np.std(vals)),
        far=float(np.mean(fars)),
        val_thresholds=val_thresholds,
        best_thresholds=best_thresholds,
        fold_accuracies=accuracies,
        xnorm=xnorm,
        tpr=np.mean(tprs, axis=0),
        fpr=np.mean(fprs, axis=0),
    )


def _kfold_splits(n_items: int, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return the (train, test) index arrays of unshuffled K-fold splitting.

    With one fold, insightface trains and tests on all items.
    """
    indices = np.arange(n_items)
    if n_folds == 1:
        return [(indices, indices)]
    splits = []
    start = 0
    for fold in range(n_folds):
        size = n_items // n_folds + (1 if fold < n_items % n_folds else 0)
        test = indices[start : start + size]
        train = np.concatenate([indices[:start], indices[start + size :]])
        splits.append((train, test))
        start += size
    return splits


def _ratio(count: int, total: int) -> float:
    return 0.0 if total == 0 else float(count) / float(total)


def _accuracy(threshold: float, dist: np.ndarray, issame: np.ndarray) -> tuple[float, float, float]:
    """Return TPR, FPR and accuracy of predicting "same" for distances below `threshold`."""
    predict_same = dist < threshold
    tp = int(np.sum(predict_same & issame))
    fp = int(np.sum(predict_same & ~issame))
    tn = int(np.sum(~predict_same & ~issame))
    fn = int(np.sum(~predict_same & issame))
    return _ratio(tp, tp + fn), _ratio(fp, fp + tn), float(tp + tn) / dist.size


def _val_far(threshold: float, dist: np.ndarray, issame: np.ndarray) -> tuple[float, float]:
    """Return the true accept rate and the false accept rate at `threshold`."""
    predict_same = dist < threshold
    true_accepts = int(np.sum(predict_same & issame))
    false_accepts = int(np.sum(predict_same & ~issame))
    return _ratio(true_accepts, int(np.sum(issame))), _ratio(false_accepts, int(np.sum(~issame)))


def _interpolate_threshold(far_train: np.ndarray) -> float:
    """Interpolate linearly between the last threshold with FAR <= target and the next one.

    This is what SciPy before 1.9.3 returned for interp1d(far_train, thresholds, kind="slinear")
    when far_train repeats values (see `_val_thresholds` in `verification.py`).
    """
    last = 0
    for index in range(len(far_train)):
        if far_train[index] <= FAR_TARGET:
            last = index
    if last == len(far_train) - 1:
        return float(VAL_THRESHOLDS[last])
    far_low, far_high = far_train[last], far_train[last + 1]
    low, high = VAL_THRESHOLDS[last], VAL_THRESHOLDS[last + 1]
    return float(low + (high - low) * (FAR_TARGET - far_low) / (far_high - far_low))
