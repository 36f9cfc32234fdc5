"""Fusion of element-wise chains into FusedChain nodes of the native domain, and its inverse.

A chain that convert wrapped in its full scale r, ``Div(x, r) -> chain -> Mul(., r)``, is fused with the Div and
the Mul, and with the nodes that compute r where they measure it from x (``Abs -> ReduceMax -> Max(., floor)``,
one r per vector of x): RANGE, NORMALISE and RESCALE steps (:class:`~analogize.native.build.StepKind`) do in
the chain's one pass what those nodes did in one pass each. A constant r of one value becomes the node's second
input.

:func:`fuse_elementwise_chains` and :func:`unfuse_chains` are passes over onnx-graphsurgeon's IR (the contract
of :mod:`analogize.passes`); :func:`fuse_model_chains` and :func:`unfuse_model_chains` are their pipelines for
callers that hold a model: :func:`~analogize.passes.graph.import_model`, the pass, and
:func:`~analogize.passes.graph.export_model` (which imports the native domain the new nodes use, once), followed
for the second by :func:`~analogize.passes.model.sync_analog_functions` (the domain's import goes with its nodes).

A portable FusedChain node (the fast form of a file, :mod:`analogize.runtime.fast_form`) calls its own
overload of a local function ``FusedChain`` whose body is the chain it replaced, node for node: names,
attributes and seeds as they were, each Clip bound a Constant of the initializer's name. ONNX Runtime runs the
registered kernel where the library is loaded (a registered custom op takes precedence over a local function of
the same domain and name, overload or not) and the body where it is not; :func:`unfuse_chains` puts the body
back in the graph.
"""
from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper
from onnx_graphsurgeon.ir.tensor import SparseValues

from ..errors import AnalogizeError
from ..ops.spec import DOMAIN, OPS, OpSpec
from ..passes.graph import (Names, UniqueNames, bodies, constant_values, cycle_collection_paused, export_model,
                            graph_tensors, import_model, is_default_domain)
from ..passes.model import export_with_functions, refuse_machine_form
from .build import FUSED_DOMAIN, MAX_CHAIN_STEPS, MAX_STEP_ATTRIBUTES, StepKind, _kernel_source

FUSED_CHAIN = "FusedChain"
CHAIN_ATTRIBUTES = ("kinds", "ops", "parameters", "seeds")
RANGE_AXES = "range_axes"  # a measured range's axes; absent: all
RANGE_BLOCK = "range_block"  # set by analogize.runtime.blocked_layout for chains on blocked tensors
CHAIN_INPUTS = ("X", "R")  # a function body's names for the chain's input and its range input
_OP_INDEX = {name: index for index, name in enumerate(OPS)}  # the order of kOps


def _gated(spec: OpSpec) -> bool:
    return _kernel_source(0, spec)[2]


#: analog ops of one input, computed element by element (all but the gated ones)
ELEMENTWISE_OPS = {name for name, spec in OPS.items() if not _gated(spec)}


def _scalars(overridable: Collection[str]):
    """A reader of Clip bounds: the value of a dense float32 initializer of one element that no caller may
    override, else None; each tensor read once (convert's clamps share two), and read without loading it into
    the tensor, which would make the export re-encode it."""
    known: dict[str, float | None] = {}

    def value(tensor: gs.Tensor) -> float | None:
        if not isinstance(tensor, gs.Constant) or tensor.name in overridable:
            return None
        if tensor.name not in known:
            known[tensor.name] = None if isinstance(tensor._values, SparseValues) or tensor.dtype != np.float32 \
                or math.prod(tensor.shape) != 1 else float(constant_values(tensor).reshape(-1)[0])
        return known[tensor.name]

    return value


def _step(node: gs.Node, scalar, straight_through_only: bool):
    """(kind, op index, parameters, seed) of a node FusedChain can take, or None."""
    attributes = node.attrs
    if not all(type(value) is float for value in attributes.values()):
        return None  # an INT seed or precision is invalid: the op's own kernel refuses it
    if node.domain == DOMAIN and node.op in ELEMENTWISE_OPS and len(node.inputs) == 1 and (
            OPS[node.op].straight_through or not straight_through_only):
        spec = OPS[node.op]
        values = []
        for attribute in spec.attributes:
            if attribute.name in attributes:
                values.append(attributes[attribute.name])
            elif attribute.required:
                return None  # left to the op's own kernel, which reports it
            else:
                values.append(math.nan if attribute.default is None else attribute.default)
        return StepKind.ANALOG_OP, _OP_INDEX[node.op], values, attributes.get("seed", -1.0)
    if not is_default_domain(node):
        return None
    if node.op == "Relu":
        return StepKind.RELU, -1, [], -1.0
    if node.op == "LeakyRelu":
        return StepKind.LEAKY_RELU, -1, [attributes.get("alpha", 0.01)], -1.0
    if node.op == "Clip" and not attributes:
        bounds = [(-math.inf, math.inf)[k] if len(node.inputs) <= k + 1 or not node.inputs[k + 1].name
                  else scalar(node.inputs[k + 1]) for k in range(2)]
        if None not in bounds:
            return StepKind.CLIP, -1, bounds, -1.0
    return None


