"""Noisy convolutions in ONNX Runtime's blocked channel layout (NCHWc), its fastest on CPU.

ONNX Runtime's layout transformer runs convolutions on channels in blocks of 8 or 16 with weights reordered
once, when the session is made, so it takes only convolutions whose weights are constant. A converted model
computes its weights on every run (clamp, quantise, fresh noise), so its convolutions fall back to im2col and
GEMM (about twice as slow on the zoo ConvNet), and every analog chain between two blocked operators gets a
reorder out of the layout and one back in.

Both costs go because the analog chains are element-wise:

1. each Conv weight and bias chain is detached, so the Conv reads the stored tensor (or the constant a
   Constant or ConstantOfShape node gave it);
2. ONNX Runtime optimises that model (its saved optimised graph is the layout transformer's work for this
   machine);
3. each chain goes back onto the tensor the Conv now reads: an element-wise chain of a permutation is the
   permutation of the chain, with the same steps and seed for every element (the noise is drawn in another
   order, from the same distribution). The optimiser is shown distinct sentinels in place of the detached
   tensors, so what it made of each is read off exactly: a pure reordering is applied to the real values; a
   tensor padded, scaled or folded into another is no reordering, so its chain stays attached where it was
   and the model is optimised once more without detaching it. A chain with a range (per output channel, as
   convert's weight ranges are) gets each element's r, computed here from the stored weights as the kernel
   would measure it and reordered with them, as its second input: the weights are constant, so r is too;
4. the element-wise chains the transformer wrapped in ReorderOutput and ReorderInput run on the blocked
   tensor itself where the channel count is a multiple of every block size (so no padding channels, whose
   zeros the noise would change, are read). A range measured per pixel across channels is measured across
   the blocked channels (the kernel is told the block size, which a probe session reads off ONNX Runtime);
   one per sample or per tensor spans the same values in either layout.

A model where that second optimisation still does not match exactly, where no chain is left to detach, or
with control-flow bodies (which may read the values it would re-lay), makes :func:`blocked_layout_model`
return None, and the session keeps the plain graph.

Unlike the graph passes (:mod:`analogize.passes`), this module works on the protobuf model: it reads ONNX
Runtime's optimised model back and finds the detached tensors in it by their sentinel values, byte for byte.
"""
from __future__ import annotations

import functools
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from ..model_io import copy_model
from ..native.build import FUSED_DOMAIN, MAX_STEP_ATTRIBUTES, StepKind
from ..native.fusion import ELEMENTWISE_OPS, FUSED_CHAIN, RANGE_AXES, RANGE_BLOCK, chain_attributes
from ..ops.spec import DOMAIN
from .options import ORT_ERRORS

NCHWC_DOMAIN = "com.microsoft.nchwc"
BLOCK_SIZES_LCM = 16  # ONNX Runtime's blocks are 8 (AVX2) or 16 (AVX-512) channels


def _elementwise(node) -> bool:
    return (node.domain == FUSED_DOMAIN and node.op_type == FUSED_CHAIN) or (
        node.domain == DOMAIN and node.op_type in ELEMENTWISE_OPS and len(node.input) == 1)


def _measures_range(chain) -> bool:
    kinds = chain_attributes(chain)["kinds"] if chain.op_type == FUSED_CHAIN else []
    return bool(kinds) and kinds[0] == StepKind.RANGE


def _reads_range(chain) -> bool:
    return len(chain.input) > 1 and bool(chain.input[1])


def _measured_ranges(chain, values: np.ndarray) -> np.ndarray:
    """Each element's r as ``chain`` measures it on ``values``, with the kernel's arithmetic (|x|, maxima that
    keep NaN, the floor)."""
    attributes = chain_attributes(chain)
    axes = tuple(axis % values.ndim for axis in attributes.get(RANGE_AXES) or range(values.ndim))
    ranges = np.maximum(np.abs(values).max(axis=axes, keepdims=True), np.float32(attributes["parameters"][0]))
    return np.broadcast_to(ranges, values.shape).astype(np.float32)


def _reading_its_range(chain, name: str) -> None:
    """``chain`` reading its r from the tensor ``name`` instead of measuring it; in place."""
    attributes = chain_attributes(chain)
    for key in ("kinds", "ops", "seeds"):
        attributes[key] = attributes[key][1:]
    attributes["parameters"] = attributes["parameters"][MAX_STEP_ATTRIBUTES:]
    attributes.pop(RANGE_AXES, None)
    del chain.attribute[:]
    chain.attribute.extend(helper.make_attribute(key, value) for key, value in attributes.items())
    chain.input.append(name)


