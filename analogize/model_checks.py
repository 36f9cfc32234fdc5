"""What a model must be before any pass reads it, checked as it loads (:func:`check_model`): text that is UTF-8,
every tensor holding what its shape declares, every node input and graph output produced, nothing produced
twice, no cycle. Passes and ONNX's version converter (which crashed the process on a broken graph) take the
model on trust after this; each problem is one line naming what is wrong."""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
from google.protobuf.descriptor import FieldDescriptor
from onnx import external_data_helper

from .errors import AnalogizeError
from .native.build import FUSED_DOMAIN
from .ops.spec import DOMAIN


def check_model(model: onnx.ModelProto, path: Path, sizes: list | None = None) -> list:
    """Refuse in one line a model (as read, its external data not yet) that breaks what passes take on trust;
    returns the tensors whose data is external, for :func:`check_tensors` once that is read. ``sizes``: what
    :func:`analogize.weight_files.initializer_data_sizes` read off the bytes the model was parsed from (the sizes
    of its initializers' stored bytes, known without copying them out)."""
    tensors, sparse_tensors, has_bodies = _check_text_and_nodes(model, path)
    stored, external = [], []
    for tensor in tensors:
        (external if external_data_helper.uses_external_data(tensor) else stored).append(tensor)
    check_tensors(stored, path, sparse_tensors, _stored_sizes(model, sizes))  # and a sparse tensor's external parts
    check_graph_structure(model.graph, str(path), has_bodies)
    _check_fused_chain_calls(model, path)
    return external


_TYPED_FIELDS = ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data")
_SUB_BYTE_TYPES = {getattr(onnx.TensorProto, name) for name in ("INT4", "UINT4", "FLOAT4E2M1")
                   if hasattr(onnx.TensorProto, name)}
_COMPLEX_TYPES = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}


@functools.cache
def _field_kind(field) -> tuple[int, bool]:
    """(type, repeated) of a field, cached: a walk meets the same few dozen fields thousands of times."""
    return field.type, is_repeated(field)


def is_repeated(field) -> bool:
    """Whether a protobuf field descriptor is of a repeated field (``label`` is deprecated in protobuf 6)."""
    return field.is_repeated if hasattr(field, "is_repeated") else field.label == field.LABEL_REPEATED


_TENSOR = onnx.TensorProto.DESCRIPTOR
_TENSOR_TEXT_AND_MESSAGE_FIELDS = tuple(field for field in _TENSOR.fields
                                        if field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE))


def _tensor_fields(tensor: onnx.TensorProto) -> list:
    """(field, value) of each text or message field set in ``tensor``: ListFields, one call for all the fields of
    other messages, would copy its weights out."""
    return [(field, getattr(tensor, field.name)) for field in _TENSOR_TEXT_AND_MESSAGE_FIELDS
            if _field_kind(field)[1] or tensor.HasField(field.name)]


_NODE, _GRAPH, _SPARSE_TENSOR = onnx.NodeProto.DESCRIPTOR, onnx.GraphProto.DESCRIPTOR, onnx.SparseTensorProto.DESCRIPTOR
_GRAPH_KINDS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
STANDARD_OPS_WITH_BODIES = {"If", "Loop", "Scan", "SequenceMap"}  # the standard ops that hold graphs


