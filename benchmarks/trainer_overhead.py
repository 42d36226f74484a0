"""What a training-loop library costs: import time and per-step overhead of Lightning Fabric and Hugging Face
Accelerate against a plain PyTorch loop (one CPU process, a small MLP, the same steps for each).

    python benchmarks/trainer_overhead.py [--steps 300] [--out benchmarks/results/trainer_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def import_seconds(module: str, repeats: int = 3) -> float:
    """Median wall time of a fresh interpreter importing torch and then ``module``, minus torch alone."""
    def timed(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        return time.perf_counter() - t0

    base = statistics.median(timed("import torch") for _ in range(repeats))
    return statistics.median(timed(f"import torch, {module}") for _ in range(repeats)) - base


def _model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 8))
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def step_ms(kind: str, steps: int) -> tuple[float, float]:
    """(ms per step, final loss) of ``steps`` optimiser steps of the same model and batches."""
    model, opt = _model()
    backward = torch.Tensor.backward
    if kind == "fabric":
        from lightning_fabric import Fabric

        fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
        fabric.launch()
        model, opt = fabric.setup(model, opt)
        backward = fabric.backward
    elif kind == "accelerate":
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)
        model, opt = accelerator.prepare(model, opt)
        backward = accelerator.backward
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(32, 64, generator=gen), torch.randint(0, 8, (32,), generator=gen)) for _ in range(steps)]
    t0 = time.perf_counter()
    for x, y in batches:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        backward(loss)
        opt.step()
    return 1000 * (time.perf_counter() - t0) / steps, float(loss)


def main() -> int:
    from medfoundry.eval.provenance import collect

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "trainer_overhead.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    # no dataset (seeded random batches); the model is the seeded MLP, hashed from its initial state dict
    results: dict = {"benchmark": "trainer_overhead", "steps": args.steps,
                     "provenance": collect(name="MLP 64-256-8 (seed 0)", weights=_model()[0].state_dict(),
                                           settings=args),
                     "import_seconds_over_torch": {}, "ms_per_step": {}, "final_loss": {}}
    for module in ("lightning_fabric", "accelerate"):
        results["import_seconds_over_torch"][module] = round(import_seconds(module, args.repeats), 3)
    for kind in ("plain", "fabric", "accelerate"):  # interleaved repeats, median: the machine is shared
        results["ms_per_step"][kind] = []
    for _ in range(args.repeats):
        for kind in ("plain", "fabric", "accelerate"):
            ms, loss = step_ms(kind, args.steps)
            results["ms_per_step"][kind].append(round(ms, 4))
            results["final_loss"][kind] = loss
    results["median_ms_per_step"] = {k: statistics.median(v) for k, v in results["ms_per_step"].items()}
    results["load_average_1min_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(json.dumps({k: results[k] for k in ("import_seconds_over_torch", "median_ms_per_step", "final_loss")},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
