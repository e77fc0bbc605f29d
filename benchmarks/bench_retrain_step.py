"""Images per second and peak memory of a PocketNetS-128 retraining step on the CPU.

Run from the repository root:

    .venv/bin/python benchmarks/bench_retrain_step.py [--modes arcface kd] [--steps 10]

Each configuration runs in a fresh Python process, so that its peak memory is its own. The
process builds PocketNetS-128 from the `pocketnet-s128` preset, takes `--warmup` untimed steps
and then times `--steps` steps on one random batch of 112x112 images. It prints the median wall
clock time per step as images per second, and the median process CPU time per step, which
other jobs on a shared machine disturb less. Peak memory is the process's maximum resident set
size (`ru_maxrss`, what `/usr/bin/time -v` prints) in GB of 10^9 bytes. It includes the Python
interpreter, PyTorch and the models, which the "base GB" column gives alone (measured before the
first step).

A step is forward, loss, backward, gradient clipping to norm 5 and an SGD step (momentum 0.9,
weight decay 5e-4) over the network and the head. The modes differ in the loss:

* arcface: ArcFace (s = 64, m = 0.5) over `--classes` identities, cross-entropy.
* kd: the same plus template knowledge distillation, 100 * MSE between the L2-normalised
  embeddings of the student and of a frozen teacher (`--teacher`, 128-d embedding). The teacher
  runs first, in eval mode under `torch.no_grad`, so its activations are freed before the
  student's forward pass. The teacher has random weights, which cost the same time as trained
  ones. IResNet-100 takes about 24 GFLOPs per image, 40 times the student's 0.59, so kd runs
  time only `--kd-steps` steps.

`--precision bf16` runs the forward passes under `torch.autocast("cpu", dtype=torch.bfloat16)`.

The PocketNet authors' network with an ArcFace head over 1,000 identities (SGD with momentum,
batch 32, 112x112, CPU) was measured at 9.4 images/s with a 4.5 GB peak. The table prints
ratios to those figures for the arcface rows only; they were not re-measured by this script.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F

REFERENCE_IMAGES_PER_SECOND = 9.4
REFERENCE_PEAK_GB = 4.5
DISTILLATION_WEIGHT = 100.0
GRAD_CLIP = 5.0
TEACHERS = ("iresnet100", "iresnet50", "iresnet18")
MEMORY_FORMATS = ("channels-last", "nchw")
PRECISIONS = ("fp32", "bf16")


def peak_rss_gb() -> float:
    """Return the maximum resident set size of this process so far, in GB (10^9 bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kibibytes, macOS bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return peak * scale / 1e9


def build_step(settings: dict[str, Any]) -> Callable[[], None]:
    """Build the models, optimizer and batch of `settings` and return a function taking a step."""
    from pocketnas.config import RetrainConfig, load_preset
    from pocketnas.retrain.heads import ArcFace
    from pocketnas.retrain.iresnet import build_iresnet
    from pocketnas.retrain.train import build_network, config_genotype, network_spec

    torch.manual_seed(0)
    config = load_preset(RetrainConfig, "pocketnet-s128")
    genotype = config_genotype(config)
    if genotype is None:
        raise ValueError("the pocketnet-s128 preset has no genotype")
    model = build_network(network_spec(genotype, config)).train()
    head = ArcFace(config.embedding_size, settings["classes"], config.margin_s, config.margin_m)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)

    teacher = None
    if settings["mode"] == "kd":
        teacher = build_iresnet(settings["teacher"], embedding_size=config.embedding_size)
        teacher.eval().requires_grad_(False)

    images = torch.randn(settings["batch"], 3, config.image_size, config.image_size)
    labels = torch.randint(0, settings["classes"], (settings["batch"],))
    if settings["memory_format"] == "channels-last":
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if teacher is not None:
            teacher = teacher.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        images = images.contiguous(memory_format=torch.channels_last)

    def autocast() -> Any:
        if settings["precision"] == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return nullcontext()

    # NOTE: this repeats the step of the training loop in pocketnas/retrain/train.py so that the
    # benchmark runs on its own. Keep the two in step.
    def step() -> None:
        with autocast():
            target = None
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(images)
            embeddings = model(images)
            loss = F.cross_entropy(head(embeddings, labels), labels)
            if target is not None:
                distance = F.mse_loss(F.normalize(embeddings.float()), F.normalize(target.float()))
                loss = loss + DISTILLATION_WEIGHT * distance
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizer.step()

    return step


