"""Process group set-up for runs under `torchrun`.

`torchrun --nproc_per_node N -m pocketnas retrain ...` starts N processes and gives each the
environment variables RANK, LOCAL_RANK and WORLD_SIZE, and the rendezvous address. Each process
calls `start_distributed`, which joins the group with NCCL when it drives a GPU and gloo on the
CPU. A process started without those variables runs alone, and nothing here is needed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from pocketnas.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Distributed:
    """Position of this process in the run: its rank, the process count and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True for rank 0, the only process that writes files and evaluates."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when a process group of more than one process is running."""
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"environment variable {name} must be an integer, got {value!r}"
        ) from None


def choose_device(request: str, local_rank: int) -> torch.device:
    """Turn 'auto', 'cpu', 'cuda' or 'cuda:N' into the device of this process."""
    if request == "cpu":
        return torch.device("cpu")
    if request == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {request!r} was asked for, but PyTorch sees no CUDA GPU")
    if request.startswith("cuda:"):
        return torch.device(request)
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def start_distributed(device_request: str = "auto") -> Distributed:
    """Join the process group that torchrun describes, or return a one-process context."""
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    device = choose_device(device_request, local_rank)
    if world_size > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
            logger.info(
                "rank %d of %d joined the %s group on %s", rank, world_size, backend, device
            )
    return Distributed(rank, world_size, local_rank, device)


def stop_distributed(context: Distributed) -> None:
    """Leave the process group, if this run joined one."""
    if context.active and dist.is_initialized():
        dist.destroy_process_group()