def _check_text_and_nodes(model: onnx.ModelProto, path: Path, precise: bool = False) -> tuple[list, list, bool]:
    """Refuse text that is not UTF-8 (protobuf hands such a name over as bytes, which every pass trips on),
    nodes without outputs and unnamed initializers, anywhere in the model, before any pass reads it; the dense
    and sparse tensors found on the way (initializers, attribute values such as a Constant's, at any depth) are
    returned for :func:`check_tensors`, with whether the model holds graphs besides its own (bodies).

    Message types are told apart by descriptor, what to do with each field is looked up once per field, and the
    text is gathered and checked by one join at the end: a model's shape annotations alone can be tens of
    thousands of messages. Where the join fails, the walk is made again, ``precise``, to name the field."""
    pending, tensors, sparse_tensors, texts, graphs = [model], [], [], [], 0
    while pending:  # a loop, not recursion: the nesting of subgraphs is the file's to choose
        message = pending.pop()
        descriptor = message.DESCRIPTOR
        if descriptor is _TENSOR:
            tensors.append(message)
            fields = _tensor_fields(message)
        else:
            if descriptor is _NODE:
                if not message.output:
                    raise AnalogizeError(f"{path}: node {message.name or message.op_type!r} has no output, which "
                                         f"no ONNX op allows; the file is damaged or was written wrongly, re-export it")
                if message.domain == DOMAIN and message.op_type not in STANDARD_OPS_WITH_BODIES and \
                        any(attribute.type in _GRAPH_KINDS for attribute in message.attribute):
                    # passes take the analog ops' nodes to hold no bodies (passes.graph.may_hold_bodies): one that
                    # did would keep reading names they renamed or removed, and its attributes would not export
                    raise AnalogizeError(f"{path}: {DOMAIN} node {message.name or message.op_type!r} holds a graph, "
                                         f"which none of the analog ops takes; the file is damaged or was written "
                                         f"wrongly, convert the original model again")
            if descriptor is _GRAPH:
                graphs += 1
                if any(not tensor.name for tensor in message.initializer) or \
                        any(not t.values.name for t in message.sparse_initializer):
                    raise AnalogizeError(f"{path}: graph {message.name!r} has an initializer without a name, which "
                                         f"would stand for every input left out (named ''); re-export the model")
            if descriptor is _SPARSE_TENSOR:
                sparse_tensors.append(message)
            fields = message.ListFields()
        for field, value in fields:
            action = _action(field)
            if action == _ONE_MESSAGE:
                pending.append(value)
            elif action == _MESSAGES:
                pending.extend(value)
            elif action:
                if precise and not _all_text(value, action == _TEXTS):
                    text = next(item for item in value if isinstance(item, bytes)) if action == _TEXTS else value
                    raise AnalogizeError(f"{path}: a {descriptor.name} {field.name} is not UTF-8 text "
                                         f"({text[:40]!r}); the file is damaged, re-export it")
                if action == _TEXTS:
                    texts.extend(value)
                else:
                    texts.append(value)
    try:
        "".join(texts)
    except TypeError:  # bytes among them: which field, the precise walk says
        _check_text_and_nodes(model, path, precise=True)
        raise
    return tensors, sparse_tensors, graphs > 1


# what the walk does with a field: nothing, walk the message or messages it holds, check its text or texts
_OTHER, _ONE_MESSAGE, _MESSAGES, _ONE_TEXT, _TEXTS = range(5)


@functools.cache
def _action(field) -> int:
    kind, repeated = _field_kind(field)
    if kind == FieldDescriptor.TYPE_MESSAGE:
        return _MESSAGES if repeated else _ONE_MESSAGE
    if kind == FieldDescriptor.TYPE_STRING:
        return _TEXTS if repeated else _ONE_TEXT
    return _OTHER


def _all_text(value, repeated: bool) -> bool:
    if not repeated:
        return type(value) is str
    try:
        "".join(value)
    except TypeError:  # bytes among them
        return False
    return True


def check_tensors(tensors: list, path: Path, sparse_tensors: list = (), sizes: dict | None = None) -> None:
    """Refuse tensors whose stored values do not fill their declared shape and sparse tensors whose indices
    leave it (a damaged file), before any pass reads them. ``sizes``: the bytes of ``raw_data`` of tensors where
    they are known (:func:`_stored_sizes`)."""
    sizes = sizes or {}
    for tensor in tensors:
        known, size = sizes.get(id(tensor), (None, None))
        problem = _tensor_problem(tensor, size if known is tensor else None)
        if problem:
            raise AnalogizeError(f"{path}: tensor {tensor.name!r} {problem}; the file is damaged, re-export it")
    for sparse in sparse_tensors:
        problem = _sparse_problem(sparse)
        if problem:
            raise AnalogizeError(f"{path}: sparse tensor {sparse.values.name!r} {problem}; the file is damaged, "
                                 f"re-export it")


def _check_fused_chain_calls(model: onnx.ModelProto, path: Path) -> None:
    """Refuse a fast form's fused chain that does not give the inputs its function body reads (taking the chains
    apart, as evaluate, finetune and export do, would look for them)."""
    bodies = {(function.name, function.overload): function for function in model.functions
              if function.domain == FUSED_DOMAIN}
    for node in model.graph.node:
        body = bodies.get((node.op_type, node.overload)) if node.domain == FUSED_DOMAIN else None
        if body is not None and (len(node.input) < len(body.input) or not all(node.input[:len(body.input)])):
            raise AnalogizeError(f"{path}: {node.op_type} node {node.name!r} gives {len(node.input)} of the "
                                 f"{len(body.input)} inputs its function body reads; the file is damaged or was "
                                 f"written wrongly, write it again (analogize fast)")


