"""Analog chains: inserting them around a graph's linear layers, what their elements are, and taking them out.

Placement follows the paper's fully analog ConvNet (``shared/reference/analog-semantics.md`` section 3):
a DOA chain Clip -> ReducePrecision -> AnalogNoise before every layer (the network input included) and on
its weights and biases, an AOD chain AnalogNoise -> Clip -> ReducePrecision after it, then the activation.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import AnalogizeError
from ..ops.spec import DOMAIN, OPS
from ..ranges.mapping import (RECURRENT_OPS, UNIT_RANGES, WHOLE_TENSOR, RangeBuilder, RangeSettings, Scope,
                              activation_scope, is_range_node, per_sample, weight_scope)
from .graph import (STANDARD_OPS_WITH_BODIES, Names, bodies, constant_tensors, graph_tensors, is_default_domain,
                    known_values, new_node, new_variable, node_bodies)

PLACEMENTS = ("input", "layer-inputs", "layer-outputs", "weights", "biases")
LAYER_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum", *RECURRENT_OPS)
# matrix-vector layers convert leaves digital, and why (the report lists each one it finds)
DIGITAL_LAYERS = {
    **{op: "an integer (quantised) layer: convert takes float32 layers only"
       for op in ("ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul", "DynamicQuantizeLSTM",
                  "QGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")},
}
RECURRENT_NOTE = ("recurrent: W, R and B carry weight chains and the input X a layer-input chain (every time "
                  "step's input); the hidden state h that R multiplies at each step (initial_h included), the gate "
                  "pre-activations inside the op (hence no layer-output chain) and LSTM peepholes stay digital, "
                  "since the ONNX op exposes no tensor inside its recurrence")
PRODUCT_NOTE = ("activation-by-activation product: both operands carry layer-input chains (one DAC gain per row "
                "of the left, per column of the right), the result a layer-output chain")
KEPT_DIGITAL = "kept digital by the plan"
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


def remove_analog_chains(graph: gs.Graph, elements=tuple(CHAIN_ELEMENTS), ranges: bool | None = None,
                         chains: set | None = None) -> int:
    """Take the inserted chain elements (noise, quantize, clamp) out, wiring their consumers to their inputs;
    returns how many nodes went. ``ranges`` (default: when every element goes) takes the chains' range nodes
    out too (x / r * r is not x in float32). ``chains`` limits it to the chains of those names (the sites'
    ``chain`` records).

    Activation swaps stay. An element that writes a graph (or body) output becomes an Identity. Bound constants
    that nothing reads any more are not exported; :func:`analogize.passes.model.sync_analog_functions` drops the
    function bodies nothing uses. Chains in control-flow bodies go too.
    """
    unknown = set(elements) - set(CHAIN_ELEMENTS)
    if unknown:
        raise AnalogizeError(f"unknown chain element(s) {', '.join(sorted(unknown))}: "
                             f"choose from {', '.join(CHAIN_ELEMENTS)}")
    with_ranges = set(elements) == set(CHAIN_ELEMENTS) if ranges is None else ranges
    if chains is not None and not chains:
        return 0
    return sum(_remove_from(body, elements, with_ranges, chains) for body in (graph, *bodies(graph)))


def _remove_from(graph: gs.Graph, elements, with_ranges: bool, chains: set | None) -> int:
    """:func:`remove_analog_chains` on one graph's own nodes; a consumer in a body is rewired all the same."""
    graph_outputs = {id(tensor) for tensor in graph.outputs}
    kept, removed = [], 0
    for node in graph.nodes:
        range_node = with_ranges and is_range_node(node)
        if not (range_node or is_chain_element(node, elements)) or \
                chains is not None and node.name.rpartition("/")[0] not in chains:
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
    recurrence: str | None = None  # a recurrent layer's R
    path: str = ""  # where its graph lies: "" at the top level, "If_0/then_branch/" in a body
    second: str | None = None  # an activation-by-activation product's right operand (weight is None then)

    def __post_init__(self):
        # named before chains rewire the node's outputs (an unnamed body node is named by its first output)
        self.label = _label(self.path, self.node)

    @property
    def output_node(self) -> gs.Node:
        return self.bias_node or self.node

    def scope(self, site: str, weight_mode: str = "") -> Scope:
        """Which values of this layer's ``site`` tensor share one range (``weight_mode``: of a weight site)."""
        if site == "weight":
            return weight_scope(weight_mode, self.node.op, self.node.attrs, self.weight_shape, self.weight_first)
        if site == "bias":
            return WHOLE_TENSOR
        return activation_scope(self.node.op, self.node.attrs, self.data_rank,
                                None if self.weight_shape is None else len(self.weight_shape), self.weight_first,
                                site == "layer-output")

    def second_scope(self) -> Scope:
        """A product's right operand is read column by column, as a weight-first MatMul's input is; of unknown
        rank, as one tensor (a range per element would map every value to full scale)."""
        if self.weight_shape is None:
            return WHOLE_TENSOR
        return activation_scope(self.node.op, self.node.attrs, len(self.weight_shape), None, True, False)


