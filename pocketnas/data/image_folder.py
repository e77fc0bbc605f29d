"""Face images stored as one folder per identity: `ROOT/<identity>/<image file>`.

This is the layout of CASIA-WebFace and LFW as distributed, and of torchvision's ImageFolder.
Identities get class ids in the order of their folder names. Names made only of digits sort by
their value, so folders `0`, `1`, ..., `10` keep their class ids even without zero padding. Other
names sort as strings after them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from pocketnas.data.images import decode_image
from pocketnas.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
"""File name suffixes (lower case) taken as images; other files are ignored."""


def identity_sort_key(name: str) -> tuple[int, int, str]:
    """Sort key that puts digit-only names first, by value, then the other names as strings."""
    if name.isdigit():
        return (0, int(name), name)
    return (1, 0, name)


class ImageFolderSet:
    """The images and class ids of a folder with one subfolder per identity.

    Subfolders are searched recursively, so `ROOT/<identity>/<session>/<image>` also works.
    Hidden files and folders (names starting with a dot) and files without an image suffix are
    skipped. An identity folder without images keeps its class id and has no images.

    Attributes:
        root: the folder that contains the identity folders.
        identities: identity folder names; the class id of `identities[c]` is c.
        paths: image files, grouped by class id in ascending order, sorted by name in each class.
        labels: int64 class id of each image, aligned with `paths`.

    Raises:
        DataError: the root is missing, is not a folder, has no identity folders, or no images.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise DataError(self.root, "folder not found")
        if not self.root.is_dir():
            raise DataError(self.root, "not a folder; expected one subfolder per identity")
        folders = [
            entry
            for entry in self.root.iterdir()
            if entry.is_dir() and not entry.name.startswith(".")
        ]
        if not folders:
            raise DataError(self.root, "no identity folders; expected ROOT/<identity>/<image>")
        folders.sort(key=lambda folder: identity_sort_key(folder.name))

        self.identities = [folder.name for folder in folders]
        self.paths: list[Path] = []
        labels: list[int] = []
        empty: list[str] = []
        for class_id, folder in enumerate(folders):
            images = sorted(
                path
                for path in folder.rglob("*")
                if path.suffix.lower() in IMAGE_SUFFIXES
                and path.is_file()
                and not any(part.startswith(".") for part in path.relative_to(folder).parts)
            )
            if not images:
                empty.append(folder.name)
            self.paths.extend(images)
            labels.extend([class_id] * len(images))
        if not self.paths:
            suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
            raise DataError(self.root, f"the identity folders contain no images ({suffixes})")
        if empty:
            logger.warning(
                "%s: %d identity folder(s) without images, first: %s",
                self.root,
                len(empty),
                empty[0],
            )
        self.labels = np.array(labels, dtype=np.int64)

    @property
    def num_classes(self) -> int:
        """Number of identities, counting folders without images."""
        return len(self.identities)

    def __len__(self) -> int:
        return len(self.paths)

    def read_image_bytes(self, index: int) -> bytes:
        """Return the encoded image file at `index` as it is stored.

        Raises:
            DataError: the file cannot be read.
        """
        path = self.paths[index]
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DataError(path, f"cannot read the image ({exc.strerror})") from exc

    def read_image(self, index: int) -> np.ndarray:
        """Decode the image at `index` into an HWC uint8 RGB array.

        Raises:
            DataError: the file cannot be read or is not a decodable image.
        """
        return decode_image(self.read_image_bytes(index), path=self.paths[index], key="the file")
