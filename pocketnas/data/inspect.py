"""Summaries of face data on disk, for checking a download before training on it.

`inspect_path` accepts a training-set folder (`train.rec`, `train.idx`, `property`), a `.rec` or
`.idx` file in such a folder, or a verification `.bin` file, and returns a JSON-serialisable dict.
Problems that make the data unusable (missing files, a damaged index, labels out of range) raise
DataError. Damage confined to single records (a truncated or undecodable payload) is counted and
the first case is reported, so one bad image does not hide the rest of the summary.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from pocketnas.data.images import decode_image
from pocketnas.data.recordio import FaceRecordSet, unpack_record
from pocketnas.data.verification_bin import load_verification_bin
from pocketnas.errors import DataError

logger = logging.getLogger(__name__)

_PROGRESS_EVERY = 100_000  # records between progress log lines on large sets


def inspect_path(path: str | os.PathLike[str], check_records: bool = True) -> dict[str, Any]:
    """Summarise a training-set folder, a `.rec`/`.idx` file or a verification `.bin` file.

    Args:
        path: the folder or file.
        check_records: read every record and decode every image to find damaged ones. This takes
            minutes on sets with millions of images; without it only the IRHeaders are read.

    Raises:
        DataError: the path is missing or empty, is not one of the accepted kinds, or the data
            cannot be opened (see FaceRecordSet and load_verification_bin).
    """
    target = Path(path)
    if not target.exists():
        raise DataError(target, "not found")
    if target.is_dir():
        return _inspect_folder(target, check_records)

    suffix = target.suffix.lower()
    if suffix == ".bin":
        return _inspect_bin(target, check_records)
    if suffix in (".rec", ".idx"):
        return _inspect_record_set(target.parent, target.stem, check_records)
    raise DataError(
        target,
        "unsupported file; expected a folder with train.rec, train.idx and property, a .rec or "
        ".idx file, or a verification .bin file",
    )


def _inspect_folder(folder: Path, check_records: bool) -> dict[str, Any]:
    if not any(folder.iterdir()):
        raise DataError(folder, "folder is empty; expected train.rec, train.idx and property")
    rec_files = sorted(folder.glob("*.rec"))
    names = [rec.stem for rec in rec_files]
    if "train" in names or (folder / "train.idx").exists():
        name = "train"
    elif len(names) == 1:
        name = names[0]
    elif not names:
        raise DataError(
            folder,
            "no .rec file found; expected train.rec, train.idx and property (pass a .bin file "
            "directly to inspect verification pairs)",
        )
    else:
        listed = ", ".join(rec.name for rec in rec_files)
        raise DataError(folder, f"several .rec files ({listed}); pass the one to inspect")
    return _inspect_record_set(folder, name, check_records)


def _inspect_record_set(folder: Path, name: str, check_records: bool) -> dict[str, Any]:
    record_set = FaceRecordSet(folder, name=name)
    reader = record_set.reader
    counts = np.bincount(record_set.labels, minlength=record_set.num_classes)

    summary: dict[str, Any] = {
        "kind": "recordio",
        "path": str(folder),
        "rec": str(record_set.rec_path),
        "idx": str(record_set.idx_path),
        "property": str(record_set.property_path),
        "rec_size": reader.rec_size,
        "records": len(reader.keys),
        "identities": record_set.num_classes,
        "images": len(record_set),
        "layout": record_set.layout,
        "label_form": record_set.label_form,
        "image_size_property": list(record_set.image_size),
        "image_size_decoded": None,
        "images_per_identity": {"min": int(counts.min()), "max": int(counts.max())},
        "identities_without_images": int((counts == 0).sum()),
        "records_checked": check_records,
        "damaged_records": 0,
        "first_damaged_record": None,
    }

    if not check_records:
        try:
            first_image = record_set.read_image(0)
            record_set.check_image_size(record_set.image_keys[0], first_image)
        except DataError as exc:
            summary["damaged_records"] = 1
            summary["first_damaged_record"] = _damage_entry(record_set, 0, exc)
        else:
            summary["image_size_decoded"] = [int(first_image.shape[0]), int(first_image.shape[1])]
        return summary

    image_keys = set(record_set.image_keys)
    damaged = 0
    first_damage: dict[str, Any] | None = None
    for position, key in enumerate(reader.keys, start=1):
        try:
            _, payload = unpack_record(reader.read(key), reader.rec_path, key)
            if key in image_keys:
                rgb = decode_image(payload, path=reader.rec_path, key=key)
                if summary["image_size_decoded"] is None:
                    summary["image_size_decoded"] = [int(rgb.shape[0]), int(rgb.shape[1])]
                record_set.check_image_size(key, rgb)
        except DataError as exc:
            damaged += 1
            if first_damage is None:
                first_damage = {"key": key, "offset": reader.offset(key), "problem": exc.problem}
                logger.debug("damaged record in %s: %s", reader.rec_path, exc.problem)
        if position % _PROGRESS_EVERY == 0:
            logger.info("checked %d of %d records of %s", position, len(reader.keys), folder)
    summary["damaged_records"] = damaged
    summary["first_damaged_record"] = first_damage
    return summary


def _damage_entry(record_set: FaceRecordSet, index: int, exc: DataError) -> dict[str, Any]:
    key = record_set.image_keys[index]
    return {"key": key, "offset": record_set.reader.offset(key), "problem": exc.problem}


def _inspect_bin(path: Path, check_records: bool) -> dict[str, Any]:
    images, issame = load_verification_bin(path)
    same = int(issame.sum())
    summary: dict[str, Any] = {
        "kind": "verification_bin",
        "path": str(path),
        "pairs": len(issame),
        "images": len(images),
        "same_pairs": same,
        "different_pairs": len(issame) - same,
        "image_size": None,
        "image_sizes": [],
        "images_checked": check_records,
        "damaged_images": 0,
        "first_damaged_image": None,
    }

    sizes: set[tuple[int, int]] = set()
    damaged = 0
    first_damage: dict[str, Any] | None = None
    to_check = images if check_records else images[:1]
    for index, data in enumerate(to_check):
        try:
            rgb = decode_image(data, path=path, key=f"image {index}")
        except DataError as exc:
            damaged += 1
            if first_damage is None:
                first_damage = {"index": index, "pair": index // 2, "problem": exc.problem}
                logger.warning("damaged image in %s: %s", path, exc.problem)
            continue
        size = (int(rgb.shape[0]), int(rgb.shape[1]))
        if summary["image_size"] is None:
            summary["image_size"] = list(size)
        sizes.add(size)
    summary["image_sizes"] = [list(size) for size in sorted(sizes)]
    summary["damaged_images"] = damaged
    summary["first_damaged_image"] = first_damage
    return summary
