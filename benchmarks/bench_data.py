"""Images per second of reading, decoding and augmenting a face set, beside MXNet's reader.

Run from the repository root:

    .venv/bin/python benchmarks/bench_data.py [--data DIR] [--mxnet-python PATH] [--repeats 3]
        [--rounds 3]

Without `--data`, a set of 2,000 synthetic 112x112 faces (100 identities x 20 images, JPEG
quality 90) is drawn into a temporary folder first. Each pass visits every image once in one
shuffled order, the same for every reader. A round times `--repeats` passes of every reader in
turn, MXNet included, and the time printed is the fastest pass of `--rounds` rounds. Rounds
spread each reader over the whole run, so other work on a shared machine slows all readers
alike and the ratios stay comparable. Measured:

* pocketnas, 1 process: `FaceRecordDataset(train=True)[i]` for each index, which reads the record
  through the `.idx` offset, decodes the JPEG to RGB, flips it at random and normalises it to a
  float32 CHW tensor in [-1, 1]. The uint8 row is the same with `normalize=False`, which leaves
  the normalisation to `normalize_batch` on whole batches (for example on the GPU).
* pocketnas, 1 process, batch path: `FaceRecordDataset.__getitems__` on batches of 64 indices in
  the same order, without a DataLoader, once with 1 decode thread and once with
  `--decode-threads` threads (default 2). It writes each image into one float32 NCHW batch.
* pocketnas DataLoader: the same datasets through a torch DataLoader with batches of 64 and
  `collate_fn=collate_faces`, in the main process (0 workers) and with N worker processes. Each
  batch is read by the dataset's `__getitems__` into one contiguous NCHW tensor. Workers are
  started before timing (persistent workers, one warm-up pass). The last row sends uint8
  batches from the workers and normalises them with `normalize_batch` in the main process, which
  gives the same float batches as the float dataset. Each batch reaches the main process through
  newly allocated shared memory, and a float batch is four times the bytes of a uint8 one.
* MXNet, 1 process: `MXIndexedRecordIO.read_idx`, `recordio.unpack`, `mx.image.imdecode` (RGB),
  `.asnumpy()`, a random flip and the same normalisation in numpy. MXNet 1.9.1 does not install
  beside numpy 2, so this part runs in a separate Python given by `--mxnet-python` or the
  POCKETNAS_MXNET_PYTHON environment variable, and is skipped with a note otherwise. It runs with
  MXNET_ENGINE_TYPE=NaiveEngine unless that variable is set: one image at a time, MXNet's default
  threaded engine only adds hand-offs between threads. On a 2-core virtual machine it was 5 to
  45 % slower than NaiveEngine and varied more from run to run.
* Decoding alone, for reference: the JPEG decoder pocketnas uses and Pillow.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

from pocketnas.data.dataset import FaceRecordDataset, collate_faces, normalize_batch
from pocketnas.data.images import JPEG_DECODER, decode_image
from pocketnas.data.synth import synthesize

MXNET_PYTHON_VARIABLE = "POCKETNAS_MXNET_PYTHON"

# Runs under the MXNet interpreter; prints one JSON object with the fastest pass in seconds.
MXNET_SCRIPT = r"""
import json, sys, time
import numpy as np
import mxnet as mx

folder, order_file, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
keys = [int(line) for line in open(order_file)]
record = mx.recordio.MXIndexedRecordIO(folder + "/train.idx", folder + "/train.rec", "r")
rng = np.random.default_rng(0)
fastest = float("inf")
for _ in range(repeats):
    start = time.perf_counter()
    for key in keys:
        header, payload = mx.recordio.unpack(record.read_idx(key))
        image = mx.image.imdecode(payload).asnumpy()
        if rng.random() < 0.5:
            image = image[:, ::-1]
        tensor = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32) / 127.5 - 1.0
    fastest = min(fastest, time.perf_counter() - start)
