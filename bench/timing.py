"""Best-of-N wall time, shared by the benchmarks (the minimum is the run the shared machine disturbed least)."""
import time


def best_time(function, repeats: int, warm_up: bool = True) -> float:
    if warm_up:
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)
