"""Noisy convolutions in ONNX Runtime's blocked channel layout (NCHWc), its fastest on CPU.

ONNX Runtime's layout transformer runs convolutions on channels in blocks of 8 or 16 with weights reordered
once, when the session is made, so it takes only convolutions whose weights are constant. A converted model
computes its weights on every run (clamp, quantise, fresh noise), so its convolutions fall back to im2col and
GEMM (about twice as slow on the zoo ConvNet), and every analog chain between two blocked operators gets a
reorder out of the layout and one back in.

Both costs go because the analog chains are element-wise:

1. each Conv weight and bias chain is detached, so the Conv reads the stored tensor;
2. ONNX Runtime optimises that model (its saved optimised graph is the layout transformer's work for this
   machine);
3. each chain goes back onto the tensor the Conv now reads: an element-wise chain of a permutation is the
   permutation of the chain, with the same steps and seed for every element (the noise is drawn in another
   order, from the same distribution). The optimiser is shown distinct sentinel numbers in place of the
   detached tensors, so what it made of each is read off exactly: a pure reordering is applied to the real
   values; a tensor padded, scaled or folded into another is no reordering, and the pass gives up;
4. a chain the transformer wrapped in ReorderOutput and ReorderInput runs on the blocked tensor itself where
   the channel count is a multiple of every block size (so no padding channels, whose zeros the noise would
   change, are read).

Whatever does not match exactly, and any graph with control-flow bodies (which may read the values it
would re-lay), makes :func:`blocked_layout_model` return None, and the session keeps the plain graph.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from .model_io import copy_model
from .native import ELEMENTWISE_OPS, FUSED_DOMAIN
from .ops import DOMAIN
from .runtime import ORT_ERRORS

NCHWC_DOMAIN = "com.microsoft.nchwc"
BLOCK_SIZES_LCM = 16  # ONNX Runtime's blocks are 8 (AVX2) or 16 (AVX-512) channels


def _elementwise(node) -> bool:
    return (node.domain == FUSED_DOMAIN and node.op_type == "FusedChain") or (
        node.domain == DOMAIN and node.op_type in ELEMENTWISE_OPS and len(node.input) == 1)


def _uses(graph) -> Counter:
    counts = Counter(name for node in graph.node for name in node.input)
    counts.update(2 * [value.name for value in graph.output])
    return counts


@dataclass
class DetachedTensor:
    values: np.ndarray
    chain: onnx.NodeProto
    first_sentinel: int


def detach_weight_chains(model: onnx.ModelProto) -> list[DetachedTensor] | None:
    """Make each Conv read the stored weight or bias its element-wise chain computed from, with that tensor's
    values replaced by sentinels (consecutive integers, distinct over all detached tensors); in place.
    None where there are more elements than float32 counts exactly."""
    graph = model.graph
    graph_inputs = {value.name for value in graph.input}  # an initializer that is also an input can be overridden
    stored = {t.name: t for t in graph.initializer if t.name not in graph_inputs}
    producer = {name: node for node in graph.node for name in node.output}
    uses = _uses(graph)
    detached: list[DetachedTensor] = []
    sentinels = 0
    for node in graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        for position in (1, 2):
            chain = producer.get(node.input[position]) if len(node.input) > position else None
            if chain is None or not _elementwise(chain) or uses[chain.output[0]] != 1 \
                    or chain.input[0] not in stored or uses[chain.input[0]] != 1:
                continue
            tensor = stored[chain.input[0]]
            values = numpy_helper.to_array(tensor)
            if values.dtype != np.float32:
                continue
            detached.append(DetachedTensor(values, chain, sentinels))
            sentinels += values.size
            tensor.CopyFrom(numpy_helper.from_array(
                np.arange(detached[-1].first_sentinel, sentinels, dtype=np.float32).reshape(values.shape), tensor.name))
            node.input[position] = chain.input[0]
    if sentinels > 2**24:
        return None
    chains = {id(entry.chain) for entry in detached}
    kept = [node for node in graph.node if id(node) not in chains]
    graph.ClearField("node")
    graph.node.extend(kept)
    return detached


def attach_weight_chains(model: onnx.ModelProto, detached: list[DetachedTensor]) -> bool:
    """In the optimised ``model``, give each tensor the optimiser made of a detached one its real values, in
    the same order, and put its chain back in front of the Conv that reads it; in place. False unless every
    detached tensor became exactly one reordering of itself that only a Conv reads."""
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
                if name not in stored or readers[name] != 1:
                    continue
                values = numpy_helper.to_array(stored[name])
                if values.size == 0 or values.dtype != np.float32:
                    continue
                owner = int(np.searchsorted(starts, values.min(), side="right")) - 1
                entry = detached[owner] if owner >= 0 else None
                if entry is None or owner in attached or values.min() != entry.first_sentinel:
                    continue
                order = values.ravel() - entry.first_sentinel
                if not np.array_equal(np.sort(order), np.arange(entry.values.size, dtype=np.float32)):
                    return False  # padded, scaled or folded: no reordering of the detached tensor
                attached.add(owner)
                stored[name].CopyFrom(numpy_helper.from_array(
                    entry.values.ravel()[order.astype(np.int64)].reshape(values.shape), name))
                chain = onnx.NodeProto()
                chain.CopyFrom(entry.chain)
                chain.input[0] = name
                chain.output[0] = f"{name}::analog/{node.name}"
                node.input[position] = chain.output[0]
                nodes.append(chain)
        nodes.append(node)
    graph.ClearField("node")
    graph.node.extend(nodes)
    return len(attached) == len(detached)


def run_chains_in_blocked_layout(model: onnx.ModelProto) -> None:
    """Drop the ReorderOutput / ReorderInput pair around each element-wise chain between blocked operators
    whose channel count no block size pads; in place."""
    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output}
    uses = _uses(graph)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    removed = set()
    for chain in graph.node:
        if not _elementwise(chain):
            continue
        before, after = producer.get(chain.input[0]), consumers.get(chain.output[0], [])
        if before is None or before.domain != NCHWC_DOMAIN or before.op_type != "ReorderOutput" \
                or uses[before.output[0]] != 1 or uses[chain.output[0]] != 1 \
                or after[0].domain != NCHWC_DOMAIN or after[0].op_type != "ReorderInput":
            continue
        leaving, entering = ({a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
                             for node in (before, after[0]))
        if leaving.get("channels", 1) % BLOCK_SIZES_LCM or leaving.get("channels_last", 0) \
                or entering.get("channels_last", 0):
            continue
        chain.input[0] = before.input[0]
        for reader in consumers.get(after[0].output[0], []):
            for k, name in enumerate(reader.input):
                if name == after[0].output[0]:
                    reader.input[k] = chain.output[0]
        removed.update((id(before), id(after[0])))
    kept = [node for node in graph.node if id(node) not in removed]
    graph.ClearField("node")
    graph.node.extend(kept)
    # the blocked tensors keep their NCHW shapes (no padding), but not their layout: no stale annotations
    chained = {node.output[0] for node in kept if _elementwise(node)}
    annotations = [v for v in graph.value_info if v.name not in chained]
    graph.ClearField("value_info")
    graph.value_info.extend(annotations)


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
    detached_model = copy_model(model)
    detached = detach_weight_chains(detached_model)
    if detached is None:
        return None
    with tempfile.TemporaryDirectory() as work:
        options.optimized_model_filepath = str(Path(work) / "optimised.onnx")
        try:
            ort.InferenceSession(detached_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            optimised = onnx.load(options.optimized_model_filepath)
        except (*ORT_ERRORS, OSError, onnx.onnx_cpp2py_export.checker.ValidationError, ValueError):
            return None
    if not any(node.domain == NCHWC_DOMAIN for node in optimised.graph.node):
        return None
    if not attach_weight_chains(optimised, detached):
        return None
    run_chains_in_blocked_layout(optimised)
    return optimised
