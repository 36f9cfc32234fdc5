"""Native kernels against the ONNX function bodies in ONNX Runtime on CPU, side by side in one run.

1. Latency of a converted model over its clean model (bits 6, EP 0.3, every placement) for the zoo ConvNet
   (3x32x32, batch 256), the largest ONNX "light" model (DenseNet-121, its fixed batch of 1) and a
   ResNet-50-sized model (the zoo ResNet with ResNet-34's blocks, 21.8 M weights, 3x224x224, batch 1): function
   bodies, native kernels with fused chains and convolutions in ONNX Runtime's blocked layout (what sessions
   do), and native kernels in the plain layout (noisy weights computed every run keep ONNX Runtime's blocked
   convolutions out unless analogize.runtime.blocked_layout puts the weight chains back after its layout pass).
   Goal: ConvNet converted / clean <= 1.3, with the paper's unit ranges and with the default ranges (per-channel
   weights, dynamic activations). The fused chains take the default ranges' nodes in (Div, Mul and the run-time
   maxima become steps of a chain, a range measured again on a chain's output one more stage of it) and so does
   the blocked layout (a weight's per-channel ranges computed once per session), so the default ranges cost
   only the range work itself over the unit ones: for each element in a range, a division, a product and a
   read in the pass that measures the maxima. Either way the noise alone (some 60 million normal draws per
   batch, about 3 ns each on one core here) takes a quarter of the clean time, which leaves the goal out of
   reach on this machine (README, "Native kernels"). Goal for DenseNet-121 and the ResNet: <= 1.5 in
   analogize's sessions (native, fused, blocked layout).
2. Throughput of every op's kernel, and of a fused clamp + reduce-precision + noise chain, on a 48 MiB tensor
   in GB/s (bytes read + written per second) against a plain memory copy (numpy), each kernel timed in turn
   with the copy. Goal: within 2x of the copy.

Best of N runs for each, the compared runs timed in turn (the machine is shared; the minimum is the least
disturbed). Every session runs with one intra-op thread, then with one per core (os.cpu_count()); both are
printed, each row with its thread count (the memory copy is one thread throughout).

    python bench/native_kernels.py [--repeats 5] [--json]
"""
import argparse
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from analogize import convert
from analogize.convert import PAPER_RANGES
from analogize.data import InputSpec
from analogize.ops.spec import DOMAIN, OPS
from analogize.runtime.sessions import create_session
from timing import best_time, interleaved_best, thread_counts
from zoo_models import paper_convnet, resnet50_sized

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_densenet121.onnx"


def model_rows(name, model, x, repeats, threads, ranges=None):
    feed = {InputSpec.of(model).name: x}
    converted = convert(model, bits=6, ep=0.3, seed=0, **(ranges or {})).model
    sessions = {"clean": create_session(model, threads, native=False),
                "function bodies": create_session(converted, threads, native=False),
                "native, fused, blocked layout": create_session(converted, threads, native=True),
                "native, fused, plain layout": create_session(converted, threads, native=True, blocked_layout=False)}
    times = dict(zip(sessions, interleaved_best(
        [(lambda session: lambda: session.run(None, feed))(s) for s in sessions.values()], repeats)))
    clean = times.pop("clean")
    label = "unit ranges" if ranges else "default ranges"
    return {"model": f"{name}, {label}", "threads": threads, "clean_ms": 1000 * clean,
            **{k: v / clean for k, v in times.items()}}


def kernel_model(nodes, initializers=()):
    graph = helper.make_graph(nodes, "kernel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    from analogize.passes.model import sync_analog_functions

    sync_analog_functions(model)
    return model


def throughput_rows(repeats, threads):
    x = np.random.default_rng(0).uniform(-1.5, 1.5, 12 * 2**20).astype(np.float32)
    moved = 2 * x.nbytes
    target = np.empty_like(x)
    copy = moved / best_time(lambda: np.copyto(target, x), repeats) / 1e9
    bounds = [helper.make_tensor("low", TensorProto.FLOAT, [], [-1.0]),
              helper.make_tensor("high", TensorProto.FLOAT, [], [1.0])]
    required = {"precision": 64.0, "std": 0.01}
    kernels = {name: kernel_model([helper.make_node(name, ["x"], ["y"], domain=DOMAIN, **{
        a.name: required[a.name] for a in spec.attributes if a.required}, **({"seed": 1.0} if spec.random else {}))])
        for name, spec in OPS.items()}
    kernels.update({
        "Clip+ReducePrecision+AnalogNoise (fused)": kernel_model([
            helper.make_node("Clip", ["x", "low", "high"], ["c"]),
            helper.make_node("ReducePrecision", ["c"], ["r"], domain=DOMAIN, precision=64.0),
            helper.make_node("AnalogNoise", ["r"], ["y"], domain=DOMAIN, std=0.01, seed=1.0)], bounds),
    })
    rows = {"memory copy": copy}
    ratios = {}
    for name, model in kernels.items():
        session = create_session(model, threads, native=True)
        kernel, copied = interleaved_best([lambda: session.run(None, {"x": x}), lambda: np.copyto(target, x)], repeats)
        rows[name] = moved / kernel / 1e9
        ratios[name] = kernel / copied
    return rows, ratios


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    arguments = parser.parse_args()
    convnet = paper_convnet()
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (256, 3, 32, 32)).astype(np.float32)
    densenet = onnx.load(LIGHT)
    one_image = rng.uniform(0, 1, (1, 3, 224, 224)).astype(np.float32)
    resnet = resnet50_sized()
    figures = {"threads": thread_counts(), "latency": [], "throughput_gb_s": {}, "kernel_over_copy_time": {}}
    for threads in figures["threads"]:
        figures["latency"] += [
            model_rows("zoo ConvNet, batch 256", convnet, images, arguments.repeats, threads, PAPER_RANGES),
            model_rows("zoo ConvNet, batch 256", convnet, images, arguments.repeats, threads),
            model_rows("DenseNet-121 (light), batch 1", densenet, one_image, arguments.repeats, threads,
                       PAPER_RANGES),
            model_rows("ResNet-50-sized, batch 1", resnet, one_image, arguments.repeats, threads, PAPER_RANGES),
            model_rows("ResNet-50-sized, batch 1", resnet, one_image, arguments.repeats, threads)]
        figures["throughput_gb_s"][threads], figures["kernel_over_copy_time"][threads] = throughput_rows(
            arguments.repeats, threads)
    if arguments.json:
        print(json.dumps(figures, indent=2))
        return
    for row in figures["latency"]:
        print(f"{row['model']}, {row['threads']} thread(s) (clean {row['clean_ms']:.0f} ms): converted / clean = "
              + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k not in ("model", "threads", "clean_ms")))
    for threads, rates in figures["throughput_gb_s"].items():
        print(f"kernels with {threads} thread(s), the memory copy with one:")
        for name, rate in rates.items():
            ratio = figures["kernel_over_copy_time"][threads].get(name)
            print(f"  {name:42s} {rate:6.1f} GB/s" + ("" if ratio is None else
                                                      f"  (kernel / copy time {ratio:.2f}, timed in turn)"))


if __name__ == "__main__":
    main()
