"""Single-process or torchrun (DistributedDataParallel) execution, chosen from the environment."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

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

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Mean of each gradient over the ranks (what DDP does, for loops that call model methods other than
        ``forward``); nothing on one rank."""
        if self.world_size == 1:
            return
        for p in params:
            if p.grad is not None:
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.world_size

    def from_main(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (so decisions that depend on a clock agree)."""
        if self.world_size == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        torch.distributed.broadcast(t, 0)
        return float(t.item())

    def sync_buffers(self, module: torch.nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics) on every rank."""
        if self.world_size > 1:
            for b in module.buffers():
                torch.distributed.broadcast(b, 0)

    def check_in_sync(self, module: torch.nn.Module) -> None:
        """Raise if the parameters differ between ranks (a desynchronised run); log that they agree."""
        if self.world_size == 1:
            return
        total = torch.stack([p.detach().double().abs().sum() for p in module.parameters()]).sum().reshape(1)
        gathered = [torch.zeros_like(total) for _ in range(self.world_size)]
        torch.distributed.all_gather(gathered, total.to(self.device))
        values = [float(g.item()) for g in gathered]
        if max(values) - min(values) > 1e-9 * max(abs(v) for v in values):
            raise RuntimeError(f"ranks disagree on the parameters: {values}")
        self.log(f"parameters identical on all {self.world_size} ranks")

    def log(self, message: str) -> None:
        if self.is_main:
            print(message, flush=True)


def start_run(device: str, out: str | os.PathLike, seed: int) -> tuple[DistributedContext, Path]:
    """Common start of a training run: the distributed context, the run folder (created), all seeds set."""
    import random

    import numpy as np

    ctx = DistributedContext.from_env(device)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return ctx, folder


def save_resume_point(path: Path, model_state: dict, optimizer: torch.optim.Optimizer, epoch: int,
                      history: list[dict]) -> None:
    """Write ``last.pt`` atomically (tensors, numbers and a JSON string only: loadable with weights_only)."""
    tmp = path.with_suffix(".tmp")
    torch.save({"model": model_state, "optimizer": optimizer.state_dict(), "epoch": epoch,
                "history": json.dumps(history)}, tmp)
    tmp.replace(path)


def load_resume_point(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      strict: bool = True) -> tuple[int, list[dict]]:
    """Restore model and optimiser from ``last.pt`` if it exists; returns (epochs done, history)."""
    if not path.is_file():
        return 0, []
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"], strict=strict)
    optimizer.load_state_dict(state["optimizer"])
    return int(state["epoch"]), json.loads(state["history"])
