"""Batch samplers for face training sets.

torch's own `DistributedSampler` works with the face datasets unchanged, because they support
`len()` and random access by index. This module adds:

- `EpochBatchSampler`: shuffled batches that depend only on (seed, epoch), with each image's flip
  decided by the sampler, split over distributed ranks and able to start in the middle of an
  epoch, which is what resuming a run to the exact step needs;
- `IdentityBalancedBatchSampler`: P identities with K images each, as metric-learning losses and
  per-identity statistics need.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPlan:
    """The dataset indices of one batch and whether each image is mirrored.

    The face datasets' `__getitems__` reads a plan as it comes from the sampler, so the batch does
    not depend on any random state of the process (or DataLoader worker) that reads it.
    """

    indices: tuple[int, ...]
    flips: tuple[bool, ...]


class EpochBatchSampler(Sampler[BatchPlan]):
    """Shuffled, distributed, resumable batches of a dataset of `size` images.

    Epoch e's order and flips are drawn from NumPy's generator seeded with (seed, e), the same in
    every process. Each global batch of `batch_size * num_replicas` consecutive images of the
    shuffled order is split into one batch per rank. The last partial global batch is dropped
    (BatchNorm needs more than one image), and `max_batches` caps the batches per epoch.
    `set_epoch(e, start=k)` skips the first k batches without reading them.

    Raises:
        ValueError: the dataset has fewer images than one global batch, or the rank is out of
            range.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        max_batches: int | None = None,
    ) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be within 0..num_replicas-1, got {rank} of {num_replicas}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        per_epoch = size // (batch_size * num_replicas)
        if per_epoch < 1:
            raise ValueError(
                f"{size} images do not fill one global batch of {batch_size} x {num_replicas}"
            )
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.batches_per_epoch = min(per_epoch, max_batches) if max_batches else per_epoch
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Choose the epoch to draw, and the batch to start from (0 for the whole epoch)."""
        if not 0 <= start <= self.batches_per_epoch:
            raise ValueError(f"start must lie in 0..{self.batches_per_epoch}, got {start}")
        self.epoch = epoch
        self.start = start

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start

    def __iter__(self) -> Iterator[BatchPlan]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(self.size)
        flips = rng.random(self.size) < 0.5
        global_batch = self.batch_size * self.num_replicas
        for batch in range(self.start, self.batches_per_epoch):
            first = batch * global_batch + self.rank * self.batch_size
            rows = slice(first, first + self.batch_size)
            yield BatchPlan(
                tuple(int(i) for i in order[rows]), tuple(bool(f) for f in flips[order[rows]])
            )


class IdentityBalancedBatchSampler(Sampler[list[int]]):
    """Yield batches of `identities_per_batch` distinct identities with `images_per_identity` each.

    Pass it to a DataLoader as `batch_sampler`. Each epoch shuffles the images of every identity
    and cuts them into groups of K = `images_per_identity`. An identity with fewer than K images
    left fills its last group by drawing again from its own images. So every image appears at
    least once per epoch, except in the leftover groups that do not fill a whole batch. The
    groups are shuffled and packed into batches so that no identity appears twice in a batch.
    Computing an epoch's batches takes one pass over the labels; `len()` computes them too.

    The order depends only on `seed` and the epoch set with `set_epoch`, so every process of a
    distributed run computes the same batches. With `num_replicas` > 1 each rank takes every
    `num_replicas`-th batch starting at `rank`, and all ranks get the same number of batches.

    Args:
        labels: class id of each dataset index (for example `dataset.labels`).
        identities_per_batch: P, the number of identities in a batch.
        images_per_identity: K, the number of images of each identity in a batch.
        seed: base seed of the shuffles.
        num_replicas: number of distributed processes sharing the epoch.
        rank: this process's rank, in 0..num_replicas-1.

    Raises:
        ValueError: P or K is below 1, fewer than P identities have images, or the rank is out
            of range.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        identities_per_batch: int,
        images_per_identity: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if identities_per_batch < 1 or images_per_identity < 1:
            raise ValueError(
                "identities_per_batch and images_per_identity must be at least 1, got "
                f"{identities_per_batch} and {images_per_identity}"
            )
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be within 0..num_replicas-1, got {rank} of {num_replicas}")
        label_array = np.asarray(labels, dtype=np.int64)
        classes, inverse = np.unique(label_array, return_inverse=True)
        if len(classes) < identities_per_batch:
            raise ValueError(
                f"a batch needs {identities_per_batch} distinct identities, but the labels "
                f"contain only {len(classes)}"
            )
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse))[:-1]
        self._indices_per_class = np.split(order, bounds)
        self.identities_per_batch = identities_per_batch
        self.images_per_identity = images_per_identity
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self._cached: tuple[int, list[list[int]]] | None = None

    @property
    def batch_size(self) -> int:
        """Images per batch: identities_per_batch * images_per_identity."""
        return self.identities_per_batch * self.images_per_identity

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose batches the next iteration yields."""
        self.epoch = epoch

    def _groups(self, rng: np.random.Generator) -> list[tuple[int, np.ndarray]]:
        """Cut each identity's shuffled images into groups of K, topping up the last group."""
        size = self.images_per_identity
        groups: list[tuple[int, np.ndarray]] = []
        for class_position, indices in enumerate(self._indices_per_class):
            shuffled = rng.permutation(indices)
            shortfall = -len(shuffled) % size
            if shortfall:
                shuffled = np.concatenate([shuffled, rng.choice(indices, shortfall)])
            groups.extend((class_position, group) for group in shuffled.reshape(-1, size))
        return groups

    def _epoch_batches(self) -> list[list[int]]:
        if self._cached is not None and self._cached[0] == self.epoch:
            return self._cached[1]
        rng = np.random.default_rng([self.seed, self.epoch])
        groups = self._groups(rng)

        batches: list[list[int]] = []
        current: list[np.ndarray] = []
        used: set[int] = set()

        def place(item: tuple[int, np.ndarray]) -> bool:
            class_position, group = item
            if class_position in used:
                return False
            used.add(class_position)
            current.append(group)
            if len(current) == self.identities_per_batch:
                batches.append(np.concatenate(current).tolist())
                current.clear()
                used.clear()
            return True

        # A group whose identity is already in the batch being filled waits in `deferred` and
        # is tried again each time a batch is completed. Groups still waiting at the end, and
        # an incomplete last batch, are dropped.
        deferred: deque[tuple[int, np.ndarray]] = deque()
        for position in rng.permutation(len(groups)):
            if not place(groups[position]):
                deferred.append(groups[position])
            if not current and deferred:
                for _ in range(len(deferred)):
                    item = deferred.popleft()
                    if not place(item):
                        deferred.append(item)
        self._cached = (self.epoch, batches)
        return batches

    def _per_replica(self, total: int) -> int:
        return total // self.num_replicas

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._epoch_batches()
        count = self._per_replica(len(batches))
        yield from batches[self.rank : self.rank + count * self.num_replicas : self.num_replicas]

    def __len__(self) -> int:
        return self._per_replica(len(self._epoch_batches()))
