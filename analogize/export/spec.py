"""The spec of a converted model (schema ``analogize.spec`` version 1): every analog tensor, where it sits
(input, layer input, weight, bias, layer output), its full-scale range (how it is set, and its value where it
is static), clamp range, precision, bits, integer width, rounding, noise std, EP and seed (clamp, precision and
std in units of the range); the activations that were swapped in; and convert's settings.

:func:`exportable_settings` reads the settings record (a model-level step: it is metadata), :func:`describe` is
the graph pass that reads the chains, and :func:`analog_spec` runs the two on a model.
"""
from __future__ import annotations

import math

import onnx
import onnx_graphsurgeon as gs

from ..convert import SETTINGS_SCHEMA, stored_settings
from ..errors import AnalogizeError
from ..noise_model import BIT_CONVENTIONS, precision_to_bits, std_to_ep
from ..ops.spec import DOMAIN
from ..passes.chains import CHAIN_ELEMENTS, CLAMP_RANGE, is_chain_element
from ..passes.graph import import_model
from ..ranges.mapping import is_range_node
from ..passes.model import is_converted, refuse_machine_form
from ..untrusted import Integer

SPEC_FORMAT, SPEC_VERSION = "analogize.spec", 1
#: what rebuild reads of a spec, as :mod:`analogize.untrusted` checks it
SPEC_SCHEMA = {"format": str, "version": Integer, "export": {"format": str}, "settings": SETTINGS_SCHEMA}
EXPORT_KEY = "analogize.export"  # metadata: the format a model was exported in
QUANTIZE_OPS = CHAIN_ELEMENTS["quantize"]
ELEMENT_OF_OP = {op: element for element, ops in CHAIN_ELEMENTS.items() for op in ops}


def integer_bits(precision: float) -> int | None:
    """Width of the signed (narrow-range) integers that hold the 2p + 1 levels of precision p, if p is whole."""
    if precision != int(precision):
        return None
    return int(math.ceil(math.log2(precision + 1))) + 1


def exportable_settings(model: onnx.ModelProto) -> dict:
    """Convert's settings as recorded in the model, once the model is known to be converted with its chains
    apart (not ``--inline``) and portable (not ONNX Runtime's graph optimised for one machine)."""
    refuse_machine_form(model)
    if not is_converted(model):
        raise AnalogizeError("the model has no analog ops or settings: convert it first (analogize convert)")
    settings = stored_settings(model)
    if settings.get("options", {}).get("inline"):
        raise AnalogizeError("the model was converted with --inline, so its chains cannot be told apart; "
                             "export a model converted without --inline")
    return settings


def describe(graph: gs.Graph, settings: dict) -> dict:
    """The spec of the converted ``graph`` (whose recorded settings are ``settings``); reads, edits nothing."""
    convention = settings.get("options", {}).get("bit_convention", BIT_CONVENTIONS[0])
    chains: dict[tuple, dict] = {}
    for node in graph.nodes:
        ranged = is_range_node(node) and node.op in ("Div", "Mul")
        if not (ranged or is_chain_element(node, tuple(CHAIN_ELEMENTS))) or not node.name.startswith("analogize/"):
            continue
        _, site, *target, element = node.name.split("/")
        chain = chains.setdefault((site, "/".join(target)), {"site": site, "elements": []})
        if ranged:  # the chain's own input and output lie outside its range's Div and Mul
            chain["normalise" if node.op == "Div" else "rescale"] = node
            continue
        chain.setdefault("first", node)
        chain["last"] = node
        chain["elements"].append(node)
    ranges = {(site["site"], site["tensor"]): site["range"] for site in settings.get("ranges", [])}
    tensors = [_tensor_entry(chain, settings, convention, ranges) for chain in chains.values() if chain["elements"]]
    activations = [{"node": node.name or node.outputs[0].name, "op_type": node.op, "attributes": dict(node.attrs)}
                   for node in graph.nodes
                   if node.domain == DOMAIN and node.op not in ELEMENT_OF_OP
                   or node.op == "LeakyRelu" and settings.get("options", {}).get("activation") == "leaky"]
    if not tensors and not activations:
        raise AnalogizeError("the model has no analog chains or activations to export")
    return {"format": SPEC_FORMAT, "version": SPEC_VERSION, "settings": settings, "tensors": tensors,
            "activations": activations}


def _tensor_entry(chain: dict, settings: dict, convention: str, ranges: dict) -> dict:
    site = chain["site"]
    if site == "layer-output":
        tensor = chain.get("rescale", chain["last"]).outputs[0].name
    else:
        tensor = chain.get("normalise", chain["first"]).inputs[0].name
    entry = {"tensor": tensor, "site": site, "order": [ELEMENT_OF_OP[node.op] for node in chain["elements"]],
             "clamp": None, "precision": None, "bits": None, "integer_bits": None, "rounding": None,
             "std": 0.0, "ep": None, "seed": None,
             # the full scale r: clamp at +-r, steps of r / p, noise std * r (models converted before range
             # modes existed had the unit range)
             "range": ranges.get((site, tensor), {"mode": "unit"})}
    for node in chain["elements"]:
        values = node.attrs
        if node.op == "Clip":
            entry["clamp"] = list(CLAMP_RANGE)
        elif node.op in QUANTIZE_OPS:
            precision = values["precision"]
            entry.update(precision=precision, bits=precision_to_bits(precision, convention),
                         integer_bits=integer_bits(precision),
                         rounding="stochastic" if node.op == "StochasticReducePrecision"
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
    return entry


def analog_spec(model: onnx.ModelProto) -> dict:
    """The spec of a converted model: every analog tensor and activation, and convert's settings."""
    settings = exportable_settings(model)
    return describe(import_model(model), settings)
