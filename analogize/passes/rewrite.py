"""Graph passes that turn an ONNX model into its analog-hardware simulation.

Each pass takes a ``ModelProto`` and changes it in place, returning a list of report records; passes
compose in :func:`analogize.convert.convert`. They work on the protobuf directly (no graph library round
trip), so converting costs little more than loading and saving the model.

Placement follows the paper's fully analog ConvNet (``shared/reference/analog-semantics.md`` section 3):
a DOA chain Clip -> ReducePrecision -> AnalogNoise before every layer (the network input included) and on
its weights and biases, an AOD chain AnalogNoise -> Clip -> ReducePrecision after it, then the activation.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, inliner, numpy_helper, version_converter

from ..errors import AnalogizeError
from ..ops.onnx_functions import MIN_OPSET, function_protos
from ..ops.spec import ALPHA, DOMAIN, DOMAIN_VERSION, OPS

PLACEMENTS = ("input", "layer-inputs", "layer-outputs", "weights", "biases")
LAYER_OP_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
_SUBGRAPH_OPS = {"If", "Loop", "Scan"}
CLAMP_RANGE = (-1.0, 1.0)


@dataclass(frozen=True)
class ChainSettings:
    """What an inserted chain does; an element is left out when disabled (precision None, std 0, clamp off)."""

    precision: float | None
    std: float
    clamp: bool
    divide: float = 0.5
    stochastic_rounding: bool = False
    seed: int | None = None


@dataclass
class Layer:
    node: onnx.NodeProto
    data: str  # the activation operand
    weight: str | None  # constant operand
    bias: str | None
    bias_node: onnx.NodeProto | None = None  # an Add that carries the bias of a MatMul
    bias_slot: int = 2

    @property
    def output_node(self) -> onnx.NodeProto:
        return self.bias_node or self.node


@dataclass
class GraphIndex:
    """Producers, consumers and constant tensors of a graph (its top level; subgraphs stay digital)."""

    graph: onnx.GraphProto
    producer: dict = field(default_factory=dict)
    consumers: dict = field(default_factory=dict)
    constants: set = field(default_factory=set)
    float_constants: set = field(default_factory=set)
    names: set = field(default_factory=set)

    @classmethod
    def build(cls, graph: onnx.GraphProto) -> "GraphIndex":
        index = cls(graph)
        for tensor in graph.initializer:
            index.constants.add(tensor.name)
            if tensor.data_type == TensorProto.FLOAT:
                index.float_constants.add(tensor.name)
        index.names.update(index.constants)
        index.names.update(v.name for v in graph.input)
        index.names.update(_subgraph_names(graph))
        for position, node in enumerate(graph.node):
            for slot, name in enumerate(node.input):
                if name:
                    index.consumers.setdefault(name, []).append((position, slot))
            for name in node.output:
                index.producer[name] = position
                index.names.add(name)
            if _is_constant_node(node, index.constants):
                index.constants.update(o for o in node.output if o)
                if _float_output(node, index.float_constants):
                    index.float_constants.update(o for o in node.output if o)
        return index

    def unique(self, name: str) -> str:
        candidate, count = name, 1
        while candidate in self.names:
            candidate, count = f"{name}_{count}", count + 1
        self.names.add(candidate)
        return candidate


def _subgraph_names(graph: onnx.GraphProto) -> set:
    """Every tensor name defined inside control-flow bodies: new names must not shadow them."""
    names = set()
    for node in graph.node:
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs):
                names.update(t.name for t in body.initializer)
                names.update(v.name for v in body.input)
                names.update(o for n in body.node for o in n.output)
                names.update(_subgraph_names(body))
    return names


def _is_constant_node(node: onnx.NodeProto, constants: set) -> bool:
    if node.domain not in ("", "ai.onnx") or node.op_type in _RANDOM_OPS | _SUBGRAPH_OPS:
        return False
    return all(name in constants for name in node.input if name)


def _float_output(node: onnx.NodeProto, float_constants: set) -> bool:
    if node.op_type == "Constant":
        value = next((a for a in node.attribute if a.name == "value"), None)
        return value is not None and value.t.data_type == TensorProto.FLOAT or any(
            a.name in ("value_float", "value_floats") for a in node.attribute)
    if node.op_type == "ConstantOfShape":
        value = next((a for a in node.attribute if a.name == "value"), None)
        return value is None or value.t.data_type == TensorProto.FLOAT
    if node.op_type == "Cast":
        return any(a.name == "to" and a.i == TensorProto.FLOAT for a in node.attribute)
    return any(name in float_constants for name in node.input if name)


def default_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    raise AnalogizeError("the model imports no default-domain (ai.onnx) opset; it is not a standard ONNX model")


# ONNX Runtime 1.31 has no kernels for RandomNormalLike/RandomUniformLike at opset 22 (a type-only revision),
# and function bodies must use the model's opset, so models with noise are brought down to 21.
MAX_OPSET_WITH_RANDOM_OPS = 21


def fit_opset(model: onnx.ModelProto, minimum: int = MIN_OPSET, maximum: int | None = None):
    """Move the default-domain opset into [minimum, maximum] with ONNX's version converter; no-op when inside."""
    current = default_opset(model)
    target = minimum if current < minimum else maximum if maximum is not None and current > maximum else current
    if target == current:
        return model, []
    if model.functions:
        raise AnalogizeError(f"the model uses opset {current} and carries its own local functions, which ONNX's "
                             f"version converter drops when moving it to opset {target}; re-export it at opset "
                             f"{target} (analogize needs {minimum}-{maximum or 'newest'} for this conversion)")
    try:
        converted = version_converter.convert_version(model, target)
    except Exception as error:  # the converter raises bare RuntimeErrors/ValueErrors per op adapter
        raise AnalogizeError(f"the model uses opset {current} and ONNX's version converter could not move it to "
                             f"{target} ({str(error).splitlines()[0]}); re-export it at opset {target}") from None
    return converted, [{"pass": "fit_opset", "from": current, "to": target}]


