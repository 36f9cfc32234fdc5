"""``export``: hand a converted model to hardware compilers as a deterministic graph plus a spec of its analog
settings.

Formats:

- ``qdq``: noise removed; each reduce-precision becomes QuantizeLinear -> DequantizeLinear with scale 1/p and
  zero point 0 (int8 when p <= 127, else int16, which needs opset 21); clamps stay ``Clip``; activations
  are decomposed into standard ops. The form ONNX Runtime, OpenVINO and TensorRT read.
- ``qonnx``: as ``qdq``, but each reduce-precision becomes one QONNX ``Quant`` node (scale 1/p, zero point 0,
  signed narrow-range integers of the spec's ``integer_bits``, rounding HALF_DOWN). The form the ``qonnx``
  package reads.
- ``plain``: the analog op set inlined into standard ops, noise removed (or kept with ``keep_noise``).

The spec (schema ``analogize.spec`` version 1) lists every analog tensor: where it sits (input, layer input,
weight, bias, layer output), its clamp range, precision, bits, integer width, rounding, noise std and EP;
the activations that were swapped in; and convert's settings. ``rebuild`` turns a ``qdq`` or ``qonnx`` export
and its spec back into the analog simulation.

Rounding: reduce-precision sends exact halves toward zero, QuantizeLinear to even. They differ only on
inputs that land exactly halfway between two levels; ``compare_outputs`` measures how often that changes
a model's outputs on real data. QONNX's HALF_DOWN, sign(v) * ceil(|v| - 0.5) with v = x / scale, is
reduce-precision's own rounding, so a ``qonnx`` export agrees with the simulation on ties too.

Both quantizing formats clip to their integer range, which holds the 2p + 1 levels of [-1, 1]; so every
reduce-precision must follow a clamp (models converted with ``--no-clamp`` are refused).
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..passes import rewrite
from ..convert import ConvertOptions, convert
from ..errors import AnalogizeError
from ..model_io import copy_model
from ..noise_model import BIT_CONVENTIONS, precision_to_bits, std_to_ep
from ..ops.spec import DOMAIN

FORMATS = ("qdq", "qonnx", "plain")
SPEC_FORMAT, SPEC_VERSION = "analogize.spec", 1
EXPORT_KEY = "analogize.export"
QDQ_INT16_OPSET = 21  # QuantizeLinear/DequantizeLinear take int16 from opset 21
QDQ_MAX_PRECISION = 32767  # int16 levels
QONNX_DOMAIN, QONNX_OPSET = "qonnx.custom_op.general", 1
# Quant carries its integers in float32 tensors, whose whole numbers are exact up to 2^24
QONNX_MAX_PRECISION = 2.0**24
_QUANTIZE_OPS = rewrite.CHAIN_ELEMENTS["quantize"]
_ELEMENT_OF_OP = {op: element for element, ops in rewrite.CHAIN_ELEMENTS.items() for op in ops}


def integer_bits(precision: float) -> int | None:
    """Width of the signed (narrow-range) integers that hold the 2p + 1 levels of precision p, if p is whole."""
    if precision != int(precision):
        return None
    return int(math.ceil(math.log2(precision + 1))) + 1


def analog_spec(model: onnx.ModelProto) -> dict:
    """The spec of a converted model: every analog tensor and activation, and convert's settings."""
    if not rewrite.is_converted(model):
        raise AnalogizeError("the model has no analog ops or settings: convert it first (analogize convert)")
    settings = rewrite.stored_settings(model)
    if settings.get("options", {}).get("inline"):
        raise AnalogizeError("the model was converted with --inline, so its chains cannot be told apart; "
                             "export a model converted without --inline")
    convention = settings.get("options", {}).get("bit_convention", BIT_CONVENTIONS[0])
    chains: dict[tuple, dict] = {}
    for node in model.graph.node:
        if not rewrite.is_chain_element(node, tuple(rewrite.CHAIN_ELEMENTS)) or not node.name.startswith("analogize/"):
            continue
        _, site, *target, element = node.name.split("/")
        key = (site, "/".join(target))
        chain = chains.setdefault(key, {"site": site, "first": node, "last": node, "elements": []})
        chain["last"] = node
        chain["elements"].append(node)
    tensors = []
    for (site, _), chain in chains.items():
        entry = {"tensor": chain["first"].input[0] if site != "layer-output" else chain["last"].output[0],
                 "site": site, "order": [_ELEMENT_OF_OP[n.op_type] for n in chain["elements"]],
                 "clamp": None, "precision": None, "bits": None, "integer_bits": None, "rounding": None,
                 "std": 0.0, "ep": None, "seed": None}
        for node in chain["elements"]:
            values = rewrite.node_attributes(node)
            if node.op_type == "Clip":
                entry["clamp"] = list(rewrite.CLAMP_RANGE)
            elif node.op_type in _QUANTIZE_OPS:
                precision = values["precision"]
                entry.update(precision=precision, bits=precision_to_bits(precision, convention),
                             integer_bits=integer_bits(precision),
                             rounding="stochastic" if node.op_type == "StochasticReducePrecision"
                             else ("half-toward-zero" if values.get("divide", 0.5) == 0.5
                                   else f"up above {values['divide']:g}"))
                if "seed" in values:
                    entry["seed"] = values["seed"]
            else:
                entry["std"] = values["std"]
                entry["seed"] = values.get("seed")
        if entry["std"] and entry["precision"]:
            entry["ep"] = std_to_ep(entry["std"], entry["precision"])
        elif entry["std"] and settings.get("precision"):
            entry["ep"] = std_to_ep(entry["std"], settings["precision"])
        tensors.append(entry)
    activations = [{"node": node.name or node.output[0], "op_type": node.op_type,
                    "attributes": {k: v for k, v in rewrite.node_attributes(node).items()}}
                   for node in model.graph.node
                   if node.domain == DOMAIN and node.op_type not in _ELEMENT_OF_OP
                   or node.op_type == "LeakyRelu" and settings.get("options", {}).get("activation") == "leaky"]
    if not tensors and not activations:
        raise AnalogizeError("the model has no analog chains or activations to export")
    return {"format": SPEC_FORMAT, "version": SPEC_VERSION, "settings": settings, "tensors": tensors,
            "activations": activations}


