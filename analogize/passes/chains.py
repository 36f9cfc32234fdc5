"""Analog chains: inserting them around a graph's linear layers, what their elements are, and taking them out.

Placement follows the paper's fully analog ConvNet (``shared/reference/analog-semantics.md`` section 3):
a DOA chain Clip -> ReducePrecision -> AnalogNoise before every layer (the network input included) and on
its weights and biases, an AOD chain AnalogNoise -> Clip -> ReducePrecision after it, then the activation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import AnalogizeError
from ..ops.spec import DOMAIN, OPS
from ..ranges.mapping import (UNIT_RANGES, WHOLE_TENSOR, RangeBuilder, RangeSettings, Scope, activation_scope,
                              is_range_node, per_sample, weight_scope)
from .graph import Names, bodies, constant_tensors, is_default_domain, known_values

PLACEMENTS = ("input", "layer-inputs", "layer-outputs", "weights", "biases")
LAYER_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# matrix-vector layers convert leaves digital, and why (the report lists each one it finds)
DIGITAL_LAYERS = {
    **{op: "a recurrent layer: convert does not rewrite recurrent layers yet" for op in ("LSTM", "GRU", "RNN")},
    **{op: "an integer (quantised) layer: convert takes float32 layers only"
       for op in ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLSTM",
                  "QGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")},
    "Einsum": "an Einsum: convert does not rewrite Einsum yet",
}
DOA_ORDER = ("clamp", "quantize", "noise")
AOD_ORDER = ("noise", "clamp", "quantize")
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


def remove_analog_chains(graph: gs.Graph, elements=tuple(CHAIN_ELEMENTS), ranges: bool | None = None) -> int:
    """Take the inserted chain elements (noise, quantize, clamp) out, wiring their consumers to their inputs;
    returns how many nodes went. ``ranges`` (default: when every element goes) takes the chains' range nodes
    out too (x / r * r is not x in float32).

    Activation swaps stay. An element that writes a graph output becomes an Identity. Bound constants that
    nothing reads any more are not exported; :func:`analogize.passes.model.sync_analog_functions` drops the
    function bodies nothing uses.
    """
    unknown = set(elements) - set(CHAIN_ELEMENTS)
    if unknown:
        raise AnalogizeError(f"unknown chain element(s) {', '.join(sorted(unknown))}: "
                             f"choose from {', '.join(CHAIN_ELEMENTS)}")
    with_ranges = set(elements) == set(CHAIN_ELEMENTS) if ranges is None else ranges
    graph_outputs = {id(tensor) for tensor in graph.outputs}
    kept, removed = [], 0
    for node in graph.nodes:
        range_node = with_ranges and is_range_node(node)
        if not (range_node or is_chain_element(node, elements)):
            kept.append(node)
            continue
        removed += 1
        source, output = node.inputs[0], node.outputs[0]
        node.inputs.clear()
        node.outputs.clear()
        if range_node and node.op not in ("Div", "Mul"):
            continue  # computes r, which only the chain's Div and Mul read
        if id(output) in graph_outputs:
            kept.append(gs.Node("Identity", name=node.name, inputs=[source], outputs=[output]))
            continue
        for consumer in list(output.outputs):
            for slot, tensor in enumerate(consumer.inputs):
                if tensor is output:
                    consumer.inputs[slot] = source
    graph.nodes = kept
    return removed


@dataclass(frozen=True)
class ChainSettings:
    """What an inserted chain does; an element is left out when disabled (precision None, std 0, clamp off)."""

    precision: float | None
    std: float
    clamp: bool
    divide: float = 0.5
    stochastic_rounding: bool = False
    seed: int | None = None
    ranges: RangeSettings = UNIT_RANGES

    def elements(self, order: tuple[str, ...]) -> tuple[str, ...]:
        enabled = {"clamp": self.clamp, "quantize": self.precision is not None, "noise": self.std > 0}
        return tuple(element for element in order if enabled[element])


@dataclass
class Layer:
    node: gs.Node
    position: int
    data: str  # the activation operand
    weight: str | None  # constant operand
    bias: str | None
    bias_node: gs.Node | None = None  # an Add that carries the bias of a MatMul
    bias_position: int = -1
    bias_slot: int = 2
    weight_first: bool = False  # the constant is a Gemm's A or a MatMul's first operand
    weight_shape: tuple | None = None  # None: unknown (a weight other nodes compute)
    data_rank: int | None = None

    @property
    def output_node(self) -> gs.Node:
        return self.bias_node or self.node

    def scope(self, site: str, weight_mode: str) -> Scope:
        """Which values of this layer's ``site`` tensor share one range."""
        if site == "weight":
            return weight_scope(weight_mode, self.node.op, self.node.attrs, self.weight_shape, self.weight_first)
        if site == "bias":
            return WHOLE_TENSOR
        return activation_scope(self.node.op, self.node.attrs, self.data_rank,
                                None if self.weight_shape is None else len(self.weight_shape), self.weight_first,
                                site == "layer-output")


