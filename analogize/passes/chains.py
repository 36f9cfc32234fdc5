"""Analog chains: what their elements are, and taking them out of a converted graph.

(Inserting them is convert's pass; it joins this module.)
"""
from __future__ import annotations

import onnx_graphsurgeon as gs

from ..errors import AnalogizeError
from ..ops.spec import DOMAIN
from .graph import is_default_domain

CLAMP_RANGE = (-1.0, 1.0)
CLAMP_BOUND_PREFIX = "analogize/clamp_"
CHAIN_ELEMENTS = {"noise": ("AnalogNoise",), "quantize": ("ReducePrecision", "StochasticReducePrecision"),
                  "clamp": ("Clip",)}


def is_chain_element(node: gs.Node, elements) -> bool:
    if node.op not in {op for element in elements for op in CHAIN_ELEMENTS[element]}:
        return False
    if node.op == "Clip":  # only the clamps convert inserted: they read its shared bound initializers
        return is_default_domain(node) and len(node.inputs) == 3 and \
            node.inputs[1].name.startswith(f"{CLAMP_BOUND_PREFIX}min")
    return node.domain == DOMAIN


def remove_analog_chains(graph: gs.Graph, elements=tuple(CHAIN_ELEMENTS)) -> int:
    """Take the inserted chain elements (noise, quantize, clamp) out, wiring their consumers to their inputs;
    returns how many nodes went.

    Activation swaps stay. An element that writes a graph output becomes an Identity. Bound constants that
    nothing reads any more are not exported; :func:`analogize.passes.model.sync_analog_functions` drops the
    function bodies nothing uses.
    """
    unknown = set(elements) - set(CHAIN_ELEMENTS)
    if unknown:
        raise AnalogizeError(f"unknown chain element(s) {', '.join(sorted(unknown))}: "
                             f"choose from {', '.join(CHAIN_ELEMENTS)}")
    graph_outputs = {id(tensor) for tensor in graph.outputs}
    kept, removed = [], 0
    for node in graph.nodes:
        if not is_chain_element(node, elements):
            kept.append(node)
            continue
        removed += 1
        source, output = node.inputs[0], node.outputs[0]
        node.inputs.clear()
        node.outputs.clear()
        if id(output) in graph_outputs:
            kept.append(gs.Node("Identity", name=node.name, inputs=[source], outputs=[output]))
            continue
        for consumer in list(output.outputs):
            for slot, tensor in enumerate(consumer.inputs):
                if tensor is output:
                    consumer.inputs[slot] = source
    graph.nodes = kept
    return removed
