"""Fusion of element-wise chains into FusedChain nodes of the native domain."""
from __future__ import annotations

import math

import onnx
from onnx import helper

from ..ops.spec import DOMAIN, OPS, OpSpec
from .build import FUSED_DOMAIN, _kernel_source


# FusedChain step kinds: the StepKind enum of custom_ops/analogize_ops.cpp.
STEP_ANALOG, STEP_CLIP, STEP_RELU, STEP_LEAKY_RELU = 0, 1, 2, 3
MAX_STEP_ATTRIBUTES = 4  # kMaxAttributes in custom_ops/chain.h
MAX_CHAIN_STEPS = 32  # kMaxDeviceSteps in custom_ops/chain.h: what one GPU launch takes
_OP_INDEX = {name: index for index, name in enumerate(OPS)}  # the order of kOps


def _gated(spec: OpSpec) -> bool:
    return _kernel_source(0, spec)[2]


#: analog ops of one input, computed element by element (all but the gated ones)
ELEMENTWISE_OPS = {name for name, spec in OPS.items() if not _gated(spec)}


def _step(node, scalars: dict, straight_through_only: bool):
    """(kind, op index, parameters, seed) of a node FusedChain can take, or None."""
    attributes = {a.name: a for a in node.attribute}
    if any(a.type != onnx.AttributeProto.FLOAT for a in node.attribute):
        return None  # an INT seed or precision is invalid: the op's own kernel refuses it
    if node.domain == DOMAIN and node.op_type in ELEMENTWISE_OPS and len(node.input) == 1 and (
            OPS[node.op_type].straight_through or not straight_through_only):
        spec = OPS[node.op_type]
        values = []
        for attribute in spec.attributes:
            if attribute.name in attributes:
                values.append(attributes[attribute.name].f)
            elif attribute.required:
                return None  # left to the op's own kernel, which reports it
            else:
                values.append(math.nan if attribute.default is None else attribute.default)
        seed = attributes["seed"].f if "seed" in attributes else -1.0
        return STEP_ANALOG, _OP_INDEX[node.op_type], values, seed
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Relu":
        return STEP_RELU, -1, [], -1.0
    if node.op_type == "LeakyRelu":
        return STEP_LEAKY_RELU, -1, [attributes["alpha"].f if "alpha" in attributes else 0.01], -1.0
    if node.op_type == "Clip" and not attributes:
        bounds = [(-math.inf, math.inf)[k] if len(node.input) <= k + 1 or not node.input[k + 1]
                  else scalars.get(node.input[k + 1]) for k in range(2)]
        if None not in bounds:
            return STEP_CLIP, -1, bounds, -1.0
    return None


def _names_read_in_subgraphs(graph) -> set:
    """Every name a node inside a control-flow body reads (values captured from outer graphs among them)."""
    names = set()
    for node in graph.node:
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs):
                names.update(name for inner in body.node for name in inner.input)
                names.update(value.name for value in body.output)
                names.update(_names_read_in_subgraphs(body))
    return names


def fuse_elementwise_chains(model, straight_through_only: bool = False) -> int:
    """Replace each run of two or more element-wise nodes (analog ops, Clip with constant bounds, Relu,
    LeakyRelu), where each feeds only the next, by one FusedChain node: one pass over memory instead of one
    per node, with the same numbers (each random step keeps its seed). Only for sessions that load the
    native library: the node has no function body.

    ``straight_through_only`` leaves out the analog ops whose training gradient is not the identity (the
    activations), so that a chain's gradient is the slope :class:`TorchChain` computes beside it."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    graph_inputs = {v.name for v in graph.input}  # an initializer that is also an input can be overridden
    scalars = {t.name: float(numpy_helper.to_array(t).reshape(-1)[0]) for t in graph.initializer
               if t.data_type == TensorProto.FLOAT and int(np.prod(t.dims)) == 1 and t.name not in graph_inputs}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for name in _names_read_in_subgraphs(graph) | {v.name for v in graph.output}:
        uses[name] = uses.get(name, 0) + 2  # never fuse away a graph output or a value a subgraph reads
    consumer = {}
    for position, node in enumerate(graph.node):
        for name in node.input:
            consumer[name] = position
    steps = [_step(node, scalars, straight_through_only) for node in graph.node]
    taken = [False] * len(graph.node)
    replacement: dict[int, object] = {}
    fused = 0
    for start, node in enumerate(graph.node):
        if taken[start] or steps[start] is None:
            continue
        chain = [start]
        while len(chain) < MAX_CHAIN_STEPS:
            output = graph.node[chain[-1]].output[0]
            following = consumer.get(output)
            if uses.get(output) != 1 or following is None or steps[following] is None or taken[following] \
                    or graph.node[following].input[0] != output:
                break
            chain.append(following)
        # Analog ops take float32 only, so a chain with one of them is all float32, as FusedChain requires.
        if len(chain) < 2 or all(steps[p][0] != STEP_ANALOG for p in chain):
            continue
        for position in chain:
            taken[position] = True
        kinds, ops, parameters, seeds = [], [], [], []
        for position in chain:
            kind, op, values, seed = steps[position]
            kinds.append(kind)
            ops.append(op)
            parameters += list(values) + [0.0] * (MAX_STEP_ATTRIBUTES - len(values))
            seeds.append(seed)
        first, last = graph.node[chain[0]], graph.node[chain[-1]]
        replacement[start] = helper.make_node(
            "FusedChain", [first.input[0]], [last.output[0]], name=f"fused/{first.name or first.output[0]}",
            domain=FUSED_DOMAIN, kinds=kinds, ops=ops, parameters=parameters, seeds=seeds)
        fused += 1
    if not fused:
        return 0
    nodes = [replacement.get(position, node) for position, node in enumerate(graph.node)
             if position in replacement or not taken[position]]
    graph.ClearField("node")
    graph.node.extend(nodes)
    model.opset_import.append(helper.make_opsetid(FUSED_DOMAIN, 1))
    return fused


def chain_steps(node) -> list[tuple[int, str | None, list[float]]]:
    """A FusedChain node's steps as (kind, analog op name or None, parameters), for running them elsewhere."""
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    names = list(OPS)
    return [(kind, names[op] if kind == STEP_ANALOG else None,
             list(attributes["parameters"][k * MAX_STEP_ATTRIBUTES:(k + 1) * MAX_STEP_ATTRIBUTES]))
            for k, (kind, op) in enumerate(zip(attributes["kinds"], attributes["ops"]))]
