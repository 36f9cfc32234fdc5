"""The graph IR every pass edits: onnx-graphsurgeon's, imported once and exported once per pipeline.

:func:`import_model` and :func:`export_model` are the only crossings between ``onnx.ModelProto`` and
``gs.Graph``. The export carries back what graphsurgeon does not model or cannot write: the model's metadata,
documentation, domain and version, its local functions (byte for byte), the order of its opset imports, the
graph's inputs, outputs and shape annotations as the source wrote them, node documentation, which overload of
a local function a node calls, attributes graphsurgeon does not import (sparse tensors, lists of tensors or
graphs, type protos) or cannot type back (empty lists), the initializers a model lists as inputs (callers may
override them, used or not), and initializers that only control-flow bodies read (graphsurgeon would copy them
into every body). The caller's model is left as it was. Initializers that nothing reads and no input names are
not written.

Local functions are in ``graph.functions``, each with an ``overload`` attribute (graphsurgeon imports them without
it): a source function is written back byte for byte while the graph still holds it; a pass adds one (a
``gs.Function`` with its ``overload``) or takes one out, and the export follows.

:class:`Names` hands out tensor names no graph or body of the model uses yet, and :func:`constant_tensors`
says which tensors are known before the model runs (initializers and what constant nodes compute from them).
:func:`new_node` and :func:`new_variable` make graphsurgeon's own nodes and variables, several times faster than
its constructors, for the passes that add hundreds.
"""
from __future__ import annotations

import contextlib
import functools
import gc
import math
import struct
from collections import OrderedDict

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.importers.onnx_importer import OnnxImporter, get_itemsize, get_numpy_type
from onnx_graphsurgeon.ir.tensor import LazyValues, SparseValues
from onnx_graphsurgeon.util.misc import SynchronizedList

from ..errors import AnalogizeError
from ..model_checks import STANDARD_OPS_WITH_BODIES
from ..ops.spec import DOMAIN

_DEFAULT_DOMAINS = ("", "ai.onnx")
# domains whose ops hold no bodies: the standard ops' are those of STANDARD_OPS_WITH_BODIES
_DOMAINS_WITHOUT_BODIES = {*_DEFAULT_DOMAINS, DOMAIN}
_RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
_SUBGRAPH_OPS = {"If", "Loop", "Scan"}

# graphsurgeon prints its warnings (duplicate node names, which many exporters write) on stdout, where they
# would break the commands' JSON
gs.logger.G_LOGGER.severity = gs.logger.G_LOGGER.CRITICAL


