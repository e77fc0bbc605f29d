"""torch datasets over face training sets (RecordIO or image folders) and verification pairs.

Training samples are preprocessed as arcface_torch's `MXFaceDataset` does: RGB decode, random
horizontal flip (p = 0.5) when training, then `x / 127.5 - 1` per channel, which equals
torchvision's ToTensor followed by Normalize(mean 0.5, std 0.5).

A DataLoader fetches a batch through the datasets' `__getitems__`, which writes every image
straight into one NCHW batch tensor. With `collate_fn=collate_faces` that tensor becomes the
batch as it is; torch's default collate also works but copies it once more. `FaceRecordDataset`
can decode a batch's images on several threads, because simplejpeg releases the GIL while it
decodes (checked with simplejpeg 1.9.0).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from pocketnas.data.image_folder import ImageFolderSet
from pocketnas.data.images import decode_image, resize_image
from pocketnas.data.recordio import FaceRecordSet
from pocketnas.data.samplers import BatchPlan
from pocketnas.data.verification_bin import load_verification_bin
from pocketnas.errors import DataError

logger = logging.getLogger(__name__)


def normalize_images(rgb: np.ndarray) -> torch.Tensor:
    """Turn HWC (or NHWC) uint8 RGB into CHW (or NCHW) float32 in [-1, 1] as `x / 127.5 - 1`."""
    tensor = torch.from_numpy(np.ascontiguousarray(rgb))
    tensor = tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    return tensor.float().div_(127.5).sub_(1.0)


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """Turn uint8 CHW (or NCHW) RGB tensors into float32 in [-1, 1] as `x / 127.5 - 1`.

    Use it on batches of a dataset created with `normalize=False`, for example on the GPU.
    """
    return images.float().div_(127.5).sub_(1.0)


def preprocess_face(rgb: np.ndarray, flip: bool, normalize: bool = True) -> torch.Tensor:
    """Turn an HWC uint8 RGB image into a CHW tensor, flipped horizontally when `flip` is set.

    With `normalize` the result is float32 in [-1, 1], otherwise the uint8 values. The CHW tensor
    is a permuted view of HWC memory (channels-last strides), which saves a copy. `torch.stack`
    turns such tensors into an ordinary contiguous NCHW batch.
    """
    tensor = torch.from_numpy(rgb)
    if flip:
        tensor = tensor.flip(1)
    tensor = tensor.permute(2, 0, 1)
    return normalize_batch(tensor) if normalize else tensor


class FaceSamples(list[tuple[torch.Tensor, torch.Tensor]]):
    """(image, label) samples of one batch that are rows of the ready `images` and `labels`.

    `collate_faces` returns the two batch tensors as they are. Any other collate function is given
    an ordinary list of samples.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__(zip(images, labels, strict=True))
        self.images = images
        self.labels = labels


def collate_faces(samples: list[Any]) -> Any:
    """Collate a batch without copying when it comes from the face datasets' `__getitems__`.

    Returns [images, labels] for FaceSamples, as torch's `default_collate` would after stacking,
    and `default_collate(samples)` for anything else.
    """
    if isinstance(samples, FaceSamples):
        return [samples.images, samples.labels]
    return default_collate(samples)