@dataclass(frozen=True)
class _Range:
    """The r a Div node divides by, where FusedChain can take it in: measured from the Div's dividend by
    ``nodes`` (Abs, ReduceMax, Max) over ``axes`` (None: all) with ``floor``, or a constant of one value."""

    value: gs.Tensor
    nodes: tuple = ()
    axes: tuple | None = None
    floor: float | None = None

    @property
    def measured(self) -> bool:
        return bool(self.nodes)


def _standard(node: gs.Node | None, op: str, inputs: int) -> bool:
    return node is not None and is_default_domain(node) and node.op == op and len(node.inputs) == inputs


def _contiguous(axes: list[int]) -> bool:
    """Whether ``axes`` are one run of neighbouring axes whatever the input's rank (the kernel takes one run)."""
    ordered = sorted(axes)
    return len(set(ordered)) == len(ordered) and (ordered[0] >= 0 or ordered[-1] < 0) and \
        ordered == list(range(ordered[0], ordered[0] + len(ordered)))


def _keeps_shape(constant: gs.Tensor) -> bool:
    """Whether a one-value constant broadcast against a chain's input leaves its shape as it is (rank 0 or 1; a
    (1, 1, 1) r would raise a rank-2 input to rank 3, which the fused node's output, shaped as its input, is not)."""
    return isinstance(constant, gs.Constant) and len(constant.shape) <= 1


def _range_of(node: gs.Node, producer: dict, uses: dict, scalar, overridable) -> _Range | None:
    """The range a Div node scales its chain by (:class:`_Range`), or None where it is no such Div."""
    if not _standard(node, "Div", 2) or node.attrs:
        return None
    source, value = node.inputs
    if isinstance(value, gs.Constant):
        return _Range(value) if _keeps_shape(value) and scalar(value) is not None else None
    maximum = producer.get(value.name)
    if not _standard(maximum, "Max", 2) or uses.get(value.name) != 2:  # read by this Div and its Mul alone
        return None
    floors = [scalar(tensor) if _keeps_shape(tensor) else None for tensor in maximum.inputs]
    if floors[1] is None and floors[0] is None:
        return None
    reduced = maximum.inputs[0 if floors[1] is not None else 1]
    reduce = producer.get(reduced.name)
    if reduce is None or not _standard(reduce, "ReduceMax", len(reduce.inputs)) or uses.get(reduced.name) != 1 or \
            reduce.attrs.get("keepdims", 1) != 1 or reduce.attrs.get("noop_with_empty_axes", 0) != 0:
        return None
    axes = reduce.attrs.get("axes")
    if len(reduce.inputs) == 2 and reduce.inputs[1].name:
        given = reduce.inputs[1]
        if not isinstance(given, gs.Constant) or given.name in overridable or given.dtype != np.int64:
            return None
        axes = constant_values(given).reshape(-1).tolist()
    absolute = producer.get(reduce.inputs[0].name)
    if not _standard(absolute, "Abs", 1) or absolute.inputs[0] is not source or \
            uses.get(reduce.inputs[0].name) != 1 or (axes and not _contiguous(axes)):
        return None
    floor = floors[1] if floors[1] is not None else floors[0]
    return _Range(value, (absolute, reduce, maximum), tuple(axes) if axes else None, floor)


def _rescales(node: gs.Node, scale: _Range | None) -> bool:
    """Whether ``node`` is the Mul by the r its chain's Div divided by."""
    return scale is not None and _standard(node, "Mul", 2) and not node.attrs and node.inputs[1] is scale.value