def _deterministic(model: onnx.ModelProto) -> onnx.ModelProto:
    working = copy_model(model)
    rewrite.remove_analog_chains(working, ("noise",))
    rewrite.round_deterministically(working)
    return working


def to_plain(model: onnx.ModelProto, keep_noise: bool = False) -> onnx.ModelProto:
    working = copy_model(model) if keep_noise else _deterministic(model)
    return rewrite.inline_analog_functions(working)


def to_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    working, marks = _marked_quantizers(model, "QDQ", QDQ_MAX_PRECISION)
    if max(marks.values(), default=0) > 127 and rewrite.default_opset(working) < QDQ_INT16_OPSET:
        working, _ = rewrite.fit_opset(working, minimum=QDQ_INT16_OPSET)
    _replace_marks(working, marks, _qdq_pair)
    return working


def to_qonnx(model: onnx.ModelProto) -> onnx.ModelProto:
    working, marks = _marked_quantizers(model, "QONNX Quant", QONNX_MAX_PRECISION)
    _replace_marks(working, marks, _quant_node)
    working.opset_import.append(helper.make_opsetid(QONNX_DOMAIN, QONNX_OPSET))
    return working


def _marked_quantizers(model: onnx.ModelProto, target: str, max_precision: float):
    """The deterministic, inlined graph with an Identity where each reduce-precision was, and a map from
    each Identity's output to its precision, once every reduce-precision is known to have an exact
    ``target`` equivalent."""
    working = _deterministic(model)
    producers = {output: node for node in working.graph.node for output in node.output}
    for node in rewrite.analog_nodes(working, _QUANTIZE_OPS):
        values = rewrite.node_attributes(node)
        if values.get("divide", 0.5) != 0.5:
            raise AnalogizeError(f"{node.name}: reduce-precision with divide={values['divide']:g} has no "
                                 f"{target} equivalent (it rounds at 0.5); export --format plain")
        if values["precision"] != int(values["precision"]) or values["precision"] > max_precision:
            raise AnalogizeError(f"{node.name}: precision {values['precision']:g} has no {target} equivalent, "
                                 f"which takes whole precisions up to {max_precision:.0f} (export --format plain)")
        source = producers.get(node.input[0])
        if source is None or not rewrite.is_chain_element(source, ("clamp",)):
            raise AnalogizeError(f"{node.name}: reduce-precision without a clamp before it is unbounded, but "
                                 f"{target} clips to its integer range; convert with clamps or export "
                                 f"--format plain")
    marks = _mark_quantizers(working)
    return rewrite.inline_analog_functions(working), marks


def _mark_quantizers(model: onnx.ModelProto) -> dict[str, float]:
    """Replace each reduce-precision by an Identity marking where its quantizer goes; output -> precision."""
    marks = {}
    for node in rewrite.analog_nodes(model, _QUANTIZE_OPS):
        marks[node.output[0]] = rewrite.node_attributes(node)["precision"]
        node.op_type, node.domain = "Identity", ""
        node.ClearField("attribute")
    rewrite.drop_unused(model)
    return marks