def _label(path: str, node: gs.Node) -> str:
    """How the report (and a plan) names a node: by name at the top level, by path in a body (names repeat across
    branches). Layers convert finds are named first (:func:`_name_layer`); another unnamed node goes by its op."""
    return f"{path}{node.name or node.op}"


def _name_layer(node: gs.Node, position: int, taken: set) -> None:
    """Give an unnamed layer node the name ``<op>_<position>``: reports, plans and export/rebuild pairs then name
    it the same way (an export renames the layer's output tensor, not the node)."""
    if node.name:
        return
    name, count = f"{node.op}_{position}", 1
    while name in taken:
        name, count = f"{node.op}_{position}_{count}", count + 1
    node.name = name
    taken.add(name)


class _Scope:
    """One graph convert rewrites, the top level or a body at ``path``: its nodes' positions, the uses of its
    tensors, and its constants (a body's include those of the graphs around it, which it reads by name)."""

    def __init__(self, graph: gs.Graph, path: str = "", outer: tuple[set, set] = (set(), set())):
        self.graph, self.path = graph, path
        self.tensors = graph_tensors(graph)
        self.constants, self.float_constants = constant_tensors(graph, self.tensors, outer)
        self.consumers: dict[str, list] = {}  # name: [(position, node, slot)] of this graph's nodes
        self.nested_reads: dict[str, list] = {}  # the same for reads by nodes in bodies, at the body's holder
        self.producer: dict[str, int] = {}
        for position, node in enumerate(graph.nodes):
            for slot, tensor in enumerate(node.inputs):
                if tensor.name:
                    self.consumers.setdefault(tensor.name, []).append((position, node, slot))
            for tensor in node.outputs:
                self.producer[tensor.name] = position
            for body in _standard_bodies(node):
                self._note_reads(position, body)

    def _note_reads(self, position: int, body: gs.Graph) -> None:
        for node in body.nodes:
            for slot, tensor in enumerate(node.inputs):
                if tensor.name and self.tensors.get(tensor.name) is tensor:
                    self.nested_reads.setdefault(tensor.name, []).append((position, node, slot))

    def uses(self, name: str) -> list:
        return self.consumers.get(name, []) + self.nested_reads.get(name, [])


def _standard_bodies(node: gs.Node):
    """The bodies of a standard node at any depth, those of custom-domain nodes (which convert leaves alone) aside."""
    if node.op in STANDARD_OPS_WITH_BODIES and is_default_domain(node):
        for _, body in node_bodies(node):
            yield body
            for inner in body.nodes:
                yield from _standard_bodies(inner)