class _ChainWalk:
    """Chains from a start node: each node with a step that reads only the one before, and ranged stages (a Div
    whose range :func:`_range_of` takes, the chain inside, and the Mul by the same r). A chain whose range is
    measured runs on into a range measured again on its output, over the same axes, as one more stage."""

    def __init__(self, nodes: list, steps: list, uses: dict, consumers: dict, taken: list, range_of):
        self.nodes, self.steps, self.uses, self.consumers, self.taken = nodes, steps, uses, consumers, taken
        self.range_of = range_of

    def _next(self, output: str) -> int | None:
        """The position of the one node that reads ``output``, as its first input, where that is so."""
        readers = self.consumers.get(output, [])
        if self.uses.get(output) != 1 or len(readers) != 1 or self.taken[readers[0]] \
                or self.nodes[readers[0]].inputs[0].name != output:
            return None
        return readers[0]

    def _measured_again(self, output: str, first: _Range) -> tuple[int, _Range] | None:
        """The Div of a range measured on ``output`` (its only readers: that range's Abs and the Div), over
        ``first``'s axes."""
        readers = self.consumers.get(output, [])
        if self.uses.get(output) != 2 or len(readers) != 2 or any(self.taken[p] for p in readers):
            return None
        for position in readers:
            scale = self.range_of(self.nodes[position])
            if scale is not None and scale.measured and scale.axes == first.axes and \
                    self.nodes[position].inputs[0].name == output and \
                    any(scale.nodes[0] is self.nodes[reader] for reader in readers):
                return position, scale
        return None

    def chain_from(self, start: int) -> tuple[list[int], dict]:
        """The longest chain from ``start`` whose every range is closed by its Mul (none: empty), and the range
        each of its Divs opens, by position."""
        scale = None if self.steps[start] is not None else self.range_of(self.nodes[start])
        if self.steps[start] is None and scale is None:
            return [], {}
        chain, opened = [start], ({start: scale} if scale is not None else {})
        open_scale, length = scale, 1 + (scale is not None and scale.measured)  # a RANGE step counts too
        closed = [] if scale is not None else list(chain)
        while True:
            output = self.nodes[chain[-1]].outputs[0].name
            following = self._next(output)
            if following is not None and self.steps[following] is not None and length < MAX_CHAIN_STEPS:
                length += 1
            elif following is not None and _rescales(self.nodes[following], open_scale) and length < MAX_CHAIN_STEPS:
                open_scale, length = None, length + 1
            else:
                again = self._measured_again(output, scale) if scale is not None and scale.measured and \
                    open_scale is None and length + 2 <= MAX_CHAIN_STEPS else None
                if again is None:
                    break
                following, open_scale = again
                opened[following], length = open_scale, length + 2
            chain.append(following)
            if open_scale is None:
                closed = list(chain)
        return closed, {position: stage for position, stage in opened.items() if position in closed}


