"""analogize on an NVIDIA GPU, checked and measured in one run of about a minute (its figures on an H200 are in
the README's Native kernels section). Without a GPU it refuses in one line.

(a) kernels: every analog op, and every fused chain of the converted digits model on the values it meets
    there (each chain with a measured range again on many short vectors and on a few long ones: the CUDA
    side's two range kernels), run by the CUDA kernels (CUDA provider, no CPU fallback allowed) and by the CPU
    kernels of the same library, twice each (the second run continues the random streams). The CUDA kernels
    promise the CPU kernels' numbers bit for bit, noise included (custom_ops/README.md: the same counter-based
    streams and only IEEE-rounded float operations, --fmad=false), so one differing bit fails the check.
(b) the converted digits model (bits 6, EP 0.3, seed 1) under the CUDA provider: where ONNX Runtime placed
    each node (its profile), its outputs beside the CPU's for the same seed (the convolutions and products
    round differently on the GPU), and evaluate --device cuda beside --device cpu on the digits test split.
(c) the fast file (analogize fast) in a user's own session (plain onnxruntime, the CUDA library registered, CUDA
    provider): its outputs beside the plain converted file's in the same kind of session, without and with noise.
(d) converted / clean latency on the GPU of the zoo ConvNet (3x32x32, bits 6, EP 0.3) with unit and with
    default ranges, at batch 64 and 256, in analogize's sessions (--device cuda) and, for the fast file, in a
    user's own session; and of a ResNet-50-sized model (the zoo ResNet with ResNet-34's blocks, 21.8 M weights,
    3x224x224) at batch 1 and 32. Best of N runs, the compared sessions timed in turn; inputs and outputs
    cross between host and GPU in every run, as with any numpy caller.
(e) one finetune epoch of the converted zoo ConvNet on random data, torch on the GPU beside the CPU.

Each figure is one JSON line; a check that breaks prints its error as one and the others still run. Exits 1
with one line where no GPU is usable, and 1 after the figures where a check fails. Needs onnxruntime-gpu (its
CUDA 13 build) in place of onnxruntime, nvcc (the CUDA kernels are built on first use) and torch with CUDA.

    python bench/gpu_check.py [--repeats 20]
"""
import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

from analogize import convert, native_library_path
from analogize.convert import PAPER_RANGES
from analogize.data import Dataset, model_feeds
from analogize.errors import AnalogizeError
from analogize.evaluate.engine import Grid, evaluate
from analogize.native.build import FUSED_DOMAIN
from analogize.native.fusion import fuse_model_chains
from analogize.ops.spec import DOMAIN, OPS
from analogize.runtime.fast_form import fast_form
from analogize.runtime.options import session_options
from analogize.runtime.sessions import check_cuda_usable, create_session
from analogize.training.finetune import FinetuneOptions, finetune
from timing import interleaved_best
from zoo_models import paper_convnet, resnet50_sized

ROOT = Path(__file__).resolve().parent.parent
DIGITS_MODEL = ROOT / "models" / "digits_convnet.onnx"
THREADS = os.cpu_count()  # ONNX Runtime's intra-op threads in every session here, and torch's on the CPU
CUDA_FIRST = [("CUDAExecutionProvider", {"device_id": 0}), "CPUExecutionProvider"]
ATTRIBUTES = {"precision": 16.0, "std": 0.3, "factor": 0.5, "alpha": 0.1, "seed": 7.0}
FAILED: list[str] = []


def report(figures: dict) -> None:
    print(json.dumps(figures), flush=True)


def run_check(name: str, check, *arguments) -> None:
    """``check``, whose breaking is reported as a figure of its own: one run of this script must give every
    figure it can (a GPU is lent for minutes)."""
    try:
        check(*arguments)
    except Exception as error:  # noqa: BLE001 - any failure is a finding to print, not a reason to stop
        FAILED.append(name)
        report({"check": name, "error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"})


def user_cuda_session(model: onnx.ModelProto, library: Path) -> ort.InferenceSession:
    """A session as a user writes it for a GPU: the library registered, the CUDA provider first, nothing else."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.register_custom_ops_library(str(library))
    return ort.InferenceSession(model.SerializeToString(), options, providers=CUDA_FIRST)


def single_node_model(node: onnx.NodeProto, shape) -> onnx.ModelProto:
    """``node`` alone, reading "x" and writing "y", with no function body: only the library's kernels run it."""
    alone = onnx.NodeProto()
    alone.CopyFrom(node)
    alone.input[0], alone.output[0] = "x", "y"
    graph = helper.make_graph([alone], "kernel", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph, ir_version=10, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1), helper.make_opsetid(FUSED_DOMAIN, 1)])