def _scopes(graph: gs.Graph, path: str = "", outer: tuple[set, set] = (set(), set())) -> tuple[list, list]:
    """The graph and the bodies convert may rewrite, depth first; and the layers in bodies it may not (those of a
    custom-domain node, whose runtime may not run the graph as ONNX does), as skipped layers."""
    scope = _Scope(graph, path, outer)
    scopes, skipped = [scope], []
    for node in graph.nodes:
        for name, body in node_bodies(node):
            inner_path = f"{path}{node.name or node.op}/{name}/"
            if is_default_domain(node):
                found, left = _scopes(body, inner_path, (scope.constants, scope.float_constants))
                scopes += found
                skipped += left
            else:
                skipped += [{"node": _label(inner_path, inner), "op_type": inner.op,
                             "reason": f"inside the body of a {node.domain} node, which convert does not rewrite"}
                            for inner_body in (body, *bodies(body)) for inner in inner_body.nodes
                            if inner.op in LAYER_OP_TYPES or inner.op in DIGITAL_LAYERS]
    return scopes, skipped


def _find_layers(scope: _Scope, exclude, activation_mode: str, products: bool = False, kept_digital=frozenset()
                 ) -> tuple[list[Layer], list[dict], list[Layer]]:
    """Linear layers with a constant float weight operand; the rest are reported with the reason; and the layers
    the plan keeps digital (the data-input rule still counts them: an input's DAC is a unit of its own)."""
    layers, skipped, planned_digital = [], [], []
    taken = {node.name for node in scope.graph.nodes if node.name}
    for position, node in enumerate(scope.graph.nodes):
        if (node.op in LAYER_OP_TYPES and is_default_domain(node)) or node.op in DIGITAL_LAYERS:
            _name_layer(node, position, taken)
        if node.op in DIGITAL_LAYERS:
            skipped.append({"node": _label(scope.path, node), "op_type": node.op, "reason": DIGITAL_LAYERS[node.op]})
        if node.op not in LAYER_OP_TYPES or not is_default_domain(node):
            continue
        reason, layer = _classify_layer(node, position, scope, exclude, products)
        if layer is not None and layer.label in kept_digital:
            planned_digital.append(layer)
            reason, layer = KEPT_DIGITAL, None
        if layer is not None and scope.path and activation_mode == "calibrated":
            reason, layer = ("inside an If/Loop/Scan body: calibration reads top-level tensors only (use "
                             "--activation-range dynamic or unit)"), None
        if layer is None:
            skipped.append({"node": _label(scope.path, node), "op_type": node.op, "reason": reason})
        else:
            layers.append(layer)
    return layers, skipped, planned_digital


def _classify_layer(node: gs.Node, position: int, scope: _Scope, exclude, products: bool = False):
    if node.name in exclude or node.op in exclude or _label(scope.path, node) in exclude:
        return "excluded by --exclude", None
    inputs = [tensor.name for tensor in node.inputs] + [""] * 3
    recurrence = None
    if node.op in RECURRENT_OPS:
        data, weight, recurrence, bias = inputs[0], inputs[1], inputs[2], inputs[3] or None
        if weight not in scope.constants or recurrence not in scope.constants:
            return "W or R is not a constant", None
        if recurrence not in scope.float_constants:
            return "R is not float32 (only float32 models are supported)", None
    elif node.op in ("Conv", "ConvTranspose"):
        data, weight, bias = inputs[0], inputs[1], inputs[2] or None
        if weight not in scope.constants:
            return "weight is not a constant", None
    else:
        first, second = inputs[0], inputs[1]
        if node.op == "Einsum" and len(node.inputs) != 2:
            return "an Einsum of other than two operands", None
        if node.op == "MatMul" and first not in scope.constants and second not in scope.constants:
            return _product(node, position, scope, products)
        if (first in scope.constants) == (second in scope.constants):
            return "no single constant operand (a constant expression)", None
        data, weight = (first, second) if second in scope.constants else (second, first)
        bias = (inputs[2] or None) if node.op == "Gemm" else None
    if weight not in scope.float_constants:
        return "weight is not float32 (only float32 models are supported)", None
    if bias in scope.constants and bias not in scope.float_constants:  # a string bias has no range to take
        return "bias is not float32 (only float32 models are supported)", None
    weight_tensor, data_tensor = scope.tensors[weight], scope.tensors[data]
    shape = weight_tensor.shape
    if shape is None:  # a Constant node's output carries no shape until inference runs
        values = known_values(weight_tensor)
        shape = None if values is None else values.shape
    layer = Layer(node, position, data, weight, bias if bias in scope.constants else None,
                  weight_first=node.op in ("Gemm", "MatMul", "Einsum") and inputs[0] == weight,
                  weight_shape=None if shape is None else tuple(shape),
                  data_rank=None if data_tensor.shape is None else len(data_tensor.shape),
                  recurrence=recurrence, path=scope.path)
    if node.op == "MatMul":
        _attach_bias_add(layer, scope)
    return "", layer


