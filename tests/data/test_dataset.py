"""torch datasets over the RecordIO fixtures and verification pairs."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pocketnas.data.dataset import (
    FaceRecordDataset,
    FaceSamples,
    collate_faces,
    load_verification_images,
    normalize_batch,
)
from pocketnas.data.images import encode_jpeg
from pocketnas.data.recordio import FaceRecordSet, write_face_record_set
from pocketnas.data.verification_bin import write_verification_bin
from pocketnas.errors import DataError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mxnet_rec"


def expected_tensor(record_set: FaceRecordSet, index: int) -> torch.Tensor:
    rgb = record_set.read_image(index).astype(np.float32)
    return torch.from_numpy(rgb / 127.5 - 1.0).permute(2, 0, 1)


def test_eval_items_are_normalised_rgb() -> None:
    dataset = FaceRecordDataset(FIXTURES, train=False)
    assert len(dataset) == 30
    assert dataset.num_classes == 6
    assert dataset.image_size == (112, 112)

    image, label = dataset[7]

    assert image.shape == (3, 112, 112)
    assert image.dtype == torch.float32
    assert label.dtype == torch.int64
    assert label.item() == 1
    assert image.min() >= -1.0
    assert image.max() <= 1.0
    torch.testing.assert_close(image, expected_tensor(dataset.record_set, 7))
    # The red canary square sits top-left in channel order R, G, B.
    assert image[0, 3:13, 3:13].mean() > 0.9
    assert image[2, 3:13, 3:13].mean() < -0.9


def test_train_flip_follows_torch_seed() -> None:
    dataset = FaceRecordDataset(FIXTURES / "no_header", train=True)
    torch.manual_seed(123)
    expected_flips = [torch.rand(1).item() < 0.5 for _ in range(len(dataset))]
    assert any(expected_flips)
    assert not all(expected_flips)

    torch.manual_seed(123)
    for index, flipped in enumerate(expected_flips):
        image, _ = dataset[index]
        plain = expected_tensor(dataset.record_set, index)
        expected = torch.flip(plain, dims=(2,)) if flipped else plain
        torch.testing.assert_close(image, expected, msg=f"index {index}")


def test_flipped_canary_moves_right() -> None:
    dataset = FaceRecordDataset(FIXTURES / "magic_split", train=True)
    torch.manual_seed(0)
    images = [dataset[0][0] for _ in range(16)]
    flipped = [image for image in images if image[0, 3:13, -13:-3].mean() > 0.9]
    assert 0 < len(flipped) < len(images)


def test_dataloader_with_forked_workers() -> None:
    dataset = FaceRecordDataset(FIXTURES, train=False)
    dataset[0]  # opens the file in this process before the workers fork
    loader = DataLoader(
        dataset, batch_size=8, num_workers=2, multiprocessing_context="fork", shuffle=False
    )
    labels = torch.cat([batch_labels for _, batch_labels in loader])
    assert labels.tolist() == dataset.record_set.labels.tolist()


@pytest.mark.parametrize("normalize", [True, False])
def test_batch_equals_items_with_same_seed(normalize: bool) -> None:
    dataset = FaceRecordDataset(FIXTURES / "no_header", train=True, normalize=normalize)
    indices = [5, 0, 17, 3, 3, 29, 11, 8, 21, 14]
    torch.manual_seed(7)
    items = [dataset[index] for index in indices]
    after_items = torch.rand(1)

    torch.manual_seed(7)
    samples = dataset.__getitems__(indices)
    after_batch = torch.rand(1)

    expected_images = torch.stack([image for image, _ in items])
    expected_labels = torch.stack([label for _, label in items])
    assert isinstance(samples, FaceSamples)
    assert samples.images.is_contiguous()
    assert samples.images.dtype == (torch.float32 if normalize else torch.uint8)
    assert samples.labels.dtype == torch.int64
    torch.testing.assert_close(samples.images, expected_images, rtol=0, atol=0)
    assert samples.labels.tolist() == expected_labels.tolist()
    assert len(samples) == len(indices)
    torch.testing.assert_close(samples[2][0], expected_images[2], rtol=0, atol=0)
    # Both ways draw one number per image, so the RNG ends in the same state.
    assert torch.equal(after_items, after_batch)


def test_collate_faces_keeps_batch_tensors() -> None:
    dataset = FaceRecordDataset(FIXTURES, train=False)
    samples = dataset.__getitems__([0, 1, 2])

    images, labels = collate_faces(samples)

    assert images is samples.images
    assert labels is samples.labels


def test_collate_faces_stacks_plain_samples() -> None:
    dataset = FaceRecordDataset(FIXTURES, train=False)
    samples = [dataset[0], dataset[4]]

    images, labels = collate_faces(samples)

    assert images.shape == (2, 3, 112, 112)
    torch.testing.assert_close(images[1], dataset[4][0], rtol=0, atol=0)
    assert labels.tolist() == [int(dataset.labels[0]), int(dataset.labels[4])]


def forked_batch_loader(dataset: FaceRecordDataset) -> DataLoader[Any]:
    """Return a loader of batches of 8 from 2 forked workers, collated by `collate_faces`."""
    return DataLoader(
        dataset,
        batch_size=8,
        num_workers=2,
        multiprocessing_context="fork",
        collate_fn=collate_faces,
        timeout=60,
    )


@pytest.mark.parametrize("normalize", [True, False])
def test_collate_faces_with_forked_workers(normalize: bool) -> None:
    dataset = FaceRecordDataset(FIXTURES, train=False, normalize=normalize)
    loader = forked_batch_loader(dataset)

    batches = list(loader)

    images = torch.cat([batch_images for batch_images, _ in batches])
    labels = torch.cat([batch_labels for _, batch_labels in batches])
    expected = torch.stack([dataset[index][0] for index in range(len(dataset))])
    torch.testing.assert_close(images, expected, rtol=0, atol=0)
    assert labels.tolist() == dataset.record_set.labels.tolist()


def test_batch_with_image_of_wrong_size_raises(tmp_path: Path) -> None:
    small = encode_jpeg(np.zeros((8, 8, 3), dtype=np.uint8))
    large = encode_jpeg(np.zeros((16, 8, 3), dtype=np.uint8))
    write_face_record_set(tmp_path, [(0, small), (1, large)], num_classes=2, image_size=(8, 8))
    dataset = FaceRecordDataset(tmp_path, train=False)

    with pytest.raises(DataError, match=r"record key 2 is 16x8 pixels"):
        dataset.__getitems__([0, 1])


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("threads", [2, 3])
def test_threaded_batch_equals_single_thread(normalize: bool, threads: int) -> None:
    single = FaceRecordDataset(FIXTURES, train=True, normalize=normalize, decode_threads=1)
    threaded = FaceRecordDataset(FIXTURES, train=True, normalize=normalize, decode_threads=threads)
    indices = [5, 0, 17, 3, 3, 29, 11, 8, 21, 14, 2]  # 11 rows: slices of unequal length
    torch.manual_seed(3)
    expected = single.__getitems__(indices)
    after_single = torch.rand(1)

    torch.manual_seed(3)
    samples = threaded.__getitems__(indices)
    after_threaded = torch.rand(1)

    assert samples.images.dtype == expected.images.dtype
    torch.testing.assert_close(samples.images, expected.images, rtol=0, atol=0)
    assert samples.labels.tolist() == expected.labels.tolist()
    assert torch.equal(after_single, after_threaded)
    threaded.close()


def test_threaded_batch_shorter_than_threads() -> None:
    dataset = FaceRecordDataset(FIXTURES, train=False, decode_threads=4)

    samples = dataset.__getitems__([7])

    torch.testing.assert_close(samples.images[0], dataset[7][0], rtol=0, atol=0)


def test_decode_threads_below_one_raises() -> None:
    with pytest.raises(ValueError, match="decode_threads must be at least 1"):
        FaceRecordDataset(FIXTURES, decode_threads=0)


def test_default_decode_threads_in_main_process() -> None:
    dataset = FaceRecordDataset(FIXTURES)

    assert dataset.decode_threads is None
    assert dataset._thread_count(64) == 2


def write_set_with_bad_records(folder: Path) -> None:
    """Write six 8x8 images where index 3 is not an image and index 4 is 16x8 pixels."""
    good = encode_jpeg(np.full((8, 8, 3), 90, dtype=np.uint8))
    large = encode_jpeg(np.zeros((16, 8, 3), dtype=np.uint8))
    payloads = [good, good, good, b"not an image", large, good]
    write_face_record_set(folder, enumerate(payloads), num_classes=6, image_size=(8, 8))


@pytest.mark.parametrize("order", [[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0], [0, 1, 2, 5, 4, 3]])
def test_threaded_batch_raises_first_bad_record(tmp_path: Path, order: list[int]) -> None:
    write_set_with_bad_records(tmp_path)
    single = FaceRecordDataset(tmp_path, train=False, decode_threads=1)
    threaded = FaceRecordDataset(tmp_path, train=False, decode_threads=3)

    with pytest.raises(DataError) as single_error:
        single.__getitems__(order)
    with pytest.raises(DataError) as threaded_error:
        threaded.__getitems__(order)

    first_bad_key = 1 + next(index for index in order if index in (3, 4))
    assert f"record key {first_bad_key} " in str(single_error.value)
    assert str(threaded_error.value) == str(single_error.value)
    assert "\n" not in str(threaded_error.value)
    # The pool survives the error and reads the next batch.
    assert threaded.__getitems__([0, 5]).labels.tolist() == [0, 5]
    threaded.close()


@pytest.mark.parametrize("decode_threads", [None, 2])
def test_threaded_batches_in_forked_workers(decode_threads: int | None) -> None:
    dataset = FaceRecordDataset(FIXTURES, train=False, decode_threads=decode_threads)
    # Starts this process's pool before the fork; the workers must start their own.
    dataset.__getitems__([0, 1, 2, 3])
    loader = forked_batch_loader(dataset)

    images = torch.cat([batch_images for batch_images, _ in loader])

    expected = torch.stack([dataset[index][0] for index in range(len(dataset))])
    torch.testing.assert_close(images, expected, rtol=0, atol=0)
    dataset.close()


def test_threaded_dataset_pickles_and_closes() -> None:
    dataset = FaceRecordDataset(FIXTURES, train=False, decode_threads=2)
    before = dataset.__getitems__([0, 1, 2])

    clone = pickle.loads(pickle.dumps(dataset))
    dataset.close()

    torch.testing.assert_close(clone.__getitems__([0, 1, 2]).images, before.images)
    torch.testing.assert_close(dataset.__getitems__([0, 1, 2]).images, before.images)
    clone.close()
    dataset.close()


def test_dataset_pickles() -> None:
    dataset = FaceRecordDataset(FIXTURES / "label_array", train=False)
    dataset[3]
    clone = pickle.loads(pickle.dumps(dataset))
    torch.testing.assert_close(clone[3][0], dataset[3][0])
    assert clone[3][1] == dataset[3][1]


def test_verification_images_match_manifest() -> None:
    manifest = json.loads((FIXTURES / "manifest.json").read_text())
    expected = next(entry for entry in manifest["bins"] if entry["file"] == "tiny_pairs.bin")

    images, issame = load_verification_images(FIXTURES / "tiny_pairs.bin")

    assert images.shape == (80, 112, 112, 3)
    assert images.dtype == np.uint8
    assert issame.tolist() == expected["issame"]
    means = images.reshape(80, -1, 3).mean(axis=1)
    corners = images[:, 3:13, 3:13].reshape(80, -1, 3).mean(axis=1)
    np.testing.assert_allclose(
        means, [image["decoded_mean_rgb"] for image in expected["images"]], atol=1.5
    )
    np.testing.assert_allclose(
        corners, [image["decoded_corner_mean_rgb"] for image in expected["images"]], atol=1.5
    )


def test_verification_images_resize() -> None:
    images, issame = load_verification_images(FIXTURES / "tiny_pairs_ndarray.bin", (56, 48))
    assert images.shape == (8, 56, 48, 3)
    assert issame.tolist() == [True] * 4


def test_verification_images_of_mixed_size(tmp_path: Path) -> None:
    small = encode_jpeg(np.zeros((8, 8, 3), dtype=np.uint8))
    large = encode_jpeg(np.zeros((16, 16, 3), dtype=np.uint8))
    path = tmp_path / "mixed.bin"
    write_verification_bin(path, [small, large], [False])

    with pytest.raises(DataError, match=r"mixed\.bin: image 1 is 16x16 but image 0 is 8x8"):
        load_verification_images(path)
    images, _ = load_verification_images(path, image_size=(8, 8))
    assert images.shape == (2, 8, 8, 3)


def test_verification_image_not_decodable(tmp_path: Path) -> None:
    path = tmp_path / "broken.bin"
    write_verification_bin(path, [encode_jpeg(np.zeros((8, 8, 3), np.uint8)), b"garbage"], [True])
    with pytest.raises(DataError, match=r"broken\.bin: image 1 is not a readable image"):
        load_verification_images(path)


def test_uint8_items_normalise_in_batches() -> None:
    raw = FaceRecordDataset(FIXTURES, train=False, normalize=False)
    dataset = FaceRecordDataset(FIXTURES, train=False)

    images = torch.stack([raw[index][0] for index in range(4)])

    assert images.dtype == torch.uint8
    assert images.shape == (4, 3, 112, 112)
    expected = torch.stack([dataset[index][0] for index in range(4)])
    torch.testing.assert_close(normalize_batch(images), expected, rtol=0, atol=0)