def kernels_agree(name: str, model: onnx.ModelProto, x: np.ndarray, library: Path) -> None:
    on_gpu = session_options(THREADS, library)
    on_gpu.add_session_config_entry("session.disable_cpu_ep_fallback", "1")  # the kernel must run on the GPU
    data = model.SerializeToString()
    cpu = ort.InferenceSession(data, session_options(THREADS, library), providers=["CPUExecutionProvider"])
    gpu = ort.InferenceSession(data, on_gpu, providers=CUDA_FIRST[:1])
    for run in range(2):
        expected, actual = cpu.run(None, {"x": x})[0], gpu.run(None, {"x": x})[0]
        differing = int(np.count_nonzero(expected.view(np.uint32) != actual.view(np.uint32)))
        if differing:
            FAILED.append(f"kernels {name}")
        report({"check": "kernels", "kernel": name, "run": run, "elements": int(expected.size),
                "differing_elements": differing,
                "max_abs_difference": float(np.nanmax(np.abs(expected - actual))) if differing else 0.0})


def check_kernels(library: Path, converted: onnx.ModelProto, feed: dict) -> None:
    x = np.random.default_rng(7).normal(0, 2, (257, 4098)).astype(np.float32)  # a ragged last group; odd halves
    x.flat[:6] = [0.0, -0.0, 0.5 / 16, -1.5 / 16, 3.0, -3.0]  # zeros and rounding ties
    for name, spec in OPS.items():
        attributes = {a.name: ATTRIBUTES.get(a.name, a.default) for a in spec.attributes
                      if a.name in ATTRIBUTES or a.required}
        kernels_agree(name, single_node_model(helper.make_node(name, ["x"], ["y"], domain=DOMAIN, **attributes),
                                              None), x, library)
    fused, _ = fuse_model_chains(converted)
    chains = [node for node in fused.graph.node if node.domain in (DOMAIN, FUSED_DOMAIN)]
    stored = {tensor.name: numpy_helper.to_array(tensor) for tensor in fused.graph.initializer}
    probe = onnx.ModelProto()  # the converted model, which computes what the fused chains read, showing it
    probe.CopyFrom(converted)
    computed = [node.input[0] for node in chains if node.input[0] not in stored and node.input[0] not in feed]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in computed)
    values = dict(zip(computed, create_session(probe, THREADS, native=False).run(computed, feed)))
    values.update(stored, **feed)
    for node in chains:
        inputs = values[node.input[0]]
        kernels_agree(f"{node.op_type} {node.name or node.output[0]}", single_node_model(node, list(inputs.shape)),
                      inputs, library)
        axes = sorted(axis % inputs.ndim for a in node.attribute if a.name == "range_axes" for axis in a.ints)
        others = [axis for axis in range(inputs.ndim) if axis not in axes] if axes else []
        if not others:
            continue
        # again with each of the CUDA range kernels: few vectors of several chunks, ragged; many short vectors,
        # one thread each where they lie across a later axis
        later = [axis for axis in others if axis > axes[0]]
        for length, count, other in ((3 * 16384 + 5, 2, others[0]), (7, 40000, (later or others)[0])):
            shape = [1] * inputs.ndim
            shape[axes[0]], shape[other] = length, count
            x = np.random.default_rng(8).normal(0, 3, shape).astype(np.float32)
            kernels_agree(f"{node.op_type} {node.name or node.output[0]}, {count} vectors of {length}",
                          single_node_model(node, shape), x, library)


def check_converted_model(library: Path, converted: onnx.ModelProto, feed: dict, feeds) -> None:
    fused, _ = fuse_model_chains(converted)
    with tempfile.TemporaryDirectory() as work:
        options = session_options(THREADS, library)
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(work) / "profile")
        session = ort.InferenceSession(fused.SerializeToString(), options, providers=CUDA_FIRST)
        session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    placement = defaultdict(Counter)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            placement[event["args"]["op_name"]][event["args"]["provider"]] += 1
    if set(placement["FusedChain"]) != {"CUDAExecutionProvider"}:
        FAILED.append("placement")
    report({"check": "placement", "nodes_by_provider": {op: dict(count) for op, count in placement.items()}})

    gpu = create_session(converted, THREADS, device="cuda").run(None, feed)[0]
    cpu = create_session(converted, THREADS, blocked_layout=False).run(None, feed)[0]  # same noise order
    report({"check": "converted_model_outputs", "samples": len(gpu), "gpu_cpu_argmax_agreement":
            float(np.mean(gpu.argmax(1) == cpu.argmax(1))), "max_abs_difference": float(np.abs(gpu - cpu).max())})
    for device in ("cpu", "cuda"):
        start = time.perf_counter()
        result = evaluate(converted, feeds, Grid(repeats=3, seed=0), device=device)
        cell = result["cells"][0]
        report({"check": "evaluate", "device": device, "seconds": round(time.perf_counter() - start, 2),
                "clean_accuracy": result["clean"]["accuracy_mean"], "noisy_accuracy_mean": cell["accuracy_mean"],
                "noisy_accuracy_std": cell["accuracy_std"], "kernels": result["kernels"]})


