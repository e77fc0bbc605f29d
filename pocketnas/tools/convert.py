"""Conversions between image folders, insightface RecordIO sets and verification `.bin` files.

* `folder_to_record_set`: ROOT/<identity>/<image> to `train.rec`, `train.idx`, `property`, with
  optional five-point alignment to the 112x112 ArcFace crop.
* `record_set_to_folder`: the reverse, one folder per class id.
* `make_verification_bin`: a `.bin` from an image folder and an LFW-style `pairs.txt`.

Every conversion writes into a temporary path beside the output and renames it into place only
after the last image, so an error leaves no half-written output behind.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

from pocketnas.data.align import ALIGNED_SIZE, align_face
from pocketnas.data.image_folder import ImageFolderSet
from pocketnas.data.images import decode_image, encode_jpeg
from pocketnas.data.recordio import (
    PROPERTY_NAME,
    FaceRecordSet,
    write_face_record_set,
    write_property,
)
from pocketnas.data.verification_bin import write_verification_bin
from pocketnas.errors import DataError, PocketNasError
from pocketnas.fileio import umask_mode

logger = logging.getLogger(__name__)

LANDMARK_COUNT = 5
IDENTITIES_NAME = "identities.txt"
"""File beside `train.rec` that lists the identity folder name of each class id, one per line."""

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


@dataclass(frozen=True)
class ConversionSummary:
    """Counts and paths of a finished conversion."""

    source: Path
    destination: Path
    images: int
    identities: int
    image_size: tuple[int, int]


def _read_text(path: Path, kind: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(path, f"{kind} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read the {kind} ({exc})") from exc


# --- landmarks -----------------------------------------------------------------------------------


def read_landmarks(path: str | os.PathLike[str], root: str | os.PathLike[str]) -> dict[Path, Any]:
    """Read a landmark file: one line per image, its path and 10 numbers x1 y1 ... x5 y5.

    The points are left eye, right eye, nose tip, left and right mouth corner, in pixels. A
    relative image path is taken relative to `root`. The path may contain spaces because the
    last 10 fields of a line are the numbers. Blank lines and lines starting with `#` are
    skipped.

    Returns:
        Resolved image path -> (5, 2) float64 array.

    Raises:
        DataError: the file is missing, a line does not hold a path and 10 finite numbers, or an
            image is listed twice.
    """
    source = Path(path)
    text = _read_text(source, "landmark file")
    base = Path(root)
    landmarks: dict[Path, Any] = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.rsplit(maxsplit=2 * LANDMARK_COUNT)
        try:
            if len(fields) != 2 * LANDMARK_COUNT + 1:
                raise ValueError
            points = np.array([float(value) for value in fields[1:]], dtype=np.float64)
            if not np.isfinite(points).all():
                raise ValueError
        except ValueError:
            raise DataError(
                source,
                f"line {line_number} is not an image path followed by 10 numbers "
                f"(x1 y1 ... x5 y5): {stripped[:80]!r}",
            ) from None
        image = Path(fields[0])
        resolved = (image if image.is_absolute() else base / image).resolve()
        if resolved in landmarks:
            raise DataError(source, f"line {line_number} repeats the image {fields[0]}")
        landmarks[resolved] = points.reshape(LANDMARK_COUNT, 2)
    if not landmarks:
        raise DataError(source, "the landmark file lists no images")
    return landmarks


# --- output folders and worker processes ---------------------------------------------------------


def _check_new_output(destination: Path) -> None:
    if destination.exists() and not (destination.is_dir() and not any(destination.iterdir())):
        raise PocketNasError(
            f"{destination}: output already exists; give a new path or an empty folder"
        )
    parent = destination.parent if str(destination.parent) else Path(".")
    if not parent.is_dir():
        raise PocketNasError(f"{destination}: parent folder {parent} does not exist")


@contextlib.contextmanager
def _staged_folder(destination: Path) -> Iterator[Path]:
    """Yield a temporary folder that is renamed to `destination` when the block succeeds."""
    _check_new_output(destination)
    parent = destination.parent if str(destination.parent) else Path(".")
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".partial", dir=parent))
    os.chmod(staging, umask_mode(0o777))
    try:
        yield staging
        # rename(2) replaces an empty folder atomically, so an existing empty output is fine.
        os.replace(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _map_in_order(
    function: Callable[[_Item], _Result],
    items: Sequence[_Item],
    workers: int,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
) -> Iterator[_Result]:
    """Yield `function(item)` for each item in order, in `workers` processes when more than one.

    `initializer(*initargs)` runs once in each worker, or here when there are no workers. An
    exception in a worker is raised again here with the same type and message.
    """
    if workers <= 1 or len(items) < 2:
        if initializer is not None:
            initializer(*initargs)
        yield from map(function, items)
        return
    # Fork needs no `if __name__ == "__main__"` guard in the caller's script. The workers run
    # only numpy and Pillow, never torch, so threads torch started in the parent are not needed.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    chunk = max(1, min(64, len(items) // (workers * 4)))
    with context.Pool(workers, initializer=initializer, initargs=initargs) as pool:
        yield from pool.imap(function, items, chunksize=chunk)


def _progress(items: Iterable[_Result], total: int, label: str, show: bool) -> Iterable[_Result]:
    return tqdm(items, total=total, desc=label, unit="img", disable=not show)


# --- image folder -> RecordIO --------------------------------------------------------------------


@dataclass(frozen=True)
class _FolderImage:
    path: Path
    landmarks: Any  # (5, 2) array, or None to store the file as it is


def _prepare_image(task: _FolderImage) -> tuple[bytes, tuple[int, int]]:
    """Return the payload to store for one image file and its decoded (height, width)."""
    try:
        data = task.path.read_bytes()
    except OSError as exc:
        raise DataError(task.path, f"cannot read the image ({exc.strerror})") from exc
    rgb = decode_image(data, path=task.path, key="the file")
    if task.landmarks is None:
        # Stored unchanged like insightface's face2rec2.py, so no JPEG generation is lost.
        return data, (int(rgb.shape[0]), int(rgb.shape[1]))
    try:
        aligned = align_face(rgb, task.landmarks)
    except ValueError as exc:
        raise DataError(task.path, f"cannot align the face ({exc})") from exc
    return encode_jpeg(aligned, quality=95), ALIGNED_SIZE


def _folder_tasks(
    image_set: ImageFolderSet, landmarks_path: str | os.PathLike[str] | None
) -> list[_FolderImage]:
    if landmarks_path is None:
        return [_FolderImage(path, None) for path in image_set.paths]
    landmarks = read_landmarks(landmarks_path, image_set.root)
    tasks = []
    for path in image_set.paths:
        points = landmarks.get(path.resolve())
        if points is None:
            raise DataError(
                landmarks_path,
                f"no landmarks for {path}; every image of the folder needs a line",
            )
        tasks.append(_FolderImage(path, points))
    return tasks


def folder_to_record_set(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    workers: int = 1,
    landmarks: str | os.PathLike[str] | None = None,
    show_progress: bool = False,
) -> ConversionSummary:
    """Pack an image folder (one subfolder per identity) into `train.rec`, `train.idx`, `property`.

    The set is written in the layout of insightface's `RecBuilder` (header record, images with
    scalar labels, identity records), which every insightface and arcface_torch reader accepts.
    Image files are decoded to check them and stored unchanged. With `landmarks`, each face is
    aligned to the 112x112 ArcFace crop and stored as a quality-95 JPEG instead. `identities.txt`
    beside the set records the folder name of each class id.

    Args:
        source: folder with one subfolder per identity.
        destination: output folder; must not exist yet or be empty.
        workers: processes that read, decode (and align) images.
        landmarks: optional landmark file (see `read_landmarks`).
        show_progress: show a progress bar.

    Raises:
        DataError: an image is unreadable or has a different size from the first one (without
            landmarks), or the landmark file is invalid or misses an image.
        PocketNasError: the destination exists and is not an empty folder.
    """
    if workers < 1:
        raise PocketNasError(f"--workers must be at least 1, got {workers}")
    target = Path(destination)
    _check_new_output(target)
    image_set = ImageFolderSet(source)
    tasks = _folder_tasks(image_set, landmarks)
    expected: dict[str, tuple[int, int]] = {}

    def samples() -> Iterator[tuple[int, bytes]]:
        results = _map_in_order(_prepare_image, tasks, workers)
        progress = _progress(results, len(tasks), "pack", show_progress)
        for index, (payload, size) in enumerate(progress):
            first = expected.setdefault("size", size)
            if size != first:
                raise DataError(
                    image_set.paths[index],
                    f"image is {size[0]}x{size[1]} pixels, but {image_set.paths[0]} is "
                    f"{first[0]}x{first[1]}; a set needs one image size (align and crop faces "
                    "with --landmarks)",
                )
            yield int(image_set.labels[index]), payload

    with _staged_folder(target) as staging:
        # The size is known only after the first image, so write_face_record_set writes a
        # placeholder property that is replaced below, inside the staging folder.
        count = write_face_record_set(staging, samples(), image_set.num_classes, (1, 1))
        size = expected["size"]
        write_property(staging / PROPERTY_NAME, image_set.num_classes, size[0], size[1])
        (staging / IDENTITIES_NAME).write_text(
            "".join(f"{name}\n" for name in image_set.identities), encoding="utf-8"
        )
    logger.info(
        "packed %d images of %d identities from %s into %s",
        count,
        image_set.num_classes,
        source,
        target,
    )
    return ConversionSummary(Path(source), target, count, image_set.num_classes, size)


# --- RecordIO -> image folder --------------------------------------------------------------------

_worker_set: FaceRecordSet | None = None


def _use_worker_set(record_set: FaceRecordSet) -> None:
    # The reader opens its own file handle in each process, so the inherited set is safe to use.
    global _worker_set
    _worker_set = record_set


def _image_suffix(payload: bytes) -> str:
    if payload.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if payload.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if payload.startswith(b"BM"):
        return ".bmp"
    if payload[:4] == b"RIFF" and payload[8:12] == b"WEBP":
        return ".webp"
    return ".img"


def _export_record(index: int) -> tuple[bytes, str]:
    """Read and check one image record; return its payload and file suffix."""
    assert _worker_set is not None, "_use_worker_set runs first in every process"
    payload = _worker_set.read_image_bytes(index)
    key = _worker_set.image_keys[index]
    rgb = decode_image(payload, path=_worker_set.rec_path, key=key)
    _worker_set.check_image_size(key, rgb)
    return payload, _image_suffix(payload)


def record_set_to_folder(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    workers: int = 1,
    show_progress: bool = False,
) -> ConversionSummary:
    """Unpack a RecordIO set into one folder per class id, the payloads stored unchanged.

    Class folders are named by zero-padded class id, image files by zero-padded record key, so
    that sorting by name keeps both orders and `folder_to_record_set` packs the folder back into
    the same records. Classes without images get an empty folder.

    Raises:
        DataError: the set cannot be opened, or a payload is not a decodable image or differs
            in size from `property`.
        PocketNasError: the destination exists and is not an empty folder.
    """
    if workers < 1:
        raise PocketNasError(f"--workers must be at least 1, got {workers}")
    target = Path(destination)
    _check_new_output(target)
    record_set = FaceRecordSet(source)
    class_width = len(str(max(record_set.num_classes - 1, 0)))
    key_width = len(str(max(record_set.image_keys)))

    with _staged_folder(target) as staging:
        for class_id in range(record_set.num_classes):
            (staging / f"{class_id:0{class_width}d}").mkdir()
        indices = list(range(len(record_set)))
        results = _map_in_order(
            _export_record, indices, workers, initializer=_use_worker_set, initargs=(record_set,)
        )
        for index, (payload, suffix) in enumerate(
            _progress(results, len(indices), "unpack", show_progress)
        ):
            class_folder = f"{int(record_set.labels[index]):0{class_width}d}"
            name = f"{record_set.image_keys[index]:0{key_width}d}{suffix}"
            (staging / class_folder / name).write_bytes(payload)
    logger.info("unpacked %d images of %s into %s", len(record_set), source, target)
    return ConversionSummary(
        Path(source), target, len(record_set), record_set.num_classes, record_set.image_size
    )


# --- LFW pairs.txt -> verification .bin ----------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One line of an LFW-style pairs file: two images, by identity name and 1-based number."""

    first_name: str
    first_number: int
    second_name: str
    second_number: int
    line: int

    @property
    def same(self) -> bool:
        """True when both images show the same identity."""
        return self.first_name == self.second_name