def find_layers(index: GraphIndex, exclude=()) -> tuple[list[Layer], list[dict]]:
    """Linear layers with a constant float weight operand; the rest are reported with the reason."""
    layers, skipped = [], []
    for node in index.graph.node:
        if node.op_type not in LAYER_OP_TYPES or node.domain not in ("", "ai.onnx"):
            continue
        reason, layer = _classify_layer(node, index, exclude)
        if layer is None:
            skipped.append({"node": node.name, "op_type": node.op_type, "reason": reason})
        else:
            layers.append(layer)
    return layers, skipped


def _classify_layer(node, index: GraphIndex, exclude):
    if node.name in exclude or node.op_type in exclude:
        return "excluded by --exclude", None
    inputs = list(node.input) + [""] * 3
    if node.op_type in ("Conv", "ConvTranspose"):
        data, weight, bias = inputs[0], inputs[1], inputs[2] or None
        if weight not in index.constants:
            return "weight is not a constant", None
    else:
        first, second = inputs[0], inputs[1]
        if (first in index.constants) == (second in index.constants):
            return "no single constant operand (activation-by-activation product or constant expression)", None
        data, weight = (first, second) if second in index.constants else (second, first)
        bias = (inputs[2] or None) if node.op_type == "Gemm" else None
    if weight not in index.float_constants:
        return "weight is not float32 (only float32 models are supported)", None
    layer = Layer(node, data, weight, bias if bias in index.constants else None)
    if node.op_type == "MatMul":
        _attach_bias_add(layer, index)
    return "", layer


def _attach_bias_add(layer: Layer, index: GraphIndex) -> None:
    """A MatMul followed by ``Add(constant)`` is one biased layer (exporters split torch Linear this way)."""
    output = layer.node.output[0]
    uses = index.consumers.get(output, [])
    if len(uses) != 1 or any(o.name == output for o in index.graph.output):
        return
    position, slot = uses[0]
    add = index.graph.node[position]
    other = add.input[1 - slot] if len(add.input) == 2 else ""
    if add.op_type == "Add" and other in index.float_constants:
        layer.bias, layer.bias_node, layer.bias_slot = other, add, 1 - slot


