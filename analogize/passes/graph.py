"""The graph IR every pass edits: onnx-graphsurgeon's, imported once and exported once per pipeline.

:func:`import_model` and :func:`export_model` are the only crossings between ``onnx.ModelProto`` and
``gs.Graph``. The export carries back what graphsurgeon does not model: the model's metadata, documentation,
domain and version, the initializers a model lists as inputs on purpose (callers may override them), and the
order of its opset imports; its local functions go back as they came, byte for byte.

:class:`Names` hands out tensor names no graph or body of the model uses yet, and :func:`constant_tensors`
says which tensors are known before the model runs (initializers and what constant nodes compute from them).
"""
from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.exporters.onnx_exporter import OnnxExporter
from onnx_graphsurgeon.ir.tensor import SparseValues

_DEFAULT_DOMAINS = ("", "ai.onnx")
_RANDOM_OPS = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
_SUBGRAPH_OPS = {"If", "Loop", "Scan"}

# graphsurgeon warns about duplicate node names; many exporters write them, and they are no error in ONNX
gs.logger.G_LOGGER.module_severity = gs.logger.G_LOGGER.ERROR
logging.getLogger("onnx_graphsurgeon").setLevel(logging.ERROR)


def import_model(model: onnx.ModelProto) -> gs.Graph:
    """The model's graph as graphsurgeon's IR; the weights are shared with ``model``, not copied."""
    graph = gs.import_onnx(model)
    _type_empty_lists(model.graph, graph)
    return graph


class _EmptyList(list):
    """An empty list attribute that remembers its ONNX type: graphsurgeon imports ``axes=[]`` as ``[]``, and
    ``onnx.helper.make_attribute`` cannot type an empty list back."""

    def __init__(self, attribute: onnx.AttributeProto):
        super().__init__()
        self.attribute = attribute


_LIST_TYPES = {onnx.AttributeProto.INTS, onnx.AttributeProto.FLOATS, onnx.AttributeProto.STRINGS,
               onnx.AttributeProto.TENSORS, onnx.AttributeProto.GRAPHS, onnx.AttributeProto.SPARSE_TENSORS,
               onnx.AttributeProto.TYPE_PROTOS}


def _type_empty_lists(proto: onnx.GraphProto, graph: gs.Graph) -> None:
    for proto_node, node in zip(proto.node, graph.nodes):
        for attribute in proto_node.attribute:
            value = node.attrs.get(attribute.name)
            if attribute.type in _LIST_TYPES and isinstance(value, list) and not value:
                node.attrs[attribute.name] = _EmptyList(attribute)
            elif attribute.type == onnx.AttributeProto.GRAPH:
                _type_empty_lists(attribute.g, value)


def export_model(graph: gs.Graph, source: onnx.ModelProto) -> onnx.ModelProto:
    """``graph`` as a model with ``source``'s model-level fields; domains that nodes newly use are imported at
    version 1, after ``source``'s own, in name order."""
    known = {entry.domain for entry in source.opset_import}
    used = {node.domain or "" for node in graph.nodes}
    for body in graph.subgraphs(recursive=True):
        used.update(node.domain or "" for node in body.nodes)
    imports = [*source.opset_import,
               *(onnx.helper.make_opsetid(d, 1) for d in sorted(used - known - {"ai.onnx"} - ({""} & known)))]
    model = onnx.ModelProto()
    empty_lists = _take_empty_lists(graph)
    try:
        _export_graph(graph, model.graph)
    finally:
        for node, name, value in empty_lists:
            node.attrs[name] = value
    _put_back_empty_lists(graph, model.graph, {id(node) for node, _, _ in empty_lists})
    model.opset_import.extend(imports)
    model.ir_version = source.ir_version
    for field in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        if source.HasField(field):
            setattr(model, field, getattr(source, field))
        else:
            model.ClearField(field)
    model.functions.extend(source.functions)
    model.metadata_props.extend(source.metadata_props)
    model.training_info.extend(source.training_info)
    _restore_overridable_initializers(model, source)
    return model


