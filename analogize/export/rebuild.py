"""``rebuild``: the analog simulation again, from a ``qdq`` or ``qonnx`` export and its spec."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..convert import ConvertOptions, convert, stored_settings
from ..errors import AnalogizeError
from ..passes.chains import remove_analog_chains
from ..passes.graph import Names, cycle_collection_paused, export_model, import_model, known_values
from ..passes.model import METADATA_KEY
from .qonnx import QONNX_DOMAIN
from .spec import EXPORT_KEY, SPEC_FORMAT, SPEC_SCHEMA, SPEC_VERSION
from ..untrusted import check


def check_spec(spec) -> None:
    hint = "give the spec 'analogize export' wrote with the model"
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT or spec.get("version") != SPEC_VERSION:
        raise AnalogizeError(f"the spec is not an {SPEC_FORMAT} version {SPEC_VERSION} spec; {hint}")
    check(spec, SPEC_SCHEMA, "the spec", hint)
    if spec["export"]["format"] not in ("qdq", "qonnx"):
        raise AnalogizeError("rebuild takes a qdq or qonnx export (a plain export's chains are inlined beyond "
                             "recovery)")


def _check_pair(exported: onnx.ModelProto, spec: dict) -> None:
    """The spec must be the one written with this export: the export records its format and the settings it
    came from, and a spec of other settings (a 3-bit spec for a 6-bit export) would rebuild another model."""
    formats = [p.value for p in exported.metadata_props if p.key == EXPORT_KEY]
    if not formats:
        raise AnalogizeError("the model is not an analogize export (no export record); rebuild takes the file "
                             "'analogize export' wrote")
    if formats[0] != spec["export"]["format"] or json.loads(json.dumps(stored_settings(exported))) != \
            json.loads(json.dumps(spec["settings"])):
        raise AnalogizeError("the spec does not belong to this export (its format or settings differ from those "
                             "the export records); give the spec written with it")


def remove_quantizers(graph: gs.Graph) -> int:
    """Take out the QuantizeLinear -> DequantizeLinear pairs and QONNX Quant nodes, wiring their consumers to
    what they quantized; a DequantizeLinear of stored integers (a weight whose range was folded) gives way to the
    float constant it computes, which the simulation's own rounding leaves as it is. A graph output they wrote
    becomes an Identity at the end of the graph. Returns how many nodes went."""
    names = Names(graph)
    pairs, removed = [], []  # (output, source) of each quantizer
    for node in graph.nodes:
        producers = node.inputs[0].inputs if node.inputs else []
        if node.op == "DequantizeLinear" and producers and producers[0].op == "QuantizeLinear":
            pairs.append((node.outputs[0], producers[0].inputs[0]))
        elif node.op == "DequantizeLinear" and known_values(node.inputs[0]) is not None:
            pairs.append((node.outputs[0], gs.Constant(names.unique(f"{node.outputs[0].name}::dequantized"),
                                                       _dequantized(node))))
        elif node.op == "Quant" and node.domain == QONNX_DOMAIN:
            pairs.append((node.outputs[0], node.inputs[0]))
        elif node.op != "QuantizeLinear":
            continue
        removed.append(node)
    gone = {id(node) for node in removed}
    graph.nodes = [node for node in graph.nodes if id(node) not in gone]
    for node in removed:
        node.inputs.clear()
        node.outputs.clear()
    for output, source in pairs:
        for consumer in list(output.outputs):
            for slot, tensor in enumerate(consumer.inputs):
                if tensor is output:
                    consumer.inputs[slot] = source
    sources = {id(output): source for output, source in pairs}
    for output in graph.outputs:
        if id(output) in sources:
            graph.nodes.append(gs.Node("Identity", inputs=[sources[id(output)]], outputs=[output]))
    return len(removed)


def _dequantized(node: gs.Node) -> np.ndarray:
    """What a DequantizeLinear of constants computes: (q - zero point) * scale in float32, per axis where the
    scale is a vector."""
    integers = known_values(node.inputs[0])
    scale = np.asarray(known_values(node.inputs[1]), np.float32)
    zero = known_values(node.inputs[2]) if len(node.inputs) > 2 else None
    zero = np.zeros_like(scale) if zero is None else np.asarray(zero, np.float32)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * integers.ndim
        shape[node.attrs.get("axis", 1)] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((integers.astype(np.float32) - zero) * scale).astype(np.float32)


def forget_export(model: onnx.ModelProto) -> None:
    """Drop what the export added at model level: the QONNX domain import and the export and settings records
    (convert writes its own)."""
    for entry in [e for e in model.opset_import if e.domain == QONNX_DOMAIN]:
        model.opset_import.remove(entry)
    for entry in [p for p in model.metadata_props if p.key in (EXPORT_KEY, METADATA_KEY)]:
        model.metadata_props.remove(entry)


@cycle_collection_paused()
def rebuild(exported: onnx.ModelProto, spec: dict) -> onnx.ModelProto:
    """The analog simulation again, from a ``qdq`` or ``qonnx`` export and its spec: QDQ pairs or Quant nodes
    and clamps come out, and convert puts the chains back with the recorded settings (activations stay as
    exported).

    Pipeline: :func:`check_spec`; import; :func:`remove_quantizers`;
    :func:`~analogize.passes.chains.remove_analog_chains` (the clamps and the ranges' nodes); export; model level:
    :func:`forget_export`, then :func:`analogize.convert.convert` with the spec's options and its recorded ranges
    (calibrated ones are not calibrated again; a pipeline of its own, on the ``ModelProto``).
    """
    check_spec(spec)
    _check_pair(exported, spec)
    graph = import_model(exported)
    remove_quantizers(graph)
    remove_analog_chains(graph, ("clamp",), ranges=True)
    model = export_model(graph, exported)
    forget_export(model)
    try:
        options = ConvertOptions.from_dict(spec["settings"]["options"])
    except TypeError as error:
        raise AnalogizeError(f"the spec's settings.options are not convert's options ({error})") from None
    # a spec from before range modes has no ranges: then nothing was calibrated, and [] says so
    # the plan was checked against the original model; this one is its export
    return convert(model, replace(options.without_plan_check(), activation="keep", inline=False),
                   recorded_ranges=spec["settings"].get("ranges", [])).model