def _new_batch(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Allocate an uninitialised batch, in shared memory inside a DataLoader worker.

    A worker sends tensors to the main process through shared memory. Allocating the batch there
    directly, as torch's default collate does, saves copying it into shared memory when it is sent.
    NOTE: `UntypedStorage._new_shared` is private torch API (the call default_collate makes in
    torch 2.13), so a torch upgrade may need this changed.
    """
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


class _FaceImageDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Item and batch reading shared by the face datasets: decode, check the size, flip, normalise.

    The flip draws from torch's global RNG, so `torch.manual_seed` and DataLoader worker seeding
    make it reproducible.
    """

    train: bool
    normalize: bool
    labels: np.ndarray
    expected_size: tuple[int, int]
    # Threads that decode one batch in `__getitems__`. None picks 2 in the main process and 1 in a
    # DataLoader worker, because the worker processes already keep the cores busy.
    # NOTE: on a 2-core machine, 2 threads read 1.40 times as fast as 1 when both cores were free,
    # but 6 to 8 % slower when another job kept one core busy (docs/data.md).
    decode_threads: int | None = 1
    _pool: ThreadPoolExecutor | None = None
    _pool_pid: int | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_pool", None)
        state.pop("_pool_pid", None)
        return state

    def close(self) -> None:
        """Shut down the decode threads of this process, if any; a later batch starts new ones."""
        pool, started_here = self._pool, self._pool_pid == os.getpid()
        self._pool, self._pool_pid = None, None
        if pool is not None and started_here:
            pool.shutdown(wait=True)

    def _thread_count(self, count: int) -> int:
        threads = self.decode_threads
        if threads is None:
            threads = 2 if get_worker_info() is None else 1
        return max(1, min(threads, count))

    def _decode_pool(self, threads: int) -> ThreadPoolExecutor:
        """Return this process's decode pool, started on first use.

        A forked child inherits the parent's pool object but none of its threads, so a pool
        started in another process is dropped, never reused or shut down, and a new one starts.
        """
        if self._pool is not None and self._pool_pid == os.getpid():
            if self._pool._max_workers >= threads:
                return self._pool
            self._pool.shutdown(wait=False)
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="pocketnas-decode")
        self._pool_pid = os.getpid()
        return self._pool

    def _read_rgb(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def _open_source(self) -> None:
        """Open what `_read_rgb` reads in this process, before threads share it."""

    def _describe(self, index: int) -> tuple[Path, str]:
        """Return the file to blame for image `index` and how to name the image in it."""
        raise NotImplementedError

    def _read_checked_rgb(self, index: int) -> np.ndarray:
        rgb = self._read_rgb(index)
        if rgb.shape[:2] != self.expected_size:
            path, name = self._describe(index)
            raise DataError(
                path,
                f"{name} is {rgb.shape[0]}x{rgb.shape[1]} pixels, but the set's images are "
                f"{self.expected_size[0]}x{self.expected_size[1]}",
            )
        return rgb

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb = self._read_checked_rgb(index)
        flip = self.train and torch.rand(1).item() < 0.5
        label = torch.tensor(int(self.labels[index]), dtype=torch.int64)
        return preprocess_face(rgb, flip, self.normalize), label

    def __getitems__(self, indices: list[int] | BatchPlan) -> FaceSamples:
        """Read a batch into one contiguous NCHW tensor. DataLoader calls this for each batch.

        Given indices, the images, labels and flips equal those of `[self[i] for i in indices]`
        stacked, because on the CPU `torch.rand(n)` draws the same numbers as n calls of
        `torch.rand(1)`. Given a `BatchPlan` (from `EpochBatchSampler`), the plan's flips are used
        (when `train` is set), so the batch does not depend on any random state.
        """
        if isinstance(indices, BatchPlan):
            flips = list(indices.flips) if self.train else [False] * len(indices.indices)
            return self.read_batch(list(indices.indices), flips)
        count = len(indices)
        flips = (torch.rand(count) < 0.5).tolist() if self.train else [False] * count
        return self.read_batch(indices, flips)

    def read_batch(self, indices: list[int], flips: list[bool]) -> FaceSamples:
        """Read images `indices`, mirrored where `flips` is True, into one NCHW batch."""
        count = len(indices)
        if len(flips) != count:
            raise ValueError(f"{count} indices but {len(flips)} flips")
        height, width = self.expected_size
        dtype = torch.float32 if self.normalize else torch.uint8
        images = _new_batch((count, 3, height, width), dtype)
        threads = self._thread_count(count)
        if threads == 1:
            self._fill_rows(images, indices, flips, 0, count)
        else:
            # Contiguous slices in row order: each thread stops at its first bad image, so the
            # first error in slice order is the one the single-thread loop would raise.
            bounds = [count * part // threads for part in range(threads + 1)]
            self._open_source()
            pool = self._decode_pool(threads)
            futures: list[Future[None]] = [
                pool.submit(self._fill_rows, images, indices, flips, start, stop)
                for start, stop in itertools.pairwise(bounds)
            ]
            # Wait for every slice before raising, so no thread writes into a failed batch later.
            errors = [future.exception() for future in futures]
            for error in errors:
                if error is not None:
                    raise error
        labels = torch.from_numpy(self.labels[np.asarray(indices, dtype=np.int64)])
        return FaceSamples(images, labels)

    def _fill_rows(
        self, images: torch.Tensor, indices: list[int], flips: list[bool], start: int, stop: int
    ) -> None:
        """Decode images `start` to `stop` of a batch into their rows of `images`."""
        for row in range(start, stop):
            image = torch.from_numpy(self._read_checked_rgb(indices[row]))
            if flips[row]:
                image = image.flip(1)
            # One strided pass turns HWC into CHW and, for float output, divides as well. The
            # uint8 values are promoted to float32 first, as in `normalize_batch`.
            if self.normalize:
                torch.div(image.permute(2, 0, 1), 127.5, out=images[row])
            else:
                images[row].copy_(image.permute(2, 0, 1))
        if self.normalize:
            images[start:stop].sub_(1.0)


class FaceRecordDataset(_FaceImageDataset):
    """Images and class ids of a FaceRecordSet as (float32 CHW tensor, int64 label) pairs.

    Items are read at random through the `.idx` offsets. The dataset can be used in forked or
    spawned DataLoader workers because the underlying reader maps the `.rec` file anew in each
    process. An image whose size differs from `property` raises DataError with its record key,
    and inside a worker that error reaches the main process as a DataError with the same text.

    With `normalize=False` the images stay uint8 (a quarter of the bytes to pass from workers)
    and `normalize_batch` converts whole batches later, for example on the GPU.

    `decode_threads` sets how many threads decode the images of one batch in `__getitems__`.
    None uses 2 in the main process and 1 inside a DataLoader worker. Each process starts its own
    threads on first use, and `close` stops them. Batches are the same for any thread count,
    flips included, and a bad record raises the same DataError as with one thread.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        train: bool = True,
        normalize: bool = True,
        decode_threads: int | None = None,
    ) -> None:
        if decode_threads is not None and decode_threads < 1:
            raise ValueError(f"decode_threads must be at least 1 or None, got {decode_threads}")
        self.record_set = FaceRecordSet(folder)
        self.train = train
        self.normalize = normalize
        self.decode_threads = decode_threads
        self.labels = self.record_set.labels
        self.expected_size = self.record_set.image_size

    @property
    def num_classes(self) -> int:
        """Number of identities, from the set's `property` file."""
        return self.record_set.num_classes

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) from the set's `property` file."""
        return self.record_set.image_size

    def __len__(self) -> int:
        return len(self.record_set)

    def _read_rgb(self, index: int) -> np.ndarray:
        return self.record_set.read_image(index)

    def _open_source(self) -> None:
        # Maps the `.rec` file now if this process has not yet, because two threads mapping it at
        # once would close each other's map.
        self.record_set.reader.rec_size  # noqa: B018

    def _describe(self, index: int) -> tuple[Path, str]:
        return self.record_set.rec_path, f"record key {self.record_set.image_keys[index]}"


class ImageFolderDataset(_FaceImageDataset):
    """Images and class ids of an ImageFolderSet (one folder per identity) as tensor pairs.

    Args:
        root: the folder holding one subfolder per identity.
        train: apply the random horizontal flip.
        image_size: (height, width) every image must have. None takes the size of the first
            image. Use `pocketnas data convert --landmarks` to align faces of other sizes.
        normalize: return float32 in [-1, 1]; False returns uint8 for `normalize_batch`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        train: bool = True,
        image_size: tuple[int, int] | None = None,
        normalize: bool = True,
    ) -> None:
        self.image_set = ImageFolderSet(root)
        self.train = train
        self.normalize = normalize
        self.labels = self.image_set.labels
        if image_size is None:
            first = self.image_set.read_image(0)
            image_size = (int(first.shape[0]), int(first.shape[1]))
        self.expected_size = image_size

    @property
    def num_classes(self) -> int:
        """Number of identity folders."""
        return self.image_set.num_classes

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of every image."""
        return self.expected_size

    def __len__(self) -> int:
        return len(self.image_set)

    def _read_rgb(self, index: int) -> np.ndarray:
        return self.image_set.read_image(index)

    def _describe(self, index: int) -> tuple[Path, str]:
        return self.image_set.paths[index], "the image"


def load_verification_images(
    path: str | os.PathLike[str], image_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decode every image of a verification `.bin` file.

    Args:
        path: the `.bin` file.
        image_size: (height, width) to resize every image to (bilinear), or None to keep the
            stored size, which must then be the same for all images.

    Returns:
        NHWC uint8 RGB images (pair i is images 2i and 2i+1) and the bool `issame` array.

    Raises:
        DataError: the file cannot be loaded, an image cannot be decoded, or the images differ in
            size and no `image_size` was given.
    """
    images, issame = load_verification_bin(path)
    decoded: list[np.ndarray] = []
    for index, data in enumerate(images):
        rgb = decode_image(data, path=path, key=f"image {index}")
        if image_size is not None:
            rgb = resize_image(rgb, image_size)
        elif decoded and rgb.shape != decoded[0].shape:
            raise DataError(
                path,
                f"image {index} is {rgb.shape[0]}x{rgb.shape[1]} but image 0 is "
                f"{decoded[0].shape[0]}x{decoded[0].shape[1]}; pass image_size to resize them",
            )
        decoded.append(rgb)
    logger.debug("decoded %d verification images from %s", len(decoded), path)
    return np.stack(decoded), issame
