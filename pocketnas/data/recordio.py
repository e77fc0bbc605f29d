"""MXNet RecordIO files as insightface publishes its training sets, read and written without MXNet.

A `.rec` file is a sequence of framed parts. Each part is the magic word 0xCED7230A, a uint32
`lrec`, the data and zero padding to a multiple of 4 bytes. The top 3 bits of `lrec` are a
continuation flag (`cflag`) and the low 29 bits are the data length. The writer cuts a record at
every magic word that sits at a 4-byte-aligned offset inside it, so a record can span several
parts (cflag 1 = first, 2 = middle, 3 = last, 0 = whole record) and the reader puts the magic
back between them. The `.idx` file beside it maps each record key to the offset of its first
part, one "key TAB offset" line per record, in write order.

Each record starts with MXNet's 24-byte IRHeader (uint32 flag, float32 label, uint64 id, uint64
id2). When flag > 0, `flag` float32 values follow it and form the label vector. The rest is the
payload, an encoded image in insightface's data.

Everything is little-endian, as in every known file (MXNet writes native byte order).

insightface stores a face training set as `train.rec`, `train.idx` and `property` in one folder,
in one of two layouts:

* "header": key 0 has the label [A, B] and an empty payload. Keys 1..A-1 are images, and keys
  A..B-1 are one identity record per class whose label is the [start, end) range of that class's
  image keys (written by insightface's `dataset_merge.py`, `RecBuilder` and `face2rec2.py`).
* "no-header": every key in the `.idx` is an image (written by insightface's `SeqRecBuilder`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import mmap
import os
import struct
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np

from pocketnas.data.images import decode_image
from pocketnas.errors import DataError
from pocketnas.fileio import atomic_write_text, ensure_parent, umask_mode

logger = logging.getLogger(__name__)

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
# A part's data length has 29 bits; dmlc-core rejects whole records of 2**29 bytes or more.
MAX_RECORD_LEN = (1 << 29) - 1
_LENGTH_MASK = (1 << 29) - 1
_PART_HEADER = struct.Struct("<II")
_IR_HEADER = struct.Struct("<IfQQ")
IR_HEADER_SIZE = _IR_HEADER.size  # 24 bytes, no padding in little-endian "IfQQ"
_MAX_UINT64 = (1 << 64) - 1

REC_NAME = "train.rec"
IDX_NAME = "train.idx"
PROPERTY_NAME = "property"


class IRHeader(NamedTuple):
    """MXNet's record header.

    `label` is a float when `flag` is 0 and a tuple of `flag` floats otherwise. insightface puts
    the record key in `id`; `id2` carries no meaning.
    """

    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


class RecordPart(NamedTuple):
    """One framed part of a record in a `.rec` file: where it starts, its cflag and data length."""

    offset: int
    cflag: int
    length: int


def _padding(length: int) -> int:
    return (4 - length % 4) % 4


def pack_record(
    label: float | Sequence[float] | np.ndarray, payload: bytes, id: int = 0, id2: int = 0
) -> bytes:
    """Build a record (IRHeader, optional label vector, payload) the way MXNet's `pack` does.

    As in MXNet, the flag follows from the label and cannot be chosen. A scalar label gives flag 0
    and is stored in the header. A sequence of n values gives flag n, the label field 0.0 and the
    n float32 values after the header.

    Raises:
        ValueError: the label is an empty sequence (it would read back as the scalar 0.0), or an
            id does not fit in a uint64.
    """
    for name, value in (("id", id), ("id2", id2)):
        if not 0 <= value <= _MAX_UINT64:
            raise ValueError(f"{name}={value} does not fit in an unsigned 64-bit integer")

    if np.ndim(label) == 0:
        header = _IR_HEADER.pack(0, float(label), id, id2)  # type: ignore[arg-type]
        return header + bytes(payload)

    vector = np.asarray(label, dtype="<f4").ravel()
    if vector.size == 0:
        raise ValueError("a label vector needs at least one value")
    header = _IR_HEADER.pack(vector.size, 0.0, id, id2)
    return header + vector.tobytes() + bytes(payload)


def unpack_record(
    record: bytes, path: str | os.PathLike[str] = "<record>", key: int | None = None
) -> tuple[IRHeader, bytes]:
    """Split a record into its IRHeader and payload.

    `path` and `key` only serve the error message.

    Raises:
        DataError: the record is shorter than its header (24 bytes plus 4 per label value).
    """
    where = "record" if key is None else f"record key {key}"
    if len(record) < IR_HEADER_SIZE:
        raise DataError(
            path,
            f"{where} is {len(record)} bytes, shorter than the {IR_HEADER_SIZE}-byte IRHeader",
        )
    flag, scalar, record_id, record_id2 = _IR_HEADER.unpack_from(record, 0)
    if flag == 0:
        return IRHeader(0, scalar, record_id, record_id2), bytes(record[IR_HEADER_SIZE:])

    payload_start = IR_HEADER_SIZE + 4 * flag
    if len(record) < payload_start:
        raise DataError(
            path,
            f"{where} is {len(record)} bytes, but its IRHeader flag {flag} announces a "
            f"{flag}-value label vector ending at byte {payload_start}",
        )
    vector = struct.unpack_from(f"<{flag}f", record, IR_HEADER_SIZE)
    return IRHeader(flag, tuple(vector), record_id, record_id2), bytes(record[payload_start:])


def _split_at_aligned_magic(record: bytes) -> list[bytes]:
    """Cut a record at every magic word on a 4-byte boundary, dropping the magic words.

    This is the rule of dmlc-core's RecordIOWriter: only whole words at record offsets 0, 4, 8, ...
    are compared, so a magic at an unaligned offset or in a trailing partial word stays in the
    data. Two magic words in a row give an empty middle part.
    """
    pieces: list[bytes] = []
    start = 0
    aligned_end = len(record) - len(record) % 4
    position = record.find(MAGIC_BYTES, 0, aligned_end)
    while position != -1:
        if position % 4 == 0:
            pieces.append(record[start:position])
            start = position + 4
            position = record.find(MAGIC_BYTES, start, aligned_end)
        else:
            position = record.find(MAGIC_BYTES, position + 1, aligned_end)
    pieces.append(record[start:])
    return pieces


def frame_record(record: bytes) -> bytes:
    """Return the bytes a RecordIO writer puts in the `.rec` file for one record.

    Raises:
        ValueError: the record is 2**29 bytes or longer, which the 29-bit length cannot express.
    """
    if len(record) > MAX_RECORD_LEN:
        raise ValueError(
            f"record of {len(record)} bytes is too long for RecordIO (at most {MAX_RECORD_LEN})"
        )
    pieces = _split_at_aligned_magic(record)
    framed = bytearray()
    for index, piece in enumerate(pieces):
        if len(pieces) == 1:
            cflag = 0
        elif index == 0:
            cflag = 1
        elif index == len(pieces) - 1:
            cflag = 3
        else:
            cflag = 2
        framed += _PART_HEADER.pack(MAGIC, (cflag << 29) | len(piece))
        framed += piece
    # Pieces before a cut are multiples of 4 long, so only the last one needs padding.
    framed += bytes(_padding(len(pieces[-1])))
    return bytes(framed)


def _parse_index(idx_path: Path) -> tuple[list[int], dict[int, int]]:
    """Read a `.idx` file into its keys (in line order) and a key -> offset map."""
    try:
        raw = idx_path.read_bytes()
    except FileNotFoundError:
        raise DataError(idx_path, "index file not found") from None
    except OSError as exc:
        raise DataError(idx_path, f"cannot read the index file ({exc.strerror})") from exc

    keys: list[int] = []
    offsets: dict[int, int] = {}
    for line_number, raw_line in enumerate(raw.split(b"\n"), start=1):
        line = raw_line.strip()
        if not line:
            continue
        fields = line.split(b"\t")
        try:
            if len(fields) != 2:
                raise ValueError
            key = int(fields[0])
            offset = int(fields[1])
        except ValueError:
            shown = raw_line[:60].decode("ascii", errors="replace")
            raise DataError(
                idx_path,
                f"line {line_number} is not 'key<TAB>offset' with two integers: {shown!r}",
            ) from None
        if key < 0 or offset < 0:
            raise DataError(idx_path, f"line {line_number} has a negative key or offset")
        if key in offsets:
            raise DataError(idx_path, f"line {line_number} repeats key {key}")
        keys.append(key)
        offsets[key] = offset
    return keys, offsets


class RecordIOReader:
    """Random access to the records of a `.rec` file through its `.idx` file.

    The `.rec` file is mapped into memory (read-only) on first use, so reading a record is a slice
    of the map instead of a seek and two reads. The map is made again when the process id changes,
    so each torch DataLoader worker uses its own. Pickling drops the map, so the reader also works
    with spawned workers.

    NOTE: the map expects the file to keep its size while it is open. Truncating a `.rec` file
    that a reader has mapped makes a later read of the lost bytes fail with SIGBUS, which ends the
    process instead of raising DataError.
    """

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str]) -> None:
        self.rec_path = Path(rec_path)
        self.idx_path = Path(idx_path)
        if not self.rec_path.is_file():
            raise DataError(self.rec_path, "record file not found")
        if not self.idx_path.is_file():
            raise DataError(
                self.idx_path,
                f"index file not found; {self.rec_path.name} cannot be read without the .idx "
                "written beside it",
            )
        self.keys, self._offsets = _parse_index(self.idx_path)
        self._handle: mmap.mmap | None = None
        self._handle_pid: int | None = None
        self._size = 0

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self._offsets

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_handle_pid"] = None
        return state

    def __enter__(self) -> RecordIOReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Unmap the file; a later read maps it again."""
        if self._handle is not None:
            self._handle.close()
        self._handle = None
        self._handle_pid = None

    def __del__(self) -> None:
        # The handle is opened implicitly, so it is also closed implicitly.
        with contextlib.suppress(Exception):
            self.close()

    def offset(self, key: int) -> int:
        """Return the offset of the record's first part in the `.rec` file."""
        return self._offsets[key]

    @property
    def rec_size(self) -> int:
        """Size of the `.rec` file in bytes, as seen when it was mapped."""
        self._file()
        return self._size

    def _file(self) -> mmap.mmap | bytes:
        """Return the mapped `.rec` file, mapping it first in a new process."""
        pid = os.getpid()
        if self._handle_pid != pid:
            # Closing a map inherited through fork unmaps it only in the child.
            self.close()
            try:
                with open(self.rec_path, "rb") as file:
                    self._size = os.fstat(file.fileno()).st_size
                    # mmap rejects empty files, and every offset is past the end of one anyway.
                    if self._size > 0:
                        self._handle = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
            except OSError as exc:
                raise DataError(self.rec_path, f"cannot open ({exc.strerror})") from exc
            self._handle_pid = pid
            logger.debug("mapped %s (%d bytes) in process %d", self.rec_path, self._size, pid)
        return b"" if self._handle is None else self._handle

    def _read_part(
        self, data: mmap.mmap | bytes, key: int, record_offset: int, part_offset: int, max_data: int
    ) -> tuple[RecordPart, bytes]:
        """Read one framed part, checking magic and bounds, and return at most `max_data` bytes."""
        if part_offset + _PART_HEADER.size > self._size:
            if part_offset >= self._size and part_offset == record_offset:
                raise DataError(
                    self.rec_path,
                    f"offset {record_offset} of key {key} in {self.idx_path.name} is past the "
                    f"end of the file ({self._size} bytes); the .rec file is truncated or the "
                    "index belongs to another file",
                )
            raise DataError(
                self.rec_path,
                f"truncated record at offset {record_offset} (key {key}): the file ends at "
                f"byte {self._size}, before the end of the part header at offset {part_offset}",
            )
        magic, lrec = _PART_HEADER.unpack_from(data, part_offset)
        if magic != MAGIC:
            raise DataError(
                self.rec_path,
                f"bad magic at offset {part_offset} (record key {key}): found 0x{magic:08X}, "
                f"expected 0x{MAGIC:08X}",
            )
        part = RecordPart(part_offset, lrec >> 29, lrec & _LENGTH_MASK)
        data_end = part_offset + _PART_HEADER.size + part.length
        if data_end > self._size:
            raise DataError(
                self.rec_path,
                f"truncated record at offset {record_offset} (key {key}): the part at offset "
                f"{part_offset} needs {part.length} data bytes, but the file ends at byte "
                f"{self._size}",
            )
        data_start = part_offset + _PART_HEADER.size
        return part, data[data_start : data_start + min(part.length, max_data)]

    def _read_framed(self, key: int, max_len: int | None = None) -> tuple[bytes, list[RecordPart]]:
        """Read a record's parts and rebuild it; stop after `max_len` bytes of the first part."""
        record_offset = self._offsets[key]
        mapped = self._file()
        limit = MAX_RECORD_LEN if max_len is None else max_len
        first, data = self._read_part(mapped, key, record_offset, record_offset, limit)
        if first.cflag not in (0, 1):
            raise DataError(
                self.rec_path,
                f"record key {key} at offset {record_offset} starts with a part of cflag "
                f"{first.cflag}; a record must start with cflag 0 or 1",
            )
        if first.cflag == 0 or (max_len is not None and len(data) >= max_len):
            return data, [first]

        parts = [first]
        pieces = [data]
        part_offset = record_offset
        while parts[-1].cflag != 3:
            part_offset += _PART_HEADER.size + parts[-1].length + _padding(parts[-1].length)
            part, data = self._read_part(mapped, key, record_offset, part_offset, MAX_RECORD_LEN)
            if part.cflag not in (2, 3):
                raise DataError(
                    self.rec_path,
                    f"record key {key} at offset {record_offset}: the part at offset "
                    f"{part_offset} has cflag {part.cflag}, expected 2 (middle) or 3 (last)",
                )
            parts.append(part)
            pieces.append(data)
        return MAGIC_BYTES.join(pieces), parts

    def read(self, key: int) -> bytes:
        """Return the whole record stored under `key`, rebuilt from its parts.

        Raises:
            KeyError: the `.idx` file has no such key.
            DataError: the magic is wrong, the record is truncated, its offset is past the end of
                the file or its parts are out of order.
        """
        record, _ = self._read_framed(key)
        return record

    def read_head(self, key: int, size: int) -> bytes:
        """Return the first `size` bytes of a record, or the whole record if it is shorter.

        This reads only the first part whenever it is long enough, which makes reading the
        IRHeaders of millions of records fast.
        """
        record, _ = self._read_framed(key, max_len=size)
        return record[:size]

    def parts(self, key: int) -> list[RecordPart]:
        """Return the framed parts of a record in file order."""
        _, parts = self._read_framed(key)
        return parts

    def read_header(self, key: int) -> IRHeader:
        """Return the IRHeader of a record, reading only the bytes the header needs."""
        head = self.read_head(key, IR_HEADER_SIZE)
        if len(head) >= IR_HEADER_SIZE:
            (flag,) = struct.unpack_from("<I", head, 0)
            if flag > 0:
                # Guard against a damaged flag asking for gigabytes; unpack_record reports it.
                head = self.read_head(key, IR_HEADER_SIZE + 4 * min(flag, MAX_RECORD_LEN // 4))
        header, _ = unpack_record(head, self.rec_path, key)
        return header


class RecordIOWriter:
    """Write a `.rec` / `.idx` pair that MXNet's `MXIndexedRecordIO` can read.

    Both files are written to temporary files in the target folders and renamed over the targets
    only by `close()` (or a context-manager exit without an exception), `.rec` first and `.idx`
    last. After an error, or `abort()`, the temporary files are removed and the targets are left
    as they were, so a half-written pair never looks complete.
    """

    def __init__(self, rec_path: str | os.PathLike[str], idx_path: str | os.PathLike[str]) -> None:
        self.rec_path = ensure_parent(rec_path)
        self.idx_path = ensure_parent(idx_path)
        self._rec_tmp = self._make_temporary(self.rec_path)
        try:
            self._idx_tmp = self._make_temporary(self.idx_path)
        except BaseException:
            self._rec_tmp[1].close()
            Path(self._rec_tmp[0]).unlink(missing_ok=True)
            raise
        self._position = 0
        self._keys: set[int] = set()
        self._closed = False

    @staticmethod
    def _make_temporary(target: Path) -> tuple[str, IO[bytes]]:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.chmod(name, umask_mode(0o666))
        return name, os.fdopen(fd, "wb")

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def write(self, key: int, record: bytes) -> None:
        """Append a record under `key` and add its `.idx` line.

        Raises:
            ValueError: the key is negative or already written, the record is too long, or the
                writer is closed.
        """
        if self._closed:
            raise ValueError("write() on a closed RecordIOWriter")
        if key < 0:
            raise ValueError(f"record key must be non-negative, got {key}")
        if key in self._keys:
            raise ValueError(f"record key {key} is already written")
        framed = frame_record(bytes(record))
        self._rec_tmp[1].write(framed)
        self._idx_tmp[1].write(f"{key}\t{self._position}\n".encode("ascii"))
        self._keys.add(key)
        self._position += len(framed)

    def close(self) -> None:
        """Flush both files to disk and rename them over the targets."""
        if self._closed:
            return
        self._closed = True
        try:
            for _, handle in (self._rec_tmp, self._idx_tmp):
                handle.flush()
                os.fsync(handle.fileno())
                handle.close()
            os.replace(self._rec_tmp[0], self.rec_path)
            os.replace(self._idx_tmp[0], self.idx_path)
        except BaseException:
            self._remove_temporaries()
            raise
        logger.debug("wrote %d records to %s", len(self._keys), self.rec_path)

    def abort(self) -> None:
        """Discard everything written so far and leave the targets untouched."""
        if self._closed:
            return
        self._closed = True
        self._remove_temporaries()

    def _remove_temporaries(self) -> None:
        for name, handle in (self._rec_tmp, self._idx_tmp):
            handle.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


def read_property(path: str | os.PathLike[str]) -> tuple[int, int, int]:
    """Read insightface's `property` file: "num_classes,height,width".

    Raises:
        DataError: the file is missing or does not hold three positive integers.
    """
    target = Path(path)
    try:
        text = target.read_text(encoding="ascii")
    except FileNotFoundError:
        raise DataError(target, "property file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(target, f"cannot read the property file ({exc})") from exc

    fields = text.strip().split(",")
    try:
        if len(fields) != 3:
            raise ValueError
        num_classes, height, width = (int(field.strip()) for field in fields)
    except ValueError:
        raise DataError(
            target, f"expected 'num_classes,height,width', found {text.strip()[:60]!r}"
        ) from None
    if min(num_classes, height, width) <= 0:
        raise DataError(target, f"values must be positive, found {text.strip()!r}")
    return num_classes, height, width


def write_property(path: str | os.PathLike[str], num_classes: int, height: int, width: int) -> None:
    """Write a `property` file atomically, without a trailing newline like `dataset_merge.py`."""
    atomic_write_text(path, f"{num_classes},{height},{width}")


def _label_class(label: float | tuple[float, ...]) -> float:
    return label[0] if isinstance(label, tuple) else label


class FaceRecordSet:
    """A face training set in insightface's RecordIO form: `train.rec`, `train.idx`, `property`.

    Opening reads every image's IRHeader (not its payload) to build `labels`, so label errors are
    found at once. The layout is detected as arcface_torch does, with a stricter test: key 0 is a
    header record when its flag is positive and its payload is empty.

    Attributes:
        folder: the folder holding the three files.
        num_classes: number of identities, from `property`.
        image_size: (height, width) from `property`.
        image_keys: record keys of the images, in the order indices refer to them.
        labels: int64 class id of each image, aligned with `image_keys`.
        layout: "header" (key 0 = [A, B] header record) or "no-header".
        label_form: "scalar" (flag 0), "vector" (first value of a float vector) or "mixed".
        identity_ranges: in the header layout, an int64 array of shape (num_classes, 2) with the
            [start, end) image keys of each class, read from the identity records. Every image
            in a class's range is checked to carry that class's label. None without a header.
        reader: the underlying RecordIOReader.
    """

    def __init__(self, folder: str | os.PathLike[str], name: str = "train") -> None:
        self.folder = Path(folder)
        if not self.folder.exists():
            raise DataError(self.folder, "folder not found")
        if not self.folder.is_dir():
            raise DataError(self.folder, "not a folder; expected a folder with a .rec/.idx pair")
        rec_path = self.folder / f"{name}.rec"
        idx_path = self.folder / f"{name}.idx"
        property_path = self.folder / PROPERTY_NAME
        missing = [path.name for path in (rec_path, idx_path, property_path) if not path.is_file()]
        if missing:
            raise DataError(
                self.folder,
                f"missing {', '.join(missing)}; a face record set needs {rec_path.name}, "
                f"{idx_path.name} and {PROPERTY_NAME}",
            )
        self.property_path = property_path
        self.num_classes, height, width = read_property(property_path)
        self.image_size = (height, width)
        self.reader = RecordIOReader(rec_path, idx_path)
        if not self.reader.keys:
            raise DataError(idx_path, "the index lists no records; the set is empty")

        self.layout, self.image_keys = self._find_image_keys()
        if not self.image_keys:
            raise DataError(rec_path, "the set contains no images")
        self.labels, self.label_form = self._read_labels()
        self.identity_ranges: np.ndarray | None = None
        if self.layout == "header":
            self.identity_ranges = self._read_identity_ranges()
        logger.debug(
            "opened %s: %d images, %d identities, layout %s, %s labels",
            rec_path,
            len(self.image_keys),
            self.num_classes,
            self.layout,
            self.label_form,
        )

    @property
    def rec_path(self) -> Path:
        """Path of the `.rec` file."""
        return self.reader.rec_path

    @property
    def idx_path(self) -> Path:
        """Path of the `.idx` file."""
        return self.reader.idx_path

    def _find_image_keys(self) -> tuple[str, list[int]]:
        if 0 not in self.reader:
            return "no-header", list(self.reader.keys)
        header0, payload0 = unpack_record(self.reader.read(0), self.rec_path, 0)
        if header0.flag == 0 or payload0:
            return "no-header", list(self.reader.keys)

        label = header0.label
        assert isinstance(label, tuple)
        if len(label) < 2:
            raise DataError(
                self.rec_path,
                f"header record key 0 has a {len(label)}-value label; expected [first identity "
                "key, end key]",
            )
        # NOTE: the range is stored as float32, so keys above 2**24 (16,777,216) come back
        # rounded. The header of a set with more records than that is not exact.
        first_identity, end_key = label[0], label[1]
        if not (first_identity.is_integer() and end_key.is_integer()) or first_identity < 1:
            raise DataError(
                self.rec_path,
                f"header record key 0 has label {list(label)}; expected two integers [A, B] "
                "with A >= 1",
            )
        identities = int(end_key) - int(first_identity)
        if identities != self.num_classes:
            raise DataError(
                self.property_path,
                f"property says {self.num_classes} classes, but header record key 0 of "
                f"{self.rec_path.name} lists {identities} identities (keys "
                f"{int(first_identity)}..{int(end_key) - 1})",
            )
        image_keys = list(range(1, int(first_identity)))
        absent = [key for key in image_keys if key not in self.reader]
        if absent:
            raise DataError(
                self.idx_path,
                f"header record key 0 says images are keys 1..{int(first_identity) - 1}, but "
                f"{len(absent)} of them are not in the index (first: {absent[0]})",
            )
        return "header", image_keys

    def _read_labels(self) -> tuple[np.ndarray, str]:
        labels = np.empty(len(self.image_keys), dtype=np.int64)
        forms: set[str] = set()
        for position, key in enumerate(self.image_keys):
            header = self.reader.read_header(key)
            forms.add("scalar" if header.flag == 0 else "vector")
            value = _label_class(header.label)
            if not math.isfinite(value) or not value.is_integer():
                raise DataError(
                    self.rec_path,
                    f"record key {key} has label {value}, which is not a whole class id",
                )
            class_id = int(value)
            if not 0 <= class_id < self.num_classes:
                raise DataError(
                    self.rec_path,
                    f"record key {key} has label {class_id}, outside 0..{self.num_classes - 1} "
                    f"(num_classes {self.num_classes} from {self.property_path.name})",
                )
            labels[position] = class_id
        form = forms.pop() if len(forms) == 1 else "mixed"
        return labels, form

    def _read_identity_ranges(self) -> np.ndarray:
        """Read the identity records that follow the images and check them against the labels."""
        first_identity = len(self.image_keys) + 1
        ranges = np.empty((self.num_classes, 2), dtype=np.int64)
        for class_id in range(self.num_classes):
            key = first_identity + class_id
            if key not in self.reader:
                raise DataError(
                    self.idx_path,
                    f"header record key 0 lists identity records {first_identity}.."
                    f"{first_identity + self.num_classes - 1}, but key {key} is not in the index",
                )
            header, payload = unpack_record(self.reader.read(key), self.rec_path, key)
            bounds = header.label if isinstance(header.label, tuple) else ()
            valid = (
                len(bounds) >= 2
                and not payload
                and all(value.is_integer() for value in bounds[:2])
                and 1 <= bounds[0] <= bounds[1] <= first_identity
            )
            if not valid:
                shown = list(bounds) if bounds else header.label
                raise DataError(
                    self.rec_path,
                    f"identity record key {key} (class {class_id}) has label {shown} and a "
                    f"{len(payload)}-byte payload; expected a [start, end) range of image keys "
                    f"within 1..{first_identity} and no payload",
                )
            start, end = int(bounds[0]), int(bounds[1])
            ranges[class_id] = (start, end)
            # Image key k sits at index k - 1 in the header layout.
            in_range = self.labels[start - 1 : end - 1]
            wrong = np.flatnonzero(in_range != class_id)
            if wrong.size:
                image_key = start + int(wrong[0])
                raise DataError(
                    self.rec_path,
                    f"record key {image_key} has label {int(in_range[wrong[0]])}, but identity "
                    f"record key {key} gives keys {start}..{end - 1} to class {class_id}",
                )
        return ranges

    def __len__(self) -> int:
        return len(self.image_keys)

    def __enter__(self) -> FaceRecordSet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Unmap the `.rec` file; a later read maps it again."""
        self.reader.close()

    def read_image_bytes(self, index: int) -> bytes:
        """Return the encoded image (the payload) of the image at `index`."""
        key = self.image_keys[index]
        _, payload = unpack_record(self.reader.read(key), self.rec_path, key)
        return payload

    def check_image_size(self, key: int, rgb: np.ndarray) -> None:
        """Raise DataError when a decoded image's size differs from the one in `property`."""
        height, width = self.image_size
        if rgb.shape[:2] != (height, width):
            raise DataError(
                self.rec_path,
                f"record key {key} is {rgb.shape[0]}x{rgb.shape[1]} pixels, but "
                f"{self.property_path.name} says {height}x{width}",
            )

    def read_image(self, index: int) -> np.ndarray:
        """Decode the image at `index` into an HWC uint8 RGB array.

        Raises:
            DataError: the payload is not a decodable image.
        """
        key = self.image_keys[index]
        return decode_image(self.read_image_bytes(index), path=self.rec_path, key=key)


def write_face_record_set(
    folder: str | os.PathLike[str],
    samples: Iterable[tuple[int, bytes]],
    num_classes: int,
    image_size: tuple[int, int],
) -> int:
    """Write `train.rec`, `train.idx` and `property` in the layout of insightface's RecBuilder.

    Images get keys 1..N with scalar float labels, then one identity record per class (flag 2,
    label [start, end) of its image keys), then the header record key 0 with [N + 1, N + 1 +
    num_classes]. This is the write order of `dataset_merge.py` and `RecBuilder`. Classes without
    images get an empty range. `samples` is consumed once, so it may be a generator.

    Args:
        folder: output folder, created if missing.
        samples: (class id, encoded image) pairs, grouped by class id in ascending order.
        num_classes: number of identities; every class id must be below it.
        image_size: (height, width) written to `property`.

    Returns:
        The number of images written.

    Raises:
        ValueError: a class id is out of range or out of order, or there are no samples.
    """
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)

    starts = [0] * num_classes
    ends = [0] * num_classes
    count = 0
    with RecordIOWriter(target / REC_NAME, target / IDX_NAME) as writer:
        previous = -1
        for label, payload in samples:
            class_id = int(label)
            if not 0 <= class_id < num_classes:
                raise ValueError(f"class id {class_id} is outside 0..{num_classes - 1}")
            if class_id < previous:
                raise ValueError(
                    f"samples must be grouped by class id in ascending order; class {class_id} "
                    f"follows class {previous}"
                )
            key = count + 1
            if class_id != previous:
                starts[class_id] = key
            ends[class_id] = key + 1
            writer.write(key, pack_record(float(class_id), payload, id=key))
            previous = class_id
            count += 1
        if count == 0:
            raise ValueError("no samples to write; an empty record set cannot be read back")

        first_identity = count + 1
        next_start = 1
        for class_id in range(num_classes):
            if ends[class_id] == 0:  # no images: empty range at the position the class would hold
                starts[class_id] = ends[class_id] = next_start
            next_start = ends[class_id]
            key = first_identity + class_id
            writer.write(key, pack_record([starts[class_id], ends[class_id]], b"", id=key))
        writer.write(0, pack_record([first_identity, first_identity + num_classes], b"", id=0))

    write_property(target / PROPERTY_NAME, num_classes, image_size[0], image_size[1])
    logger.debug("wrote %d images of %d identities to %s", count, num_classes, target)
    return count
