"""torch datasets over insightface training sets and verification pairs.

Training samples are preprocessed as arcface_torch's `MXFaceDataset` does: RGB decode, random
horizontal flip (p = 0.5) when training, then `x / 127.5 - 1` per channel, which equals
torchvision's ToTensor followed by Normalize(mean 0.5, std 0.5).
"""

from __future__ import annotations

import logging
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from pocketnas.data.images import decode_image, resize_image
from pocketnas.data.recordio import FaceRecordSet
from pocketnas.data.verification_bin import load_verification_bin
from pocketnas.errors import DataError

logger = logging.getLogger(__name__)


def normalize_images(rgb: np.ndarray) -> torch.Tensor:
    """Turn HWC (or NHWC) uint8 RGB into CHW (or NCHW) float32 in [-1, 1] as `x / 127.5 - 1`."""
    tensor = torch.from_numpy(np.ascontiguousarray(rgb))
    tensor = tensor.permute(2, 0, 1) if tensor.ndim == 3 else tensor.permute(0, 3, 1, 2)
    return tensor.float().div_(127.5).sub_(1.0)


class FaceRecordDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Images and class ids of a FaceRecordSet as (float32 CHW tensor, int64 label) pairs.

    The flip draws from torch's global RNG, so `torch.manual_seed` and DataLoader worker seeding
    make it reproducible. The dataset can be used in forked or spawned DataLoader workers because
    the underlying reader reopens its file in each process.
    """

    def __init__(self, folder: str | os.PathLike[str], train: bool = True) -> None:
        self.record_set = FaceRecordSet(folder)
        self.train = train

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

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = normalize_images(self.record_set.read_image(index))
        if self.train and torch.rand(1).item() < 0.5:
            image = torch.flip(image, dims=(2,))
        label = torch.tensor(int(self.record_set.labels[index]), dtype=torch.int64)
        return image, label


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
