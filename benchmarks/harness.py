"""Timing and peak-memory measurement for benchmarks/run.py.

Time: the two variants of a row run interleaved (A B, B A, A B, ...) after a warm-up,
each call timed alone (``torch.cuda.synchronize()`` before and after on CUDA).  The row
reports the median of each and the median of the per-pair ratios, which is robust to
a load that drifts during the run (other processes share the 2 CPU cores).

Peak memory:
* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  what was allocated before the call (the inputs).
* CPU: torch has no CPU allocator statistics, so each variant runs once in a fresh
  subprocess with ``MALLOC_MMAP_THRESHOLD_=65536`` (every large tensor is its own mmap,
  returned to the OS when freed, so the resident set follows the live tensors).  After a
  warm-up call the kernel's peak-RSS mark is reset (``echo 5 > /proc/self/clear_refs``),
  the variant runs once, and the figure is ``VmHWM - VmRSS before the call``: the peak of
  extra resident memory the call needed, inputs excluded.  Granularity is a page; small
  allocations in the malloc heap and thread stacks are included (a few MB at most).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch


def synchronize(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_call(fn: Callable, device: str) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


@dataclass
class PairTiming:
    a_s: float          # median seconds of variant A
    b_s: float          # median seconds of variant B
    ratio: float        # median of per-pair ratios a / b
    repeats: int
    spread: float       # (max - min) / median of the per-pair ratios: the noise


def time_pair(fa: Callable, fb: Callable, *, device: str, repeats: int, warmup: int = 1) -> PairTiming:
    """Interleaved timing of two callables: medians, and the median of the per-pair ratios."""
    for _ in range(warmup):
        fa()
        fb()
    ta, tb = [], []
    for i in range(repeats):
        if i % 2 == 0:
            ta.append(time_call(fa, device))
            tb.append(time_call(fb, device))
        else:
            tb.append(time_call(fb, device))
            ta.append(time_call(fa, device))
    ratios = [a / b for a, b in zip(ta, tb)]
    med = statistics.median(ratios)
    return PairTiming(statistics.median(ta), statistics.median(tb), med, repeats,
                      (max(ratios) - min(ratios)) / med if med else float("nan"))


def time_once(fn: Callable, *, device: str, repeats: int = 1, warmup: int = 0) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(time_call(fn, device) for _ in range(max(1, repeats)))


# -- peak memory ---------------------------------------------------------------------

def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) if m else -1


def cpu_peak_bytes_here(fn: Callable) -> int:
    """In this process: extra peak RSS of one call of ``fn`` (see the module doc)."""
    fn()                                                     # warm-up (lazy inits, thread pools)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                         # reset VmHWM to the current RSS
    before = _status_kb("VmRSS")
    fn()
    return max(0, _status_kb("VmHWM") - before) * 1024


def cuda_peak_bytes(fn: Callable) -> int:
    fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def cpu_peak_bytes_subprocess(row_id: str, variant: str, quick: bool, timeout: float = 300) -> int | None:
    """Run ``run.py --_peak ROW VARIANT`` in a fresh interpreter; None when it fails."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    cmd = [sys.executable, os.path.join(os.path.dirname(__file__), "run.py"), "--_peak", row_id, variant]
    if quick:
        cmd.append("--quick")
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    if out.returncode != 0:
        return None
    try:
        return int(json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"])
    except (ValueError, KeyError, IndexError):
        return None


def cpu_peak_supported() -> bool:
    return os.path.exists("/proc/self/clear_refs") and os.access("/proc/self/clear_refs", os.W_OK)