class _Inserter:
    """Collects new nodes positioned before or after existing ones, then rebuilds the node list once."""

    def __init__(self, index: GraphIndex, settings: ChainSettings):
        self.index, self.settings = index, settings
        self.before: dict[int, list] = {}
        self.after: dict[int, list] = {}
        self.op_types: set[str] = set()
        self._clip_bounds: tuple[str, str] | None = None
        self._templates: dict[str, onnx.NodeProto] = {}

    def chain(self, source: str, target: str, order: tuple[str, ...], site: str) -> list[onnx.NodeProto]:
        nodes, current, elements = [], source, [e for e in order if self._enabled(e)]
        for k, element in enumerate(elements):
            output = target if k == len(elements) - 1 else self.index.unique(f"{target}::{element.lower()}")
            nodes.append(self._element(element, current, output, f"analogize/{site}/{target}/{element}"))
            current = output
        return nodes

    def _enabled(self, element: str) -> bool:
        return {"clamp": self.settings.clamp, "quantize": self.settings.precision is not None,
                "noise": self.settings.std > 0}[element]

    def _element(self, element: str, source: str, output: str, name: str) -> onnx.NodeProto:
        node = onnx.NodeProto()
        if element not in self._templates:
            self._templates[element] = self._template(element)
        node.CopyFrom(self._templates[element])
        node.input[0], node.output[0], node.name = source, output, name
        return node

    def _template(self, element: str) -> onnx.NodeProto:
        """One validated node per element kind; chains copy it (cheaper than building each node anew)."""
        settings = self.settings
        if element == "clamp":
            return helper.make_node("Clip", ["", *self._clip_inputs()], [""])
        if element == "quantize":
            op_name = "StochasticReducePrecision" if settings.stochastic_rounding else "ReducePrecision"
            attributes = {"precision": settings.precision}
            if not settings.stochastic_rounding:
                attributes["divide"] = settings.divide
        else:
            op_name, attributes = "AnalogNoise", {"std": settings.std}
        self.op_types.add(op_name)
        return helper.make_node(op_name, [""], [""], domain=DOMAIN, **OPS[op_name].resolve(**attributes))

    def _clip_inputs(self) -> tuple[str, str]:
        if self._clip_bounds is None:
            low, high = self.index.unique("analogize/clamp_min"), self.index.unique("analogize/clamp_max")
            for name, value in ((low, CLAMP_RANGE[0]), (high, CLAMP_RANGE[1])):
                self.index.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
            self._clip_bounds = (low, high)
        return self._clip_bounds

    def rebuild(self) -> None:
        ordered = []
        for position, node in enumerate(self.index.graph.node):
            ordered += self.before.get(position, [])
            ordered.append(node)
            ordered += self.after.get(position, [])
        self.index.graph.ClearField("node")
        self.index.graph.node.extend(ordered)


DOA_ORDER = ("clamp", "quantize", "noise")
AOD_ORDER = ("noise", "clamp", "quantize")


