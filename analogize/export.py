"""``export``: hand a converted model to hardware compilers as a deterministic graph plus a spec of its analog
settings.

Formats:

- ``qdq``: noise removed; each reduce-precision becomes QuantizeLinear -> DequantizeLinear with scale 1/p and
  zero point 0 (int8 when p <= 127, else int16, which needs opset 21); clamps stay ``Clip``; activations
  are decomposed into standard ops. The form ONNX Runtime, OpenVINO and TensorRT read.
- ``plain``: the analog op set inlined into standard ops, noise removed (or kept with ``keep_noise``).

The spec (schema ``analogize.spec`` version 1) lists every analog tensor: where it sits (input, layer input,
weight, bias, layer output), its clamp range, precision, bits, integer width, rounding, noise std and EP;
the activations that were swapped in; and convert's settings. ``rebuild`` turns a ``qdq`` export and its
spec back into the analog simulation.

Rounding: reduce-precision sends exact halves toward zero, QuantizeLinear to even. They differ only on
inputs that land exactly halfway between two levels; ``compare_outputs`` measures how often that changes
a model's outputs on real data.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import rewrite
from .convert import ConvertOptions, convert
from .errors import AnalogizeError
from .model_io import copy_model
from .noise_model import BIT_CONVENTIONS, precision_to_bits, std_to_ep
from .ops import DOMAIN

FORMATS = ("qdq", "plain")
SPEC_FORMAT, SPEC_VERSION = "analogize.spec", 1
EXPORT_KEY = "analogize.export"
QDQ_INT16_OPSET = 21  # QuantizeLinear/DequantizeLinear take int16 from opset 21
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
    working = _deterministic(model)
    quantizers = rewrite.analog_nodes(working, _QUANTIZE_OPS)
    widest = max((rewrite.node_attributes(n)["precision"] for n in quantizers), default=0)
    for node in quantizers:
        values = rewrite.node_attributes(node)
        if values.get("divide", 0.5) != 0.5:
            raise AnalogizeError(f"{node.name}: reduce-precision with divide={values['divide']:g} has no "
                                 f"QuantizeLinear equivalent (it rounds at 0.5); export --format plain")
        if values["precision"] != int(values["precision"]) or values["precision"] > 32767:
            raise AnalogizeError(f"{node.name}: precision {values['precision']:g} does not fit int16 levels; "
                                 f"QDQ takes whole precisions up to 32767 (export --format plain)")
    marks = _mark_quantizers(working)
    working = rewrite.inline_analog_functions(working)
    if widest > 127 and rewrite.default_opset(working) < QDQ_INT16_OPSET:
        working, _ = rewrite.fit_opset(working, minimum=QDQ_INT16_OPSET)
    _insert_qdq(working, marks)
    return working


def _mark_quantizers(model: onnx.ModelProto) -> dict[str, float]:
    """Replace each reduce-precision by an Identity marking where its QDQ pair goes; output -> precision."""
    marks = {}
    for node in rewrite.analog_nodes(model, _QUANTIZE_OPS):
        marks[node.output[0]] = rewrite.node_attributes(node)["precision"]
        node.op_type, node.domain = "Identity", ""
        node.ClearField("attribute")
    rewrite.drop_unused(model)
    return marks


def _insert_qdq(model: onnx.ModelProto, marks: dict) -> None:
    graph = model.graph
    index = rewrite.GraphIndex.build(graph)
    nodes = []
    for node in graph.node:
        if node.op_type != "Identity" or node.output[0] not in marks:
            nodes.append(node)
            continue
        precision = marks[node.output[0]]
        integer = TensorProto.INT8 if precision <= 127 else TensorProto.INT16
        scale = index.unique(f"{node.output[0]}::qdq_scale")
        zero = index.unique(f"{node.output[0]}::qdq_zero_point")
        graph.initializer.extend([
            numpy_helper.from_array(np.array(1.0 / precision, np.float32), scale),
            numpy_helper.from_array(np.array(0, np.int8 if integer == TensorProto.INT8 else np.int16), zero)])
        quantized = index.unique(f"{node.output[0]}::quantized")
        nodes.append(helper.make_node("QuantizeLinear", [node.input[0], scale, zero], [quantized],
                                      name=f"{node.name}/quantize"))
        nodes.append(helper.make_node("DequantizeLinear", [quantized, scale, zero], [node.output[0]],
                                      name=f"{node.name}/dequantize"))
    graph.ClearField("node")
    graph.node.extend(nodes)


def export(model: onnx.ModelProto, format: str = "qdq", keep_noise: bool = False) -> tuple[onnx.ModelProto, dict]:
    """The deterministic graph in ``format`` and the spec of the analog settings it came from."""
    if format not in FORMATS:
        raise AnalogizeError(f"unknown export format {format!r}: choose from {', '.join(FORMATS)}")
    if keep_noise and format != "plain":
        raise AnalogizeError("--keep-noise applies to --format plain only; hardware formats are deterministic")
    spec = analog_spec(model)
    exported = to_qdq(model) if format == "qdq" else to_plain(model, keep_noise)
    exported.metadata_props.add(key=EXPORT_KEY, value=format)
    spec["export"] = {"format": format, "noise": "kept" if keep_noise else "removed"}
    onnx.checker.check_model(exported)
    return exported, spec


def rebuild(exported: onnx.ModelProto, spec: dict) -> onnx.ModelProto:
    """The analog simulation again, from a ``qdq`` export and its spec: QDQ pairs and clamps come out, and
    convert puts the chains back with the recorded settings (activations stay as exported)."""
    if spec.get("format") != SPEC_FORMAT or spec.get("version") != SPEC_VERSION:
        raise AnalogizeError(f"not an {SPEC_FORMAT} version {SPEC_VERSION} spec")
    if spec.get("export", {}).get("format") != "qdq":
        raise AnalogizeError("rebuild takes a qdq export (a plain export's chains are inlined beyond recovery)")
    model = copy_model(exported)
    graph = model.graph
    replacement: dict[str, str] = {}
    kept = []
    producers = {o: n for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in producers \
                and producers[node.input[0]].op_type == "QuantizeLinear":
            replacement[node.output[0]] = producers[node.input[0]].input[0]
        elif node.op_type == "QuantizeLinear":
            continue
        else:
            kept.append(node)
    graph.ClearField("node")
    graph.node.extend(kept)
    rewrite.rename_inputs(graph, graph.node, replacement)
    for value in graph.output:
        if value.name in replacement:
            graph.node.append(helper.make_node("Identity", [replacement[value.name]], [value.name]))
    rewrite.remove_analog_chains(model, ("clamp",))
    unused = {t.name for t in graph.initializer} - {i for n in graph.node for i in n.input}
    for tensor in [t for t in graph.initializer if t.name in unused and "::qdq_" in t.name]:
        graph.initializer.remove(tensor)
    for entry in [p for p in model.metadata_props if p.key in (EXPORT_KEY, rewrite.METADATA_KEY)]:
        model.metadata_props.remove(entry)
    options = ConvertOptions.from_dict(spec["settings"]["options"])
    return convert(model, replace(options, activation="keep", inline=False)).model


def compare_outputs(reference: onnx.ModelProto, exported: onnx.ModelProto, inputs: np.ndarray) -> dict:
    """How far an export's outputs are from the noise-free simulation on real inputs (ties rounding apart)."""
    from .data import InputSpec
    from .runtime import create_session

    name = InputSpec.of(reference).name
    expected = create_session(_deterministic(reference), native=False).run(None, {name: inputs})[0]
    actual = create_session(exported, native=False).run(None, {name: inputs})[0]
    differs = expected != actual
    return {"samples": int(len(inputs)), "mismatch_rate": float(np.mean(differs)),
            "max_abs_difference": float(np.max(np.abs(expected - actual))) if expected.size else 0.0,
            "top1_agreement": float(np.mean(expected.reshape(len(inputs), -1).argmax(1)
                                            == actual.reshape(len(inputs), -1).argmax(1)))}


def export_file(source, destination, format: str = "qdq", spec=None, keep_noise: bool = False,
                verify_data: str | None = None, limit: int = 1000, overwrite: bool = False) -> dict:
    """:func:`export` from file to file (the CLI's ``analogize export``), optionally checked on data."""
    import json
    from pathlib import Path

    from .data import fit_to_input, load_for_model
    from .model_io import atomic_output, load_model, save_model

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

    from .model_io import load_model, save_model

    exported, external = load_model(exported_path)
    try:
        spec = json.loads(Path(spec_path).read_text())
    except (OSError, ValueError) as error:
        raise AnalogizeError(f"cannot read the spec {spec_path}: {error}") from None
    return save_model(rebuild(exported, spec), destination, external_data=external, overwrite_input=exported_path)
