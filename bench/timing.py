"""Best-of-N wall time, shared by the benchmarks (the minimum is the run the shared machine disturbed least), and
the thread counts they time sessions at."""
import os
import time


def thread_counts() -> list[int]:
    """ONNX Runtime intra-op threads a bench times sessions at: one, and every core the machine has."""
    return sorted({1, os.cpu_count() or 1})


def best_time(function, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved_best(functions, repeats: int) -> list[float]:
    """Best times of several functions timed in turn, round after round, so that all see the same load on
    a shared machine (timing one after the other lets a burst of load land on one of them only)."""
    for function in functions:
        function()
    times = [[] for _ in functions]
    for _ in range(repeats):
        for slot, function in enumerate(functions):
            times[slot].append(best_time(function, 1, warm_up=False))
    return [min(slot) for slot in times]