class _TopLevel:
    """Positions and top-level uses of the graph's nodes, and its constants (subgraphs stay digital)."""

    def __init__(self, graph: gs.Graph):
        self.graph = graph
        self.tensors = graph.tensors()
        self.constants, self.float_constants = constant_tensors(graph, self.tensors)
        self.consumers: dict[str, list] = {}
        self.producer: dict[str, int] = {}
        for position, node in enumerate(graph.nodes):
            for slot, tensor in enumerate(node.inputs):
                if tensor.name:
                    self.consumers.setdefault(tensor.name, []).append((position, slot))
            for tensor in node.outputs:
                self.producer[tensor.name] = position


def _find_layers(top: _TopLevel, exclude) -> tuple[list[Layer], list[dict]]:
    """Linear layers with a constant float weight operand; the rest, and the layers of any kind in nested
    bodies, are reported with the reason."""
    layers, skipped = [], []
    for position, node in enumerate(top.graph.nodes):
        if node.op in DIGITAL_LAYERS:
            skipped.append({"node": node.name, "op_type": node.op, "reason": DIGITAL_LAYERS[node.op]})
        if node.op not in LAYER_OP_TYPES or not is_default_domain(node):
            continue
        reason, layer = _classify_layer(node, position, top, exclude)
        if layer is None:
            skipped.append({"node": node.name, "op_type": node.op, "reason": reason})
        else:
            layers.append(layer)
    for body in bodies(top.graph):
        skipped += [{"node": node.name, "op_type": node.op,
                     "reason": "inside an If/Loop/Scan body: convert rewrites the top-level graph only"}
                    for node in body.nodes if node.op in LAYER_OP_TYPES or node.op in DIGITAL_LAYERS]
    return layers, skipped


def _classify_layer(node: gs.Node, position: int, top: _TopLevel, exclude):
    if node.name in exclude or node.op in exclude:
        return "excluded by --exclude", None
    inputs = [tensor.name for tensor in node.inputs] + [""] * 3
    if node.op in ("Conv", "ConvTranspose"):
        data, weight, bias = inputs[0], inputs[1], inputs[2] or None
        if weight not in top.constants:
            return "weight is not a constant", None
    else:
        first, second = inputs[0], inputs[1]
        if (first in top.constants) == (second in top.constants):
            return "no single constant operand (activation-by-activation product or constant expression)", None
        data, weight = (first, second) if second in top.constants else (second, first)
        bias = (inputs[2] or None) if node.op == "Gemm" else None
    if weight not in top.float_constants:
        return "weight is not float32 (only float32 models are supported)", None
    weight_tensor, data_tensor = top.tensors[weight], top.tensors[data]
    shape = weight_tensor.shape
    if shape is None:  # a Constant node's output carries no shape until inference runs
        values = known_values(weight_tensor)
        shape = None if values is None else values.shape
    layer = Layer(node, position, data, weight, bias if bias in top.constants else None,
                  weight_first=node.op in ("Gemm", "MatMul") and inputs[0] == weight,
                  weight_shape=None if shape is None else tuple(shape),
                  data_rank=None if data_tensor.shape is None else len(data_tensor.shape))
    if node.op == "MatMul":
        _attach_bias_add(layer, top)
    return "", layer