def _product(node: gs.Node, position: int, scope: _Scope, products: bool):
    """An activation-by-activation MatMul (attention's Q K^T and A V): analog on request, as photonic chips
    compute such products; both operands then go through DACs."""
    if not products:
        return ("an activation-by-activation product: digital unless asked for (--analog-products)"), None
    first, second = (scope.tensors[tensor.name] for tensor in node.inputs[:2])
    if any(tensor.dtype not in (None, np.float32) for tensor in (first, second)):
        return "a product of non-float32 operands (only float32 models are supported)", None
    layer = Layer(node, position, first.name, None, None, weight_shape=None if second.shape is None
                  else tuple(second.shape), data_rank=None if first.shape is None else len(first.shape),
                  path=scope.path, second=second.name)
    _attach_bias_add(layer, scope)
    return "", layer


def _attach_bias_add(layer: Layer, scope: _Scope) -> None:
    """A MatMul followed by ``Add(constant)`` is one biased layer (exporters split torch Linear this way)."""
    output = layer.node.outputs[0]
    uses = scope.consumers.get(output.name, [])
    if len(uses) != 1 or output.name in scope.nested_reads or any(tensor is output for tensor in scope.graph.outputs):
        return
    position, add, slot = uses[0]
    other = add.inputs[1 - slot].name if len(add.inputs) == 2 else ""
    if add.op == "Add" and other in scope.float_constants:
        layer.bias, layer.bias_node, layer.bias_position, layer.bias_slot = other, add, position, 1 - slot


#: a site's chain settings from the units that own it (layer names, or ``input:NAME``) and the site; None keeps
#: the site digital (a plan's per-layer settings; by default every site takes the global settings)
SiteSettings = Callable[[tuple, str], "ChainSettings | None"]
INPUT_UNIT_PREFIX = "input:"  # a graph input's unit name (its DAC belongs to no layer)
LAYER_SITES = ("layer-input", "weight", "bias", "layer-output")  # the chain sites of a layer