def _replace_marks(model: onnx.ModelProto, marks: dict, quantizer) -> None:
    """Put ``quantizer(index, mark, precision)``'s nodes and initializers in place of each marking Identity."""
    graph = model.graph
    index = rewrite.GraphIndex.build(graph)
    nodes = []
    for node in graph.node:
        if node.op_type != "Identity" or node.output[0] not in marks:
            nodes.append(node)
            continue
        replacement, initializers = quantizer(index, node, marks[node.output[0]])
        graph.initializer.extend(initializers)
        nodes.extend(replacement)
    graph.ClearField("node")
    graph.node.extend(nodes)


def _qdq_pair(index: rewrite.GraphIndex, mark: onnx.NodeProto, precision: float):
    integer = np.int8 if precision <= 127 else np.int16
    scale = index.unique(f"{mark.output[0]}::qdq_scale")
    zero = index.unique(f"{mark.output[0]}::qdq_zero_point")
    quantized = index.unique(f"{mark.output[0]}::quantized")
    return ([helper.make_node("QuantizeLinear", [mark.input[0], scale, zero], [quantized],
                              name=f"{mark.name}/quantize"),
             helper.make_node("DequantizeLinear", [quantized, scale, zero], [mark.output[0]],
                              name=f"{mark.name}/dequantize")],
            [numpy_helper.from_array(np.array(1.0 / precision, np.float32), scale),
             numpy_helper.from_array(np.array(0, integer), zero)])


def _quant_node(index: rewrite.GraphIndex, mark: onnx.NodeProto, precision: float):
    parameters = {"scale": 1.0 / precision, "zero_point": 0.0, "bit_width": integer_bits(precision)}
    names = {key: index.unique(f"{mark.output[0]}::quant_{key}") for key in parameters}
    return ([helper.make_node("Quant", [mark.input[0], *names.values()], [mark.output[0]], domain=QONNX_DOMAIN,
                              name=f"{mark.name}/quant", signed=1, narrow=1, rounding_mode="HALF_DOWN")],
            [numpy_helper.from_array(np.array(value, np.float32), names[key]) for key, value in parameters.items()])


def export(model: onnx.ModelProto, format: str = "qdq", keep_noise: bool = False) -> tuple[onnx.ModelProto, dict]:
    """The deterministic graph in ``format`` and the spec of the analog settings it came from."""
    if format not in FORMATS:
        raise AnalogizeError(f"unknown export format {format!r}: choose from {', '.join(FORMATS)}")
    if keep_noise and format != "plain":
        raise AnalogizeError("--keep-noise applies to --format plain only; hardware formats are deterministic")
    spec = analog_spec(model)
    if format == "plain":
        exported = to_plain(model, keep_noise)
    else:
        exported = to_qdq(model) if format == "qdq" else to_qonnx(model)
    exported.metadata_props.add(key=EXPORT_KEY, value=format)
    spec["export"] = {"format": format, "noise": "kept" if keep_noise else "removed"}
    onnx.checker.check_model(exported)
    return exported, spec


def rebuild(exported: onnx.ModelProto, spec: dict) -> onnx.ModelProto:
    """The analog simulation again, from a ``qdq`` or ``qonnx`` export and its spec: QDQ pairs or Quant nodes
    and clamps come out, and convert puts the chains back with the recorded settings (activations stay as
    exported)."""
    if spec.get("format") != SPEC_FORMAT or spec.get("version") != SPEC_VERSION:
        raise AnalogizeError(f"not an {SPEC_FORMAT} version {SPEC_VERSION} spec")
    if spec.get("export", {}).get("format") not in ("qdq", "qonnx"):
        raise AnalogizeError("rebuild takes a qdq or qonnx export (a plain export's chains are inlined beyond "
                             "recovery)")
    model = copy_model(exported)
    graph = model.graph
    replacement: dict[str, str] = {}
    kept, removed = [], []
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in producers \
                and producers[node.input[0]].op_type == "QuantizeLinear":
            replacement[node.output[0]] = producers[node.input[0]].input[0]
            removed.append(node)
        elif node.op_type == "Quant" and node.domain == QONNX_DOMAIN:
            replacement[node.output[0]] = node.input[0]
            removed.append(node)
        elif node.op_type == "QuantizeLinear":
            removed.append(node)
        else:
            kept.append(node)
    graph.ClearField("node")
    graph.node.extend(kept)
    rewrite.rename_inputs(graph, graph.node, replacement)
    for value in graph.output:
        if value.name in replacement:
            graph.node.append(helper.make_node("Identity", [replacement[value.name]], [value.name]))
    rewrite.remove_analog_chains(model, ("clamp",))
    parameters = {name for node in removed for name in node.input[1:]}
    unused = parameters - {i for n in graph.node for i in n.input}
    for tensor in [t for t in graph.initializer if t.name in unused]:
        graph.initializer.remove(tensor)
    for entry in [e for e in model.opset_import if e.domain == QONNX_DOMAIN]:
        model.opset_import.remove(entry)
    for entry in [p for p in model.metadata_props if p.key in (EXPORT_KEY, rewrite.METADATA_KEY)]:
        model.metadata_props.remove(entry)
    options = ConvertOptions.from_dict(spec["settings"]["options"])
    return convert(model, replace(options, activation="keep", inline=False)).model