def insert_analog_chains(model: onnx.ModelProto, settings: ChainSettings, where=PLACEMENTS, exclude=()) -> dict:
    """Insert clamp / reduce-precision / noise chains at the ``where`` placements; report what went where."""
    unknown = set(where) - set(PLACEMENTS)
    if unknown:
        raise AnalogizeError(f"unknown placement(s) {', '.join(sorted(unknown))}: choose from {', '.join(PLACEMENTS)}")
    index = GraphIndex.build(model.graph)
    layers, skipped = find_layers(index, set(exclude))
    inserter = _Inserter(index, settings)
    sites: list[dict] = []
    layer_positions = {id(layer.node): index.producer[layer.node.output[0]] for layer in layers}

    def rewire(tensor: str, uses: list, order, site: str, layer_name: str | None) -> None:
        target = index.unique(f"{tensor}::analog")
        nodes = inserter.chain(tensor, target, order, site)
        if not nodes:
            return
        for position, slot in uses:
            index.graph.node[position].input[slot] = target
        inserter.before.setdefault(min(p for p, _ in uses), []).extend(nodes)
        sites.append({"site": site, "tensor": tensor, "layer": layer_name, "ops": [n.op_type for n in nodes]})

    initializer_names = {t.name for t in index.graph.initializer}
    graph_inputs = [v for v in index.graph.input if v.name not in initializer_names]
    chained_inputs = set()
    if "input" in where:
        for value in graph_inputs:
            if value.type.tensor_type.elem_type != TensorProto.FLOAT or value.name not in index.consumers:
                continue
            rewire(value.name, index.consumers[value.name], DOA_ORDER, "input", None)
            chained_inputs.add(value.name)

    if "layer-inputs" in where:
        layer_uses: dict[str, list] = {}
        owners: dict[str, list] = {}
        for layer in layers:
            if layer.data in chained_inputs:
                continue
            slot = list(layer.node.input).index(layer.data)
            layer_uses.setdefault(layer.data, []).append((layer_positions[id(layer.node)], slot))
            owners.setdefault(layer.data, []).append(layer.node.name)
        for tensor, uses in layer_uses.items():
            rewire(tensor, uses, DOA_ORDER, "layer-input", ",".join(owners[tensor]))

    for kind, placement in (("weight", "weights"), ("bias", "biases")):
        if placement not in where:
            continue
        for layer in layers:
            tensor = getattr(layer, kind)
            if tensor is None:
                continue
            if kind == "bias" and layer.bias_node is not None:
                position = index.producer[layer.bias_node.output[0]]
                uses = [(position, layer.bias_slot)]
            else:
                uses = [(layer_positions[id(layer.node)], list(layer.node.input).index(tensor))]
            rewire(tensor, uses, DOA_ORDER, kind, layer.node.name)

    if "layer-outputs" in where:
        for layer in layers:
            producer = layer.output_node
            tensor = producer.output[0]
            source = index.unique(f"{tensor}::pre_analog")
            nodes = inserter.chain(source, tensor, AOD_ORDER, "layer-output")
            if not nodes:
                index.names.discard(source)
                continue
            producer.output[0] = source
            inserter.after.setdefault(index.producer[tensor], []).extend(nodes)
            sites.append({"site": "layer-output", "tensor": tensor, "layer": layer.node.name,
                          "ops": [n.op_type for n in nodes]})

    inserter.rebuild()
    return {"layers": [layer.node.name or layer.node.op_type for layer in layers], "skipped_layers": skipped,
            "sites": sites, "op_types": sorted(inserter.op_types)}


@dataclass(frozen=True)
class ActivationChoice:
    """How a ReLU is replaced; ``op_type`` None keeps it."""

    op_type: str | None
    domain: str = DOMAIN
    fixed: tuple = ()  # attributes the choice pins, as (name, value) pairs
    settable: tuple[str, ...] = ()  # attributes taken from the user's options


ACTIVATIONS: dict[str, ActivationChoice] = {
    "keep": ActivationChoice(None),
    "gelu": ActivationChoice("ReluGeluInterpolation", fixed=(("factor", 1.0),), settable=("scale",)),
    "silu": ActivationChoice("ReluSiluInterpolation", fixed=(("factor", 1.0),), settable=("scale",)),
    "interp-gelu": ActivationChoice("ReluGeluInterpolation", settable=("factor", "scale", "alpha")),
    "interp-silu": ActivationChoice("ReluSiluInterpolation", settable=("factor", "scale", "alpha")),
    "leaky": ActivationChoice("LeakyRelu", domain="", settable=("alpha",)),
    **{f"smooth-{gate.lower()}": ActivationChoice(f"Smooth{gate}", settable=("temperature",))
       for gate in ("Swish", "Gelu", "Gumbel", "Algebraic", "Guderman", "Mish")},
}


def swap_activations(model: onnx.ModelProto, activation: str, parameters: dict, exclude=()) -> dict:
    """Replace every ReLU of the top-level graph (not in ``exclude``) by ``activation``."""
    if activation not in ACTIVATIONS:
        raise AnalogizeError(f"unknown activation {activation!r}: choose from {', '.join(ACTIVATIONS)}")
    choice = ACTIVATIONS[activation]
    if choice.op_type is None:
        return {"swapped": [], "op_types": []}
    attributes = dict(choice.fixed)
    attributes.update({name: parameters[name] for name in choice.settable if parameters.get(name) is not None})
    if choice.domain == DOMAIN:
        attributes = OPS[choice.op_type].resolve(**attributes)
    elif "alpha" in attributes:
        attributes["alpha"] = ALPHA.check(choice.op_type, attributes["alpha"])
    swapped = []
    exclude = set(exclude)
    for node in model.graph.node:
        if node.op_type != "Relu" or node.domain not in ("", "ai.onnx") or node.name in exclude or "Relu" in exclude:
            continue
        node.op_type, node.domain = choice.op_type, choice.domain
        node.ClearField("attribute")
        node.attribute.extend(helper.make_attribute(k, float(v)) for k, v in sorted(attributes.items()))
        swapped.append(node.name or node.output[0])
    return {"swapped": swapped, "to": choice.op_type, "attributes": attributes,
            "op_types": [choice.op_type] if swapped and choice.domain == DOMAIN else []}