class _ChainBuilder:
    """Makes the chain nodes of one graph, and collects them by the position they go before or after; :meth:`place`
    then rebuilds the node list once. Each graph gets its own builder, so a body holds its own shared constants
    (a body initializer named as an outer one would shadow it). The report's site records go to ``sites``."""

    def __init__(self, graph: gs.Graph, names: Names, site_settings: SiteSettings, sites: list, path: str = ""):
        self.graph, self.names, self.site_settings, self.sites, self.path = graph, names, site_settings, sites, path
        self.ranges = RangeBuilder(names, graph.opset)
        self.before: dict[int, list] = {}
        self.after: dict[int, list] = {}
        self.op_types: set[str] = set()
        self._clip_bounds: list[gs.Constant] | None = None
        self._attributes: dict[tuple, tuple[str, dict]] = {}

    def chain(self, source: gs.Tensor, target: gs.Tensor, order: tuple[str, ...], site: str, scope: Scope,
              settings: ChainSettings) -> tuple[list[gs.Node], dict, str]:
        """The chain's nodes from ``source`` to ``target``, inside its range's Div and Mul unless the range is
        ``unit``, the report's record of the range, and the prefix every node of the chain is named by."""
        elements = settings.elements(order)
        prefix = f"analogize/{site}/{target.name}"
        if not elements:
            return [], {}, prefix
        mode = settings.ranges.mode(site)
        if mode == "calibrated" and self.path:  # a plan's per-layer mode; the global one is refused earlier
            raise AnalogizeError(f"calibrated ranges inside an If/Loop/Scan body ({self.path}): calibration reads "
                                 f"top-level tensors only; give that layer activation_range dynamic or unit")
        nodes, current, end, record, rescale = [], source, target, {"mode": mode}, []
        if mode != "unit":
            nodes, value, record = self.ranges.range_of(source, mode, scope, prefix)
            current, end, (normalise, multiply) = self.ranges.wrap(source, target, value, prefix)
            nodes.append(normalise)
            rescale = [multiply]
        for k, element in enumerate(elements):
            output = end if k == len(elements) - 1 else \
                new_variable(self.names.unique(f"{target.name}::{element}"))
            nodes.append(self._element(element, current, output, f"{prefix}/{element}", settings))
            current = output
        return nodes + rescale, record, prefix

    def rewire(self, source: gs.Tensor, uses: list, order: tuple[str, ...], site: str, owners: tuple,
               scope: Scope) -> None:
        """Put a chain from ``source`` before its ``uses`` ((position, node, slot): the node reads the chain's
        output there instead), placed before the first of them; ``owners`` are the units it belongs to."""
        settings = self.site_settings(owners, site)
        if settings is None:
            return
        target = new_variable(self.names.unique(f"{source.name}::analog"))
        nodes, record, prefix = self.chain(source, target, order, site, scope, settings)
        if not nodes:
            return
        for _, node, slot in uses:
            node.inputs[slot] = target
        self.before.setdefault(min(position for position, _, _ in uses), []).extend(nodes)
        self.record(site, source.name, owners, nodes, record, prefix, settings)

    def record(self, site: str, tensor: str, owners: tuple, nodes: list, range_record: dict, prefix: str,
               settings: ChainSettings) -> None:
        """The report's record of one chain: ``layer`` joins the owning layers' names (None for a graph input),
        ``owners`` lists the units, ``chain`` is the prefix of its nodes' names (what evaluate varies by), and
        its precision and noise std (a plan sets them per site)."""
        layers = [owner for owner in owners if not owner.startswith(INPUT_UNIT_PREFIX)]
        self.sites.append({"site": site, "tensor": tensor, "layer": ",".join(layers) if layers else None,
                           "owners": list(owners), "chain": prefix, "ops": _chain_ops(nodes), "range": range_record,
                           "precision": settings.precision, "std": settings.std})

    def _element(self, element: str, source: gs.Tensor, output: gs.Tensor, name: str,
                 settings: ChainSettings) -> gs.Node:
        if element == "clamp":
            return new_node("Clip", name, inputs=[source, *self._clip_inputs()], outputs=[output])
        key = (element, settings.precision, settings.std, settings.stochastic_rounding, settings.divide)
        if key not in self._attributes:
            self._attributes[key] = self._op(element, settings)
        op_name, attributes = self._attributes[key]
        return new_node(op_name, name, attrs=dict(attributes), inputs=[source], outputs=[output], domain=DOMAIN)

    def _op(self, element: str, settings: ChainSettings) -> tuple[str, dict]:
        """The analog op of an element and its attributes, checked once per setting against the op set."""
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
            return layer.scope("layer-input")
    return per_sample(len(value.shape) if value.shape is not None else None)


def _chain_ops(nodes: list) -> list[str]:
    """The chain's own elements, in order (the range's nodes aside)."""
    return [node.op for node in nodes if not is_range_node(node)]


def check_placements(where) -> None:
    unknown = set(where) - set(PLACEMENTS)
    if unknown:
        raise AnalogizeError(f"unknown placement(s) {', '.join(sorted(unknown))}: choose from {', '.join(PLACEMENTS)}")