def _copy(node: onnx.NodeProto) -> onnx.NodeProto:
    copied = onnx.NodeProto()
    copied.CopyFrom(node)
    return copied


def _uses(graph) -> Counter:
    counts = Counter(name for node in graph.node for name in node.input)
    counts.update(2 * [value.name for value in graph.output])
    return counts


def _constant_output(node, stored: dict, producer: dict) -> np.ndarray | None:
    """The value a Constant node, or a ConstantOfShape of a constant shape, always outputs; None otherwise.
    (Some exporters write weights so; the ONNX "light" test models fill every weight with ConstantOfShape.)"""
    if node is None or node.domain not in ("", "ai.onnx"):
        return None
    attributes = {a.name: a for a in node.attribute}
    if node.op_type == "Constant" and set(attributes) == {"value"}:
        return numpy_helper.to_array(attributes["value"].t)
    if node.op_type == "ConstantOfShape" and set(attributes) <= {"value"}:
        shape = numpy_helper.to_array(stored[node.input[0]]) if node.input[0] in stored \
            else _constant_output(producer.get(node.input[0]), stored, producer)
        fill = numpy_helper.to_array(attributes["value"].t).reshape(-1) if "value" in attributes \
            else np.zeros(1, np.float32)
        return None if shape is None else np.full(shape.astype(np.int64), fill[0], fill.dtype)
    return None


LEAST_NORMAL_BITS = 0x00800000
SENTINEL_CAPACITY = 0x7F800000 - LEAST_NORMAL_BITS  # below inf's bit pattern


def sentinels(first: int, shape) -> np.ndarray:
    """Floats whose bit patterns count up from the least normal float's, one per position: distinct, finite,
    and changed by any arithmetic an optimiser would do on them (a reordering copies them bit for bit)."""
    count = int(np.prod(shape, dtype=np.int64))
    return (np.arange(first, first + count, dtype=np.uint32) + LEAST_NORMAL_BITS).view(np.float32).reshape(shape)


def sentinel_numbers(values: np.ndarray) -> np.ndarray:
    """The counts :func:`sentinels` encoded (negative for zeros, e.g. padding)."""
    return values.astype(np.float32).view(np.uint32).astype(np.int64) - LEAST_NORMAL_BITS


@dataclass
class DetachedTensor:
    values: np.ndarray
    chain: onnx.NodeProto
    first_sentinel: int
    ranges: np.ndarray | None = None  # each value's r where the chain has a range


def detach_weight_chains(model: onnx.ModelProto, keep: frozenset = frozenset()) -> list[DetachedTensor] | None:
    """Make each Conv read the stored weight or bias its element-wise chain computed from (a constant node's
    output becomes a stored tensor), with that tensor's values replaced by :func:`sentinels` numbered on over
    all detached tensors; in place. Chains whose output is named in ``keep`` stay. None where there are more
    elements than sentinels."""
    graph = model.graph
    graph_inputs = {value.name for value in graph.input}  # an initializer that is also an input can be overridden
    stored = {t.name: t for t in graph.initializer if t.name not in graph_inputs}
    producer = {name: node for node in graph.node for name in node.output}
    uses = _uses(graph)
    detached: list[DetachedTensor] = []
    removed = set()
    sentinels_used = 0
    for node in graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        for position in (1, 2):
            chain = producer.get(node.input[position]) if len(node.input) > position else None
            if chain is None or not _elementwise(chain) or uses[chain.output[0]] != 1 \
                    or uses[chain.input[0]] != 1 or chain.output[0] in keep or _reads_range(chain):
                continue
            source = chain.input[0]
            values = numpy_helper.to_array(stored[source]) if source in stored \
                else _constant_output(producer.get(source), stored, producer)
            if values is None or values.dtype != np.float32 or values.size == 0:
                continue
            if _measures_range(chain) and chain_attributes(chain)["kinds"].count(StepKind.RANGE) > 1:
                continue  # a range measured again on what the chain computed: no constant of the weights
            ranges = _measured_ranges(chain, values) if _measures_range(chain) else None
            if source not in stored:
                removed.add(id(producer[source]))
                stored[source] = graph.initializer.add()
            detached.append(DetachedTensor(values, chain, sentinels_used, ranges))
            sentinels_used += values.size
            if sentinels_used > SENTINEL_CAPACITY:
                return None
            stored[source].CopyFrom(numpy_helper.from_array(
                sentinels(detached[-1].first_sentinel, values.shape), source))
            node.input[position] = source
    removed.update(id(entry.chain) for entry in detached)
    kept = [node for node in graph.node if id(node) not in removed]
    graph.ClearField("node")
    graph.node.extend(kept)
    return detached