def measure(settings: dict[str, Any]) -> dict[str, Any]:
    """Take the warm-up and timed steps of `settings` in this process and return the figures."""
    torch.set_num_threads(settings["threads"])
    step = build_step(settings)
    base_gb = peak_rss_gb()
    for _ in range(settings["warmup"]):
        step()
    wall, cpu = [], []
    for _ in range(settings["steps"]):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - wall_start)
        cpu.append(time.process_time() - cpu_start)
    seconds = statistics.median(wall)
    return {
        **settings,
        "images_per_second": settings["batch"] / seconds,
        "seconds_per_step": seconds,
        "cpu_seconds_per_step": statistics.median(cpu),
        "peak_gb": peak_rss_gb(),
        "base_gb": base_gb,
    }


def run_child(settings: dict[str, Any]) -> dict[str, Any]:
    """Measure `settings` in a fresh Python process and return its figures."""
    command = [sys.executable, __file__, "--child", json.dumps(settings)]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(
            f"measuring {settings} failed with exit code {completed.returncode}:\n"
            f"{completed.stderr}"
        )
    return dict(json.loads(completed.stdout.strip().splitlines()[-1]))


def _default_threads() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _ratios(result: dict[str, Any]) -> tuple[str, str]:
    if result["mode"] != "arcface":
        return f"{'-':>10}", f"{'-':>10}"
    speed = result["images_per_second"] / REFERENCE_IMAGES_PER_SECOND
    memory = result["peak_gb"] / REFERENCE_PEAK_GB
    return f"{speed:>9.2f}x", f"{memory:>9.2f}x"


def print_header() -> None:
    print(
        f"{'mode':<8} {'teacher':<11} {'format':<14} {'prec':<5} {'threads':>7} {'img/s':>7} "
        f"{'s/step':>7} {'cpu s':>7} {'peak GB':>8} {'base GB':>8} {'vs 9.4/s':>10} "
        f"{'vs 4.5 GB':>10}"
    )


def print_row(result: dict[str, Any]) -> None:
    speed, memory = _ratios(result)
    teacher = result["teacher"] if result["mode"] == "kd" else "-"
    print(
        f"{result['mode']:<8} {teacher:<11} {result['memory_format']:<14} "
        f"{result['precision']:<5} {result['threads']:>7} "
        f"{result['images_per_second']:>7.2f} {result['seconds_per_step']:>7.3f} "
        f"{result['cpu_seconds_per_step']:>7.3f} {result['peak_gb']:>8.2f} "
        f"{result['base_gb']:>8.2f} {speed} {memory}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=["arcface", "kd"], choices=["arcface", "kd"])
    parser.add_argument(
        "--teacher", default="iresnet100", choices=TEACHERS, help="teacher network of mode kd"
    )
    parser.add_argument(
        "--memory-formats",
        nargs="+",
        default=["channels-last"],
        choices=MEMORY_FORMATS,
        help="layouts of weights and images; channels-last is what retraining uses",
    )
    parser.add_argument("--precisions", nargs="+", default=["fp32"], choices=PRECISIONS)
    parser.add_argument(
        "--threads",
        type=int,
        default=_default_threads(),
        help="PyTorch intra-op threads (default: the CPUs this process may run on)",
    )
    parser.add_argument("--steps", type=int, default=8, help="timed steps per arcface run")
    parser.add_argument("--kd-steps", type=int, default=3, help="timed steps per kd run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--batch", type=int, default=32, help="images per step")
    parser.add_argument("--classes", type=int, default=1000, help="identities of the head")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(json.loads(args.child))))
        return
    for name in ("steps", "kd_steps", "threads", "batch", "classes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")

    if not args.json:
        print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}")
        print_header()
    results = []
    for mode in args.modes:
        for memory_format in args.memory_formats:
            for precision in args.precisions:
                settings = {
                    "mode": mode,
                    "teacher": args.teacher,
                    "memory_format": memory_format,
                    "precision": precision,
                    "threads": args.threads,
                    "steps": args.kd_steps if mode == "kd" else args.steps,
                    "warmup": args.warmup,
                    "batch": args.batch,
                    "classes": args.classes,
                }
                results.append(run_child(settings))
                if not args.json:
                    print_row(results[-1])
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