def _attach_bias_add(layer: Layer, top: _TopLevel) -> None:
    """A MatMul followed by ``Add(constant)`` is one biased layer (exporters split torch Linear this way)."""
    output = layer.node.outputs[0]
    uses = top.consumers.get(output.name, [])
    if len(uses) != 1 or any(tensor is output for tensor in top.graph.outputs):
        return
    position, slot = uses[0]
    add = top.graph.nodes[position]
    other = add.inputs[1 - slot].name if len(add.inputs) == 2 else ""
    if add.op == "Add" and other in top.float_constants:
        layer.bias, layer.bias_node, layer.bias_position, layer.bias_slot = other, add, position, 1 - slot


class _ChainBuilder:
    """Makes chain nodes, and collects them by the position they go before or after; :meth:`place` then
    rebuilds the node list once."""

    def __init__(self, graph: gs.Graph, names: Names, settings: ChainSettings):
        self.graph, self.names, self.settings = graph, names, settings
        self.ranges = RangeBuilder(names, graph.opset)
        self.before: dict[int, list] = {}
        self.after: dict[int, list] = {}
        self.op_types: set[str] = set()
        self._clip_bounds: list[gs.Constant] | None = None
        self._attributes: dict[str, tuple[str, dict]] = {}

    def chain(self, source: gs.Tensor, target: gs.Tensor, order: tuple[str, ...], site: str,
              scope: Scope) -> tuple[list[gs.Node], dict]:
        """The chain's nodes from ``source`` to ``target``, inside its range's Div and Mul unless the range is
        ``unit``, and the report's record of the range."""
        elements = self.settings.elements(order)
        if not elements:
            return [], {}
        prefix = f"analogize/{site}/{target.name}"
        mode = self.settings.ranges.mode(site)
        nodes, current, end, record, rescale = [], source, target, {"mode": mode}, []
        if mode != "unit":
            nodes, value, record = self.ranges.range_of(source, mode, scope, prefix)
            current, end, (normalise, multiply) = self.ranges.wrap(source, target, value, prefix)
            nodes.append(normalise)
            rescale = [multiply]
        for k, element in enumerate(elements):
            output = end if k == len(elements) - 1 else \
                gs.Variable(self.names.unique(f"{target.name}::{element}"))
            nodes.append(self._element(element, current, output, f"{prefix}/{element}"))
            current = output
        return nodes + rescale, record

    def _element(self, element: str, source: gs.Tensor, output: gs.Tensor, name: str) -> gs.Node:
        if element == "clamp":
            return gs.Node("Clip", name=name, inputs=[source, *self._clip_inputs()], outputs=[output])
        if element not in self._attributes:
            self._attributes[element] = self._op(element)
        op_name, attributes = self._attributes[element]
        return gs.Node(op_name, name=name, attrs=dict(attributes), inputs=[source], outputs=[output], domain=DOMAIN)

    def _op(self, element: str) -> tuple[str, dict]:
        """The analog op of an element and its attributes, checked once against the op set."""
        settings = self.settings
        if element == "quantize":
            op_name = "StochasticReducePrecision" if settings.stochastic_rounding else "ReducePrecision"
            attributes = {"precision": settings.precision}
            if not settings.stochastic_rounding:
                attributes["divide"] = settings.divide
        else:
            op_name, attributes = "AnalogNoise", {"std": settings.std}
        self.op_types.add(op_name)
        # in name order and without unset values, so files list attributes in one fixed order
        return op_name, {k: v for k, v in sorted(OPS[op_name].resolve(**attributes).items()) if v is not None}

    def _clip_inputs(self) -> list[gs.Constant]:
        if self._clip_bounds is None:
            self._clip_bounds = [gs.Constant(self.names.unique(f"{CLAMP_BOUND_PREFIX}{bound}"),
                                             np.array(value, np.float32))
                                 for bound, value in zip(("min", "max"), CLAMP_RANGE)]
        return self._clip_bounds

    def place(self) -> None:
        ordered = []
        for position, node in enumerate(self.graph.nodes):
            ordered += self.before.get(position, [])
            ordered.append(node)
            ordered += self.after.get(position, [])
        self.graph.nodes = ordered


