"""Image folders (one subfolder per identity) as a face set and a torch dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pocketnas.data.dataset import ImageFolderDataset
from pocketnas.data.image_folder import ImageFolderSet, identity_sort_key
from pocketnas.data.images import encode_jpeg
from pocketnas.errors import DataError


def write_image(path: Path, value: int, size: tuple[int, int] = (12, 10)) -> np.ndarray:
    rgb = np.zeros((*size, 3), dtype=np.uint8)
    rgb[..., 0] = value
    rgb[:, : size[1] // 2, 2] = 200  # left half blue, to see flips
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(rgb))
    return rgb


@pytest.fixture
def faces(tmp_path: Path) -> Path:
    root = tmp_path / "faces"
    for name, count in (("10", 2), ("2", 3), ("alice", 1), ("bob", 2)):
        for number in range(count):
            write_image(root / name / f"img_{number}.jpg", 40 * number)
    (root / "bob" / "notes.txt").write_text("not an image")
    write_image(root / "bob" / ".hidden.jpg", 0)
    write_image(root / ".cache" / "x.jpg", 0)
    (root / "empty").mkdir()
    (root / "README").write_text("top-level files are ignored")
    return root


def test_identity_order_is_numeric_then_text() -> None:
    names = ["b", "10", "2", "a", "007"]
    assert sorted(names, key=identity_sort_key) == ["2", "007", "10", "a", "b"]


def test_folder_set_lists_identities_and_images(faces: Path) -> None:
    image_set = ImageFolderSet(faces)

    assert image_set.identities == ["2", "10", "alice", "bob", "empty"]
    assert image_set.num_classes == 5
    assert len(image_set) == 8
    assert image_set.labels.tolist() == [0, 0, 0, 1, 1, 2, 3, 3]
    assert [path.relative_to(faces).as_posix() for path in image_set.paths[:3]] == [
        "2/img_0.jpg",
        "2/img_1.jpg",
        "2/img_2.jpg",
    ]
    assert image_set.read_image(1).shape == (12, 10, 3)


def test_folder_dataset_items(faces: Path) -> None:
    dataset = ImageFolderDataset(faces, train=False)
    assert dataset.image_size == (12, 10)
    assert dataset.num_classes == 5
    image, label = dataset[4]
    assert image.shape == (3, 12, 10)
    assert label.item() == 1
    assert image.min() >= -1.0
    assert image.max() <= 1.0
    # Blue is on the left without the flip.
    assert image[2, :, :5].mean() > image[2, :, 5:].mean()


def test_folder_dataset_flips_when_training(faces: Path) -> None:
    dataset = ImageFolderDataset(faces, train=True)
    torch.manual_seed(0)
    lefts = [bool(dataset[0][0][2, :, :5].mean() > 0) for _ in range(16)]
    assert any(lefts)
    assert not all(lefts)


def test_folder_dataset_batch_equals_items(faces: Path) -> None:
    dataset = ImageFolderDataset(faces, train=True)
    indices = [7, 0, 4, 2, 5, 1]
    torch.manual_seed(3)
    expected = torch.stack([dataset[index][0] for index in indices])

    torch.manual_seed(3)
    samples = dataset.__getitems__(indices)

    assert samples.images.shape == (6, 3, 12, 10)
    torch.testing.assert_close(samples.images, expected, rtol=0, atol=0)
    assert samples.labels.tolist() == dataset.labels[indices].tolist()


def test_folder_dataset_rejects_other_sizes(faces: Path) -> None:
    odd = faces / "alice" / "big.jpg"
    write_image(odd, 0, size=(20, 20))
    dataset = ImageFolderDataset(faces, train=False)
    index = dataset.image_set.paths.index(odd)
    with pytest.raises(
        DataError, match=r"big\.jpg: the image is 20x20 pixels, but the set's images are 12x10"
    ):
        dataset[index]


def test_folder_set_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="folder not found"):
        ImageFolderSet(tmp_path / "absent")
    with pytest.raises(DataError, match="no identity folders"):
        ImageFolderSet(tmp_path)
    (tmp_path / "someone").mkdir()
    (tmp_path / "someone" / "a.txt").write_text("x")
    with pytest.raises(DataError, match="contain no images"):
        ImageFolderSet(tmp_path)
    broken = tmp_path / "someone" / "b.jpg"
    broken.write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"b\.jpg: the file is not a readable image"):
        ImageFolderSet(tmp_path).read_image(0)