def insert_analog_chains(graph: gs.Graph, settings: ChainSettings, where=PLACEMENTS, exclude=(),
                         products: bool = False, data_inputs=None, site_settings: SiteSettings | None = None,
                         kept_digital=()) -> dict:
    """Insert clamp / reduce-precision / noise chains at the ``where`` placements, in the graph and in its
    If/Loop/Scan bodies; report what went where (body layers by path, e.g. ``If_0/then_branch/Conv_3``).
    ``products``: activation-by-activation MatMuls are layers too (both operands are layer inputs).
    ``data_inputs``: the graph inputs the ``input`` placement chains (default: the float inputs that reach a
    layer's data operand). ``site_settings`` gives each site its own settings (default: ``settings`` everywhere);
    the layers named in ``kept_digital`` stay digital, as a plan says."""
    check_placements(where)
    if data_inputs is not None:
        floats = {value.name for value in graph.inputs if value.dtype == np.float32}
        strangers = [name for name in data_inputs if name not in floats]
        if strangers:
            raise AnalogizeError(f"--data-inputs {', '.join(strangers)}: not a float32 graph input; the model's are "
                                 f"{', '.join(sorted(floats)) or 'none'}")
    scopes, unreachable = _scopes(graph)
    found = [_find_layers(scope, set(exclude), settings.ranges.activations, products, set(kept_digital))
             for scope in scopes]
    layers = [layer for scope_layers, _, _ in found for layer in scope_layers]
    planned_digital = [layer for _, _, digital in found for layer in digital]
    names = Names(graph, scopes[0].tensors)
    sites: list[dict] = []
    op_types: set[str] = set()
    chained_inputs: set[str] = set()
    digital_inputs: list[dict] = []
    for scope, (scope_layers, _, _) in zip(scopes, found):
        builder = _ChainBuilder(scope.graph, names, site_settings or (lambda owners, site: settings), sites,
                                scope.path)
        if "input" in where and not scope.path:
            chained_inputs, digital_inputs = _chain_inputs(scope, builder, layers + planned_digital, data_inputs)
        _chain_layers(scope, scope_layers, builder, where, chained_inputs)
        builder.place()
        op_types |= builder.op_types
    return {"layers": [layer.label for layer in layers],
            "layer_op_types": {layer.label: layer.node.op for layer in layers},
            "skipped_layers": [entry for _, skipped, _ in found for entry in skipped] + unreachable,
            "notes": [{"layer": layer.label, "note": RECURRENT_NOTE} for layer in layers
                      if layer.node.op in RECURRENT_OPS]
            + [{"layer": layer.label, "note": PRODUCT_NOTE} for layer in layers if layer.second],
            "digital_inputs": digital_inputs,
            "input_units": [INPUT_UNIT_PREFIX + name for name in sorted(chained_inputs)],
            "sites": sites, "op_types": sorted(op_types)}


# ops a data tensor flows through on its way to a layer: by their first input (layout, normalisation,
# activations, pooling), or by any input where every other one is a constant (affine preprocessing)
_DATA_THROUGH_FIRST = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Cast", "Identity", "Pad", "Slice",
                       "Resize", "Upsample", "BatchNormalization", "InstanceNormalization", "LayerNormalization",
                       "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool",
                       "Dropout", "Split", "Gather", "Expand", "Tile", "DepthToSpace", "SpaceToDepth"}
_DATA_THROUGH_ANY = {"Add", "Sub", "Mul", "Div", "Concat"}


def _feeds_a_layer(value: gs.Tensor, layers: list[Layer], constants: set) -> bool:
    """Whether graph input ``value`` is data: it reaches a layer's data operand (a product's operands
    included) through data-preserving ops. A Resize scale, a threshold, an additive mask joined to other
    activations or a recurrent initial state does not."""
    operands = {(id(layer.node), name) for layer in layers for name in (layer.data, layer.second) if name}
    seen, frontier = set(), [value]
    while frontier:
        tensor = frontier.pop()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        for node in tensor.outputs:
            slots = [k for k, entry in enumerate(node.inputs) if entry is tensor]
            if (id(node), tensor.name) in operands:
                return True
            others_constant = all(entry.name in constants or isinstance(entry, gs.Constant)
                                  for k, entry in enumerate(node.inputs) if k not in slots and entry.name)
            if node.op in _DATA_THROUGH_FIRST and 0 in slots or node.op in _DATA_THROUGH_ANY and (
                    others_constant or node.op == "Concat"):
                frontier.extend(node.outputs)
    return False


