"""Ranks of a dataset-scale audit: the ``torch.distributed`` context (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as tdist

__all__ = ["DistContext", "init_distributed", "pick_device"]


# ------------------------------------------------------------------------------------------ ranks
@dataclass
class DistContext:
    """Where this process stands in a ``torch.distributed`` group (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            tdist.barrier()

    def close(self) -> None:
        if self.owns_group and tdist.is_initialized():
            tdist.destroy_process_group()
            self.owns_group = False


def init_distributed(backend: Optional[str] = None) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Uses an already initialised group as it is.  Otherwise, when ``WORLD_SIZE`` > 1, initialises one
    with ``backend`` (default: NCCL when CUDA is available, else gloo) from the ``env://`` variables
    and, for NCCL, selects GPU ``LOCAL_RANK``.  Without ``WORLD_SIZE`` it returns rank 0 of 1.
    """
    if tdist.is_available() and tdist.is_initialized():
        return DistContext(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    if not tdist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    tdist.init_process_group(backend=backend)
    return DistContext(tdist.get_rank(), tdist.get_world_size(), local_rank, owns_group=True)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` (CUDA GPU ``local_rank`` when available, else the CPU), ``"cpu"`` or ``"cuda"`` as a device."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda but CUDA is not available")
        return torch.device(f"cuda:{local_rank}")
    if name != "cpu":
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")
