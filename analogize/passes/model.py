"""Model-level steps around the graph passes, on ``onnx.ModelProto``: each needs what only the protobuf model
holds, so it runs before :func:`analogize.passes.graph.import_model` or after
:func:`analogize.passes.graph.export_model`:

- the opset move (:func:`fit_opset`) is ONNX's version converter, which reads and writes whole models;
- function bodies (:func:`sync_analog_functions`, :func:`inline_analog_functions`)
  are ``FunctionProto`` messages generated from the op set, kept byte for byte, and inlined by ONNX's inliner;
- the IR version, metadata and settings record (:func:`raise_ir_version`, :func:`store_settings`,
  :func:`machine_form_record`) are fields of the model, not of its graph.
"""
from __future__ import annotations

import json
import math
from collections import Counter

import onnx
from onnx import helper, inliner, version_converter

from .. import untrusted
from ..errors import AnalogizeError
from ..model_checks import check_graph_structure, is_repeated
from ..native.build import FUSED_DOMAIN
from ..ops.onnx_functions import MIN_OPSET, function_protos
from ..ops.spec import DOMAIN, DOMAIN_VERSION, OPS
from .graph import export_model, may_hold_bodies


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
    check_graph_structure(model.graph, "the model")  # the converter crashes the process on a broken graph
    try:
        converted = _convert_version_without_weights(model, target)
    except Exception as error:  # the converter raises bare RuntimeErrors/ValueErrors per op adapter
        raise AnalogizeError(f"the model uses opset {current} and ONNX's version converter could not move it to "
                             f"{target} ({str(error).splitlines()[0]}); re-export it at opset {target}") from None
    changed = _interface_change(model.graph, converted.graph)
    if changed:  # Scan-8's batch axis, for one, goes from the graph's inputs and outputs in the move to 9
        raise AnalogizeError(f"the model uses opset {current}, and ONNX's version converter changes its interface "
                             f"moving it to {target} ({changed}); re-export it at opset {target}")
    return converted, [{"pass": "fit_opset", "from": current, "to": target}]


# Float tensors at least this large are weights: no adapter of ONNX's version converter reads them (those that
# read initializers read shapes, axes, split sizes: integers; and Upsample's scales: a few floats).
_LEAST_WEIGHT_BYTES = 4096
_FLOAT_WIDTHS = {onnx.TensorProto.FLOAT: 4, onnx.TensorProto.FLOAT16: 2, onnx.TensorProto.BFLOAT16: 2,
                 onnx.TensorProto.DOUBLE: 8}


def _convert_version_without_weights(model: onnx.ModelProto, target: int) -> onnx.ModelProto:
    """``version_converter.convert_version``, with the weights' bytes kept out of it: the converter serialises
    the whole model into its own IR and back, which took most of a convert's time on a 54 MB opset-12 model.
    It is given a copy of the model whose weights are stand-ins (every field but the bytes), and each weight
    comes back, copied once, under its name where the converter left its type and shape."""
    counts = Counter(tensor.name for tensor in model.graph.initializer)
    weights = {tensor.name: tensor for tensor in model.graph.initializer
               if tensor.data_type in _FLOAT_WIDTHS and tensor.HasField("raw_data") and counts[tensor.name] == 1
               and math.prod(tensor.dims) * _FLOAT_WIDTHS[tensor.data_type] >= _LEAST_WEIGHT_BYTES}
    converted = version_converter.convert_version(_without_bytes_of(model, weights), target)
    for tensor in converted.graph.initializer:
        source = weights.get(tensor.name)
        if source is not None and not tensor.HasField("raw_data") and \
                (source.data_type, source.dims) == (tensor.data_type, tensor.dims):
            _put_bytes_back(tensor, source)
    return converted


def _put_bytes_back(tensor: onnx.TensorProto, source: onnx.TensorProto) -> None:
    """``source``'s ``raw_data`` into the converter's stand-in ``tensor``, every other field kept as the converter
    left it (it drops a tensor's doc_string and metadata_props, as it does for the tensors it was given whole):
    one copy of the bytes, by CopyFrom, the stand-in's fields over them."""
    stand_in = onnx.TensorProto()
    stand_in.CopyFrom(tensor)  # no bytes in it
    tensor.CopyFrom(source)
    for field in tensor.DESCRIPTOR.fields:
        if field.name != "raw_data":
            tensor.ClearField(field.name)
    tensor.DiscardUnknownFields()
    tensor.MergeFrom(stand_in)


