"""insightface verification `.bin` files (lfw.bin, cfp_fp.bin, agedb_30.bin, ...).

A `.bin` file is a pickle of one 2-tuple `(images, issame)`: 2·N encoded images, where pair i is
images 2i and 2i+1, and N bools, True where a pair shows one identity. Three writers exist:

* Python 2 (the released 2018 files): images are Python 2 `str`, which Python 3 can only load
  with `encoding='bytes'`.
* Python 3 with `bytes` images.
* Python 3 with the 1-D uint8 numpy arrays that `cv2.imencode` returns (pickled through numpy's
  array reconstruction functions).

Unpickling can run arbitrary code, so these files are loaded by an unpickler that resolves only
the globals numpy needs to rebuild arrays and `_codecs.encode` (used by protocol-2 pickles of
`bytes` written by Python 3). Every other global is rejected before anything is called.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pocketnas.errors import DataError
from pocketnas.fileio import atomic_write_bytes

logger = logging.getLogger(__name__)

# (module, name) as a pickle spells it -> (numpy submodule, attribute). Pickles written with numpy
# 1.x name "numpy.core", which numpy 2 moved to "numpy._core". Both spellings are resolved here
# directly, which also avoids numpy 2's DeprecationWarning for "numpy.core".
_NUMPY_GLOBALS: dict[tuple[str, str], tuple[str, str]] = {
    ("numpy.core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
    # Protocol 5 pickles of arrays rebuild them from a buffer with _frombuffer.
    ("numpy.core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
}
_LATIN1_NAMES = {"latin1", "latin-1", "latin_1", "iso-8859-1", "iso8859-1"}


def _numpy_core_attribute(submodule: str, name: str) -> Any:
    for package in ("numpy._core", "numpy.core"):
        try:
            module = importlib.import_module(f"{package}.{submodule}")
        except ImportError:
            continue
        return getattr(module, name)
    raise ImportError(f"numpy has no {submodule}.{name}")


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for `_codecs.encode` that accepts only the latin-1 form pickle uses for bytes."""
    if encoding.lower() not in _LATIN1_NAMES:
        raise pickle.UnpicklingError(
            f"_codecs.encode with encoding {encoding!r}; only latin-1 is allowed"
        )
    return text.encode("latin-1", errors)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only numpy array reconstruction and latin-1 `_codecs.encode`."""

    def __init__(self, file: io.BufferedIOBase, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Callable[..., Any]:
        if (module, name) in _NUMPY_GLOBALS:
            result: Callable[..., Any] = _numpy_core_attribute(*_NUMPY_GLOBALS[module, name])
            return result
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        raise DataError(
            self._path,
            f"refusing to load: the pickle references {module}.{name}; a verification .bin "
            "may only contain bytes, bools and numpy uint8 arrays",
        )


def _image_bytes(item: object, index: int, path: Path) -> bytes:
    if isinstance(item, bytes):
        return item
    if isinstance(item, bytearray):
        return bytes(item)
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    kind = type(item).__name__
    if isinstance(item, np.ndarray):
        kind = f"{item.ndim}-D {item.dtype} array"
    raise DataError(
        path,
        f"image {index} is a {kind}; expected encoded image bytes or a 1-D uint8 array",
    )


def _issame_array(value: object, path: Path) -> np.ndarray:
    if isinstance(value, np.ndarray):
        if value.dtype != np.bool_ or value.ndim != 1:
            raise DataError(
                path, f"issame is a {value.ndim}-D {value.dtype} array; expected a list of bools"
            )
        return value.copy()
    if not isinstance(value, (list, tuple)):
        raise DataError(path, f"issame is a {type(value).__name__}; expected a list of bools")
    for index, item in enumerate(value):
        if not isinstance(item, bool):
            raise DataError(
                path, f"issame[{index}] is {item!r} ({type(item).__name__}); expected a bool"
            )
    return np.array(value, dtype=bool)


def load_verification_bin(path: str | os.PathLike[str]) -> tuple[list[bytes], np.ndarray]:
    """Load a verification `.bin` file without running code from it.

    Returns:
        The 2·N encoded images as `bytes` and the N pair flags as a bool array.

    Raises:
        DataError: the file is missing, not a readable pickle, references anything besides
            numpy's array reconstruction, or does not hold `(images, issame)` with twice as many
            images as pairs.
    """
    target = Path(path)
    try:
        raw = target.read_bytes()
    except FileNotFoundError:
        raise DataError(target, "verification file not found") from None
    except OSError as exc:
        raise DataError(target, f"cannot read the verification file ({exc.strerror})") from exc

    try:
        content = _ArrayOnlyUnpickler(io.BytesIO(raw), target).load()
    except DataError:
        raise
    except Exception as exc:  # a damaged pickle raises many types (EOFError, ValueError, ...)
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(target, f"not a readable verification pickle ({detail})") from exc

    if not isinstance(content, (tuple, list)) or len(content) != 2:
        raise DataError(
            target, f"expected a pickled 2-tuple (images, issame), found {type(content).__name__}"
        )
    raw_images, raw_issame = content
    if not isinstance(raw_images, (list, tuple)):
        raise DataError(target, f"images is a {type(raw_images).__name__}; expected a list")
    images = [_image_bytes(item, index, target) for index, item in enumerate(raw_images)]
    issame = _issame_array(raw_issame, target)
    if not issame.size:
        raise DataError(target, "the file contains no pairs")
    if len(images) != 2 * len(issame):
        raise DataError(
            target,
            f"{len(images)} images for {len(issame)} pairs; expected exactly 2 images per pair",
        )
    logger.debug("loaded %s: %d pairs", target, len(issame))
    return images, issame


def write_verification_bin(
    path: str | os.PathLike[str], images: Sequence[bytes], issame: Sequence[bool]
) -> None:
    """Write a verification `.bin` file atomically: pickle protocol 4 of (list of bytes, bools).

    Raises:
        ValueError: the image count is not twice the pair count, or an item has the wrong type.
    """
    image_list: list[bytes] = []
    for index, image in enumerate(images):
        is_uint8_vector = (
            isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 1
        )
        if not (isinstance(image, (bytes, bytearray, memoryview)) or is_uint8_vector):
            raise ValueError(f"image {index} is a {type(image).__name__}; expected bytes")
        image_list.append(bytes(image))
    flags: list[bool] = []
    for index, flag in enumerate(issame):
        if not isinstance(flag, (bool, np.bool_)):
            raise ValueError(f"issame[{index}] is {flag!r}; expected a bool")
        flags.append(bool(flag))
    if len(image_list) != 2 * len(flags):
        raise ValueError(f"{len(image_list)} images for {len(flags)} pairs; need 2 per pair")
    atomic_write_bytes(path, pickle.dumps((image_list, flags), protocol=4))