def _stored_sizes(model: onnx.ModelProto, listed: list | None) -> dict:
    """(message, bytes of its ``raw_data``) of each graph initializer, by the message's ``id``, from ``listed``
    (:func:`analogize.weight_files.initializer_data_sizes`); none where it is not given or its initializers are
    not the model's, name for name."""
    held = model.graph.initializer
    if listed is None or len(listed) != len(held):
        return {}
    sizes = {}
    for tensor, (name, size) in zip(held, listed):
        if name != tensor.name.encode():
            return {}
        sizes[id(tensor)] = tensor, size
    return sizes


def _tensor_problem(tensor: onnx.TensorProto, stored: int | None = None) -> str | None:
    if tensor.HasField("segment"):  # a part of a tensor split over several messages: onnx cannot read one
        return "is one segment of a tensor split over several messages, which ONNX's readers do not take"
    if tensor.data_type in _SUB_BYTE_TYPES:
        return None
    declared = 1
    for size in tensor.dims:
        declared *= size
    width = _item_width(tensor.data_type)
    if width is None:  # a type numpy has no width for: left to the reader
        return None
    if stored is None:
        stored = len(tensor.raw_data)  # read once: protobuf (upb) copies the bytes out on every read
    if stored:
        held = stored // width if stored % width == 0 else f"{stored} bytes of {width}-byte"
    else:
        held = max(len(getattr(tensor, field)) for field in _TYPED_FIELDS)
        held = held // 2 if tensor.data_type in _COMPLEX_TYPES else held
    if min(tensor.dims, default=0) < 0 or held != declared:
        shown = declared if 0 <= declared < 10**15 else "an impossible number of"
        return f"declares {shown} values but holds {held}"
    return None


@functools.cache
def _item_width(data_type: int) -> int | None:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, ValueError, TypeError):
        return None


def _sparse_problem(sparse: onnx.SparseTensorProto) -> str | None:
    """What is wrong with a sparse tensor whose values and indices passed :func:`_tensor_problem`: values must be
    a list, and the indices (linear, or one row of coordinates per value) must point inside its shape."""
    values, indices, shape = sparse.values, sparse.indices, tuple(sparse.dims)
    if min(shape, default=0) < 0 or len(values.dims) != 1:
        return f"has shape {list(shape)} and values of shape {list(values.dims)}; values must be a list"
    count = values.dims[0]
    if indices.data_type != onnx.TensorProto.INT64 or tuple(indices.dims) not in ((count,), (count, len(shape))):
        return (f"has {count} values but indices of shape {list(indices.dims)} and type "
                f"{onnx.helper.tensor_dtype_to_string(indices.data_type)}; ONNX wants int64 indices of shape "
                f"[{count}] or [{count}, {len(shape)}]")
    if external_data_helper.uses_external_data(values) or external_data_helper.uses_external_data(indices):
        return ("keeps its values or indices in an external file, which neither onnx nor ONNX Runtime reads for a "
                "sparse tensor")
    at = onnx.numpy_helper.to_array(indices)
    bounds = np.array(shape if at.ndim == 2 else [min(math.prod(shape), np.iinfo(np.int64).max)], np.int64)
    if at.size and ((at < 0).any() or (at >= bounds).any()):
        return f"has an index outside its shape {list(shape)}"
    return None


def check_graph_structure(graph: onnx.GraphProto, where: str, has_bodies: bool = True) -> None:
    """Refuse in one line a graph (or body, at any depth) that reads a tensor nothing produces, produces a tensor
    twice or loops back on itself: passes and ONNX's version converter (a segfault) take such a graph on trust.
    A body may read the names of the graphs around it. Without ``has_bodies`` (the caller's walk found no graph
    in any attribute) nodes' attributes are not searched for bodies."""
    pending, read_from_outside = [(graph, ())], {}
    while pending:  # a loop, not recursion: the nesting of bodies is the file's to choose
        body, outer = pending.pop()
        problem, inner = _structure_problem(body, outer, read_from_outside, has_bodies)
        if problem:
            raise AnalogizeError(f"{where}: {problem}; the file is damaged or was written wrongly, re-export it")
        pending.extend(inner)


