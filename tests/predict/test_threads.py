"""Threads from the machine's load: the rule, the run-queue reading, and who wins over it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from medfoundry.predict.threads import busy_cpus, fit_threads_to_load, threads_for_load


def test_free_cores_rule() -> None:
    assert threads_for_load(2, 0.0) == 2
    assert threads_for_load(2, 1.0) == 1  # one core taken by another job: one thread, not two that wait
    assert threads_for_load(2, 5.0) == 1  # never fewer than one
    assert threads_for_load(16, 3.4) == 13
    with pytest.raises(ValueError):
        threads_for_load(0, 0.0)


def test_busy_cores_come_from_the_run_queue_without_this_process() -> None:
    assert busy_cpus("0.50 0.40 0.30 1/412 12345\n") == 0.0  # only this process runs
    assert busy_cpus("3.10 2.00 1.00 3/412 12345\n") == 2.0  # two other runnable tasks, whatever the average
    assert busy_cpus() >= 0.0  # this machine's own reading


def test_explicit_settings_win_and_the_rule_fills_the_rest() -> None:
    env = {"OMP_NUM_THREADS": "7"}
    assert fit_threads_to_load(env, cpus=2, busy=1.0) is None and env["OMP_NUM_THREADS"] == "7"
    env = {"MEDFOUNDRY_THREADS": "3"}
    assert fit_threads_to_load(env, cpus=2, busy=0.0) is None and env["OMP_NUM_THREADS"] == "3"
    import torch  # noqa: F401  (once torch's pool exists, the rule leaves it alone)

    assert fit_threads_to_load({}, cpus=2, busy=1.0) is None


def test_a_fresh_process_starts_torch_with_the_free_cores() -> None:
    code = ("import os, sys; from medfoundry.predict.threads import fit_threads_to_load as f; "
            "env = {}; n = f(env, cpus=2, busy=1.0); os.environ.update(env); import torch; "
            "print(n, env['OMP_NUM_THREADS'], torch.get_num_threads())")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MEDFOUNDRY_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.split() == ["1", "1", "1"]