def _export_graph(graph: gs.Graph, proto: onnx.GraphProto) -> None:
    """graphsurgeon's graph export, written straight into the model's graph: its ``export_onnx`` goes through
    ``make_graph`` and ``make_model``, which copy every weight twice."""
    exporter = OnnxExporter
    proto.node.extend(exporter.export_node(node) for node in graph.nodes)
    proto.input.extend(exporter.export_value_info_proto(tensor, False) for tensor in graph.inputs)
    proto.output.extend(exporter.export_value_info_proto(tensor, False) for tensor in graph.outputs)
    tensors = graph.tensors()
    constants = [tensor for tensor in tensors.values() if isinstance(tensor, gs.Constant)]
    # graphsurgeon keeps sparse initializers as SparseValues; only its private field tells them apart
    sparse = [isinstance(tensor._values, SparseValues) for tensor in constants]
    proto.initializer.extend(exporter.export_tensor_proto(tensor)
                             for tensor, is_sparse in zip(constants, sparse) if not is_sparse)
    proto.sparse_initializer.extend(exporter.export_sparse_tensor_proto(tensor)
                                    for tensor, is_sparse in zip(constants, sparse) if is_sparse)
    for tensor in graph.inputs + graph.outputs:
        tensors.pop(tensor.name, None)
    proto.value_info.extend(exporter.export_value_info_proto(tensor, False) for tensor in tensors.values()
                            if isinstance(tensor, gs.Variable)
                            and (tensor.dtype is not None or tensor.shape is not None))
    proto.name = graph.name
    if graph.doc_string:
        proto.doc_string = graph.doc_string


def _take_empty_lists(graph: gs.Graph) -> list:
    taken = []
    for body in [graph, *graph.subgraphs(recursive=True)]:
        for node in body.nodes:
            for name, value in list(node.attrs.items()):
                if isinstance(value, _EmptyList):
                    taken.append((node, name, value))
    for node, name, _ in taken:
        del node.attrs[name]
    return taken


def _put_back_empty_lists(graph: gs.Graph, proto: onnx.GraphProto, holders: set) -> None:
    """Write the empty list attributes into the exported nodes, in their places among the others."""
    for node, proto_node in zip(graph.nodes, proto.node):
        for attribute in proto_node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                _put_back_empty_lists(node.attrs[attribute.name], attribute.g, holders)
        if id(node) not in holders:
            continue
        exported = {attribute.name: attribute for attribute in proto_node.attribute}
        ordered = [value.attribute if isinstance(value, _EmptyList) else exported[name]
                   for name, value in node.attrs.items()]
        proto_node.ClearField("attribute")
        proto_node.attribute.extend(ordered)


def _restore_overridable_initializers(model: onnx.ModelProto, source: onnx.ModelProto) -> None:
    """Put back the graph inputs that name initializers (graphsurgeon drops them): from IR 4 on, such an input
    is a default the caller may override; below IR 4 every initializer had to be listed, and
    :func:`analogize.passes.model.raise_ir_version` decides what becomes of those."""
    stored = {tensor.name for tensor in model.graph.initializer}
    listed = [value for value in source.graph.input if value.name in stored]
    if not listed:
        return
    order = {value.name: position for position, value in enumerate(source.graph.input)}
    inputs = sorted([*model.graph.input, *listed], key=lambda value: order.get(value.name, len(order)))
    model.graph.ClearField("input")
    model.graph.input.extend(inputs)


class Names:
    """Tensor names unused anywhere in a graph and its bodies; :meth:`unique` reserves one."""

    def __init__(self, graph: gs.Graph):
        self._taken = set(graph.tensors())
        for body in graph.subgraphs(recursive=True):
            self._taken.update(body.tensors())

    def unique(self, name: str) -> str:
        candidate, count = name, 1
        while candidate in self._taken:
            candidate, count = f"{name}_{count}", count + 1
        self._taken.add(candidate)
        return candidate



def is_default_domain(node: gs.Node) -> bool:
    return (node.domain or "") in _DEFAULT_DOMAINS


def constant_tensors(graph: gs.Graph) -> tuple[set, set]:
    """The names of the tensors whose values are fixed before the model runs (initializers, and outputs of
    standard nodes whose inputs are all such tensors, random and control-flow nodes aside), and those of them
    that are float32."""
    constants, floats = set(), set()
    for name, tensor in graph.tensors().items():
        if isinstance(tensor, gs.Constant):
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