def _structure_problem(graph: onnx.GraphProto, outer: tuple, read_from_outside: dict, has_bodies: bool = True
                       ) -> tuple[str | None, list]:
    """What is wrong with ``graph``'s own nodes and outputs (None: nothing), and its bodies with the names they may
    read. ``outer`` holds the name sets of the graphs around it, shared, not merged: a merged copy per body made
    models with thousands of If nodes take minutes. ``read_from_outside`` is :func:`_names_read_from_outside`'s
    memo, shared by the whole check."""
    given, defined = _names_defined(graph)
    producer: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in filter(None, node.output):  # "": an optional output left out
            if name in producer or name in given:
                return f"tensor {name!r} is produced twice (node {_node_name(node)} produces it again)", []
            producer[name] = index
    scope = (defined, *outer)
    needs, bodies = [], []
    for node in graph.node:
        inputs = set(node.input)
        unknown = inputs - defined  # set arithmetic: a generator per node took most of the check's time
        if unknown and outer:
            unknown = {name for name in unknown if not _in_scope(name, outer)}
        if unknown:
            missing = next(name for name in node.input if name in unknown)
            return f"node {_node_name(node)} reads {missing!r}, which no node, initializer or graph input produces", []
        reads = inputs
        for body in _bodies_of(node) if has_bodies else ():
            bodies.append(body)
            reads = reads | _names_read_from_outside(body, read_from_outside)
        needs.append({producer[name] for name in reads if name in producer})
    unproduced = next((value.name for value in graph.output if not value.name or not _in_scope(value.name, scope)),
                      None)
    if unproduced is not None:
        return f"graph output {unproduced!r} is produced by no node, initializer or graph input", []
    cycle = _node_in_cycle(needs)
    if cycle is not None:
        return f"the nodes form a cycle (node {_node_name(graph.node[cycle])} reads what it helps produce, or " \
               f"comes after such a node)", []
    return None, [(body, scope) for body in bodies]


def _names_defined(graph: onnx.GraphProto) -> tuple[set, set]:
    """The names a graph gives its nodes (inputs, initializers), and all it defines: those, its nodes' outputs and
    "" (an optional input left out)."""
    given = {value.name for value in graph.input} | {tensor.name for tensor in graph.initializer} | \
        {tensor.values.name for tensor in graph.sparse_initializer}
    return given, given | {name for node in graph.node for name in node.output} | {""}


def _in_scope(name: str, scope: tuple) -> bool:
    return any(name in names for names in scope)


def _bodies_of(node: onnx.NodeProto) -> list:
    return [body for attribute in node.attribute for body in (
        (attribute.g,) if attribute.type == onnx.AttributeProto.GRAPH else
        attribute.graphs if attribute.type == onnx.AttributeProto.GRAPHS else ())]


def _names_read_from_outside(body: onnx.GraphProto, memo: dict) -> set:
    """The names the nodes of ``body`` and of its own bodies read (and its outputs name) that none of them defines:
    those tie the node that holds ``body`` to the nodes around it that produce them. Found bottom up, each body's
    once: ``memo`` maps a body's id to (the body, kept alive so that its id stays its own, its names), and a body
    nested n deep was walked n times over without it."""
    pending = [(body, False)]
    while pending:  # a loop, not recursion: the nesting of bodies is the file's to choose
        graph, children_done = pending.pop()
        if id(graph) in memo:
            continue
        children = [child for node in graph.node for child in _bodies_of(node)]
        if not children_done:
            pending.append((graph, True))
            pending.extend((child, False) for child in children)
            continue
        reads = {name for node in graph.node for name in node.input} | {value.name for value in graph.output}
        for child in children:
            reads |= memo[id(child)][1]
        memo[id(graph)] = (graph, reads - _names_defined(graph)[1])
    return memo[id(body)][1]


def _node_in_cycle(needs: list) -> int | None:
    """A node on a cycle of the graph whose node ``i`` needs the outputs of nodes ``needs[i]``, or None (Kahn's
    topological sort: the nodes it never reaches are on a cycle or after one)."""
    waiting = [len(needed) for needed in needs]
    users: list[list[int]] = [[] for _ in needs]
    for index, needed in enumerate(needs):
        for source in needed:
            users[source].append(index)
    ready = [index for index, count in enumerate(waiting) if count == 0]
    while ready:
        for user in users[ready.pop()]:
            waiting[user] -= 1
            if waiting[user] == 0:
                ready.append(user)
    return next((index for index, count in enumerate(waiting) if count), None)


def _node_name(node: onnx.NodeProto) -> str:
    return f"{node.name!r} ({node.op_type})" if node.name else node.op_type