def _chain_inputs(scope: _Scope, builder: _ChainBuilder, layers: list[Layer], chosen) -> tuple[set[str], list]:
    """Chain the float graph inputs that are data (``chosen``: these names instead) for every node that reads
    them, in bodies too, but not where they are a recurrent layer's initial state (digital, as the state it
    carries: RECURRENT_NOTE); returns their names and the float inputs left digital, with the reason."""
    chained, left = set(), []
    for value in scope.graph.inputs:
        uses = [use for use in scope.uses(value.name) if not (use[1].op in RECURRENT_OPS and use[2] in (5, 6))]
        if value.type != "tensor_type" or value.dtype != np.float32 or not uses:
            continue
        if chosen is not None and value.name not in chosen:
            left.append({"input": value.name, "reason": "not among the inputs named by --data-inputs"})
            continue
        if chosen is None and not _feeds_a_layer(value, layers, scope.constants):
            left.append({"input": value.name, "reason": "it reaches no layer's data operand (a parameter such as "
                         "scales, thresholds or an additive mask, or a recurrent state): name it with "
                         "--data-inputs to chain it"})
            continue
        builder.rewire(value, uses, DOA_ORDER, "input", (INPUT_UNIT_PREFIX + value.name,),
                       _input_scope(value, layers))
        chained.add(value.name)
    return chained, left


def _chain_layers(scope: _Scope, layers: list[Layer], builder: _ChainBuilder, where, chained_inputs: set) -> None:
    """Chain the inputs, weights, biases and outputs of one graph's ``layers``."""
    if "layer-inputs" in where:
        layer_uses: dict[str, list] = {}
        owners: dict[str, list] = {}
        scopes: dict[str, Scope] = {}  # a tensor several layers read shares the first one's scope
        for layer in layers:
            operands = [(layer.data, 0, layer.scope("layer-input"))]
            if layer.second is not None:
                operands.append((layer.second, 1, layer.second_scope()))
            for name, slot, operand_scope in operands:
                if name in chained_inputs:
                    continue
                layer_uses.setdefault(name, []).append((layer.position, layer.node, slot if layer.second else
                                                        [tensor.name for tensor in layer.node.inputs].index(name)))
                owners.setdefault(name, []).append(layer)
                scopes.setdefault(name, operand_scope)
        for name, uses in layer_uses.items():
            builder.rewire(scope.tensors[name], uses, DOA_ORDER, "layer-input",
                           tuple(layer.label for layer in owners[name]), scopes[name])

    for kind, placement in (("weight", "weights"), ("bias", "biases")):
        if placement not in where:
            continue
        for layer in layers:
            for name in (layer.weight, layer.recurrence) if kind == "weight" else (layer.bias,):
                if name is None:
                    continue
                if kind == "bias" and layer.bias_node is not None:
                    uses = [(layer.bias_position, layer.bias_node, layer.bias_slot)]
                else:
                    uses = [(layer.position, layer.node, [tensor.name for tensor in layer.node.inputs].index(name))]
                settings = builder.site_settings((layer.label,), kind)
                if settings is not None:
                    builder.rewire(scope.tensors[name], uses, DOA_ORDER, kind, (layer.label,),
                                   layer.scope(kind, settings.ranges.weights))

    if "layer-outputs" in where:
        for layer in layers:
            settings = builder.site_settings((layer.label,), "layer-output")
            # a recurrent layer's matrix-vector outputs lie inside the op (RECURRENT_NOTE)
            if layer.node.op in RECURRENT_OPS or settings is None or not settings.elements(AOD_ORDER):
                continue
            producer = layer.output_node
            tensor = producer.outputs[0]
            source = new_variable(builder.names.unique(f"{tensor.name}::pre_analog"))
            nodes, record, prefix = builder.chain(source, tensor, AOD_ORDER, "layer-output",
                                                  layer.scope("layer-output"), settings)
            producer.outputs[0] = source
            builder.after.setdefault(scope.producer[tensor.name], []).extend(nodes)
            builder.record("layer-output", tensor.name, (layer.label,), nodes, record, prefix, settings)