def attach_weight_chains(model: onnx.ModelProto, detached: list[DetachedTensor]) -> set[str]:
    """In the optimised ``model``, give each tensor the optimiser made of a detached one its real values, in
    the same order, and put its chain back in front of the Conv that reads it; in place. Returns the output
    names of the chains that found no such place: their tensor was padded, scaled, folded into another or read
    by more than a Conv (none left means the model is complete)."""
    graph = model.graph
    starts = np.array([entry.first_sentinel for entry in detached])
    attached: set[int] = set()
    stored = {t.name: t for t in graph.initializer}
    readers = _uses(graph)
    nodes = []
    for node in graph.node:
        if node.op_type == "Conv":
            for position in (1, 2):
                name = node.input[position] if len(node.input) > position else ""
                if name not in stored or readers[name] != 1 or stored[name].data_type != onnx.TensorProto.FLOAT:
                    continue
                numbers = sentinel_numbers(numpy_helper.to_array(stored[name]))
                if numbers.size == 0:
                    continue
                owner = int(np.searchsorted(starts, numbers.min(), side="right")) - 1
                entry = detached[owner] if owner >= 0 else None
                if entry is None or owner in attached or numbers.min() != entry.first_sentinel:
                    continue
                order = numbers.ravel() - entry.first_sentinel
                if not np.array_equal(np.sort(order), np.arange(entry.values.size)):
                    continue
                attached.add(owner)
                stored[name].CopyFrom(numpy_helper.from_array(entry.values.ravel()[order].reshape(numbers.shape), name))
                chain = _copy(entry.chain)
                chain.input[0] = name
                if entry.ranges is not None:
                    graph.initializer.append(numpy_helper.from_array(
                        entry.ranges.ravel()[order].reshape(numbers.shape), f"{name}::range/{node.name}"))
                    _reading_its_range(chain, graph.initializer[-1].name)
                chain.output[0] = f"{name}::analog/{node.name}"
                node.input[position] = chain.output[0]
                nodes.append(chain)
        nodes.append(node)
    graph.ClearField("node")
    graph.node.extend(nodes)
    return {entry.chain.output[0] for owner, entry in enumerate(detached) if owner not in attached}


@functools.cache
def nchwc_block_size() -> int | None:
    """The channels per block of ONNX Runtime's blocked layout on this machine (8 with AVX2, 16 with AVX-512),
    read off a ReorderInput of numbered channels; None where it has no blocked layout."""
    channels = 2 * BLOCK_SIZES_LCM
    graph = helper.make_graph([helper.make_node("ReorderInput", ["x"], ["y"], domain=NCHWC_DOMAIN)], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(NCHWC_DOMAIN, 1)],
                              ir_version=8)
    options = ort.SessionOptions()
    options.log_severity_level = 4  # a probe that fails means no blocked layout, not a line on stderr
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        blocked = session.run(None, {"x": np.arange(2 * channels, dtype=np.float32).reshape(1, channels, 1, 2)})[0]
    except ORT_ERRORS:
        return None
    # channel c of pixel p lies at (c // b, p, c % b): the second pixel's first channel comes after b values
    block = int(np.flatnonzero(blocked.ravel() == 1.0)[0])
    return block if block and BLOCK_SIZES_LCM % block == 0 else None