print(json.dumps({"seconds": fastest, "images": len(keys), "mxnet": mx.__version__}))
"""


def fastest_pass(run_pass: Callable[[], None], repeats: int) -> float:
    """Return the fastest wall-clock time of `repeats` calls of `run_pass`."""
    fastest = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run_pass()
        fastest = min(fastest, time.perf_counter() - start)
    return fastest


def time_items(dataset: FaceRecordDataset, order: np.ndarray, repeats: int) -> float:
    def run_pass() -> None:
        for index in order:
            dataset[int(index)]

    return fastest_pass(run_pass, repeats)


def time_batches(dataset: FaceRecordDataset, order: np.ndarray, repeats: int) -> float:
    """Time passes of `__getitems__` on batches of 64, as a DataLoader with 0 workers calls it."""
    batches = [order[start : start + 64].tolist() for start in range(0, len(order), 64)]

    def run_pass() -> None:
        for batch in batches:
            dataset.__getitems__(batch)

    return fastest_pass(run_pass, repeats)


def time_loader(
    dataset: FaceRecordDataset,
    order: np.ndarray,
    workers: int,
    repeats: int,
    normalize_in_main: bool = False,
) -> float:
    """Time passes through a DataLoader, with `normalize_batch` on each batch if requested."""
    loader = DataLoader(
        dataset,
        batch_size=64,
        sampler=order.tolist(),
        collate_fn=collate_faces,
        num_workers=workers,
        persistent_workers=workers > 0,
        multiprocessing_context="fork" if workers > 0 else None,
    )

    def run_pass() -> None:
        for images, _ in loader:
            if normalize_in_main:
                normalize_batch(images)

    run_pass()  # starts the workers, if any
    return fastest_pass(run_pass, repeats)


def time_decoders(payloads: list[bytes], repeats: int) -> tuple[float, float]:
    def decode_fast() -> None:
        for payload in payloads:
            decode_image(payload)

    def decode_pillow() -> None:
        for payload in payloads:
            with Image.open(io.BytesIO(payload)) as image:
                np.asarray(image.convert("RGB"))

    return fastest_pass(decode_fast, repeats), fastest_pass(decode_pillow, repeats)


def time_mxnet(
    python: str, folder: Path, keys: list[int], repeats: int
) -> tuple[float, str] | None:
    """Run the MXNet reader in `python`; return (seconds, MXNet version), or None after a note."""
    with tempfile.TemporaryDirectory() as scratch:
        order_file = Path(scratch) / "keys.txt"
        order_file.write_text("".join(f"{key}\n" for key in keys))
        completed = subprocess.run(
            [python, "-c", MXNET_SCRIPT, str(folder), str(order_file), str(repeats)],
            capture_output=True,
            text=True,
            check=False,
            env={"MXNET_ENGINE_TYPE": "NaiveEngine", **os.environ},
        )
    if completed.returncode != 0:
        last_line = (completed.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"note: MXNet run with {python} failed, skipped: {last_line}")
        return None
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return float(result["seconds"]), str(result["mxnet"])


def time_round(
    dataset: FaceRecordDataset,
    raw: FaceRecordDataset,
    threaded: FaceRecordDataset,
    order: np.ndarray,
    payloads: list[bytes],
    workers: int,
    repeats: int,
) -> dict[str, float]:
    """Time every pocketnas reader once; return the fastest pass of each in seconds."""
    fast_decode, pillow_decode = time_decoders(payloads, repeats)
    return {
        "decode": fast_decode,
        "decode_pillow": pillow_decode,
        "items": time_items(dataset, order, repeats),
        "items_uint8": time_items(raw, order, repeats),
        "batches": time_batches(dataset, order, repeats),
        "batches_threaded": time_batches(threaded, order, repeats),
        "loader_main": time_loader(dataset, order, 0, repeats),
        "loader_main_uint8": time_loader(raw, order, 0, repeats),
        "loader_workers": time_loader(dataset, order, workers, repeats),
        "loader_workers_uint8": time_loader(raw, order, workers, repeats),
        "loader_workers_main_normalize": time_loader(raw, order, workers, repeats, True),
    }


def print_rate(label: str, rate: float, note: str = "") -> None:
    print(f"{label + ':':<56}{rate:8.0f} images/s" + (f"  ({note})" if note else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="folder with train.rec/train.idx/property (default: synth)")
    parser.add_argument(
        "--mxnet-python",
        default=os.environ.get(MXNET_PYTHON_VARIABLE),
        help=f"Python with mxnet installed (default: ${MXNET_PYTHON_VARIABLE}; none: skip)",
    )
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="passes per reader and round (default 3)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all readers (default 3)")
    parser.add_argument(
        "--decode-threads",
        type=int,
        default=2,
        help="threads decoding each batch in the threaded batch row (default 2)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(args.data) if args.data else Path(scratch) / "faces"
        if not args.data:
            synthesize(folder, 100, 20, pairs=2, seed=0, image_size=112, show_progress=False)
        dataset = FaceRecordDataset(folder, train=True, decode_threads=1)
        raw = FaceRecordDataset(folder, train=True, normalize=False, decode_threads=1)
        threaded = FaceRecordDataset(folder, train=True, decode_threads=args.decode_threads)
        order = np.random.default_rng(0).permutation(len(dataset))
        images = len(order)
        height, width = dataset.image_size
        print(f"data: {images} images of {height}x{width} in {folder}")
        print(f"JPEG decoder: {JPEG_DECODER}, torch threads: {torch.get_num_threads()}")

        payloads = [dataset.record_set.read_image_bytes(int(index)) for index in order]
        keys = [dataset.record_set.image_keys[int(index)] for index in order]
        best: dict[str, float] = {}
        mxnet_python, mxnet_version = args.mxnet_python, None
        for _ in range(args.rounds):
            timings = time_round(
                dataset, raw, threaded, order, payloads, args.workers, args.repeats
            )
            if mxnet_python:
                mxnet = time_mxnet(mxnet_python, folder, keys, args.repeats)
                if mxnet is None:  # time_mxnet printed why, and other rounds would fail too
                    mxnet_python = None
                else:
                    timings["mxnet"], mxnet_version = mxnet
            for name, seconds in timings.items():
                best[name] = min(best.get(name, float("inf")), seconds)

    fast_decode, pillow_decode = best["decode"], best["decode_pillow"]
    one_process, one_process_raw = best["items"], best["items_uint8"]
    loader_main, loader_main_raw = best["loader_main"], best["loader_main_uint8"]
    loader_workers, loader_workers_raw = best["loader_workers"], best["loader_workers_uint8"]

    workers = f"{args.workers} workers"
    print_rate(f"decode only, {JPEG_DECODER}", images / fast_decode)
    print_rate("decode only, pillow", images / pillow_decode)
    print_rate("pocketnas, 1 process", images / one_process, "read + decode + flip + normalise")
    print_rate("pocketnas, 1 process, uint8", images / one_process_raw, "read + decode + flip")
    batches, batches_threaded = best["batches"], best["batches_threaded"]
    print_rate(
        "pocketnas, 1 process, batch path", images / batches, "1 decode thread, batches of 64"
    )
    print_rate(
        f"pocketnas, 1 process, batch path with {args.decode_threads} decode threads",
        images / batches_threaded,
        f"{batches / batches_threaded:.2f}x of 1 thread",
    )
    print_rate("DataLoader, 0 workers", images / loader_main, "batches of 64")
    print_rate(
        f"DataLoader, {workers}", images / loader_workers, f"{loader_main / loader_workers:.2f}x"
    )
    print_rate("DataLoader, 0 workers, uint8", images / loader_main_raw)
    print_rate(
        f"DataLoader, {workers}, uint8",
        images / loader_workers_raw,
        f"{loader_main_raw / loader_workers_raw:.2f}x",
    )
    main_normalize = best["loader_workers_main_normalize"]
    print_rate(
        f"DataLoader, {workers}, normalize_batch",
        images / main_normalize,
        f"float batches, {loader_main / main_normalize:.2f}x of 0 workers",
    )
    if mxnet_version is None:
        if not args.mxnet_python:
            print(
                f"MXNet: skipped; give --mxnet-python or set {MXNET_PYTHON_VARIABLE} to a Python "
                "with mxnet 1.9.1"
            )
        return
    seconds = best["mxnet"]
    print_rate(
        f"MXNet {mxnet_version}, 1 process", images / seconds, "read + imdecode + flip + normalise"
    )
    ratio, ratio_raw = seconds / one_process, seconds / one_process_raw
    print(f"ratio pocketnas / MXNet, 1 process: {ratio:.2f} (uint8: {ratio_raw:.2f})")
    print(
        f"ratio pocketnas batch path / MXNet, 1 process: {seconds / batches:.2f} with 1 decode "
        f"thread, {seconds / batches_threaded:.2f} with {args.decode_threads}"
    )
    print(f"ratio pocketnas DataLoader {workers} / MXNet 1 process: {seconds / loader_workers:.2f}")


if __name__ == "__main__":
    sys.exit(main())
