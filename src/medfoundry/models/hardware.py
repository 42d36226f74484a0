"""What the processor can do natively: the facts that decide whether bfloat16 pays off.

bfloat16 matrix products are native on GPUs and on CPUs with AVX512-BF16 (``avx512_bf16``, AMD Zen 4+, Intel
Cooper Lake+) or AMX (``amx_bf16``, Intel Sapphire Rapids+), and on Arm CPUs with the ``bf16`` extension.
Elsewhere (AVX2-only x86, older AVX-512) PyTorch emulates them, several times slower than float32.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: CPU flags (as /proc/cpuinfo names them) that mean native bfloat16 dot products.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@dataclass(frozen=True)
class CpuFeatures:
    """``model``: the CPU's name; ``capability``: the SIMD level PyTorch dispatches to
    (``torch.backends.cpu.get_cpu_capability()``: ``AVX512``, ``AVX2``, ``DEFAULT``, …); ``flags``: the
    CPU's feature flags (empty where /proc/cpuinfo is not available); ``cuda``: a CUDA GPU is visible."""

    model: str
    capability: str
    flags: frozenset[str]
    cuda: bool = False

    @property
    def native_bf16(self) -> bool:
        """Whether bfloat16 runs natively (GPU, or a CPU flag of :data:`BF16_FLAGS`)."""
        return self.cuda or bool(self.flags & BF16_FLAGS)

    def key(self) -> str:
        """A short identity for caches of measurements made on this machine."""
        return f"{self.model}|{self.capability}|{','.join(sorted(self.flags & BF16_FLAGS)) or '-'}|cuda={self.cuda}"


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(model name, flags) from the text of /proc/cpuinfo (x86 ``flags``, Arm ``Features``)."""
    model, flags = "", set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif name in ("flags", "features"):
            flags.update(value.split())
    return model, frozenset(flags)


@lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's :class:`CpuFeatures` (read once per process)."""
    import torch

    try:
        model, flags = parse_cpuinfo(Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        model, flags = "", frozenset()
    try:
        capability = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        capability = "unknown"
    return CpuFeatures(model or platform.processor() or platform.machine(), capability, flags,
                       torch.cuda.is_available())