@contextlib.contextmanager
def cycle_collection_paused():
    """Python's cycle collector off for the block, which a pipeline runs in: the graph IR's nodes and tensors all
    point at each other, and each of the collections that building thousands of them sets off walks them again
    while none is garbage; a full one, walking every object of the process, added 30-80 ms to a 140 ms convert
    (more in a process with torch loaded). The block's own objects, garbage by then, are collected as it ends, in
    one pass over them alone (the youngest generation). Nested blocks leave that to the outermost. Also a
    decorator."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
            gc.collect(0)


def import_model(model: onnx.ModelProto) -> gs.Graph:
    """The model's graph as graphsurgeon's IR; the weights are shared with ``model``, not copied."""
    try:
        graph = _import_onnx(model)
    except Exception as error:  # graphsurgeon fails with bare errors on types it does not model
        raise AnalogizeError(f"onnx-graphsurgeon cannot read this model ({type(error).__name__}: {error}); "
                             f"optional-typed inputs and outputs are not supported") from None
    graph.unnamed_attribute_tensors = []
    graph.has_source_extras = _note_source(model.graph, graph, graph.unnamed_attribute_tensors)
    for function, proto in zip(graph.functions, model.functions):
        function.overload, function.source_proto = proto.overload, proto
    graph.imported_functions = list(graph.functions)
    # listed as inputs too: defaults a caller may override, so no pass may take their values as fixed
    graph.overridable_initializers = graph.source_initializers & {value.name for value in model.graph.input}
    return graph


def _import_onnx(model: onnx.ModelProto) -> gs.Graph:
    """graphsurgeon's ``import_onnx``, step for step (its warnings aside), with the top-level graph's nodes and
    the variables they bring made by :func:`new_node` and :func:`new_variable` (graphsurgeon's constructors took
    most of the import's time). Tensors, attributes, bodies and functions are graphsurgeon's own imports."""
    opset, domains = OnnxImporter.get_opset(model), OnnxImporter.get_import_domains(model)
    functions = [OnnxImporter.import_function(function, model_opset=opset, model_import_domains=domains)
                 for function in model.functions]
    proto, tensors = model.graph, OrderedDict()

    def imported(value, overwrite: bool = False) -> gs.Tensor:
        name = value.values.name if isinstance(value, onnx.SparseTensorProto) else value.name
        known = tensors.get(name)
        if known is None:
            known = tensors[name] = imported_tensor(value)
        elif overwrite:
            again = imported_tensor(value)
            if isinstance(known, gs.Variable):  # a repeated annotation adds what the first lacked
                known.dtype, known.shape = known.dtype or again.dtype, known.shape or again.shape
        return known

    def named(name: str) -> gs.Tensor:
        if name in tensors:
            return tensors[name]
        if not name:  # an omitted optional input or output: each its own, untracked
            return new_variable("")
        tensors[name] = new_variable(name)
        return tensors[name]

    for value in (*proto.initializer, *proto.sparse_initializer):
        imported(value)
    for value in proto.value_info:
        imported(value, overwrite=True)
    stored = {tensor.name for tensor in proto.initializer} | {tensor.values.name for tensor in proto.sparse_initializer}
    inputs = [imported(value) for value in proto.input if value.name not in stored]
    outputs = [imported(value) for value in proto.output]
    nodes = []
    for node in proto.node:
        attrs = _imported_attributes(node.attribute, tensors, opset, domains)
        nodes.append(new_node(node.op_type, node.name, [named(name) for name in node.input],
                              [named(name) for name in node.output], attrs,
                              node.domain if node.HasField("domain") else None))
    graph = gs.Graph(inputs=inputs, outputs=outputs, name=proto.name, doc_string=proto.doc_string, opset=opset,
                     import_domains=domains, producer_name=model.producer_name,
                     producer_version=model.producer_version, functions=functions, ir_version=model.ir_version)
    graph.nodes = nodes
    if any(may_hold_bodies(node.op, node.domain) for node in nodes):  # what graphsurgeon's constructor does: a
        graph._merge_subgraph_functions()  # walk of every node, through generators, for bodies' function lists
    return graph


def imported_tensor(value) -> gs.Tensor:
    """graphsurgeon's ``import_tensor``; a dense tensor's ``Constant`` (values still stored, as its
    ``LazyValues``) made without the type lookups it repeats per tensor (each lists every ONNX type)."""
    if type(value) is not onnx.TensorProto:
        return OnnxImporter.import_tensor(value)
    lazy = object.__new__(LazyValues)
    lazy.tensor, lazy.shape = value, value.dims
    lazy.dtype, itemsize = _numpy_type_and_itemsize(value.data_type)
    lazy.nbytes = math.prod(value.dims) * itemsize
    constant = object.__new__(gs.Constant)
    constant.__dict__.update(name=value.name, inputs=_synchronized(constant, "outputs", ()),
                             outputs=_synchronized(constant, "inputs", ()), _values=lazy, _export_dtype=None,
                             data_location=int(value.data_location) if value.HasField("data_location") else None)
    return constant


@functools.cache
def _numpy_type_and_itemsize(data_type: int) -> tuple:
    """What graphsurgeon's ``LazyValues`` holds for a tensor of ``data_type``: its dtype (the ONNX type where numpy
    has none) and the bytes per value (it raises for a type it cannot size, as graphsurgeon's does)."""
    dtype = get_numpy_type(data_type)
    dtype = data_type if dtype is None else dtype
    return dtype, get_itemsize(dtype)


# how graphsurgeon's import reads each plain kind of attribute, and a tensor (a Constant node's value)
_PLAIN_ATTRIBUTES = {onnx.AttributeProto.TENSOR: lambda attribute: imported_tensor(attribute.t),
                     onnx.AttributeProto.INT: lambda attribute: attribute.i,
                     onnx.AttributeProto.FLOAT: lambda attribute: attribute.f,
                     onnx.AttributeProto.STRING: lambda attribute: attribute.s.decode(),
                     onnx.AttributeProto.INTS: lambda attribute: list(attribute.ints),
                     onnx.AttributeProto.FLOATS: lambda attribute: list(attribute.floats),
                     onnx.AttributeProto.STRINGS: lambda attribute: [text.decode() for text in attribute.strings]}


def _imported_attributes(attributes, tensors: dict, opset: int, domains) -> OrderedDict:
    """graphsurgeon's ``import_attributes``: a node's attributes of plain kinds (numbers, text, their lists and
    tensors) read here, for a fifth of the time its per-attribute closures took; a node with any other kind (a
    body, a reference to a function's attribute) goes through graphsurgeon's whole."""
    imported = OrderedDict()
    for attribute in attributes:
        read = _PLAIN_ATTRIBUTES.get(attribute.type)
        if read is None or attribute.ref_attr_name:
            return OnnxImporter.import_attributes(attributes, OrderedDict(), tensors, opset, domains)
        imported[attribute.name] = read(attribute)
    return imported


def new_variable(name: str) -> gs.Variable:
    """``gs.Variable(name)``, made without graphsurgeon's attribute hooks: each first looks up, and fails to find,
    the io list a new object does not have yet, which made up most of the time passes spent building nodes."""
    variable = object.__new__(gs.Variable)
    variable.__dict__.update(name=name, inputs=_synchronized(variable, "outputs", ()),
                             outputs=_synchronized(variable, "inputs", ()), dtype=None, shape=None,
                             type="tensor_type")
    return variable


def new_node(op: str, name: str, inputs: list, outputs: list, attrs: dict | None = None,
             domain: str | None = None) -> gs.Node:
    """``gs.Node(op, name, attrs, inputs, outputs, domain)``, made as :func:`new_variable` makes a variable."""
    node = object.__new__(gs.Node)
    node.__dict__.update(op=op, name=name, attrs=OrderedDict() if attrs is None else attrs,
                         inputs=_synchronized(node, "outputs", inputs),
                         outputs=_synchronized(node, "inputs", outputs), domain=domain)
    return node


def _synchronized(owner, field: str, items) -> SynchronizedList:
    """graphsurgeon's ``SynchronizedList(owner, field, items)``: ``items``, each with ``owner`` added to its
    ``field`` list, made without the two method calls per item its constructor makes (a third of the time
    passes spent building nodes)."""
    synchronized = list.__new__(SynchronizedList)
    synchronized.parent_obj, synchronized.field_name = owner, field
    if items:
        list.extend(synchronized, items)
        for item in items:
            list.append(getattr(item, field), owner)
    return synchronized


class _Verbatim:
    """An attribute graphsurgeon does not import (sparse tensors, lists of tensors or graphs, type protos), kept
    as its ``AttributeProto`` and written back as it was."""

    def __init__(self, attribute: onnx.AttributeProto):
        self.attribute = attribute


class _EmptyList(list, _Verbatim):
    """An empty list attribute: graphsurgeon imports ``axes=[]`` as ``[]``, which ``onnx.helper.make_attribute``
    cannot type back; passes still read it as an empty list."""

    def __init__(self, attribute: onnx.AttributeProto):
        list.__init__(self)
        _Verbatim.__init__(self, attribute)


def _note_source(proto: onnx.GraphProto, graph: gs.Graph, unnamed: list) -> bool:
    """Record, on the graph and its nodes, what the export needs from the source (see the module doc); say
    whether any node, at any depth, has documentation or a verbatim attribute to put back."""
    graph.source_initializers = {tensor.name for tensor in proto.initializer}
    extras = False
    for proto_node, node in zip(proto.node, graph.nodes):
        if proto_node.doc_string:
            node.source_doc, extras = proto_node.doc_string, True
        if proto_node.overload:
            node.overload, extras = proto_node.overload, True
        for attribute in proto_node.attribute:
            value = node.attrs.get(attribute.name)
            if attribute.name not in node.attrs:
                node.attrs[attribute.name], extras = _Verbatim(attribute), True
            elif isinstance(value, list) and not value:
                node.attrs[attribute.name], extras = _EmptyList(attribute), True
            elif attribute.type == onnx.AttributeProto.TENSOR and not attribute.t.HasField("name"):
                unnamed.append(attribute.t)  # the export names the tensor it shares with the source
            elif attribute.type == onnx.AttributeProto.GRAPH:
                extras = _note_source(attribute.g, value, unnamed) or extras
    return extras


def bodies(graph: gs.Graph) -> list[gs.Graph]:
    """The graphs nested in ``graph``'s nodes, at any depth (graphsurgeon's ``subgraphs`` walks every node's
    attributes through generators, several times slower on graphs with hundreds of nodes)."""
    return [found for node in graph.nodes  # may_hold_bodies, inline: passes ask this of thousands of nodes
            if node.op in STANDARD_OPS_WITH_BODIES or (node.domain or "") not in _DOMAINS_WITHOUT_BODIES
            for _, body in node_bodies(node) for found in (body, *bodies(body))]


def node_bodies(node: gs.Node) -> list[tuple[str, gs.Graph]]:
    """The graphs ``node`` holds, by attribute name."""
    if may_hold_bodies(node.op, node.domain):
        return [(name, value) for name, value in node.attrs.items() if isinstance(value, gs.Graph)]
    return []


def may_hold_bodies(op: str, domain: str | None) -> bool:
    """Whether a node of ``op`` in ``domain`` may hold graphs: the standard ops with bodies, and any op of another
    domain (whose attributes ONNX does not declare) but the analog op set's (whose ops have none)."""
    return op in STANDARD_OPS_WITH_BODIES or (domain or "") not in _DOMAINS_WITHOUT_BODIES


def graph_tensors(graph: gs.Graph) -> dict:
    """graphsurgeon's ``Graph.tensors()``: the named tensors of the graph's inputs, its nodes' inputs and
    outputs and its outputs, by name, in the order met (a later distinct tensor of a name met before takes its
    place), without the method call per tensor that made it a tenth of a convert's graph work."""
    found = {tensor.name: tensor for tensor in graph.inputs}
    for node in graph.nodes:
        for tensor in node.inputs:
            found[tensor.name] = tensor
        for tensor in node.outputs:
            found[tensor.name] = tensor
    for tensor in graph.outputs:
        found[tensor.name] = tensor
    found.pop("", None)
    return found


def export_model(graph: gs.Graph, source: onnx.ModelProto, in_place: bool = False) -> onnx.ModelProto:
    """``graph`` as a model with ``source``'s model-level fields; domains that nodes newly use are imported at
    version 1, after ``source``'s own, in name order. Initializers keep the source's order, new ones follow.

    With ``in_place`` the caller gives ``source`` up: the export is written into it and returned, and the
    weights the graph still holds as the source stored them stay where they lie instead of being copied."""
    known = {entry.domain for entry in source.opset_import}
    if known & set(_DEFAULT_DOMAINS):
        known |= set(_DEFAULT_DOMAINS)
    nested = bodies(graph)
    used = {node.domain or "" for body in (graph, *nested) for node in body.nodes}
    new_domains = [onnx.helper.make_opsetid(domain, 1) for domain in sorted(used - known)]
    if in_place:
        model, description = source, _description(source.graph)
    else:
        model, description = _model_fields(source), source.graph
    extras = getattr(graph, "has_source_extras", True)
    verbatim = _take_verbatim(graph, nested) if extras else []
    stored = {tensor.name for tensor in source.graph.initializer}
    overridable = {value.name for value in description.input if value.name in stored}
    try:
        _export_graph(graph, model.graph, description, source.graph.initializer, overridable, in_place)
    finally:
        for node, name, value in verbatim:
            node.attrs[name] = value
        for tensor in getattr(graph, "unnamed_attribute_tensors", ()):
            tensor.ClearField("name")
    if extras:
        _put_back_verbatim(graph, model.graph)
    if nested:
        _lift_outer_initializers(graph, model.graph)
    _write_functions(graph, model)
    model.opset_import.extend(new_domains)
    if overridable:
        _restore_overridable_inputs(model.graph, description, overridable)
    return model


def _model_fields(source: onnx.ModelProto) -> onnx.ModelProto:
    """A new model with ``source``'s model-level fields and an empty graph."""
    model = onnx.ModelProto()
    model.opset_import.extend(source.opset_import)
    model.ir_version = source.ir_version
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        if source.HasField(field):
            setattr(model, field, getattr(source, field))
    model.functions.extend(source.functions)
    model.metadata_props.extend(source.metadata_props)
    model.training_info.extend(source.training_info)
    return model


_DESCRIPTION_FIELDS = ("input", "output", "value_info", "doc_string", "metadata_props", "quantization_annotation")


def _description(proto: onnx.GraphProto) -> onnx.GraphProto:
    """A copy of what the export reads from a source graph it then overwrites (everything but the nodes and
    the weights), and the source graph cleared of it, initializers aside."""
    description = onnx.GraphProto()
    for field in _DESCRIPTION_FIELDS:
        if field == "doc_string":
            if proto.HasField("doc_string"):
                description.doc_string = proto.doc_string
        else:
            getattr(description, field).extend(getattr(proto, field))
    for field in (*_DESCRIPTION_FIELDS, "node", "name", "sparse_initializer"):
        proto.ClearField(field)
    return description


def _export_graph(graph: gs.Graph, proto: onnx.GraphProto, source: onnx.GraphProto, source_initializers,
                  overridable: set, in_place: bool) -> None:
    """graphsurgeon's graph export, written straight into the model's graph (its ``export_onnx`` goes through
    ``make_graph`` and ``make_model``, which copy every weight twice), with the source's own descriptions of
    the inputs, outputs and annotated tensors (graphsurgeon loses sequence and map types and doc strings)."""
    exporter = OnnxExporter
    described = {value.name: value for value in (*source.input, *source.output)}

    def value_info(tensor: gs.Tensor) -> onnx.ValueInfoProto:
        if tensor.name in described:
            return described[tensor.name]
        return exporter.export_value_info_proto(tensor, False)

    made: dict = {}  # the attributes exported so far, by _attribute_key: chains repeat the same few
    for node in graph.nodes:
        _write_node(node, proto.node.add(), made)
    proto.input.extend(value_info(tensor) for tensor in graph.inputs)
    proto.output.extend(value_info(tensor) for tensor in graph.outputs)
    tensors = graph_tensors(graph)
    constants = [tensor for tensor in tensors.values() if isinstance(tensor, gs.Constant)]
    _write_initializers([tensor for tensor in constants if not _is_sparse(tensor)], proto.initializer,
                        source_initializers, overridable, in_place)
    proto.sparse_initializer.extend(exporter.export_sparse_tensor_proto(tensor)
                                    for tensor in constants if _is_sparse(tensor))
    annotated = {value.name for value in source.value_info}
    proto.value_info.extend(value for value in source.value_info if value.name in tensors)
    for tensor in graph.inputs + graph.outputs:
        tensors.pop(tensor.name, None)
    proto.value_info.extend(exporter.export_value_info_proto(tensor, False) for tensor in tensors.values()
                            if isinstance(tensor, gs.Variable) and tensor.name not in annotated
                            and (tensor.dtype is not None or tensor.shape is not None))
    proto.name = graph.name
    if source.HasField("doc_string"):
        proto.doc_string = source.doc_string
    proto.metadata_props.extend(source.metadata_props)
    present = {*tensors, *(tensor.name for tensor in graph.inputs + graph.outputs)}
    proto.quantization_annotation.extend(annotation for annotation in source.quantization_annotation
                                         if annotation.tensor_name in present)


def _write_node(node: gs.Node, proto: onnx.NodeProto, made: dict) -> None:
    """graphsurgeon's node export, field for field, written into the graph's own new node: its ``export_node``
    builds a node apart, which the graph's ``extend`` then copies."""
    proto.op_type = node.op
    proto.input.extend([tensor.name for tensor in node.inputs])
    proto.output.extend([tensor.name for tensor in node.outputs])
    if node.name:
        proto.name = node.name
    if node.domain is not None:
        proto.domain = node.domain
    if getattr(node, "overload", ""):  # a pass's own calls too, not only the source's
        proto.overload = node.overload
    for name, value in node.attrs.items():
        key = _attribute_key(name, value)
        if key is None:
            proto.attribute.extend(OnnxExporter.export_attributes({name: value}))
            continue
        if key not in made:
            made[key] = OnnxExporter.export_attributes({name: value})[0]
        proto.attribute.append(made[key])


def _attribute_key(name: str, value) -> tuple | None:
    """What decides the ``AttributeProto`` of a plain value (a number, a string, a list of ints); None for other
    values, which are exported each time."""
    kind = type(value)
    if kind in (int, bool, str):
        return name, kind, value
    if kind is float:  # by its bits: -0.0 == 0.0, and NaN equals nothing
        return name, kind, struct.pack("<d", value)
    if kind is list and all(type(item) is int for item in value):
        return name, kind, tuple(value)
    return None


def _write_initializers(constants: list, target, source_initializers, overridable: set, in_place: bool) -> None:
    """Write the graph's ``constants`` as initializers, in the source's order, new ones after, plus the
    ``overridable`` ones nothing reads (graphsurgeon drops them). In place (``target`` is
    ``source_initializers``), a weight the graph holds as stored stays, a changed one is overwritten and one
    nobody needs goes; otherwise each is copied in (add + CopyFrom: protobuf's extend copies messages about
    three times slower)."""
    order = {tensor.name: position for position, tensor in enumerate(source_initializers)}
    held = {tensor.name: tensor for tensor in constants if tensor.name in order}
    if in_place:
        for position, stored in reversed(list(enumerate(target))):
            tensor = held.get(stored.name)
            if tensor is None:
                if stored.name not in overridable:
                    del target[position]
            elif not (isinstance(tensor._values, LazyValues) and tensor._values.tensor is stored):
                stored.CopyFrom(OnnxExporter.export_tensor_proto(tensor))
    else:
        for stored in source_initializers:
            tensor = held.get(stored.name)
            if tensor is not None:
                target.add().CopyFrom(OnnxExporter.export_tensor_proto(tensor))
            elif stored.name in overridable:
                target.add().CopyFrom(stored)
    for tensor in constants:
        if tensor.name not in order:
            target.add().CopyFrom(OnnxExporter.export_tensor_proto(tensor))


def constant_values(tensor: gs.Constant) -> np.ndarray:
    """A dense constant's values, read without loading them into the tensor (a loaded tensor no longer counts
    as the source's weight, and the export would re-encode it). Stored values come as ``numpy_helper.to_array``
    reads them (read-only where they are raw bytes): graphsurgeon's ``LazyValues.load`` copies them once more,
    and callers only read them."""
    stored = tensor._values  # graphsurgeon's LazyValues until something loads them
    return numpy_helper.to_array(stored.tensor) if isinstance(stored, LazyValues) else stored


def known_values(tensor: gs.Tensor) -> np.ndarray | None:
    """The values of a dense initializer or of a standard ``Constant`` node's ``value`` (exporters such as
    paddle2onnx write weights that way), without loading them into the graph; None for anything else."""
    if isinstance(tensor, gs.Constant):
        return None if _is_sparse(tensor) else constant_values(tensor)
    producers = tensor.inputs
    if len(producers) == 1 and producers[0].op == "Constant" and is_default_domain(producers[0]):
        value = producers[0].attrs.get("value")
        if isinstance(value, gs.Constant) and not _is_sparse(value):
            return constant_values(value)
    return None


def _is_sparse(tensor: gs.Constant) -> bool:
    # graphsurgeon keeps sparse initializers as SparseValues; only its private field tells them apart
    return isinstance(tensor._values, SparseValues)


def _take_verbatim(graph: gs.Graph, nested: list) -> list:
    taken = []
    for body in [graph, *nested]:
        for node in body.nodes:
            taken += [(node, name, value) for name, value in node.attrs.items() if isinstance(value, _Verbatim)]
    for node, name, _ in taken:
        del node.attrs[name]
    return taken


def _put_back_verbatim(graph: gs.Graph, proto: onnx.GraphProto) -> None:
    """Write the verbatim attributes into the exported nodes, in their places among the others, and the
    nodes' documentation."""
    for node, proto_node in zip(graph.nodes, proto.node):
        if getattr(node, "source_doc", ""):
            proto_node.doc_string = node.source_doc
        if getattr(node, "overload", ""):
            proto_node.overload = node.overload
        for attribute in proto_node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _put_back_verbatim(node.attrs[attribute.name], attribute.g)
        if not any(isinstance(value, _Verbatim) for value in node.attrs.values()):
            continue
        exported = {attribute.name: attribute for attribute in proto_node.attribute}
        ordered = [value.attribute if isinstance(value, _Verbatim) else exported[name]
                   for name, value in node.attrs.items()]
        proto_node.ClearField("attribute")
        proto_node.attribute.extend(ordered)


def _write_functions(graph: gs.Graph, model: onnx.ModelProto) -> None:
    """The model's local functions become those ``graph.functions`` holds, where a pass changed them: the
    source's byte for byte, a pass's own through graphsurgeon's exporter with its overload."""
    held, imported = getattr(graph, "functions", []), getattr(graph, "imported_functions", [])
    if len(held) == len(imported) and all(a is b for a, b in zip(held, imported)):
        return
    functions = []
    for function in held:
        source = getattr(function, "source_proto", None)
        if source is None:
            source = OnnxExporter.export_function(function)
            source.overload = getattr(function, "overload", "")
        functions.append(_copy(source))  # copied: in place, the source's own are about to be cleared
    model.ClearField("functions")
    model.functions.extend(functions)


def _lift_outer_initializers(graph: gs.Graph, proto: onnx.GraphProto) -> None:
    """Initializers that a control-flow body reads from an outer graph go back where the source had them:
    graphsurgeon writes each into every body that reads it, and not into the outer graph unless it reads it
    too."""
    outer = getattr(graph, "source_initializers", set())
    lifted: dict[str, onnx.TensorProto] = {}

    def visit(body: gs.Graph, body_proto: onnx.GraphProto) -> None:
        for node, proto_node in zip(body.nodes, body_proto.node):
            for attribute in proto_node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    inner, inner_proto = node.attrs[attribute.name], attribute.g
                    own = getattr(inner, "source_initializers", set())
                    foreign = [tensor.name in outer and tensor.name not in own for tensor in inner_proto.initializer]
                    if any(foreign):
                        kept = [_copy(tensor) for tensor, out in zip(inner_proto.initializer, foreign) if not out]
                        for tensor, out in zip(inner_proto.initializer, foreign):
                            if out and tensor.name not in lifted:
                                lifted[tensor.name] = _copy(tensor)
                        inner_proto.ClearField("initializer")
                        inner_proto.initializer.extend(kept)
                    visit(inner, inner_proto)

    visit(graph, proto)
    present = {tensor.name for tensor in proto.initializer}
    proto.initializer.extend(tensor for name, tensor in lifted.items() if name not in present)


def _copy(message):
    duplicate = type(message)()
    duplicate.CopyFrom(message)
    return duplicate


def _restore_overridable_inputs(proto: onnx.GraphProto, source: onnx.GraphProto, overridable: set) -> None:
    """Put back, in their places, the graph inputs that name initializers (graphsurgeon drops them): from IR 4
    on, such an input is a default the caller may override; below IR 4 every initializer had to be listed, and
    :func:`analogize.passes.model.raise_ir_version` decides what becomes of those."""
    order = {value.name: position for position, value in enumerate(source.input)}
    inputs = sorted([*proto.input, *(value for value in source.input if value.name in overridable)],
                    key=lambda value: order.get(value.name, len(order)))
    proto.ClearField("input")
    proto.input.extend(inputs)


class UniqueNames:
    """Names not in ``taken``; :meth:`unique` reserves one (``name``, else ``name_1``, ``name_2``...)."""

    def __init__(self, taken):
        self._taken = set(taken)

    def unique(self, name: str) -> str:
        candidate, count = name, 1
        while candidate in self._taken:
            candidate, count = f"{name}_{count}", count + 1
        self._taken.add(candidate)
        return candidate


class Names(UniqueNames):
    """Tensor names unused anywhere in a graph and its bodies. ``tensors``: :func:`graph_tensors` where the caller
    has it already."""

    def __init__(self, graph: gs.Graph, tensors: dict | None = None):
        super().__init__(graph_tensors(graph) if tensors is None else tensors)
        for body in bodies(graph):
            self._taken.update(graph_tensors(body))


def is_default_domain(node: gs.Node) -> bool:
    return (node.domain or "") in _DEFAULT_DOMAINS


def constant_tensors(graph: gs.Graph, tensors: dict | None = None, outer: tuple[set, set] = (set(), set())
                     ) -> tuple[set, set]:
    """The names of the tensors whose values are fixed before the model runs (initializers, and outputs of
    standard nodes whose inputs are all such tensors, random and control-flow nodes aside), and those of them
    that are float32. ``tensors``: :func:`graph_tensors` where the caller has it already; ``outer``: for a body,
    what this function found for the graphs around it (a body reads their values by name)."""
    tensors = graph_tensors(graph) if tensors is None else tensors
    # a body's own inputs and node outputs shadow the outer tensors of the same name: those are not constants
    own = {tensor.name for tensor in graph.inputs} | {tensor.name for node in graph.nodes for tensor in node.outputs}
    constants, floats = set(outer[0]) - own, set(outer[1]) - own
    for name, tensor in tensors.items():
        if isinstance(tensor, gs.Constant) and not _is_sparse(tensor):
            constants.add(name)
            if tensor.dtype == np.float32:
                floats.add(name)
    for node in graph.nodes:
        if not is_default_domain(node) or node.op in _RANDOM_OPS | _SUBGRAPH_OPS:
            continue
        if not all(tensor.name in constants for tensor in node.inputs if tensor.name):
            continue
        outputs = {tensor.name for tensor in node.outputs if tensor.name}
        constants.update(outputs)
        if _float_output(node, floats):
            floats.update(outputs)
    return constants, floats


def _float_output(node: gs.Node, floats: set) -> bool:
    if node.op == "Constant":
        if "value" in node.attrs:
            return node.attrs["value"].dtype == np.float32
        return "value_float" in node.attrs or "value_floats" in node.attrs
    if node.op == "ConstantOfShape":
        value = node.attrs.get("value")
        return value is None or value.dtype == np.float32
    if node.op == "Cast":
        return node.attrs.get("to") == onnx.TensorProto.FLOAT
    return any(tensor.name in floats for tensor in node.inputs if tensor.name)
