"""Fusion of element-wise chains into FusedChain nodes of the native domain, and its inverse.

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

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper
from onnx_graphsurgeon.ir.tensor import SparseValues

from ..errors import AnalogizeError
from ..ops.spec import DOMAIN, OPS, OpSpec
from ..passes.graph import Names, UniqueNames, bodies, constant_values, export_model, import_model, is_default_domain
from ..passes.model import export_with_functions, refuse_machine_form
from .build import FUSED_DOMAIN, _kernel_source


# FusedChain step kinds: the StepKind enum of custom_ops/analogize_ops.cpp.
STEP_ANALOG, STEP_CLIP, STEP_RELU, STEP_LEAKY_RELU = 0, 1, 2, 3
MAX_STEP_ATTRIBUTES = 4  # kMaxAttributes in custom_ops/chain.h
MAX_CHAIN_STEPS = 32  # kMaxDeviceSteps in custom_ops/chain.h: what one GPU launch takes
FUSED_CHAIN = "FusedChain"
CHAIN_ATTRIBUTES = ("kinds", "ops", "parameters", "seeds")
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
        return STEP_ANALOG, _OP_INDEX[node.op], values, attributes.get("seed", -1.0)
    if not is_default_domain(node):
        return None
    if node.op == "Relu":
        return STEP_RELU, -1, [], -1.0
    if node.op == "LeakyRelu":
        return STEP_LEAKY_RELU, -1, [attributes.get("alpha", 0.01)], -1.0
    if node.op == "Clip" and not attributes:
        bounds = [(-math.inf, math.inf)[k] if len(node.inputs) <= k + 1 or not node.inputs[k + 1].name
                  else scalar(node.inputs[k + 1]) for k in range(2)]
        if None not in bounds:
            return STEP_CLIP, -1, bounds, -1.0
    return None


def fuse_elementwise_chains(graph: gs.Graph, straight_through_only: bool = False, portable: bool = False) -> int:
    """Replace each run of two or more element-wise nodes (analog ops, Clip with constant bounds, Relu,
    LeakyRelu), where each feeds only the next, by one FusedChain node: one pass over memory instead of one
    per node, with the same numbers (each random step keeps its seed); returns how many chains it fused.
    Without ``portable`` the node has no function body, so only sessions that load the native library run it;
    with it, the chain becomes the node's function body (see the module doc).

    ``straight_through_only`` leaves out the analog ops whose training gradient is not the identity (the
    activations), so that a chain's gradient is the slope :class:`TorchChain` computes beside it.
    A Clip bound that a caller may override (an initializer the model also lists as an input, as
    :func:`~analogize.passes.graph.import_model` records) is no constant. Graph outputs and the values a
    control-flow body reads are never fused away.
    """
    nodes = graph.nodes
    uses: dict[str, int] = {}
    consumer: dict[str, int] = {}
    for position, node in enumerate(nodes):
        for tensor in node.inputs:
            name = tensor.name
            uses[name] = uses.get(name, 0) + 1
            consumer[name] = position
    kept_names = {tensor.name for tensor in graph.outputs}
    for body in bodies(graph):  # reading values of outer graphs, too
        kept_names.update(tensor.name for inner in body.nodes for tensor in inner.inputs)
        kept_names.update(tensor.name for tensor in body.outputs)
    for name in kept_names:
        uses[name] = uses.get(name, 0) + 2
    scalar = _scalars(getattr(graph, "overridable_initializers", frozenset()))
    steps = [_step(node, scalar, straight_through_only) for node in nodes]
    taken = [False] * len(nodes)
    # FusedChain overload names no local function of the graph uses yet
    overloads = UniqueNames(getattr(function, "overload", "") for function in graph.functions
                            if _is_chain_body(function))
    replacement: dict[int, gs.Node] = {}
    for start, node in enumerate(nodes):
        if taken[start] or steps[start] is None:
            continue
        chain = [start]
        while len(chain) < MAX_CHAIN_STEPS:
            output = nodes[chain[-1]].outputs[0].name
            following = consumer.get(output)
            if uses.get(output) != 1 or following is None or steps[following] is None or taken[following] \
                    or nodes[following].inputs[0].name != output:
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
        first, last = nodes[chain[0]], nodes[chain[-1]]
        source, target = first.inputs[0], last.outputs[0]
        name = f"fused/{first.name or first.outputs[0].name}"
        if portable:
            body = _chain_function([nodes[position] for position in chain], overloads.unique(name), graph)
        else:
            for position in chain:
                nodes[position].inputs.clear()
                nodes[position].outputs.clear()
        replacement[start] = gs.Node(FUSED_CHAIN, name=name, domain=FUSED_DOMAIN, inputs=[source],
                                     outputs=[target], attrs=dict(zip(CHAIN_ATTRIBUTES, (kinds, ops, parameters,
                                                                                         seeds))))
        if portable:
            replacement[start].overload = body.overload
            graph.functions.append(body)
    if replacement:
        graph.nodes = [replacement.get(position, node) for position, node in enumerate(nodes)
                       if position in replacement or not taken[position]]
    return len(replacement)


def _is_chain_body(function: gs.Function) -> bool:
    return function.domain == FUSED_DOMAIN and function.name == FUSED_CHAIN


def _chain_function(chain: list[gs.Node], overload: str, graph: gs.Graph) -> gs.Function:
    """The chain's nodes moved into an overload of FusedChain's function: its input X and output Y, each Clip bound
    a copy of its constant (a function has no initializers: the export writes Constant nodes)."""
    inputs, outputs = [gs.Variable("X", np.float32)], [gs.Variable("Y", np.float32)]
    chain[0].inputs[0], chain[-1].outputs[0] = inputs[0], outputs[0]
    for node in chain:
        for position, tensor in enumerate(node.inputs[1:], 1):
            if isinstance(tensor, gs.Constant):
                node.inputs[position] = gs.Constant(tensor.name, constant_values(tensor))
    domains = [entry for entry in graph.import_domains if entry.domain in ("", "ai.onnx", DOMAIN)]
    function = gs.Function(FUSED_CHAIN, FUSED_DOMAIN, nodes=chain, inputs=inputs, outputs=outputs, opset=graph.opset,
                           import_domains=domains, attrs=dict.fromkeys(CHAIN_ATTRIBUTES),
                           doc_string="The nodes this chain fused, for runtimes without the native library.")
    function.overload = overload
    return function


def unfuse_chains(graph: gs.Graph) -> int:
    """Put back the nodes each portable FusedChain node replaced (its function body, names as they were; a Clip
    bound becomes the initializer of its name again, shared where the graph has it with the same value) and drop
    those bodies; returns how many chains it took apart. A FusedChain without a body is refused: only a
    session makes those."""
    chain_bodies = {function.overload: function for function in graph.functions if _is_chain_body(function)}
    tensors = graph.tensors()
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
    tensors = {"X": call.inputs[0], "Y": call.outputs[0]}
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


def fuse_model_chains(model: onnx.ModelProto, straight_through_only: bool = False) -> tuple[onnx.ModelProto, int]:
    """The pipeline of :func:`fuse_elementwise_chains` for a model: the fused model (a new one; ``model`` itself,
    untouched, where nothing fuses) and how many chains were fused."""
    graph = import_model(model)
    count = fuse_elementwise_chains(graph, straight_through_only)
    if not count:
        return model, 0
    return export_model(graph, model), count


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
    return [(kind, names[op] if kind == STEP_ANALOG else None,
             list(attributes["parameters"][k * MAX_STEP_ATTRIBUTES:(k + 1) * MAX_STEP_ATTRIBUTES]))
            for k, (kind, op) in enumerate(zip(attributes["kinds"], attributes["ops"]))]