def _without_bytes_of(model: onnx.ModelProto, weights: dict) -> onnx.ModelProto:
    """A copy of ``model`` in which the initializers ``weights`` names hold every field but ``raw_data`` (the
    model is read, never changed: a caller may still need it)."""
    copy = onnx.ModelProto()
    _copy_fields(model, copy, skip="graph")
    _copy_fields(model.graph, copy.graph, skip="initializer")
    for tensor in model.graph.initializer:
        if tensor.name in weights:
            _copy_fields(tensor, copy.graph.initializer.add(), skip="raw_data")
        else:
            copy.graph.initializer.add().CopyFrom(tensor)
    return copy


def _copy_fields(source, target, skip: str) -> None:
    """Every field set in ``source`` but ``skip``, copied into ``target`` (a message of the same type). Fields
    are found by descriptor: ``ListFields`` would copy ``skip``'s bytes out too."""
    for field in source.DESCRIPTOR.fields:
        if field.name == skip:
            continue
        value = getattr(source, field.name)
        if is_repeated(field):
            if value:
                getattr(target, field.name).extend(value)
        elif source.HasField(field.name):
            if field.type == field.TYPE_MESSAGE:
                getattr(target, field.name).CopyFrom(value)
            else:
                setattr(target, field.name, value)


def _interface_change(declared: onnx.GraphProto, moved: onnx.GraphProto) -> str | None:
    """What the move changed of the graph's inputs and outputs, or None; types the converter's shape inference
    filled in where the model left them open are no change."""
    for kind in ("input", "output"):
        before, after = getattr(declared, kind), getattr(moved, kind)
        if [v.name for v in before] != [v.name for v in after]:
            return f"its {kind}s become {', '.join(v.name for v in after) or 'none'}"
        for old, new in zip(before, after):
            if _contradicts(old.type, new.type):
                shown = (f": {helper.printable_type(old.type)} becomes {helper.printable_type(new.type)}"
                         if old.type.HasField("tensor_type") and new.type.HasField("tensor_type") else "")
                return f"{kind} {old.name!r} changes its type or shape{shown}"
    return None


def _contradicts(declared: onnx.TypeProto, moved: onnx.TypeProto) -> bool:
    kind = declared.WhichOneof("value")
    if kind is None:
        return False
    if kind != moved.WhichOneof("value"):
        return True
    declared, moved = getattr(declared, kind), getattr(moved, kind)
    if kind in ("tensor_type", "sparse_tensor_type"):
        if declared.elem_type != moved.elem_type:
            return True
        if not declared.HasField("shape"):
            return False
        return len(declared.shape.dim) != len(moved.shape.dim) or any(
            old.HasField("dim_value") and old.dim_value != new.dim_value
            for old, new in zip(declared.shape.dim, moved.shape.dim))
    if kind == "map_type":
        return declared.key_type != moved.key_type or _contradicts(declared.value_type, moved.value_type)
    return _contradicts(declared.elem_type, moved.elem_type)  # a sequence's or an optional's element


def sync_analog_functions(model: onnx.ModelProto) -> None:
    """Function bodies follow the nodes: each analog op the graph uses (in control-flow bodies and in the
    bodies of other local functions too, such as the fast form's fused chains: functions live at model level
    only) gets its body (at the model's opset) and the domain import; bodies and the import that nothing uses any
    more go, and so does the native domain's import once no fused chain is left. The bodies are always the op
    set's own: a model that brought bodies of its own for the domain (an identity for ReducePrecision, say)
    does not keep them."""
    used = _ops_by_domain(model.graph)
    in_use = used.get(DOMAIN, set()) | {node.op_type for function in model.functions if function.domain != DOMAIN
                                         for node in function.node if node.domain == DOMAIN}
    unknown = sorted(in_use - set(OPS))
    if unknown:
        raise AnalogizeError(f"the model has a node of op {unknown[0]!r} in the {DOMAIN} domain, which is not one of "
                             f"its ops ({', '.join(OPS)}); convert the original model with this version of analogize")
    ours = {(f.name, f.SerializeToString()) for f in function_protos(sorted(in_use), default_opset(model))}
    for function in [f for f in model.functions if f.domain == DOMAIN and
                     (f.name, f.SerializeToString()) not in ours]:
        model.functions.remove(function)
    present = {f.name for f in model.functions if f.domain == DOMAIN}
    missing = sorted(in_use - present)
    if missing:
        model.functions.extend(function_protos(missing, default_opset(model)))
    imported = [e for e in model.opset_import if e.domain == DOMAIN]
    if in_use and not imported:
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    elif not in_use:
        for entry in imported:
            model.opset_import.remove(entry)
    if FUSED_DOMAIN not in used:  # its fused chains taken apart: the native domain goes too
        for entry in [e for e in model.opset_import if e.domain == FUSED_DOMAIN]:
            model.opset_import.remove(entry)


