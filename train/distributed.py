"""Where this process stands in a torchrun job, and the device it uses.

Without torchrun a run is rank 0 of 1 and nothing here starts a process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from clifvqa._device import DeviceError, resolve_device


@dataclass(frozen=True)
class Dist:
    """Where this process stands in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()


def setup_dist(device_name: str) -> tuple[Dist, torch.device, bool]:
    """Join the torchrun process group when launched by torchrun; pick the device.

    A CUDA device always gets an index (``torch.cuda.set_device`` needs one): the GPU of
    LOCAL_RANK under torchrun, else the one asked for, else the current one.

    Raises:
        DeviceError: ``cuda:N`` under torchrun with several processes (all would use GPU N).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dist = Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = torch.device(resolve_device(device_name))
    if device.type == "cuda":
        if dist.enabled and device.index is not None:
            raise DeviceError(
                f"--device {device_name} under torchrun (WORLD_SIZE={world}) would put every process on GPU "
                f"{device.index}: pass --device cuda or auto, and each process takes the GPU of its "
                "LOCAL_RANK")
        index = dist.local_rank if dist.enabled else device.index
        device = torch.device("cuda", torch.cuda.current_device() if index is None else index)
        torch.cuda.set_device(device)
    started = False
    if dist.enabled and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
        started = True
    return dist, device, started


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed of process ``rank`` under torchrun after the shared initialisation. Ranks
    are a million apart so that no rank's seed is another split's (splits use seed + index)."""
    return seed + 1_000_000 * rank
