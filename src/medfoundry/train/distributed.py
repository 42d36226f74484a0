"""Single-process or torchrun (DistributedDataParallel) execution, chosen from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass
class DistributedContext:
    """Rank, world size and device of this process; ``wrap`` adds DDP only when there are several ranks."""

    rank: int
    world_size: int
    device: torch.device

    @classmethod
    def from_env(cls, device: str = "auto") -> DistributedContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
        dev = torch.device(device)
        if world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
        return cls(rank, world, dev)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world_size == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def log(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)
