"""The one training loop of medfoundry (``train clip``, ``train clip-lora``, ``train sam``, ``train sam-propagation``).

Device, precision, processes and collectives come from Lightning Fabric: one process, or one per device under
``torchrun`` (DistributedDataParallel through the wrapped module's ``forward``; gloo on CPU, NCCL on GPU); bf16
autocast on CUDA, or on the CPU when asked. This module adds what every medfoundry trainer shares on top of it:
the learning-rate schedule applied each step, resumable checkpoints (``out/last.pt``, also written mid-epoch, so
an interrupted run resumes at the step where it stopped and ends where an uninterrupted run ends), the time
budget (rank 0's clock decides for every rank), rank-0 logging and progress lines, validation hooks and the
final parameter-agreement check between ranks.

A trainer describes its work as a :class:`TrainingTask`. The global batch of a step is drawn identically on every
rank and each rank computes its shard (:meth:`Trainer.shard`), so N processes with batch B follow the same
trajectory as one process with batch N × B (to float rounding), provided the loss is a mean over samples (or is
computed on features gathered with :meth:`Trainer.gather`) and no layer keeps per-process batch statistics.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

CHECKPOINT = "last.pt"


@dataclass
class TrainerConfig:
    """How a run executes (not what it learns).

    Attributes:
        out: run folder (created); holds ``last.pt``.
        seed: seeds Python, NumPy and torch before anything is built.
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        bf16: bfloat16 autocast in the wrapped module's forward (on CPU worth it only with AVX512-BF16 / AMX).
        max_minutes: stop after the epoch in which this much training time (carried over resumes) has passed.
        stop_after_steps: end this process after that many optimiser steps, writing a resume point first
            (an interruption, as a killed job has after its last periodic checkpoint).
        checkpoint_every: also write ``last.pt`` every that many steps inside an epoch (None: at epoch ends).
        grad_clip: clip the global gradient norm to this value before each step (None: no clipping).
        progress: log a JSON line every tenth of an epoch (rank 0).
    """

    out: str | Path
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    max_minutes: float | None = None
    stop_after_steps: int | None = None
    checkpoint_every: int | None = None
    grad_clip: float | None = None
    progress: bool = True


class TrainingTask(Protocol):
    """What one trainer learns; :meth:`Trainer.fit` runs it.

    ``steps_per_epoch`` optimiser steps per epoch, ``epochs`` epochs; ``loss_key`` names the mean training loss
    in the history. ``begin_epoch(epoch, first_step)`` draws the epoch's global batches (replaying the draws of
    steps before ``first_step`` when resuming) and sets train/eval modes. ``training_step(module, epoch, step)``
    returns this rank's loss for the step through the wrapped ``module`` (None when the epoch's data ran out).
    ``learning_rate(step, elapsed_s)`` gives the rate of a global step. ``validate(epoch)`` runs on rank 0 only
    (on the unwrapped model, no collectives) and returns history fields; epoch -1 is before training and may
    return ``{}``. ``state()``/``load_state()`` carry random-generator state that cannot be replayed.
    ``model_state()``/``load_model_state()`` are the weights a resume point holds.
    """

    epochs: int
    steps_per_epoch: int
    loss_key: str
    clock_schedule: bool

    def begin_epoch(self, epoch: int, first_step: int) -> None: ...
    def training_step(self, module: torch.nn.Module, epoch: int, step: int) -> torch.Tensor | None: ...
    def learning_rate(self, step: int, elapsed_s: float) -> float: ...
    def validate(self, epoch: int) -> dict[str, Any]: ...
    def state(self) -> dict[str, torch.Tensor]: ...
    def load_state(self, state: dict[str, torch.Tensor]) -> None: ...
    def model_state(self) -> dict[str, torch.Tensor]: ...
    def load_model_state(self, state: dict[str, torch.Tensor]) -> None: ...


class SeededSampleTask:
    """The mechanics shared by tasks whose samples are drawn by seed (``train sam-propagation``, ``train box3d``):
    one seed per sample of the global batch from one stream (``seed``) on every rank, each rank loading its shard
    through ``self.dataset[seed]``; warm-up then cosine learning rate; weights as the resume point (the stream is
    replayed from the seed, so no generator state is saved). Subclasses set ``self.dataset`` and ``self.model``,
    and define :meth:`train_mode`, ``training_step`` and ``validate``.

    ``steps_per_epoch`` counts steps of one process's batch: under torchrun an epoch is shared out.
    """

    loss_key = "loss"
    clock_schedule = False
    model: torch.nn.Module
    dataset: Any

    def __init__(self, trainer: Trainer, *, epochs: int, steps_per_epoch: int, batch_size: int, lr: float,
                 warmup_steps: int, seed: int) -> None:
        self.trainer, self.epochs, self.lr, self.warmup_steps = trainer, epochs, lr, warmup_steps
        self.steps_per_epoch = max(1, steps_per_epoch // trainer.world_size)
        self.total = self.steps_per_epoch * epochs
        self.global_batch = batch_size * trainer.world_size
        self.stream, self.drawn, self.seeds = random.Random(seed), 0, []
        self.batches: Any = iter(())

    def learning_rate(self, step: int, elapsed_s: float) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps)
        return self.lr * warm * 0.5 * (1 + math.cos(math.pi * step / self.total))

    def begin_epoch(self, epoch: int, first_step: int) -> None:
        per_epoch = self.steps_per_epoch * self.global_batch
        while self.drawn <= epoch:  # the stream continues over epochs (a resumed run replays the earlier ones)
            self.seeds = [self.stream.getrandbits(32) for _ in range(per_epoch)]
            self.drawn += 1
        part = self.trainer.shard(self.global_batch)
        starts = range(first_step * self.global_batch, per_epoch, self.global_batch)
        self.batches = iter(torch.utils.data.DataLoader(
            self.dataset, batch_sampler=[self.seeds[s : s + self.global_batch][part] for s in starts]))
        self.train_mode()

    def train_mode(self) -> None:
        """Set the model's modes for training (called at each epoch's start)."""
        self.model.train()

    def state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def model_state(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_model_state(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)


def _fabric(device: str, bf16: bool) -> Any:
    """A launched Fabric for ``device``: one device, or under torchrun the local ranks' devices with DDP."""
    from lightning_fabric import Fabric
    from lightning_fabric.strategies import DDPStrategy

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    kind, _, index = device.partition(":")
    devices: Any = local_world if world > 1 else ([int(index)] if index else 1)
    strategy: Any = "auto"
    if world > 1:  # a step's parameters may go unused on one rank (e.g. SAM's corrective clicks)
        strategy = DDPStrategy(find_unused_parameters=True, process_group_backend="nccl" if kind == "cuda" else "gloo")
    fabric = Fabric(accelerator=kind, devices=devices, num_nodes=max(1, world // local_world), strategy=strategy,
                    precision="bf16-mixed" if bf16 else "32-true")
    fabric.launch()
    return fabric


class Trainer:
    """Runs :class:`TrainingTask` objects under one :class:`TrainerConfig` (see the module docstring)."""

    def __init__(self, cfg: TrainerConfig) -> None:
        self.cfg = cfg
        self.fabric = _fabric(cfg.device, cfg.bf16)
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.interrupted = False

    # ---- processes -------------------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return int(self.fabric.global_rank)

    @property
    def world_size(self) -> int:
        return int(self.fabric.world_size)

    @property
    def device(self) -> torch.device:
        return torch.device(self.fabric.device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def log(self, message: str) -> None:
        """Print on rank 0 only."""
        if self.is_main:
            print(message, flush=True)

    def barrier(self) -> None:
        self.fabric.barrier()

    def from_main(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (so decisions that depend on a clock agree)."""
        return float(self.fabric.broadcast(float(value), src=0)) if self.world_size > 1 else float(value)

    def shard(self, n: int) -> slice:
        """This rank's rows of a global batch of ``n`` rows: contiguous, in rank order, sizes differing by at most
        one (every rank gets B rows of a global batch of N × B)."""
        sizes = self.shard_sizes(n)
        start = sum(sizes[: self.rank])
        return slice(start, start + sizes[self.rank])

    def shard_sizes(self, n: int) -> list[int]:
        """Rows of a global batch of ``n`` held by each rank (see :meth:`shard`)."""
        base, extra = divmod(n, self.world_size)
        return [base + (1 if r < extra else 0) for r in range(self.world_size)]

    def gather(self, x: torch.Tensor, n: int | None = None) -> torch.Tensor:
        """Every rank's (b, ...) rows of a global batch of ``n`` rows (default: world × b), concatenated in rank
        order, with gradients flowing back to each rank's own rows (open_clip's ``gather_with_grad``), so a
        contrastive loss sees the negatives of the global batch. One process: ``x`` itself."""
        if self.world_size == 1:
            return x
        sizes = self.shard_sizes(n) if n is not None else [len(x)] * self.world_size
        longest = max(sizes)
        if len(x) < longest:  # all_gather needs equal shapes: pad, then drop the padding
            x = torch.cat([x, x.new_zeros((longest - len(x), *x.shape[1:]))])
        parts = self.fabric.all_gather(x, sync_grads=True)  # (world, longest, ...)
        return torch.cat([parts[r, : sizes[r]] for r in range(self.world_size)])

    def mean_over_ranks(self, value: torch.Tensor) -> float:
        """Mean of a scalar over the ranks (the global batch's loss when each rank's loss is its shard's mean)."""
        if self.world_size == 1:
            return float(value.detach())
        return float(self.fabric.all_reduce(value.detach().float().reshape(1), reduce_op="mean").item())

    def setup(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[Any, Any]:
        """Move ``module`` to the device and wrap it (DDP under torchrun, autocast for bf16); call the wrapped
        module's forward in training steps, and use the unwrapped one for validation."""
        return self.fabric.setup(module, optimizer)

    # ---- resume points ---------------------------------------------------------------------------------------
    def _save(self, task: TrainingTask, optimizer: Any, epoch: int, step: int, history: list[dict],
              losses: list[float], elapsed_s: float, epoch_s: float) -> None:
        """Write ``last.pt`` atomically on rank 0 (tensors, numbers and JSON strings: loadable with
        weights_only): weights, optimiser, position (epoch, step inside it) and the run's history so far."""
        if self.is_main:
            path = self.out / CHECKPOINT
            tmp = path.with_suffix(".tmp")
            torch.save({"model": task.model_state(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                        "step": step, "history": json.dumps(history), "task": task.state(),
                        "progress": json.dumps({"losses": losses, "elapsed_s": elapsed_s, "epoch_s": epoch_s})}, tmp)
            tmp.replace(path)
        self.barrier()

    def _load(self, task: TrainingTask, optimizer: Any) -> tuple[int, int, list[dict], dict[str, Any]]:
        """Restore ``last.pt`` if present: (epoch, step inside it, history, progress of the unfinished epoch).
        Resume points of earlier medfoundry versions (epoch ends, no step) load too."""
        path = self.out / CHECKPOINT
        if not path.is_file():
            return 0, 0, [], {}
        state = torch.load(path, map_location="cpu", weights_only=True)
        task.load_model_state(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("task"):
            task.load_state(state["task"])
        progress = json.loads(state["progress"]) if "progress" in state else {}
        history = json.loads(state["history"])
        progress.setdefault("elapsed_s", sum(float(e.get("seconds", 0)) for e in history))
        return int(state["epoch"]), int(state.get("step", 0)), history, progress

    # ---- the loop --------------------------------------------------------------------------------------------
    def fit(self, task: TrainingTask, module: Any, optimizer: Any) -> list[dict]:
        """Train ``task`` with the wrapped ``module`` and ``optimizer`` from :meth:`setup`, resuming from
        ``last.pt``; returns the history (one entry per epoch; entry 0 is the validation before training when the
        task reports one). Sets ``interrupted`` when ``stop_after_steps`` ended the run early."""
        cfg = self.cfg
        start_epoch, start_step, history, progress = self._load(task, optimizer)
        if start_epoch or start_step:
            self.log(f"resumed from {self.out / CHECKPOINT} at epoch {start_epoch}, step {start_step}")
        elif not history and self.is_main:
            before = task.validate(-1)
            if before:
                history.append({"epoch": 0, **before})
                self.log(json.dumps(history[-1]))
        started = time.time() - float(progress.get("elapsed_s", 0.0))
        steps_run, self.interrupted = 0, False
        for epoch in range(start_epoch, task.epochs):
            first = start_step if epoch == start_epoch else 0
            losses = list(progress.get("losses", [])) if first else []
            skipped = 0
            t0 = time.time() - (float(progress.get("epoch_s", 0.0)) if first else 0.0)
            task.begin_epoch(epoch, first)
            for s in range(first, task.steps_per_epoch):
                if cfg.stop_after_steps is not None and steps_run >= cfg.stop_after_steps:
                    self._save(task, optimizer, epoch, s, history, losses, time.time() - started, time.time() - t0)
                    self.log(f"stopped after {steps_run} steps (stop_after_steps): resume by running again")
                    self.interrupted = True
                    return history
                step = epoch * task.steps_per_epoch + s
                elapsed = self.from_main(time.time() - started) if task.clock_schedule else time.time() - started
                lr = task.learning_rate(step, elapsed)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss = task.training_step(module, epoch, s)
                if loss is None:
                    break
                optimizer.zero_grad(set_to_none=True)
                self.fabric.backward(loss)
                # the global gradient norm (the same on every rank after DDP's all-reduce); clipped when asked
                norm = self.fabric.clip_gradients(module, optimizer, max_norm=cfg.grad_clip or float("inf"),
                                                  error_if_nonfinite=False)
                steps_run += 1
                if not bool(torch.isfinite(torch.as_tensor(norm))):  # one bad batch must not poison the weights
                    optimizer.zero_grad(set_to_none=True)
                    skipped += 1
                    self.log(json.dumps({"epoch": epoch + 1, "step": s + 1, "skipped": "non-finite gradient"}))
                    continue
                optimizer.step()
                losses.append(self.mean_over_ranks(loss))
                self._progress(epoch, s + 1, task.steps_per_epoch, losses[-1], started)
                if cfg.checkpoint_every and (s + 1) % cfg.checkpoint_every == 0 and s + 1 < task.steps_per_epoch:
                    self._save(task, optimizer, epoch, s + 1, history, losses, time.time() - started,
                               time.time() - t0)
            entry: dict[str, Any] = {"epoch": epoch + 1, task.loss_key: float(np.mean(losses)) if losses else None,
                                     "seconds": round(time.time() - t0, 1), **({"skipped_steps": skipped} if skipped
                                                                                else {})}
            if self.is_main:
                entry.update(task.validate(epoch))
            history.append(entry)
            self.log(json.dumps(entry))
            elapsed = time.time() - started
            self._save(task, optimizer, epoch + 1, 0, history, [], elapsed, 0.0)
            if cfg.max_minutes is not None and self.from_main(elapsed / 60) > cfg.max_minutes:
                self.log(f"stopping after {epoch + 1} epochs: time budget of {cfg.max_minutes} min reached")
                break
        return history

    def _progress(self, epoch: int, step: int, steps: int, loss: float, started: float) -> None:
        if self.cfg.progress and self.is_main and (step == steps or step % max(1, steps // 10) == 0):
            print(json.dumps({"epoch": epoch + 1, "step": f"{step}/{steps}", "loss": round(loss, 4),
                              "elapsed_s": round(time.time() - started)}), flush=True)

    def check_in_sync(self, module: torch.nn.Module) -> None:
        """Raise if the parameters differ between ranks (a desynchronised run); log that they agree."""
        if self.world_size == 1:
            return
        total = torch.stack([p.detach().double().abs().sum() for p in module.parameters()]).sum().reshape(1)
        values = [float(v) for v in self.fabric.all_gather(total.to(self.device)).flatten()]
        if max(values) - min(values) > 1e-9 * max(abs(v) for v in values):
            raise RuntimeError(f"ranks disagree on the parameters: {values}")
        self.log(f"parameters identical on all {self.world_size} ranks")

    def finish(self, state: dict[str, torch.Tensor], record: Any, history: list[dict], cfg: Any) -> Path:
        """Write the model folder ``out/model`` (weights + record), ``history.json`` and ``train_config.json`` on
        rank 0; every rank returns once they are written."""
        from medfoundry.registry.loading import save_checkpoint

        folder = self.out / "model"
        if self.is_main:
            folder = save_checkpoint(state, record, folder, overwrite=True)
            (self.out / "history.json").write_text(json.dumps(history, indent=2))
            (self.out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2, default=str))
        self.barrier()
        return folder
