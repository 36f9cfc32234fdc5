"""Graph passes shared by the quantizing formats (``qdq``, ``qonnx``): checking that every reduce-precision has
an exact equivalent in the target form, and putting that equivalent in its place."""
from __future__ import annotations

from typing import Callable

import onnx_graphsurgeon as gs

from ..errors import AnalogizeError
from ..passes.attributes import analog_nodes
from ..passes.chains import is_chain_element
from ..passes.graph import Names
from .spec import QUANTIZE_OPS

# builds the nodes that stand for one reduce-precision: (names, its name, input, output, precision) -> nodes
Quantizer = Callable[[Names, str, gs.Tensor, gs.Tensor, float], list]


def require_exact_quantizers(graph: gs.Graph, target: str, max_precision: float) -> int:
    """Refuse a graph with a reduce-precision that ``target`` cannot express exactly: one that does not round at
    0.5, a precision that is not whole or above ``max_precision``, or one without a clamp before it (both
    targets clip to their integer range, which holds [-1, 1] only). Returns how many were checked."""
    nodes = analog_nodes(graph, QUANTIZE_OPS)
    for node in nodes:
        values = node.attrs
        if values.get("divide", 0.5) != 0.5:
            raise AnalogizeError(f"{node.name}: reduce-precision with divide={values['divide']:g} has no "
                                 f"{target} equivalent (it rounds at 0.5); export --format plain")
        if values["precision"] != int(values["precision"]) or values["precision"] > max_precision:
            raise AnalogizeError(f"{node.name}: precision {values['precision']:g} has no {target} equivalent, "
                                 f"which takes whole precisions up to {max_precision:.0f} (export --format plain)")
        producers = node.inputs[0].inputs
        if not producers or not is_chain_element(producers[0], ("clamp",)):
            raise AnalogizeError(f"{node.name}: reduce-precision without a clamp before it is unbounded, but "
                                 f"{target} clips to its integer range; convert with clamps or export "
                                 f"--format plain")
    return len(nodes)


def replace_quantizers(graph: gs.Graph, quantizer: Quantizer) -> list[float]:
    """Put ``quantizer``'s nodes in place of each reduce-precision (same position, input and output tensors);
    returns the precisions replaced, in graph order."""
    names = Names(graph)
    targets = {id(node) for node in analog_nodes(graph, QUANTIZE_OPS)}
    nodes, precisions = [], []
    for node in graph.nodes:
        if id(node) not in targets:
            nodes.append(node)
            continue
        source, output = node.inputs[0], node.outputs[0]
        node.inputs.clear()
        node.outputs.clear()
        precisions.append(node.attrs["precision"])
        nodes.extend(quantizer(names, node.name, source, output, node.attrs["precision"]))
    graph.nodes = nodes
    return precisions