def check_fast_file(library: Path, converted: onnx.ModelProto, feed: dict) -> None:
    noise_free = convert(onnx.load(DIGITS_MODEL), bits=6, seed=1, noise=False).model
    for label, model in (("without noise", noise_free), ("with noise", converted)):
        fast, fused = fast_form(model)
        plain = user_cuda_session(model, library).run(None, feed)[0]
        quick = user_cuda_session(fast, library).run(None, feed)[0]
        differing = int(np.count_nonzero(plain.view(np.uint32) != quick.view(np.uint32)))
        if label == "without noise" and differing or np.mean(plain.argmax(1) == quick.argmax(1)) < 0.99:
            FAILED.append(f"fast file {label}")
        report({"check": "fast_file_in_users_cuda_session", "noise": label, "fused_chains": fused,
                "elements": int(plain.size), "differing_elements": differing,
                "max_abs_difference": float(np.abs(plain - quick).max()),
                "argmax_agreement": float(np.mean(plain.argmax(1) == quick.argmax(1)))})


def check_latency(library: Path, model: onnx.ModelProto, label: str, shape: tuple, batches: tuple,
                  repeats: int) -> None:
    rng = np.random.default_rng(0)
    clean = create_session(model, THREADS, device="cuda")
    clean_by_user = user_cuda_session(model, library)
    for ranges_label, ranges in (("unit ranges", PAPER_RANGES), ("default ranges", {})):
        converted = convert(model, bits=6, ep=0.3, seed=0, **ranges).model
        noisy = create_session(converted, THREADS, device="cuda")
        fast_by_user = user_cuda_session(fast_form(converted)[0], library)
        row = {"check": "latency", "model": f"{label}, {ranges_label}", "device": "cuda"}
        for batch in batches:
            feed = {clean.get_inputs()[0].name: rng.uniform(0, 1, (batch, *shape)).astype(np.float32)}
            times = interleaved_best([(lambda session: lambda: session.run(None, feed))(session)
                                      for session in (clean, noisy, clean_by_user, fast_by_user)], repeats)
            row.update({f"batch_{batch}_clean_ms": round(1000 * times[0], 3),
                        f"batch_{batch}_noisy_ms": round(1000 * times[1], 3),
                        f"batch_{batch}_noisy_over_clean": round(times[1] / times[0], 3),
                        f"batch_{batch}_users_session_fast_file_over_clean": round(times[3] / times[2], 3)})
        report(row)


def check_finetune(convnet: onnx.ModelProto) -> None:
    if not torch.cuda.is_available():
        FAILED.append("finetune")
        report({"check": "finetune_epoch", "skipped": f"torch {torch.__version__} sees no CUDA GPU"})
        return
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (2048 + 256, 3, 32, 32)).astype(np.float32)
    labels = rng.integers(0, 10, len(images))
    train = Dataset("random (train)", images[:2048], labels[:2048], "nchw")
    validation = Dataset("random (validation)", images[2048:], labels[2048:], "nchw")
    converted = convert(convnet, bits=6, ep=0.3, seed=0).model
    for device in ("cuda", "cpu"):
        start = time.perf_counter()
        _, result = finetune(converted, train, validation, FinetuneOptions(epochs=1, repeats=1, device=device))
        report({"check": "finetune_epoch", "device": device, "samples": len(train.x), "batch_size": 64,
                "seconds_with_before_after_evaluation_on_cpu": round(time.perf_counter() - start, 2),
                "train_loss": result["history"][0]["train_loss"]})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed runs of each model and batch")
    arguments = parser.parse_args()
    try:
        check_cuda_usable("cuda")
        library = native_library_path(cuda=True)
    except AnalogizeError as error:
        sys.exit(f"gpu_check: no usable GPU: {error}")
    torch.set_num_threads(THREADS)
    ort.set_default_logger_severity(3)  # onnxruntime-gpu 1.31 warns at every session given CUDA by name
    report({"check": "setup", "onnxruntime": ort.__version__, "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "onnxruntime_intra_op_threads": THREADS, "torch_cpu_threads": torch.get_num_threads()})
    converted = convert(onnx.load(DIGITS_MODEL), bits=6, ep=0.3, seed=1).model
    feeds = model_feeds("digits", converted, split="test")
    feed = feeds.batch(0, 256)
    run_check("kernels", check_kernels, library, converted, feed)
    run_check("converted model", check_converted_model, library, converted, feed, feeds)
    run_check("fast file", check_fast_file, library, converted, feed)
    convnet = paper_convnet()
    run_check("latency ConvNet", check_latency, library, convnet, "zoo ConvNet", (3, 32, 32), (64, 256),
              arguments.repeats)
    run_check("finetune", check_finetune, convnet)
    run_check("latency ResNet-50-sized", lambda: check_latency(
        library, resnet50_sized(), "ResNet-50-sized (zoo ResNet, ResNet-34 blocks)", (3, 224, 224), (1, 32),
        arguments.repeats))
    if FAILED:
        sys.exit(f"gpu_check: {len(FAILED)} check(s) failed or could not run: {', '.join(FAILED)}")


if __name__ == "__main__":
    main()