def read_lfw_pairs(path: str | os.PathLike[str]) -> list[Pair]:
    """Read an LFW-style `pairs.txt`.

    The first line is either "FOLDS PAIRS" (pairs.txt: 10 folds of 300 same and 300 different
    pairs) or "PAIRS" (pairsDevTrain.txt, pairsDevTest.txt: one set of PAIRS same and PAIRS
    different pairs). Each further line is `name n1 n2` for two images of one identity or
    `name1 n1 name2 n2` for images of two identities, separated by tabs or spaces.

    Raises:
        DataError: the header is invalid, a line has another form, or the number of pairs
            differs from what the header announces.
    """
    source = Path(path)
    lines = _read_text(source, "pairs file").splitlines()

    header = lines[0].split() if lines else []
    try:
        numbers = [int(value) for value in header]
        if len(numbers) not in (1, 2) or min(numbers) < 1:
            raise ValueError
    except ValueError:
        shown = lines[0][:60] if lines else ""
        raise DataError(
            source,
            f"line 1 must be 'FOLDS PAIRS' or 'PAIRS' with positive integers, found {shown!r}",
        ) from None
    folds, per_kind = (numbers[0], numbers[1]) if len(numbers) == 2 else (1, numbers[0])

    pairs: list[Pair] = []
    for line_number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) == 3:
                pair = Pair(fields[0], int(fields[1]), fields[0], int(fields[2]), line_number)
            elif len(fields) == 4:
                pair = Pair(fields[0], int(fields[1]), fields[2], int(fields[3]), line_number)
            else:
                raise ValueError
            if min(pair.first_number, pair.second_number) < 1:
                raise ValueError
        except ValueError:
            raise DataError(
                source,
                f"line {line_number} is neither 'name n1 n2' nor 'name1 n1 name2 n2' with "
                f"image numbers from 1: {line.strip()[:80]!r}",
            ) from None
        pairs.append(pair)

    expected = 2 * folds * per_kind
    if len(pairs) != expected:
        raise DataError(
            source,
            f"line 1 announces {folds} fold(s) of {per_kind} same and {per_kind} different "
            f"pairs ({expected} lines), but the file has {len(pairs)}",
        )
    return pairs


