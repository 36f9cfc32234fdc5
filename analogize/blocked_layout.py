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
3. each chain goes back onto the tensor the Conv now reads, found by its values: an element-wise chain of a
   permutation is the permutation of the chain, with the same steps and seed for every element (the noise
   is drawn in another order, from the same distribution). A tensor that was padded, scaled or folded into
   another no longer matches and the pass gives up;
4. a chain the transformer wrapped in ReorderOutput and ReorderInput runs on the blocked tensor itself where
   the channel count is a multiple of every block size (so no padding channels, whose zeros the noise would
   change, are read).

Whatever does not match exactly makes :func:`blocked_layout_model` return None, and the session keeps the
plain graph.
"""
from __future__ import annotations

import hashlib
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from .model_io import copy_model
from .native import ELEMENTWISE_OPS, FUSED_DOMAIN
from .ops import DOMAIN

NCHWC_DOMAIN = "com.microsoft.nchwc"
BLOCK_SIZES_LCM = 16  # ONNX Runtime's blocks are 8 (AVX2) or 16 (AVX-512) channels


def _elementwise(node) -> bool:
    return (node.domain == FUSED_DOMAIN and node.op_type == "FusedChain") or (
        node.domain == DOMAIN and node.op_type in ELEMENTWISE_OPS and len(node.input) == 1)


def _fingerprint(tensor) -> str:
    """The same for a tensor and any permutation of it: its values, sorted."""
    values = numpy_helper.to_array(tensor)
    return hashlib.sha256(str(values.dtype).encode() + np.sort(values, axis=None).tobytes()).hexdigest()


def _uses(graph) -> Counter:
    counts = Counter(name for node in graph.node for name in node.input)
    counts.update(2 * [value.name for value in graph.output])
    return counts


def detach_weight_chains(model: onnx.ModelProto) -> dict | None:
    """Make each Conv read its stored weight and bias where an element-wise chain computed them; in place.
    Returns the detached chains by the fingerprint of the tensor they read, or None where two chained
    tensors have the same values (a reordered one could not be told apart)."""
    graph = model.graph
    graph_inputs = {value.name for value in graph.input}  # an initializer that is also an input can be overridden
    stored = {t.name: t for t in graph.initializer if t.name not in graph_inputs}
    producer = {name: node for node in graph.node for name in node.output}
    uses = _uses(graph)
    detached: dict[str, onnx.NodeProto] = {}
    for node in graph.node:
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx"):
            continue
        for position in (1, 2):
            chain = producer.get(node.input[position]) if len(node.input) > position else None
            if chain is None or not _elementwise(chain) or uses[chain.output[0]] != 1 or chain.input[0] not in stored:
                continue
            key = _fingerprint(stored[chain.input[0]])
            if key in detached:
                return None
            detached[key] = chain
            node.input[position] = chain.input[0]
    kept = [node for node in graph.node if not any(node is chain for chain in detached.values())]
    graph.ClearField("node")
    graph.node.extend(kept)
    return detached


def attach_weight_chains(model: onnx.ModelProto, detached: dict) -> bool:
    """Put each detached chain back in front of the Conv that reads its tensor, reordered or not; in place.
    False unless every chain found exactly one such tensor."""
    graph = model.graph
    stored = {t.name: t for t in graph.initializer}
    attached, nodes = set(), []
    for node in graph.node:
        if node.op_type == "Conv":
            for position in (1, 2):
                if len(node.input) <= position or node.input[position] not in stored:
                    continue
                key = _fingerprint(stored[node.input[position]])
                if key not in detached:
                    continue
                if key in attached:
                    return False
                attached.add(key)
                chain = onnx.NodeProto()
                chain.CopyFrom(detached[key])
                chain.input[0] = node.input[position]
                chain.output[0] = f"{node.input[position]}::analog/{node.name}"
                node.input[position] = chain.output[0]
                nodes.append(chain)
        nodes.append(node)
    graph.ClearField("node")
    graph.node.extend(nodes)
    return attached == set(detached)


def run_chains_in_blocked_layout(model: onnx.ModelProto) -> int:
    """Drop the ReorderOutput / ReorderInput pair around each element-wise chain between blocked operators
    whose channel count no block size pads; in place. Returns how many chains now read blocked tensors."""
    graph = model.graph
    producer = {name: node for node in graph.node for name in node.output}
    uses = _uses(graph)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    removed, moved = set(), 0
    for chain in graph.node:
        if not _elementwise(chain):
            continue
        before, after = producer.get(chain.input[0]), consumers.get(chain.output[0], [])
        if before is None or before.domain != NCHWC_DOMAIN or before.op_type != "ReorderOutput" \
                or uses[before.output[0]] != 1 or uses[chain.output[0]] != 1 \
                or after[0].domain != NCHWC_DOMAIN or after[0].op_type != "ReorderInput":
            continue
        settings = {a.name: onnx.helper.get_attribute_value(a) for a in (*before.attribute, *after[0].attribute)}
        if settings.get("channels", 1) % BLOCK_SIZES_LCM or settings.get("channels_last", 0):
            continue
        chain.input[0] = before.input[0]
        for reader in consumers.get(after[0].output[0], []):
            for k, name in enumerate(reader.input):
                if name == after[0].output[0]:
                    reader.input[k] = chain.output[0]
        removed.update((id(before), id(after[0])))
        moved += 1
    kept = [node for node in graph.node if id(node) not in removed]
    graph.ClearField("node")
    graph.node.extend(kept)
    # the blocked tensors keep their NCHW shapes (no padding), but not their layout: no stale annotations
    chained = {node.output[0] for node in kept if _elementwise(node)}
    annotations = [v for v in graph.value_info if v.name not in chained]
    graph.ClearField("value_info")
    graph.value_info.extend(annotations)
    return moved


def blocked_layout_model(model: onnx.ModelProto, library: Path) -> onnx.ModelProto | None:
    """``model`` (fused, for sessions with the native ``library``) optimised by ONNX Runtime with its Conv
    weight chains and the chains between convolutions in the blocked layout; None where that does not apply
    (no convolution ONNX Runtime blocks, or a chain the pass cannot place exactly). Load the result with
    graph optimisations off: it is already optimised, for this machine only."""
    if not any(node.op_type == "Conv" for node in model.graph.node):
        return None
    detached_model = copy_model(model)
    detached = detach_weight_chains(detached_model)
    if detached is None:
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.register_custom_ops_library(str(library))
    with tempfile.TemporaryDirectory() as work:
        options.optimized_model_filepath = str(Path(work) / "optimised.onnx")
        try:
            ort.InferenceSession(detached_model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            optimised = onnx.load(options.optimized_model_filepath)
        except (ort.capi.onnxruntime_pybind11_state.Fail, ort.capi.onnxruntime_pybind11_state.RuntimeException,
                OSError, onnx.onnx_cpp2py_export.checker.ValidationError, ValueError):
            return None
    if not any(node.domain == NCHWC_DOMAIN for node in optimised.graph.node):
        return None
    if not attach_weight_chains(optimised, detached):
        return None
    run_chains_in_blocked_layout(optimised)
    return optimised