def _runs_blocked(chain, stored: dict) -> bool:
    """Whether ``chain`` gives the same numbers on a blocked 4-D tensor as on the plain one (the noise drawn in
    another order): no range, a stored range input of one value, or a measured range that spans the same values
    in both layouts or is told the block size (per pixel across channels, which this sets; in place)."""
    if _reads_range(chain):
        return chain.input[1] in stored and int(np.prod(stored[chain.input[1]].dims)) == 1
    if not _measures_range(chain):
        return True
    axes = sorted(axis % 4 for axis in chain_attributes(chain).get(RANGE_AXES) or range(4))
    if axes in ([0, 1, 2, 3], [1, 2, 3]):
        return True
    block = nchwc_block_size()
    if axes != [1] or block is None:
        return False
    chain.attribute.append(helper.make_attribute(RANGE_BLOCK, block))
    return True


def run_chains_in_blocked_layout(model: onnx.ModelProto) -> None:
    """Drop the ReorderOutput / ReorderInput pair around each run of element-wise chains between blocked
    operators whose channel count no block size pads; in place."""
    graph = model.graph
    uses = _uses(graph)
    stored = {t.name: t for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    removed, chained = set(), set()
    for before in graph.node:
        if before.domain != NCHWC_DOMAIN or before.op_type != "ReorderOutput":
            continue
        chains, tensor = [], before.output[0]
        while uses[tensor] == 1 and _elementwise(consumers[tensor][0]) and consumers[tensor][0].input[0] == tensor:
            chains.append(consumers[tensor][0])
            tensor = chains[-1].output[0]
        after = consumers.get(tensor, [None])[0]
        if not chains or uses[tensor] != 1 or after.domain != NCHWC_DOMAIN or after.op_type != "ReorderInput":
            continue
        leaving, entering = ({a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                             for node in (before, after))
        if leaving.get("channels", 1) % BLOCK_SIZES_LCM or leaving.get("channels_last", 0) \
                or entering.get("channels_last", 0):
            continue
        blocked = [_copy(chain) for chain in chains]
        if not all(_runs_blocked(chain, stored) for chain in blocked):
            continue
        for chain, changed in zip(chains, blocked):
            chain.CopyFrom(changed)
        chains[0].input[0] = before.input[0]
        for reader in consumers.get(after.output[0], []):
            for k, name in enumerate(reader.input):
                if name == after.output[0]:
                    reader.input[k] = tensor
        removed.update((id(before), id(after)))
        chained.update(chain.output[0] for chain in chains)
    kept = [node for node in graph.node if id(node) not in removed]
    graph.ClearField("node")
    graph.node.extend(kept)
    # the blocked tensors keep their NCHW shapes (no padding), but not their layout: no stale annotations
    annotations = [v for v in graph.value_info if v.name not in chained]
    graph.ClearField("value_info")
    graph.value_info.extend(annotations)


def _optimised(model: onnx.ModelProto, options: ort.SessionOptions) -> onnx.ModelProto | None:
    with tempfile.TemporaryDirectory() as work:
        options.optimized_model_filepath = str(Path(work) / "optimised.onnx")
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            return onnx.load(options.optimized_model_filepath)
        except (*ORT_ERRORS, OSError, onnx.onnx_cpp2py_export.checker.ValidationError, ValueError,
                ort.capi.onnxruntime_pybind11_state.InvalidProtobuf):  # what it says when it cannot write the file
            return None  # the plain layout serves; a disk too full for this file is the command's to report


def blocked_layout_model(model: onnx.ModelProto, options: ort.SessionOptions) -> onnx.ModelProto | None:
    """``model`` (fused, for sessions with the native library registered in ``options``, which this uses
    up) optimised by ONNX Runtime with its Conv weight chains and the chains between convolutions in the
    blocked layout; None where that does not apply (no convolution ONNX Runtime blocks, control flow, or a
    chain the pass cannot place exactly). Load the result with graph optimisations off: it is already
    optimised, for this machine only."""
    if not any(node.op_type == "Conv" for node in model.graph.node) or any(
            attribute.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
            for node in model.graph.node for attribute in node.attribute):
        return None
    keep: frozenset = frozenset()
    for _ in range(2):  # the second without the chains the optimiser did more than reorder for
        detached_model = copy_model(model)
        detached = detach_weight_chains(detached_model, keep)
        if not detached:
            return None
        optimised = _optimised(detached_model, options)
        if optimised is None or not any(node.domain == NCHWC_DOMAIN for node in optimised.graph.node):
            return None
        unplaced = attach_weight_chains(optimised, detached)
        if not unplaced:
            break
        keep |= unplaced
    else:
        return None
    run_chains_in_blocked_layout(optimised)
    return optimised