def _input_scope(value: gs.Variable, layers: list[Layer]) -> Scope:
    """A graph input that a layer reads directly takes that layer's input scope (a MatMul W @ x holds its
    samples in columns); otherwise one range per sample, taking axis 0 as the batch."""
    for layer in layers:
        if layer.data == value.name:
            return layer.scope("layer-input", "channel")
    return per_sample(len(value.shape) if value.shape is not None else None)


def _chain_ops(nodes: list) -> list[str]:
    """The chain's own elements, in order (the range's nodes aside)."""
    return [node.op for node in nodes if not is_range_node(node)]


def insert_analog_chains(graph: gs.Graph, settings: ChainSettings, where=PLACEMENTS, exclude=()) -> dict:
    """Insert clamp / reduce-precision / noise chains at the ``where`` placements; report what went where."""
    unknown = set(where) - set(PLACEMENTS)
    if unknown:
        raise AnalogizeError(f"unknown placement(s) {', '.join(sorted(unknown))}: choose from {', '.join(PLACEMENTS)}")
    top = _TopLevel(graph)
    layers, skipped = _find_layers(top, set(exclude))
    builder = _ChainBuilder(graph, Names(graph, top.tensors), settings)
    sites: list[dict] = []

    def rewire(name: str, uses: list, order, site: str, layer_name: str | None, scope: Scope) -> None:
        target = gs.Variable(builder.names.unique(f"{name}::analog"))
        nodes, record = builder.chain(top.tensors[name], target, order, site, scope)
        if not nodes:
            return
        for position, slot in uses:
            graph.nodes[position].inputs[slot] = target
        builder.before.setdefault(min(p for p, _ in uses), []).extend(nodes)
        sites.append({"site": site, "tensor": name, "layer": layer_name, "ops": _chain_ops(nodes),
                      "range": record})

    chained_inputs = set()
    if "input" in where:
        for value in graph.inputs:
            if value.type != "tensor_type" or value.dtype != np.float32 or value.name not in top.consumers:
                continue
            rewire(value.name, top.consumers[value.name], DOA_ORDER, "input", None, _input_scope(value, layers))
            chained_inputs.add(value.name)

    if "layer-inputs" in where:
        layer_uses: dict[str, list] = {}
        owners: dict[str, list] = {}
        for layer in layers:
            if layer.data in chained_inputs:
                continue
            slot = [tensor.name for tensor in layer.node.inputs].index(layer.data)
            layer_uses.setdefault(layer.data, []).append((layer.position, slot))
            owners.setdefault(layer.data, []).append(layer)
        for name, uses in layer_uses.items():  # a tensor several layers read shares the first one's scope
            rewire(name, uses, DOA_ORDER, "layer-input", ",".join(layer.node.name for layer in owners[name]),
                   owners[name][0].scope("layer-input", settings.ranges.weights))

    for kind, placement in (("weight", "weights"), ("bias", "biases")):
        if placement not in where:
            continue
        for layer in layers:
            name = getattr(layer, kind)
            if name is None:
                continue
            if kind == "bias" and layer.bias_node is not None:
                uses = [(layer.bias_position, layer.bias_slot)]
            else:
                uses = [(layer.position, [tensor.name for tensor in layer.node.inputs].index(name))]
            rewire(name, uses, DOA_ORDER, kind, layer.node.name, layer.scope(kind, settings.ranges.weights))

    if "layer-outputs" in where and settings.elements(AOD_ORDER):
        for layer in layers:
            producer = layer.output_node
            tensor = producer.outputs[0]
            source = gs.Variable(builder.names.unique(f"{tensor.name}::pre_analog"))
            nodes, record = builder.chain(source, tensor, AOD_ORDER, "layer-output",
                                          layer.scope("layer-output", settings.ranges.weights))
            producer.outputs[0] = source
            builder.after.setdefault(top.producer[tensor.name], []).extend(nodes)
            sites.append({"site": "layer-output", "tensor": tensor.name, "layer": layer.node.name,
                          "ops": _chain_ops(nodes), "range": record})

    builder.place()
    return {"layers": [layer.node.name or layer.node.op for layer in layers], "skipped_layers": skipped,
            "sites": sites, "op_types": sorted(builder.op_types)}
