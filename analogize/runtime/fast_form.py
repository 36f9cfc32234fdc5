"""A converted model's fast form, written to a file for sessions the package does not make.

:func:`fast_form` (portable): each element-wise chain is one FusedChain node of the native domain whose function
body is the chain it replaced (:mod:`analogize.native.fusion`). ONNX Runtime prefers a registered custom op to
a local function of the same domain and name, so a session that registers the native library runs the fused
kernel, and one that does not (or any other runtime) runs the body: the plain file's numbers either way, bit
for bit, noise included for the same seeds (each step keeps its node's seed, hence its stream).

:func:`machine_form` (``analogize fast --for-this-machine``): ONNX Runtime's own optimised graph of the fast
form, convolutions in its blocked layout with their weight chains put back
(:mod:`analogize.runtime.blocked_layout`), as analogize's own sessions run it. ONNX Runtime writes it without
the function bodies, in its internal ops (``com.microsoft.nchwc``, fused convolutions) and with weights
reordered for this CPU's vector width, so it loads only in ONNX Runtime with the native library registered,
and is only known to be right for the ONNX Runtime version and CPU features recorded in its metadata
(:data:`~analogize.passes.model.FORM_KEY`); load it with graph optimisations off.

:func:`fast_form` is a pipeline: :func:`~analogize.passes.graph.import_model`,
:func:`~analogize.native.fusion.fuse_elementwise_chains` (``portable``),
:func:`~analogize.passes.model.export_with_functions`. Its inverse is
:func:`~analogize.native.fusion.unfuse_model_chains`, which export, evaluate and finetune apply to what they read.
"""
from __future__ import annotations

import json
import platform
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

from ..errors import AnalogizeError
from ..model_io import load_model, model_output, refuse_overwrites, save_model
from ..native.build import FUSED_DOMAIN, native_library_path
from ..native.fusion import fuse_elementwise_chains
from ..passes.graph import cycle_collection_paused, import_model
from ..passes.model import FORM_KEY, export_with_functions, is_converted, machine_form_record, refuse_machine_form
from .blocked_layout import blocked_layout_model
from .options import ORT_ERRORS, session_options


@cycle_collection_paused()
def fast_form(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """The fast form of the converted ``model`` (a new model) and how many chains it fused."""
    refuse_machine_form(model)
    if not is_converted(model):
        raise AnalogizeError("the model has no analog ops: convert it first (analogize convert)")
    graph = import_model(model)
    count = fuse_elementwise_chains(graph, portable=True)
    if not any(node.domain == FUSED_DOMAIN for node in graph.nodes):
        raise AnalogizeError("the model has no chain of element-wise analog nodes to fuse (converted with --inline, "
                             "or every chain one node long); convert it without --inline")
    return export_with_functions(graph, model), count


def _cpu_features() -> str:
    """The vector extensions that decide ONNX Runtime's kernels and block size (8 channels with AVX2, 16 with
    AVX-512)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    except OSError:
        flags = []
    wanted = ("avx512f", "avx512_vnni", "avx512bw", "avx2", "fma", "avx_vnni", "neon", "asimd")
    return " ".join([platform.machine(), *(flag for flag in wanted if flag in flags)])


def machine_form(fast: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX Runtime's optimised graph of the fast-form ``fast`` for this machine, in the blocked layout where it
    applies, with what it is tied to recorded in its metadata."""
    library = native_library_path()
    optimised = blocked_layout_model(fast, session_options(None, library))
    blocked = optimised is not None
    if not blocked:  # no convolution to block: ONNX Runtime's optimised graph all the same
        options = session_options(None, library)
        with tempfile.TemporaryDirectory() as work:
            options.optimized_model_filepath = str(Path(work) / "optimised.onnx")
            try:
                ort.InferenceSession(fast.SerializeToString(), options, providers=["CPUExecutionProvider"])
            except ORT_ERRORS as error:
                raise AnalogizeError(f"ONNX Runtime cannot load the model: {str(error).splitlines()[0]}") from None
            optimised = onnx.load(options.optimized_model_filepath)
    record = {"form": "onnxruntime-optimised", "onnxruntime": ort.__version__, "cpu": _cpu_features(),
              "blocked_layout": blocked, "native_library": library.parent.name}
    kept = [entry for entry in fast.metadata_props if entry.key != FORM_KEY]
    optimised.ClearField("metadata_props")
    optimised.metadata_props.extend(kept)
    optimised.metadata_props.add(key=FORM_KEY, value=json.dumps(record, sort_keys=True, allow_nan=False))
    return optimised


def fast_file(source, destination, for_this_machine: bool = False, overwrite: bool = False) -> dict:
    """The fast form (or, ``for_this_machine``, ONNX Runtime's optimised graph of it) of the converted model at
    ``source`` written to ``destination``; returns what was written."""
    refuse_overwrites({"the model": source}, model_output("-o", destination), models=("the model",),
                      replaceable="the model", overwrite=overwrite)
    model, external = load_model(source)
    fast, fused = fast_form(model)
    written = machine_form(fast) if for_this_machine else fast
    save_model(written, destination, external_data=external, overwrite_input=None if overwrite else source)
    report = {"input": str(source), "output": str(destination), "fused_chains": fused,
              "form": "onnxruntime-optimised" if for_this_machine else "fast"}
    if for_this_machine:
        report["tied_to"] = machine_form_record(written)
    return report