def compare_outputs(reference: onnx.ModelProto, exported: onnx.ModelProto, inputs: np.ndarray) -> dict:
    """How far an export's outputs are from the noise-free simulation on real inputs (ties rounding apart).

    A ``qonnx`` export runs in the ``qonnx`` package's executor, the tool that reads that form; the others run
    in ONNX Runtime."""
    from ..data import InputSpec
    from ..runtime.sessions import create_session

    name = InputSpec.of(reference).name
    expected = create_session(_deterministic(reference), native=False).run(None, {name: inputs})[0]
    if any(entry.domain == QONNX_DOMAIN for entry in exported.opset_import):
        actual = run_in_qonnx(exported, {name: inputs})[0]
    else:
        actual = create_session(exported, native=False).run(None, {name: inputs})[0]
    differs = expected != actual
    return {"samples": int(len(inputs)), "mismatch_rate": float(np.mean(differs)),
            "max_abs_difference": float(np.max(np.abs(expected - actual))) if expected.size else 0.0,
            "top1_agreement": float(np.mean(expected.reshape(len(inputs), -1).argmax(1)
                                            == actual.reshape(len(inputs), -1).argmax(1)))}


def run_in_qonnx(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The model's outputs from the ``qonnx`` package's executor, with the inputs' shapes fixed in the graph
    (it needs every tensor's shape)."""
    try:
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.core.onnx_exec import execute_onnx
        from qonnx.transformation.infer_shapes import InferShapes
    except ImportError as error:
        raise AnalogizeError(f"running a qonnx export needs the qonnx package ({error}): pip install toposort "
                             f"'onnx<1.23' && pip install --no-deps qonnx==1.0.0 (as the test command does)") from None
    wrapper = ModelWrapper(copy_model(model))
    for name, value in inputs.items():
        wrapper.set_tensor_shape(name, list(value.shape))
    wrapper = wrapper.transform(InferShapes())
    try:
        outputs = execute_onnx(wrapper, inputs)
    except Exception as error:
        if "Unsupported model IR version" not in str(error):
            raise
        raise AnalogizeError(f"qonnx runs each node as a model at onnx {onnx.__version__}'s IR version "
                             f"{onnx.IR_VERSION}, which this onnxruntime refuses: pip install 'onnx<1.23'") from None
    return [outputs[value.name] for value in wrapper.graph.output]


def export_file(source, destination, format: str = "qdq", spec=None, keep_noise: bool = False,
                verify_data: str | None = None, limit: int = 1000, overwrite: bool = False) -> dict:
    """:func:`export` from file to file (the CLI's ``analogize export``), optionally checked on data."""
    import json
    from pathlib import Path

    from ..data import fit_to_input, load_for_model
    from ..model_io import atomic_output, load_model, save_model

    source, destination = Path(source), Path(destination)
    spec_path = Path(spec) if spec else destination.with_suffix(".spec.json")
    model, external = load_model(source)
    exported, analog = export(model, format, keep_noise)
    report = {"input": str(source), "output": str(destination), "spec": str(spec_path), "format": format,
              "tensors": len(analog["tensors"]), "activations": len(analog["activations"])}
    if verify_data:
        dataset = load_for_model(verify_data, model, limit=limit)
        inputs, _ = fit_to_input(dataset, model)
        report["verification"] = analog["verification"] = compare_outputs(model, exported, inputs)
    save_model(exported, destination, external_data=external, overwrite_input=None if overwrite else source)
    with atomic_output(spec_path) as temporary:
        temporary.write_text(json.dumps(analog, indent=2) + "\n")
    return report


def rebuild_file(exported_path, spec_path, destination):
    import json
    from pathlib import Path

    from ..model_io import load_model, save_model

    exported, external = load_model(exported_path)
    try:
        spec = json.loads(Path(spec_path).read_text())
    except (OSError, ValueError) as error:
        raise AnalogizeError(f"cannot read the spec {spec_path}: {error}") from None
    return save_model(rebuild(exported, spec), destination, external_data=external, overwrite_input=exported_path)
