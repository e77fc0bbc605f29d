"""Identity-balanced batches and torch's DistributedSampler over the face datasets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from pocketnas.data.dataset import FaceRecordDataset, collate_faces
from pocketnas.data.images import encode_jpeg
from pocketnas.data.recordio import write_face_record_set
from pocketnas.data.samplers import BatchPlan, EpochBatchSampler, IdentityBalancedBatchSampler
from pocketnas.errors import DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mxnet_rec"
# 12 identities with 1 to 9 images each, not sorted by identity.
LABELS = np.random.default_rng(5).permutation(
    np.repeat(np.arange(12), [1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 5, 2])
)


def test_balanced_batches_have_p_identities_with_k_images() -> None:
    sampler = IdentityBalancedBatchSampler(LABELS, identities_per_batch=4, images_per_identity=3)
    batches = list(sampler)

    assert len(batches) == len(sampler)
    assert len(batches) > 0
    assert sampler.batch_size == 12
    for batch in batches:
        assert len(batch) == 12
        counts = Counter(LABELS[batch].tolist())
        assert len(counts) == 4, batch
        assert set(counts.values()) == {3}, batch


def test_balanced_batches_cover_most_images() -> None:
    sampler = IdentityBalancedBatchSampler(LABELS, identities_per_batch=3, images_per_identity=2)
    seen = {index for batch in sampler for index in batch}
    # Only groups left over after the last full batch are missing.
    assert len(seen) >= len(LABELS) - 3 * 2


def test_balanced_batches_follow_seed_and_epoch() -> None:
    first = IdentityBalancedBatchSampler(LABELS, 4, 2, seed=7)
    again = IdentityBalancedBatchSampler(LABELS, 4, 2, seed=7)
    other_seed = IdentityBalancedBatchSampler(LABELS, 4, 2, seed=8)

    assert list(first) == list(again)
    assert list(first) != list(other_seed)
    epoch0 = list(first)
    first.set_epoch(1)
    again.set_epoch(1)
    assert list(first) != epoch0
    assert list(first) == list(again)
    first.set_epoch(0)
    assert list(first) == epoch0


def test_balanced_batches_split_across_replicas() -> None:
    whole = list(IdentityBalancedBatchSampler(LABELS, 2, 2, seed=3))
    ranks = [
        list(IdentityBalancedBatchSampler(LABELS, 2, 2, seed=3, num_replicas=2, rank=r))
        for r in (0, 1)
    ]

    assert len(ranks[0]) == len(ranks[1]) == len(whole) // 2
    assert ranks[0] == whole[0 : 2 * len(ranks[0]) : 2]
    assert ranks[1] == whole[1 : 2 * len(ranks[1]) : 2]


def test_balanced_sampler_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="only 12"):
        IdentityBalancedBatchSampler(LABELS, identities_per_batch=13, images_per_identity=1)
    with pytest.raises(ValueError, match="at least 1"):
        IdentityBalancedBatchSampler(LABELS, identities_per_batch=2, images_per_identity=0)
    with pytest.raises(ValueError, match="rank"):
        IdentityBalancedBatchSampler(LABELS, 2, 2, num_replicas=2, rank=2)


def test_balanced_sampler_drives_dataloader() -> None:
    dataset = FaceRecordDataset(FIXTURES, train=True)
    sampler = IdentityBalancedBatchSampler(
        dataset.labels, identities_per_batch=3, images_per_identity=2
    )
    loader = DataLoader(dataset, batch_sampler=sampler)

    batches = list(loader)

    assert len(batches) == len(sampler) == 5  # 6 identities x 5 images -> 18 groups of 2
    for images, labels in batches:
        assert images.shape == (6, 3, 112, 112)
        assert sorted(Counter(labels.tolist()).values()) == [2, 2, 2]


@pytest.mark.parametrize("shuffle", [False, True])
def test_distributed_sampler_two_ranks_cover_set_once(shuffle: bool) -> None:
    dataset = FaceRecordDataset(FIXTURES / "label_array", train=False)
    seen: list[int] = []
    for rank in (0, 1):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=shuffle, seed=4)
        sampler.set_epoch(2)
        indices = list(sampler)
        assert len(indices) == len(dataset) // 2
        loader = DataLoader(dataset, batch_size=4, sampler=sampler)
        labels = torch.cat([batch_labels for _, batch_labels in loader])
        assert labels.tolist() == dataset.labels[indices].tolist()
        seen.extend(indices)
    assert sorted(seen) == list(range(len(dataset)))


def test_worker_error_reaches_main_process_with_key(tmp_path: Path) -> None:
    image = encode_jpeg(np.zeros((8, 8, 3), dtype=np.uint8))
    samples = [(0, image), (0, image), (1, b"not an image"), (1, image)]
    write_face_record_set(tmp_path, samples, num_classes=2, image_size=(8, 8))
    dataset = FaceRecordDataset(tmp_path, train=False)
    loader = DataLoader(
        dataset, batch_size=1, num_workers=2, multiprocessing_context="fork", timeout=60
    )

    with pytest.raises(DataError) as caught:
        list(loader)

    assert f"{tmp_path / 'train.rec'}: the payload of record key 3 is not a readable image" in str(
        caught.value
    )


def test_image_of_wrong_size_raises_with_key(tmp_path: Path) -> None:
    small = encode_jpeg(np.zeros((8, 8, 3), dtype=np.uint8))
    large = encode_jpeg(np.zeros((16, 8, 3), dtype=np.uint8))
    write_face_record_set(tmp_path, [(0, small), (1, large)], num_classes=2, image_size=(8, 8))
    dataset = FaceRecordDataset(tmp_path, train=False)

    assert dataset[0][0].shape == (3, 8, 8)
    with pytest.raises(
        DataError, match=r"train\.rec: record key 2 is 16x8 pixels, but the set's images are 8x8"
    ):
        dataset[1]


def test_epoch_batches_split_over_ranks() -> None:
    whole = list(EpochBatchSampler(50, batch_size=6, seed=3))
    ranks = [list(EpochBatchSampler(50, 3, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    # 50 // 6 = 8 global batches; a rank's batch is its half of the one-process batch.
    assert len(whole) == len(ranks[0]) == len(ranks[1]) == 8
    for batch, first, second in zip(whole, ranks[0], ranks[1], strict=True):
        assert first.indices + second.indices == batch.indices
        assert first.flips + second.flips == batch.flips
    seen = [i for batch in whole for i in batch.indices]
    assert len(set(seen)) == len(seen) == 48


def test_epoch_batches_seeded_by_epoch() -> None:
    sampler = EpochBatchSampler(40, batch_size=4, seed=1)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert list(EpochBatchSampler(40, batch_size=4, seed=1)) == first
    assert [b.indices for b in second] != [b.indices for b in first]
    flips = [f for batch in first for f in batch.flips]
    assert 0 < sum(flips) < len(flips)


def test_epoch_batches_start_mid_epoch() -> None:
    sampler = EpochBatchSampler(40, batch_size=4, seed=2, max_batches=7)
    sampler.set_epoch(3)
    full = list(sampler)
    assert len(full) == 7
    sampler.set_epoch(3, start=5)
    assert len(sampler) == 2
    assert list(sampler) == full[5:]
    with pytest.raises(ValueError, match=r"start must lie in 0\.\.7"):
        sampler.set_epoch(3, start=8)


def test_epoch_batches_need_one_global_batch() -> None:
    with pytest.raises(ValueError, match="do not fill one global batch of 8 x 2"):
        EpochBatchSampler(15, batch_size=8, num_replicas=2)


def test_dataset_reads_batch_plan() -> None:
    dataset = FaceRecordDataset(FIXTURES, train=True)
    plan = BatchPlan((4, 0, 7), (True, False, True))
    images, labels = collate_faces(dataset.__getitems__(plan))
    plain = FaceRecordDataset(FIXTURES, train=False)
    for row, (index, flip) in enumerate(zip(plan.indices, plan.flips, strict=True)):
        expected, label = plain[index]
        assert torch.equal(images[row], expected.flip(2) if flip else expected)
        assert int(labels[row]) == int(label)