def attach_functions(model: onnx.ModelProto, op_types) -> None:
    """Declare the analog domain and carry a function body for each op used, at the model's opset."""
    present = {f.name for f in model.functions if f.domain == DOMAIN}
    op_types = sorted(set(op_types) - present)
    if not op_types:
        return
    if not any(entry.domain == DOMAIN for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    model.functions.extend(function_protos(op_types, default_opset(model)))


def node_attributes(node: onnx.NodeProto) -> dict:
    """A node's attributes as Python values."""
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def analog_nodes(model: onnx.ModelProto, op_types=None) -> list[onnx.NodeProto]:
    """The top-level nodes of the analog domain, in graph order (all of them, or those of ``op_types``)."""
    return [node for node in model.graph.node
            if node.domain == DOMAIN and (op_types is None or node.op_type in op_types)]


def seed_random_ops(model: onnx.ModelProto, seed) -> int:
    """Seed the random analog nodes in graph order: an int gives the n-th node ``seed + n``, a sequence gives
    one seed per node, ``None`` unseeds them all.

    Each node then draws from its own stream: nodes with equal seeds would draw identical noise.
    """
    random_nodes = [node for node in analog_nodes(model) if OPS[node.op_type].random]
    if seed is None or isinstance(seed, int):
        seeds = [None if seed is None else seed + n for n in range(len(random_nodes))]
    elif len(seed) != len(random_nodes):
        raise ValueError(f"{len(seed)} seeds for {len(random_nodes)} random nodes")
    else:
        seeds = list(seed)
    for node, node_seed in zip(random_nodes, seeds):
        kept = [a for a in node.attribute if a.name != "seed"]
        node.ClearField("attribute")
        node.attribute.extend(kept)
        if node_seed is not None:
            node.attribute.append(helper.make_attribute("seed", float(node_seed)))
    return len(random_nodes)


def set_analog_attributes(model: onnx.ModelProto, op_types, **values) -> int:
    """Set attribute values (checked against the op set) on every analog node of ``op_types``."""
    nodes = analog_nodes(model, set(op_types))
    for node in nodes:
        spec = OPS[node.op_type]
        for name, value in values.items():
            checked = spec.attribute(name).check(node.op_type, value)
            existing = next((a for a in node.attribute if a.name == name), None)
            if existing is None:
                node.attribute.append(helper.make_attribute(name, checked))
            else:
                existing.f = checked
    return len(nodes)


def round_deterministically(model: onnx.ModelProto) -> int:
    """Turn every StochasticReducePrecision into ReducePrecision at the same precision."""
    nodes = analog_nodes(model, {"StochasticReducePrecision"})
    for node in nodes:
        precision = next(a.f for a in node.attribute if a.name == "precision")
        node.op_type = "ReducePrecision"
        node.ClearField("attribute")
        node.attribute.extend(helper.make_attribute(k, v) for k, v in
                              OPS["ReducePrecision"].resolve(precision=precision).items())
    if nodes:
        attach_functions(model, ["ReducePrecision"])
        drop_unused(model)
    return len(nodes)


CHAIN_ELEMENTS = {"noise": ("AnalogNoise",), "quantize": ("ReducePrecision", "StochasticReducePrecision"),
                  "clamp": ("Clip",)}


def is_chain_element(node: onnx.NodeProto, elements) -> bool:
    if node.op_type not in {op for element in elements for op in CHAIN_ELEMENTS[element]}:
        return False
    if node.op_type == "Clip":  # only the clamps convert inserted: they read its shared bound initializers
        return node.domain in ("", "ai.onnx") and len(node.input) == 3 and \
            node.input[1].startswith("analogize/clamp_min")
    return node.domain == DOMAIN


def remove_analog_chains(model: onnx.ModelProto, elements=tuple(CHAIN_ELEMENTS)) -> int:
    """Take the inserted chain elements (noise, quantize, clamp) out, wiring their consumers to their inputs.

    Activation swaps stay. Function bodies, bound initializers and the domain import that nothing uses any
    more are dropped, so removing every element leaves a standard model.
    """
    unknown = set(elements) - set(CHAIN_ELEMENTS)
    if unknown:
        raise AnalogizeError(f"unknown chain element(s) {', '.join(sorted(unknown))}: "
                             f"choose from {', '.join(CHAIN_ELEMENTS)}")
    graph_outputs = {value.name for value in model.graph.output}
    replacement: dict[str, str] = {}
    kept = []
    for node in model.graph.node:
        if not is_chain_element(node, elements):
            kept.append(node)
            continue
        source = replacement.get(node.input[0], node.input[0])
        if node.output[0] in graph_outputs:
            kept.append(helper.make_node("Identity", [source], [node.output[0]], name=node.name))
        else:
            replacement[node.output[0]] = source
    removed = len(model.graph.node) - len(kept)
    if not removed:
        return 0
    rename_inputs(model.graph, kept, replacement)
    model.graph.ClearField("node")
    model.graph.node.extend(kept)
    drop_unused(model)
    return removed


def rename_inputs(graph: onnx.GraphProto, nodes, replacement: dict) -> None:
    for node in nodes:
        for slot, name in enumerate(node.input):
            if name in replacement:
                node.input[slot] = replacement[name]
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs):
                rename_inputs(body, body.node, replacement)