def _ops_by_domain(graph: onnx.GraphProto, used: dict | None = None) -> dict[str, set[str]]:
    """The op types of the graph's nodes and of its bodies' nodes, by domain, in one walk of the nodes."""
    used = {} if used is None else used
    for node in graph.node:
        op, domain = node.op_type, node.domain
        used.setdefault(domain, set()).add(op)
        if not may_hold_bodies(op, domain):
            continue
        for attribute in node.attribute:
            kind = attribute.type  # read first: protobuf builds a wrapper for every field read, g and graphs too
            if kind == onnx.AttributeProto.GRAPH:
                _ops_by_domain(attribute.g, used)
            elif kind == onnx.AttributeProto.GRAPHS:
                for body in attribute.graphs:
                    _ops_by_domain(body, used)
    return used


def export_with_functions(graph, source: onnx.ModelProto) -> onnx.ModelProto:
    """The end of a pipeline whose passes changed which analog ops the graph uses: the export, then
    :func:`sync_analog_functions`."""
    model = export_model(graph, source)
    sync_analog_functions(model)
    return model


# Initializers outside graph.input need IR >= 4 and model-local functions IR >= 8; 10 is the lowest IR that
# ONNX Runtime 1.31 and onnx >= 1.16 agree on for functions with attribute defaults.
MIN_IR_VERSION = 10


def fed_inputs(model: onnx.ModelProto) -> list:
    """The graph inputs a caller feeds: those that name no initializer."""
    stored = {tensor.name for tensor in model.graph.initializer}
    return [value for value in model.graph.input if value.name not in stored]


def raise_ir_version(model: onnx.ModelProto) -> None:
    if model.ir_version < 4:
        # Below IR 4 every initializer had to be listed as a graph input too, and runtimes take them as constants.
        # Still listed at IR 4 and above, they would be inputs a caller may override, which ONNX Runtime neither
        # folds nor lays out for its fastest convolutions.
        data_inputs = fed_inputs(model)
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


def store_settings(model: onnx.ModelProto, summary: dict) -> None:
    """Record convert's settings in the model's metadata (replacing any earlier record)."""
    value = json.dumps(summary, sort_keys=True, allow_nan=False)
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            entry.value = value
            return
    model.metadata_props.add(key=METADATA_KEY, value=value)


FORM_KEY = "analogize.form"


def machine_form_record(model: onnx.ModelProto) -> dict | None:
    """What an ONNX Runtime graph optimised for one machine (``analogize fast --for-this-machine``) is tied to:
    the ONNX Runtime version, CPU features and native library it was made with; None for any other model."""
    for entry in model.metadata_props:
        if entry.key == FORM_KEY:
            what, hint = f"the model's {FORM_KEY} metadata", "make the file again with analogize fast"
            return untrusted.check(untrusted.parse_json(entry.value, what, hint), _FORM_SCHEMA, what, hint)
    return None


_FORM_SCHEMA = {"onnxruntime": str, "cpu": str, "blocked_layout": bool, "native_library": str}


def refuse_machine_form(model: onnx.ModelProto) -> None:
    """Only ONNX Runtime reads its optimised graph (internal ops, reordered weights, no function bodies)."""
    record = machine_form_record(model)
    if record is not None:
        raise AnalogizeError(f"the model is ONNX Runtime {record['onnxruntime']}'s optimised graph for one machine "
                             f"(analogize fast --for-this-machine); give the converted file it was made from")