def fuse_elementwise_chains(graph: gs.Graph, straight_through_only: bool = False, portable: bool = False) -> int:
    """Replace each run of two or more element-wise nodes (analog ops, Clip with constant bounds, Relu,
    LeakyRelu), where each feeds only the next, by one FusedChain node: one pass over memory instead of one
    per node, with the same numbers (each random step keeps its seed); returns how many chains it fused. A run
    wrapped in its range (the module doc) is fused with it. Without ``portable`` the node has no function body,
    so only sessions that load the native library run it; with it, the chain becomes the node's function body
    (see the module doc).

    ``straight_through_only`` leaves out the analog ops whose training gradient is not the identity (the
    activations) and the ranges (their r has a gradient of its own), so that a chain's gradient is the slope
    :class:`TorchChain` computes beside it.
    A Clip bound that a caller may override (an initializer the model also lists as an input, as
    :func:`~analogize.passes.graph.import_model` records) is no constant. Graph outputs and the values a
    control-flow body reads are never fused away.
    """
    nodes = graph.nodes
    uses: dict[str, int] = {}
    consumers: dict[str, list[int]] = {}
    producer: dict[str, gs.Node] = {}
    position_of = {id(node): position for position, node in enumerate(nodes)}
    for position, node in enumerate(nodes):
        for tensor in node.inputs:
            name = tensor.name
            uses[name] = uses.get(name, 0) + 1
            consumers.setdefault(name, []).append(position)
        producer.update((tensor.name, node) for tensor in node.outputs)
    kept_names = {tensor.name for tensor in graph.outputs}
    for body in bodies(graph):  # reading values of outer graphs, too
        kept_names.update(tensor.name for inner in body.nodes for tensor in inner.inputs)
        kept_names.update(tensor.name for tensor in body.outputs)
    for name in kept_names:
        uses[name] = uses.get(name, 0) + 2
    overridable = getattr(graph, "overridable_initializers", frozenset())
    scalar = _scalars(overridable)
    steps = [_step(node, scalar, straight_through_only) for node in nodes]
    taken = [False] * len(nodes)
    # FusedChain overload names no local function of the graph uses yet
    overloads = UniqueNames(getattr(function, "overload", "") for function in graph.functions
                            if _is_chain_body(function))
    replacement: dict[int, gs.Node] = {}
    walk = _ChainWalk(nodes, steps, uses, consumers, taken, lambda node: None if straight_through_only else
                      _range_of(node, producer, uses, scalar, overridable))
    for start, node in enumerate(nodes):
        if taken[start]:
            continue
        chain, opened = walk.chain_from(start)
        # Analog ops take float32 only, so a chain with one of them is all float32, as FusedChain requires.
        if len(chain) < 2 or all(steps[p] is None or steps[p][0] != StepKind.ANALOG_OP for p in chain):
            continue  # a Div whose chain stops before its Mul: the chain inside is fused from its own start
        scale = opened.get(start)
        measured = scale is not None and scale.measured
        described, fused_nodes = [], []
        for position in chain:
            stage = opened.get(position)
            if stage is not None and stage.measured:
                described.append((StepKind.RANGE, -1, [stage.floor], -1.0))
                fused_nodes += stage.nodes
            if stage is not None:
                described.append((StepKind.NORMALISE, -1, [], -1.0))
            else:  # the chain's only other node without a step of its own is a stage's Mul
                described.append(steps[position] or (StepKind.RESCALE, -1, [], -1.0))
            fused_nodes.append(nodes[position])
        for node_in_chain in fused_nodes:
            taken[position_of[id(node_in_chain)]] = True
        kinds, ops, parameters, seeds = [], [], [], []
        for kind, op, values, seed in described:
            kinds.append(kind)
            ops.append(op)
            parameters += list(values) + [0.0] * (MAX_STEP_ATTRIBUTES - len(values))
            seeds.append(seed)
        first, last = nodes[chain[0]], nodes[chain[-1]]
        inputs = [first.inputs[0], *([scale.value] if scale is not None and not measured else [])]
        target = last.outputs[0]
        attributes = dict(zip(CHAIN_ATTRIBUTES, (kinds, ops, parameters, seeds)))
        if measured and scale.axes is not None:
            attributes[RANGE_AXES] = list(scale.axes)
        name = f"fused/{first.name or first.outputs[0].name}"
        if portable:
            body = _chain_function(fused_nodes, inputs, overloads.unique(name), graph, list(attributes))
        else:
            for node_in_chain in fused_nodes:
                node_in_chain.inputs.clear()
                node_in_chain.outputs.clear()
        replacement[start] = gs.Node(FUSED_CHAIN, name=name, domain=FUSED_DOMAIN, inputs=inputs, outputs=[target],
                                     attrs=attributes)
        if portable:
            replacement[start].overload = body.overload
            graph.functions.append(body)
    if replacement:
        graph.nodes = [replacement.get(position, node) for position, node in enumerate(nodes)
                       if position in replacement or not taken[position]]
    return len(replacement)


def _is_chain_body(function: gs.Function) -> bool:
    return function.domain == FUSED_DOMAIN and function.name == FUSED_CHAIN


def _chain_function(chain: list[gs.Node], sources: list[gs.Tensor], overload: str, graph: gs.Graph,
                    attributes: list[str]) -> gs.Function:
    """The chain's nodes moved into an overload of FusedChain's function: its inputs X (``sources[0]``) and R
    (a range input), its output Y, each constant it reads (Clip bounds, a range's floor and axes) a copy (a function
    has no initializers: the export writes Constant nodes)."""
    inputs = [gs.Variable(name, np.float32) for name, _ in zip(CHAIN_INPUTS, sources)]
    outputs = [gs.Variable("Y", np.float32)]
    chain[-1].outputs[0] = outputs[0]
    renamed = {id(source): name for source, name in zip(sources, inputs)}
    for node in chain:
        for position, tensor in enumerate(node.inputs):
            if id(tensor) in renamed:
                node.inputs[position] = renamed[id(tensor)]
            elif isinstance(tensor, gs.Constant):
                node.inputs[position] = gs.Constant(tensor.name, constant_values(tensor))
    domains = [entry for entry in graph.import_domains if entry.domain in ("", "ai.onnx", DOMAIN)]
    function = gs.Function(FUSED_CHAIN, FUSED_DOMAIN, nodes=chain, inputs=inputs, outputs=outputs, opset=graph.opset,
                           import_domains=domains, attrs=dict.fromkeys(attributes),
                           doc_string="The nodes this chain fused, for runtimes without the native library.")
    function.overload = overload
    return function


