"""The benches' shared timer: a warm-up call, then the median of ``repeats`` timed calls."""

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
