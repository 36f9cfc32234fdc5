"""Wall time of one evaluate sweep against the same evaluations run one by one.

The sweep is a 2 x 3 grid (bits 4, 6 x EP 0.1, 0.3, 0.5) with 3 noise draws per cell, plus the clean
baseline: 19 evaluations in all. The one-by-one run makes those same 19 evaluations as a user without the
sweep would: 18 calls of ``evaluate_file`` for one cell and one draw each (every call loads the model and the
data, converts, and scores the clean model, which its agreement column needs) and one plain ONNX Runtime
evaluation of the clean model. Both run in this process, alternately, several rounds; the ratio of the
medians is printed, with every session on one intra-op thread and then on one per core (os.cpu_count()).
Goal: sweep / one-by-one <= 1.0.

    python bench/evaluate_sweep.py [--model models/digits_convnet.onnx] [--data digits] [--rounds 3] [--json]
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from analogize.data import InputSpec, load_dataset
from analogize.evaluate.engine import Grid, evaluate_file
from analogize.model_io import load_model
from analogize.runtime.sessions import create_session
from timing import thread_counts

BITS, EPS, REPEATS = (4, 6), (0.1, 0.3, 0.5), 3
ROOT = Path(__file__).resolve().parent.parent


def sweep(model, data, threads):
    evaluate_file(model, data, Grid(bits=BITS, ep=EPS, repeats=REPEATS), threads=threads)


def one_by_one(model, data, threads):
    for bits in BITS:
        for ep in EPS:
            for draw in range(REPEATS):
                evaluate_file(model, data, Grid(bits=(bits,), ep=(ep,), repeats=1, seed=draw), threads=threads)
    clean, _ = load_model(model)
    dataset = load_dataset(data)
    session = create_session(clean, threads)
    logits = session.run(None, {InputSpec.of(clean).name: dataset.x})[0]
    return float(np.mean(logits.argmax(1) == dataset.y))


def timed(function, *arguments) -> float:
    start = time.perf_counter()
    function(*arguments)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "models" / "digits_convnet.onnx"))
    parser.add_argument("--data", default="digits")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    arguments = parser.parse_args()
    figures = {"model": arguments.model, "data": arguments.data, "evaluations": len(BITS) * len(EPS) * REPEATS + 1,
               "rounds": arguments.rounds, "by_threads": {}}
    for threads in thread_counts():
        sweep(arguments.model, arguments.data, threads)  # warm imports and caches for both sides
        sweeps, singles = [], []
        for _ in range(arguments.rounds):
            sweeps.append(timed(sweep, arguments.model, arguments.data, threads))
            singles.append(timed(one_by_one, arguments.model, arguments.data, threads))
        figures["by_threads"][threads] = {
            "sweep_s": statistics.median(sweeps), "one_by_one_s": statistics.median(singles),
            "ratio": statistics.median(sweeps) / statistics.median(singles),
            "ratio_range": [min(s / o for s, o in zip(sweeps, singles)), max(s / o for s, o in zip(sweeps, singles))]}
    if arguments.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"{figures['evaluations']} evaluations of {Path(arguments.model).name} on {arguments.data}, "
          f"median of {arguments.rounds} rounds")
    for threads, row in figures["by_threads"].items():
        print(f"  {threads} thread(s): sweep / one-by-one = {row['ratio']:.3f} (per-round range "
              f"{row['ratio_range'][0]:.3f}-{row['ratio_range'][1]:.3f}; goal <= 1.0)")


if __name__ == "__main__":
    main()