def unfuse_chains(graph: gs.Graph) -> int:
    """Put back the nodes each portable FusedChain node replaced (its function body, names as they were; a Clip
    bound becomes the initializer of its name again, shared where the graph has it with the same value) and drop
    those bodies; returns how many chains it took apart. A FusedChain without a body is refused: only a
    session makes those."""
    chain_bodies = {function.overload: function for function in graph.functions if _is_chain_body(function)}
    tensors = graph_tensors(graph)
    names = Names(graph, tensors)
    constants = {name: tensor for name, tensor in tensors.items() if isinstance(tensor, gs.Constant)}
    restored, used = [], set()
    for node in graph.nodes:
        if node.domain != FUSED_DOMAIN or node.op != FUSED_CHAIN:
            restored.append(node)
            continue
        body = chain_bodies.get(getattr(node, "overload", ""))
        if body is None:
            raise AnalogizeError(f"FusedChain node {node.name!r} has no function body to take apart (a session's "
                                 f"fusion, not a fast-form file); give the plain converted model")
        used.add(body.overload)
        restored += _body_nodes(body, node, names, constants)
    if used:
        graph.nodes = restored
        graph.functions = [function for function in graph.functions
                           if not (_is_chain_body(function) and function.overload in used)]
    return len(used)


def _body_nodes(body: gs.Function, call: gs.Node, names: Names, constants: dict) -> list[gs.Node]:
    """Fresh copies of ``body``'s nodes wired between ``call``'s input and output, with its Constant nodes as
    initializers."""
    tensors = {**dict(zip(CHAIN_INPUTS, call.inputs)), "Y": call.outputs[0]}
    call.inputs.clear()
    call.outputs.clear()
    for node in body.nodes:
        if node.op == "Constant":
            name, values = node.outputs[0].name, node.attrs["value"].values
            known = constants.get(name)
            if known is None or known.dtype != values.dtype or not np.array_equal(constant_values(known), values):
                known = constants[name] = gs.Constant(names.unique(name), values)
            tensors[name] = known
    copies = []
    for node in body.nodes:
        if node.op == "Constant":
            continue
        for tensor in node.outputs:
            if tensor.name not in tensors:
                tensors[tensor.name] = gs.Variable(names.unique(tensor.name))
        copies.append(gs.Node(node.op, name=node.name, domain=node.domain, attrs=dict(node.attrs),
                              inputs=[tensors[t.name] if t.name else gs.Variable.empty() for t in node.inputs],
                              outputs=[tensors[t.name] for t in node.outputs]))
    return copies


@cycle_collection_paused()
def fuse_model_chains(model: onnx.ModelProto, straight_through_only: bool = False) -> tuple[onnx.ModelProto, int]:
    """The pipeline of :func:`fuse_elementwise_chains` for a model: the fused model (a new one; ``model`` itself,
    untouched, where nothing fuses) and how many chains were fused."""
    graph = import_model(model)
    count = fuse_elementwise_chains(graph, straight_through_only)
    if not count:
        return model, 0
    return export_model(graph, model), count


@cycle_collection_paused()
def unfuse_model_chains(model: onnx.ModelProto) -> onnx.ModelProto:
    """The pipeline of :func:`unfuse_chains`: ``model`` with the fused chains of its fast form node by node again
    (a new model), or ``model`` itself where it has none."""
    if not any(node.domain == FUSED_DOMAIN for node in model.graph.node):
        return model
    refuse_machine_form(model)
    graph = import_model(model)
    unfuse_chains(graph)
    return export_with_functions(graph, model)


def chain_attributes(node: onnx.NodeProto | gs.Node) -> dict:
    """A FusedChain node's attributes by name (kinds, ops, parameters, seeds), from either IR."""
    if isinstance(node, gs.Node):
        return node.attrs
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def chain_steps(node: onnx.NodeProto | gs.Node) -> list[tuple[int, str | None, list[float]]]:
    """A FusedChain node's steps as (kind, analog op name or None, parameters), for running them elsewhere."""
    attributes = chain_attributes(node)
    names = list(OPS)
    return [(kind, names[op] if kind == StepKind.ANALOG_OP else None,
             list(attributes["parameters"][k * MAX_STEP_ATTRIBUTES:(k + 1) * MAX_STEP_ATTRIBUTES]))
            for k, (kind, op) in enumerate(zip(attributes["kinds"], attributes["ops"]))]
