"""The benches' shared measures: a median timer (a warm-up call, then the median of
``repeats`` timed calls) and this process's resident memory."""

from __future__ import annotations

import statistics
import time


def median_seconds(work, repeats: int) -> float:
    work()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def resident_kib(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in KiB: ``VmRSS`` now,
    ``VmHWM`` its peak (since the start, or since ``/proc/self/clear_refs`` got 5)."""
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
    return 0