def drop_unused(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    unused = [t for t in model.graph.initializer if t.name.startswith("analogize/clamp_") and t.name not in used]
    for tensor in unused:
        model.graph.initializer.remove(tensor)
    in_use = {node.op_type for node in analog_nodes(model)}
    for function in [f for f in model.functions if f.domain == DOMAIN and f.name not in in_use]:
        model.functions.remove(function)
    if not in_use:
        for entry in [e for e in model.opset_import if e.domain == DOMAIN]:
            model.opset_import.remove(entry)


# Initializers outside graph.input need IR >= 4 and model-local functions IR >= 8; 10 is the lowest IR that
# ONNX Runtime 1.31 and onnx >= 1.16 agree on for functions with attribute defaults.
MIN_IR_VERSION = 10


def raise_ir_version(model: onnx.ModelProto) -> None:
    if model.ir_version < 4:
        # Below IR 4 every initializer had to be listed as a graph input too, and runtimes take them as constants.
        # Still listed at IR 4 and above, they would be inputs a caller may override, which ONNX Runtime neither
        # folds nor lays out for its fastest convolutions.
        stored = {tensor.name for tensor in model.graph.initializer}
        data_inputs = [value for value in model.graph.input if value.name not in stored]
        model.graph.ClearField("input")
        model.graph.input.extend(data_inputs)
    model.ir_version = max(model.ir_version, MIN_IR_VERSION)


def inline_analog_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """Expand the analog ops into standard ops so that no custom domain remains."""
    inlined = inliner.inline_selected_functions(model, [(DOMAIN, f.name) for f in model.functions
                                                             if f.domain == DOMAIN])
    kept = [entry for entry in inlined.opset_import if entry.domain != DOMAIN]
    inlined.ClearField("opset_import")
    inlined.opset_import.extend(kept)
    return inlined


def is_converted(model: onnx.ModelProto) -> bool:
    return any(entry.domain == DOMAIN for entry in model.opset_import) or any(
        p.key == METADATA_KEY for p in model.metadata_props)


METADATA_KEY = "analogize.settings"


def stored_settings(model: onnx.ModelProto) -> dict:
    """Convert's settings as recorded in the model ({} when it has none)."""
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return json.loads(entry.value)
    return {}


def store_settings(model: onnx.ModelProto, summary: dict) -> None:
    """Record convert's settings in the model's metadata (replacing any earlier record)."""
    value = json.dumps(summary, sort_keys=True)
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            entry.value = value
            return
    model.metadata_props.add(key=METADATA_KEY, value=value)
