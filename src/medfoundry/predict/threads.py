"""How many CPU threads a medfoundry process should compute with, given what else the machine is running.

PyTorch's OpenMP pool starts one thread per core. When other jobs already keep those cores busy, the pool's
threads wait on each other at every parallel region, and a job can run many times slower than on one thread.
Measured with the embedded captioner: a 20-token caption took 27 s with 2 threads and 1.3 s with 1 on a 2-core
Intel Xeon busy with other jobs; a 27-token one took 5.1 s and 2.3 s on a 2-core AMD EPYC running one other job.
So the command line starts torch with only the cores that are free when it starts.

The rule (:func:`threads_for_load`): free cores = usable cores − the runnable tasks of *other* processes, at
least 1. The busy count comes from the kernel's instantaneous run queue (``/proc/loadavg``'s running field, minus
this process) where it exists, else from the 1-minute load average. An explicit ``OMP_NUM_THREADS`` (or
``MEDFOUNDRY_THREADS``, which sets it) always wins.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

#: environment variables that already fix the thread count; the automatic rule then stays out of the way
EXPLICIT = ("OMP_NUM_THREADS", "MEDFOUNDRY_THREADS")


def usable_cpus() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def busy_cpus(loadavg: str | None = None) -> float:
    """Cores other processes keep busy now: runnable tasks in the kernel's run queue minus this one
    (``/proc/loadavg``, or the text ``loadavg`` given in its format), else the 1-minute load average; 0 when
    neither is available."""
    text = loadavg
    if text is None:
        try:
            text = Path("/proc/loadavg").read_text()
        except OSError:
            text = None
    if text:
        fields = text.split()
        if len(fields) >= 4 and "/" in fields[3]:
            running = int(fields[3].split("/")[0])
            return float(max(0, running - 1))
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return 0.0


def threads_for_load(cpus: int, busy: float) -> int:
    """Threads for a new compute job: the ``cpus`` usable cores minus the ``busy`` ones (rounded), at least 1."""
    if cpus < 1:
        raise ValueError(f"cpus must be at least 1, got {cpus}")
    return int(min(cpus, max(1, cpus - round(busy))))


def fit_threads_to_load(environ: MutableMapping[str, str] | None = None, cpus: int | None = None,
                        busy: float | None = None) -> int | None:
    """Set ``OMP_NUM_THREADS`` in ``environ`` (default ``os.environ``) to :func:`threads_for_load`, before torch
    starts its thread pool. Returns the number set, or None when the caller's choice stands: an explicit
    variable of :data:`EXPLICIT` (``MEDFOUNDRY_THREADS`` is copied to ``OMP_NUM_THREADS``), or torch already
    imported in this process (its pool exists; the number is then left to the caller).
    """
    env = os.environ if environ is None else environ
    if env.get("MEDFOUNDRY_THREADS") and not env.get("OMP_NUM_THREADS"):
        env["OMP_NUM_THREADS"] = env["MEDFOUNDRY_THREADS"]
    if any(env.get(name) for name in EXPLICIT) or "torch" in sys.modules:
        return None
    n = threads_for_load(cpus or usable_cpus(), busy_cpus() if busy is None else busy)
    env["OMP_NUM_THREADS"] = str(n)
    return n
