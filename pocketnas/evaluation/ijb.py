"""IJB-B and IJB-C 1:1 template verification in the layout of insightface's IJB release.

A folder `IJBB` (or `IJBC`, with `ijbc_` file prefixes) contains:

* `loose_crop/`: the face images, loosely cropped around the detected face.
* `meta/ijbb_name_5pts_score.txt`: per image, its file name, ten landmark numbers
  (x1 y1 ... x5 y5: left eye, right eye, nose, left and right mouth corner) and the face
  detector's score.
* `meta/ijbb_face_tid_mid.txt`: per image, in the same order, its file name, template id and
  media id (the photo or video the image comes from).
* `meta/ijbb_template_pair_label.txt`: per template pair, the two template ids and 1 for the
  same person, 0 otherwise.

The protocol follows insightface's `evaluation/IJB/eval_ijbc.py`:

1. Each image is aligned to the 112x112 ArcFace crop with its five landmarks. The network embeds
   the crop and its horizontal flip, and the two embeddings are summed.
2. The image embedding keeps its norm, which carries image quality, and is multiplied by the
   detector score. This is insightface's default test mode, and both steps can be switched off.
3. Within a template, the embeddings of the images of one media are averaged, the media
   embeddings are summed, and the sum is L2-normalised.
4. The score of a template pair is the cosine of its two template embeddings. The ROC is the one
   of scikit-learn's `roc_curve` (collinear points dropped), and TAR at a FAR is the TAR of the
   ROC point whose FAR is nearest, taking the highest TAR among equally near points.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pocketnas.data.align import ALIGNED_SIZE, ARCFACE_TEMPLATE_112, align_face
from pocketnas.data.images import decode_image
from pocketnas.errors import DataError, PocketNasError

logger = logging.getLogger(__name__)

CROP_SIZE = ALIGNED_SIZE[1]
"""Side of the square aligned crop in pixels."""

FAR_TARGETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
"""False accept rates at which the true accept rate is reported."""


@dataclass(frozen=True)
class IJBMeta:
    """The meta files of one IJB-B or IJB-C folder.

    Attributes:
        name: "IJBB" or "IJBC".
        root: The folder that contains `loose_crop/` and `meta/`.
        image_names: File name of each image under `loose_crop/`, shape (N,).
        landmarks: Five (x, y) landmarks per image, shape (N, 5, 2).
        detector_scores: Face detector score of each image, shape (N,).
        templates: Template id of each image, shape (N,).
        medias: Media id of each image, shape (N,).
        pairs: Template ids of each verification pair, shape (P, 2).
        labels: 1 where a pair shows one person, else 0, shape (P,).
    """

    name: str
    root: Path
    image_names: np.ndarray
    landmarks: np.ndarray
    detector_scores: np.ndarray
    templates: np.ndarray
    medias: np.ndarray
    pairs: np.ndarray
    labels: np.ndarray

    @property
    def crop_folder(self) -> Path:
        return self.root / "loose_crop"


def _meta_path(root: Path, prefix: str, suffix: str) -> Path:
    return root / "meta" / f"{prefix}_{suffix}"


def detect_ijb_name(root: str | os.PathLike[str]) -> str:
    """Return "IJBB" or "IJBC" from the meta file names in `root/meta`.

    Raises:
        DataError: `root` is not a folder, or its `meta/` contains neither set's template file.
    """
    folder = Path(root)
    if not folder.is_dir():
        raise DataError(folder, "IJB folder not found")
    for name in ("IJBB", "IJBC"):
        if _meta_path(folder, name.lower(), "face_tid_mid.txt").is_file():
            return name
    expected = _meta_path(folder, "ijbb", "face_tid_mid.txt")
    raise DataError(
        expected,
        "IJB meta file not found (nor its ijbc_ counterpart); pass the IJBB or IJBC folder of "
        "insightface's IJB release, which contains loose_crop/ and meta/",
    )


def _read_rows(path: Path, columns: int) -> list[list[str]]:
    """Read the whitespace-separated rows of a meta file, each with exactly `columns` fields."""
    if not path.is_file():
        raise DataError(path, "IJB meta file not found")
    rows = []
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != columns:
                raise DataError(path, f"line {number} has {len(fields)} fields; expected {columns}")
            rows.append(fields)
    if not rows:
        raise DataError(path, "IJB meta file is empty")
    return rows


def _numbers(path: Path, rows: list[list[str]], start: int, dtype: type) -> np.ndarray:
    """Convert the fields from column `start` on to an array, naming the first bad line."""
    try:
        values = np.array([row[start:] for row in rows], dtype=np.float64)
    except ValueError:
        for number, row in enumerate(rows, start=1):
            for field in row[start:]:
                try:
                    float(field)
                except ValueError:
                    raise DataError(path, f"row {number}: {field!r} is not a number") from None
        raise
    if not np.all(np.isfinite(values)):
        raise DataError(path, "contains NaN or infinite numbers")
    if dtype is np.int64:
        if not np.all(values == np.round(values)):
            raise DataError(path, "template, media and label ids must be whole numbers")
        return values.astype(np.int64)
    return values


def load_ijb_meta(root: str | os.PathLike[str]) -> IJBMeta:
    """Read the landmark, template/media and pair files of an IJB-B or IJB-C folder.

    Raises:
        DataError: a meta file is missing, empty or malformed, the landmark and template files
            disagree on the images, a label is not 0 or 1, or a pair names an unknown template.
    """
    folder = Path(root)
    name = detect_ijb_name(folder)
    prefix = name.lower()

    landmark_path = _meta_path(folder, prefix, "name_5pts_score.txt")
    face_path = _meta_path(folder, prefix, "face_tid_mid.txt")
    pair_path = _meta_path(folder, prefix, "template_pair_label.txt")
    landmark_rows = _read_rows(landmark_path, 12)
    face_rows = _read_rows(face_path, 3)
    pair_rows = _read_rows(pair_path, 3)

    if len(landmark_rows) != len(face_rows):
        raise DataError(
            face_path,
            f"lists {len(face_rows)} images but {landmark_path.name} lists {len(landmark_rows)}",
        )
    for number, (landmark_row, face_row) in enumerate(zip(landmark_rows, face_rows, strict=True)):
        if landmark_row[0] != face_row[0]:
            raise DataError(
                face_path,
                f"row {number + 1} names {face_row[0]!r} but {landmark_path.name} names "
                f"{landmark_row[0]!r}; both files must list the images in one order",
            )

    landmark_values = _numbers(landmark_path, landmark_rows, 1, np.float64)
    ids = _numbers(face_path, face_rows, 1, np.int64)
    pair_values = _numbers(pair_path, pair_rows, 0, np.int64)

    labels = pair_values[:, 2]
    if not np.all(np.isin(labels, (0, 1))):
        raise DataError(pair_path, "labels (third column) must be 0 or 1")
    pairs = pair_values[:, :2]
    unknown = np.setdiff1d(pairs.ravel(), ids[:, 0])
    if len(unknown):
        raise DataError(
            pair_path,
            f"{len(unknown)} template ids have no image in {face_path.name}, e.g. {unknown[0]}",
        )

    return IJBMeta(
        name=name,
        root=folder,
        image_names=np.array([row[0] for row in face_rows]),
        landmarks=landmark_values[:, :10].reshape(-1, 5, 2),
        detector_scores=landmark_values[:, 10],
        templates=ids[:, 0],
        medias=ids[:, 1],
        pairs=pairs,
        labels=labels,
    )


class AlignedCrops(Dataset[torch.Tensor]):
    """Aligned 112x112 crops of the IJB images as CHW uint8 tensors."""

    def __init__(self, meta: IJBMeta, size: int = CROP_SIZE) -> None:
        self.meta = meta
        self.size = size
        # A crop side other than 112 scales the template points by size / 112.
        self.template = ARCFACE_TEMPLATE_112 * (size / CROP_SIZE)

    def __len__(self) -> int:
        return len(self.meta.image_names)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.meta.crop_folder / str(self.meta.image_names[index])
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise DataError(path, "IJB image not found") from None
        except OSError as exc:
            raise DataError(path, f"cannot read the image ({exc.strerror})") from None
        rgb = decode_image(data, path=path)
        try:
            crop = align_face(
                rgb, self.meta.landmarks[index], self.template, (self.size, self.size)
            )
        except ValueError as exc:
            raise DataError(path, f"cannot align the face ({exc})") from None
        return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)


def embed_ijb_images(
    model: nn.Module,
    meta: IJBMeta,
    batch_size: int = 64,
    workers: int = 0,
    device: str | torch.device = "cpu",
    show_progress: bool = False,
    flip: bool = True,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Embed every aligned image and, when `flip` is true, its horizontal flip.

    The crop is scaled to the network's input side (`model.image_size`, else 112) and its pixels
    to [-1, 1], as in training.

    Returns:
        The embeddings of the crops and of their flips (None without `flip`), float32 (N, D).
    """
    size = int(getattr(model, "image_size", CROP_SIZE))
    loader = DataLoader(AlignedCrops(meta), batch_size=batch_size, num_workers=workers)
    was_training = model.training
    model.eval()
    plain, flipped = [], []
    try:
        with torch.inference_mode():
            for batch in tqdm(loader, desc=f"{meta.name} images", disable=not show_progress):
                images = batch.to(device).float()
                if size != CROP_SIZE:
                    images = nn.functional.interpolate(
                        images, size=(size, size), mode="bilinear", antialias=True
                    )
                images = (images / 255.0 - 0.5) / 0.5
                plain.append(model(images).float().cpu().numpy())
                if flip:
                    mirrored = torch.flip(images, dims=[3])
                    flipped.append(model(mirrored).float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(plain), np.concatenate(flipped) if flip else None


def image_features(
    plain: np.ndarray,
    flipped: np.ndarray | None,
    detector_scores: np.ndarray,
    normalise: bool = False,
    detector_weighting: bool = True,
) -> np.ndarray:
    """Combine the per-image embeddings as insightface's IJB test modes do.

    Args:
        plain: Embeddings of the aligned crops, (N, D).
        flipped: Embeddings of their flips, added when given (test mode F1).
        detector_scores: Detector score per image, (N,).
        normalise: L2-normalise each image first, which discards the norm (N0 instead of N1).
        detector_weighting: Multiply each image by its detector score (insightface's mode D1).
    """
    features = np.asarray(plain, dtype=np.float64)
    if flipped is not None:
        features = features + np.asarray(flipped, dtype=np.float64)
    if normalise:
        norms = np.linalg.norm(features, axis=1, keepdims=True)
        features = features / np.where(norms == 0.0, 1.0, norms)
    if detector_weighting:
        features = features * np.asarray(detector_scores, dtype=np.float64)[:, None]
    return features


def template_features(
    features: np.ndarray, templates: np.ndarray, medias: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Pool image features into L2-normalised template features.

    Images of one template and one media are averaged, then the media averages of a template are
    summed, so a video with many frames counts as much as a single photo.

    Returns:
        The sorted unique template ids (T,) and their unit features (T, D).
    """
    features = np.asarray(features, dtype=np.float64)
    template_ids, template_index = np.unique(templates, return_inverse=True)
    # One group per (template, media) combination.
    _, group_index = np.unique(
        np.stack([template_index, np.asarray(medias)], axis=1), axis=0, return_inverse=True
    )
    group_index = group_index.ravel()
    n_groups = int(group_index.max()) + 1
    group_sums = np.zeros((n_groups, features.shape[1]))
    np.add.at(group_sums, group_index, features)
    group_sizes = np.bincount(group_index, minlength=n_groups)
    group_means = group_sums / group_sizes[:, None]

    group_template = np.zeros(n_groups, dtype=np.int64)
    group_template[group_index] = template_index
    pooled = np.zeros((len(template_ids), features.shape[1]))
    np.add.at(pooled, group_template, group_means)

    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return template_ids, pooled / np.where(norms == 0.0, 1.0, norms)


def pair_scores(template_ids: np.ndarray, features: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Return the cosine score of each template pair (rows of `pairs` are two template ids)."""
    pairs = np.asarray(pairs)
    first = np.searchsorted(template_ids, pairs[:, 0])
    second = np.searchsorted(template_ids, pairs[:, 1])
    found = (first < len(template_ids)) & (second < len(template_ids))
    found &= template_ids[np.minimum(first, len(template_ids) - 1)] == pairs[:, 0]
    found &= template_ids[np.minimum(second, len(template_ids) - 1)] == pairs[:, 1]
    if not np.all(found):
        missing = pairs[~found][0]
        raise PocketNasError(f"template pair {missing.tolist()} names a template with no images")
    return np.sum(features[first] * features[second], axis=1)


def roc_curve(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compute the ROC of scores where higher means "same person", like scikit-learn's.

    The points are the distinct score values from the highest down, preceded by (0, 0) at an
    infinite threshold. Points collinear with their neighbours are dropped, as scikit-learn's
    `roc_curve` does by default (`drop_intermediate=True`), because insightface's TAR at FAR
    picks the nearest remaining point.

    Returns:
        FAR (false positive rate), TAR (true positive rate) and thresholds, each (K,).

    Raises:
        PocketNasError: the labels do not contain both classes.
    """
    labels = np.asarray(labels).astype(np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise PocketNasError("the ROC needs both genuine and impostor pairs")

    order = np.argsort(-scores, kind="mergesort")
    sorted_scores = scores[order]
    sorted_labels = labels[order]
    # The last index of each run of equal scores is one point of the curve.
    last_of_run = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(scores) - 1]
    true_accepts = np.cumsum(sorted_labels)[last_of_run]
    false_accepts = last_of_run + 1 - true_accepts
    thresholds = sorted_scores[last_of_run]

    if len(true_accepts) > 2:
        bends = np.logical_or(np.diff(false_accepts, 2), np.diff(true_accepts, 2))
        keep = np.flatnonzero(np.r_[True, bends, True])
        true_accepts, false_accepts = true_accepts[keep], false_accepts[keep]
        thresholds = thresholds[keep]

    far = np.r_[0, false_accepts] / negatives
    tar = np.r_[0, true_accepts] / positives
    return far, tar, np.r_[np.inf, thresholds]


def tar_at_far(
    far: np.ndarray, tar: np.ndarray, targets: Sequence[float] = FAR_TARGETS
) -> dict[float, float]:
    """Return the TAR of the ROC point whose FAR is nearest to each target.

    Among points equally near a target, the one with the highest TAR is taken, which is what
    insightface gets by searching the reversed ROC for the first minimum.
    """
    far_reversed = np.asarray(far)[::-1]
    tar_reversed = np.asarray(tar)[::-1]
    return {
        float(target): float(tar_reversed[np.argmin(np.abs(far_reversed - target))])
        for target in targets
    }


@dataclass(frozen=True, eq=False)
class IJBResult:
    """1:1 verification metrics of one IJB set.

    Attributes:
        name: "IJBB" or "IJBC".
        tar_at_far: TAR at each of `FAR_TARGETS`, in 0..1.
        far: FAR of each ROC point.
        tar: TAR of each ROC point.
        pairs: Number of template pairs.
        images: Number of images.
        templates: Number of templates.
    """

    name: str
    tar_at_far: dict[float, float]
    far: np.ndarray
    tar: np.ndarray
    pairs: int
    images: int
    templates: int

    def to_dict(self) -> dict[str, Any]:
        """Return the metrics as JSON-ready types; TAR keys are FARs written like "1e-04"."""
        return {
            "name": self.name,
            "pairs": self.pairs,
            "images": self.images,
            "templates": self.templates,
            "tar_at_far": {f"{far:.0e}": tar for far, tar in self.tar_at_far.items()},
        }


def score_ijb(
    meta: IJBMeta,
    plain: np.ndarray,
    flipped: np.ndarray | None,
    normalise: bool = False,
    detector_weighting: bool = True,
) -> IJBResult:
    """Compute the template pair scores, ROC and TAR at FAR from per-image embeddings."""
    features = image_features(plain, flipped, meta.detector_scores, normalise, detector_weighting)
    template_ids, templates = template_features(features, meta.templates, meta.medias)
    scores = pair_scores(template_ids, templates, meta.pairs)
    far, tar, _ = roc_curve(meta.labels, scores)
    return IJBResult(
        name=meta.name,
        tar_at_far=tar_at_far(far, tar),
        far=far,
        tar=tar,
        pairs=len(meta.pairs),
        images=len(meta.image_names),
        templates=len(template_ids),
    )


def evaluate_ijb(
    model: nn.Module,
    root: str | os.PathLike[str],
    batch_size: int = 64,
    workers: int = 0,
    flip: bool = True,
    normalise: bool = False,
    detector_weighting: bool = True,
    device: str | torch.device = "cpu",
    show_progress: bool = False,
) -> IJBResult:
    """Run IJB-B or IJB-C 1:1 verification of `model` on the folder `root`.

    The defaults are insightface's test mode N1D1F1: image norms kept, detector-score
    weighting, flipped crops added.

    Raises:
        DataError: a meta file or image is missing or damaged.
    """
    meta = load_ijb_meta(root)
    logger.info(
        "%s: %d images, %d template pairs", meta.name, len(meta.image_names), len(meta.pairs)
    )
    plain, flipped = embed_ijb_images(
        model, meta, batch_size, workers, device, show_progress, flip=flip
    )
    return score_ijb(meta, plain, flipped, normalise, detector_weighting)