def lfw_image_path(folder: Path, name: str, number: int) -> Path:
    """Return LFW's path of image `number` of `name`: FOLDER/name/name_0001.jpg."""
    return folder / name / f"{name}_{number:04d}.jpg"


def make_verification_bin(
    folder: str | os.PathLike[str],
    pairs_path: str | os.PathLike[str],
    output: str | os.PathLike[str],
    landmarks: str | os.PathLike[str] | None = None,
    show_progress: bool = False,
) -> int:
    """Write a verification `.bin` (like insightface's lfw.bin) from images and a pairs file.

    Image files are decoded to check them and stored unchanged, unless `landmarks` is given:
    then each face is aligned to the 112x112 ArcFace crop and stored as a quality-95 JPEG. An
    image used by several pairs is read once.

    Returns:
        The number of pairs written.

    Raises:
        DataError: the pairs file is invalid, an image is missing or unreadable, or the landmark
            file misses an image.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(root, "folder not found")
    pairs = read_lfw_pairs(pairs_path)
    points = read_landmarks(landmarks, root) if landmarks is not None else None

    cache: dict[Path, bytes] = {}

    def load(name: str, number: int, line: int) -> bytes:
        path = lfw_image_path(root, name, number)
        if path in cache:
            return cache[path]
        if not path.is_file():
            raise DataError(path, f"image not found (line {line} of {Path(pairs_path).name})")
        task_points = None
        if landmarks is not None and points is not None:
            task_points = points.get(path.resolve())
            if task_points is None:
                raise DataError(landmarks, f"no landmarks for {path}")
        payload, _ = _prepare_image(_FolderImage(path, task_points))
        cache[path] = payload
        return payload

    images: list[bytes] = []
    for pair in _progress(pairs, len(pairs), "pairs", show_progress):
        images.append(load(pair.first_name, pair.first_number, pair.line))
        images.append(load(pair.second_name, pair.second_number, pair.line))
    write_verification_bin(output, images, [pair.same for pair in pairs])
    logger.info("wrote %d pairs of %s to %s", len(pairs), root, output)
    return len(pairs)


def is_record_set(path: Path) -> bool:
    """Return True when `path` is a `.rec` file or a folder holding `train.rec`."""
    return (path.is_file() and path.suffix == ".rec") or (path / "train.rec").is_file()


def convert(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    workers: int = 1,
    landmarks: str | os.PathLike[str] | None = None,
    show_progress: bool = False,
) -> ConversionSummary:
    """Convert a RecordIO set to an image folder or an image folder to a RecordIO set.

    The direction follows from `source`: a folder with `train.rec` (or a `.rec` file) is
    unpacked, any other folder is packed.

    Raises:
        DataError: the source is missing or the conversion fails (see the two directions).
        PocketNasError: landmarks were given for a RecordIO source, or the destination exists.
    """
    origin = Path(source)
    if not origin.exists():
        raise DataError(origin, "not found")
    if is_record_set(origin):
        if landmarks is not None:
            raise PocketNasError(
                f"{origin}: --landmarks applies to image folders; a RecordIO set is unpacked as is"
            )
        folder = origin.parent if origin.is_file() else origin
        return record_set_to_folder(folder, destination, workers, show_progress)
    return folder_to_record_set(origin, destination, workers, landmarks, show_progress)
