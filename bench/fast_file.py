"""The fast form in a file against the plain file, in a user's own ONNX Runtime session, side by side in one run.

Noisy over clean latency (bits 6, EP 0.3, every placement, seed 0) of the paper's CIFAR ConvNet (the zoo's
``convnet``, 3x32x32; or ``--model PATH``), at batch 64 and 256, at 1 thread and at all cores, for:

- (a) a user's own session (``onnxruntime.InferenceSession`` with the native library registered, nothing else)
  on the plain converted file;
- (b) the same session on the fast file (``analogize fast``): fused chains with function bodies;
- (b') the same on ``analogize fast --for-this-machine`` (ONNX Runtime's optimised graph with the blocked
  layout), loaded with graph optimisations off;
- (c) analogize's own session (``analogize.runtime.sessions.create_session``);
- (d) for reference, the clean model with its convolution weights fed at run time, as a converted model computes
  them: ONNX Runtime's blocked convolutions take constant weights only, so (a) and (b) cannot have them.

Each clean time is a user's session on the clean model at the same thread count. Goal: (b) <= 1.5. Ranges:
the paper's unit ranges by default, ``--ranges default`` for analogize's defaults (per-channel weights, dynamic
activations, whose Div, Mul and run-time maxima the fused chains take in). Best of N runs,
the compared sessions timed in turn (the machine is shared; the minimum is the least disturbed).

    python bench/fast_file.py [--repeats 5] [--ranges unit|default] [--model PATH] [--json]
"""
import argparse
import json
import os

import numpy as np
import onnx
import onnxruntime as ort

from analogize import convert, native_library_path
from analogize.convert import PAPER_RANGES
from analogize.data import InputSpec
from analogize.runtime.fast_form import fast_form, machine_form
from analogize.runtime.sessions import create_session
from timing import interleaved_best
from zoo_models import paper_convnet

BATCHES = (64, 256)


def user_session(model: onnx.ModelProto, threads: int, library: bool, optimise: bool = True):
    """A session as a user writes it: the library registered (where asked), the thread count, nothing else."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # ONNX Runtime warns about every overridable weight of (d)
    options.intra_op_num_threads = threads
    if library:
        options.register_custom_ops_library(str(native_library_path()))
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def with_run_time_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its convolution weights listed as graph inputs too: defaults a caller may override, which ONNX
    Runtime does not take as constants."""
    changed = onnx.ModelProto()
    changed.CopyFrom(model)
    weights = {node.input[1] for node in changed.graph.node if node.op_type == "Conv"}
    changed.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                               for t in changed.graph.initializer if t.name in weights)
    return changed


def measure(clean: onnx.ModelProto, ranges: dict, repeats: int) -> list[dict]:
    converted = convert(clean, bits=6, ep=0.3, seed=0, **ranges).model
    fast, _ = fast_form(converted)
    machine = machine_form(fast)
    spec = InputSpec.of(clean)
    rows = []
    for threads in sorted({1, os.cpu_count() or 1}):
        sessions = {"clean": user_session(clean, threads, library=False),
                    "(a) plain file": user_session(converted, threads, library=True),
                    "(b) fast file": user_session(fast, threads, library=True),
                    "(b') fast file for this machine": user_session(machine, threads, library=True, optimise=False),
                    "(c) analogize session": create_session(converted, threads),
                    "(d) clean, weights at run time": user_session(with_run_time_weights(clean), threads, False)}
        for batch in BATCHES:
            shape = [batch if not isinstance(size, int) or size <= 0 else size for size in spec.shape]
            shape[0] = batch
            feed = {spec.name: np.random.default_rng(0).uniform(0, 1, shape).astype(np.float32)}
            times = dict(zip(sessions, interleaved_best(
                [(lambda session: lambda: session.run(None, feed))(s) for s in sessions.values()], repeats)))
            clean_time = times.pop("clean")
            rows.append({"threads": threads, "batch": batch, "clean_ms": 1000 * clean_time,
                         **{name: time / clean_time for name, time in times.items()}})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ranges", choices=("unit", "default"), default="unit")
    parser.add_argument("--model", help="an ONNX model with a dynamic batch axis [default: the zoo ConvNet]")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    arguments = parser.parse_args()
    clean = onnx.load(arguments.model) if arguments.model else paper_convnet()
    load_before = os.getloadavg()[0]
    rows = measure(clean, PAPER_RANGES if arguments.ranges == "unit" else {}, arguments.repeats)
    load = (load_before, os.getloadavg()[0])  # a shared machine: how busy it was says how far to trust the figures
    if arguments.json:
        print(json.dumps({"model": arguments.model or "zoo convnet", "ranges": arguments.ranges,
                          "cores": os.cpu_count(), "load_average": load, "rows": rows}, indent=2))
        return
    print(f"{arguments.model or 'zoo ConvNet'}, {arguments.ranges} ranges, bits 6, EP 0.3; noisy / clean latency "
          f"(best of {arguments.repeats}; {os.cpu_count()} cores, load average {load[0]:.1f} before and "
          f"{load[1]:.1f} after; goal: (b) <= 1.5)")
    names = [key for key in rows[0] if key.startswith("(")]
    print(f"{'threads':>7} {'batch':>5} {'clean ms':>8}  " + "  ".join(f"{name.split()[0]:>5}" for name in names))
    for row in rows:
        print(f"{row['threads']:>7} {row['batch']:>5} {row['clean_ms']:>8.1f}  "
              + "  ".join(f"{row[name]:>5.2f}" for name in names))
    print("columns: " + "; ".join(names))


if __name__ == "__main__":
    main()
