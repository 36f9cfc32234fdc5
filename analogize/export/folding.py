"""Folding static full-scale ranges into the quantizers' scales, so that an export is an ordinary quantised model:
a chain ``Div(x, r) -> Clip(-1, 1) -> ReducePrecision(p) -> Mul(., r)`` whose range r is known at export time
(calibrated activations; weights and biases, whose range comes from their own values) becomes one quantizer of
scale s = r / p.

Why this is exact, not just close: with p a power of two (the default ``pow2`` bit convention), r / p is exact
in float32 and x / s = (x / r) * p exactly, so the quantizer sees the very number reduce-precision rounds; its
output q * s is (q / p) * r, the simulation's. A QONNX export therefore still equals the noise-free simulation
bit for bit, and a QDQ export differs only where QuantizeLinear rounds an exact tie to even. Weights in a QDQ
export become integer initializers rounded as the simulation rounds them, read by a per-axis
``DequantizeLinear``: the form ONNX Runtime's own quantiser writes. Activations keep their clamp as
``Clip(x, -r, r)`` in front of the quantizer (the integer types saturate at their own width, not at p).

Left as ``Div``, scale-1/p quantizer and ``Mul`` (the spec says why): dynamic ranges (computed per sample at
run time; QuantizeLinear takes one scale per tensor or per axis), precisions that are not powers of two (r / p
is rounded), ranges that vary along more than one axis, and chains without both a clamp and a reduce-precision.
"""
from __future__ import annotations

import math

import numpy as np
import onnx_graphsurgeon as gs

from ..passes.chains import CLAMP_BOUND_PREFIX, is_chain_element
from ..passes.graph import Names, known_values
from ..ranges.mapping import CONVERT_PREFIX
from .spec import QUANTIZE_OPS

_RANGE_STEPS = ("range_abs", "range_max", "range_floor")


def fold_static_ranges(graph: gs.Graph, quantizer) -> list[dict]:
    """Fold every static range into its chain's quantizer, in place; ``quantizer(names, name, source, output,
    precision, scale, axis, values)`` builds the nodes that replace the chain (``values``: the source's values
    when it is a constant). Returns one record per ranged chain: its tensor, and the scale or why it stayed."""
    names = Names(graph)
    by_name = {node.name: node for node in graph.nodes if node.name.startswith(CONVERT_PREFIX)}
    records, replaced, gone = [], {}, set()
    for node in graph.nodes:
        if node.op != "Div" or not node.name.startswith(CONVERT_PREFIX) or not node.name.endswith("/normalise"):
            continue
        prefix = node.name[: -len("/normalise")]
        rescale = by_name.get(f"{prefix}/rescale")
        if rescale is None:
            continue
        site = prefix.split("/")[1]
        tensor = rescale.outputs[0].name if site == "layer-output" else node.inputs[0].name
        elements = [by_name[f"{prefix}/{element}"] for element in ("clamp", "quantize")
                    if f"{prefix}/{element}" in by_name]
        plan = _plan(node, elements, rescale.outputs[0])
        if isinstance(plan, str):
            records.append({"tensor": tensor, "site": site, "folded": False, "why": plan})
            continue
        r, precision, axis = plan
        scale = (r / np.float32(precision)).astype(np.float32)
        source, output = node.inputs[0], rescale.outputs[0]
        chain = [node, *elements, rescale, *(by_name[f"{prefix}/{step}"] for step in _RANGE_STEPS
                                             if f"{prefix}/{step}" in by_name)]
        gone.update(id(member) for member in chain)
        replaced[id(node)] = quantizer(names, prefix, source, output, precision, scale, axis, known_values(source))
        values = scale.reshape(-1)
        records.append({"tensor": tensor, "site": site, "folded": True, "precision": precision, "axis": axis,
                        "scale": values.tolist() if axis is not None else float(values[0])})
    nodes = []
    for node in graph.nodes:
        if id(node) in replaced:
            nodes.extend(replaced[id(node)])
        elif id(node) not in gone:
            nodes.append(node)
    for node in graph.nodes:
        if id(node) in gone:
            node.inputs.clear()
            node.outputs.clear()
    graph.nodes = nodes
    return records


def _plan(normalise: gs.Node, elements: list[gs.Node], output: gs.Tensor) -> tuple[np.ndarray, float, int | None] | str:
    """(r, p, the axis r varies along or None) for the chain from ``normalise`` to ``output`` when it folds
    exactly and every consumer reads the result right, else why not."""
    kinds = [("clamp" if is_chain_element(node, ("clamp",)) else "quantize" if node.op in QUANTIZE_OPS else None)
             for node in elements]
    if kinds != ["clamp", "quantize"]:
        return "no clamp and reduce-precision to fold the range into"
    quantize = elements[1]
    precision = float(quantize.attrs["precision"])
    if precision <= 0 or 2.0 ** round(math.log2(precision)) != precision:
        return f"precision {precision:g} is not a power of two, so r / p is not exact in float32"
    r = _static_values(normalise.inputs[1])
    if r is None:
        return "dynamic range: r is computed per sample at run time"
    r = np.asarray(r, np.float32)
    if not np.all(np.isfinite(r)) or np.any(r <= 0) or \
            np.any((r / np.float32(precision)).astype(np.float32) * np.float32(precision) != r):
        return "r / p is not exact in float32 (a range near float32's smallest numbers)"
    varying = [k for k, size in enumerate(r.shape) if size > 1]
    if len(varying) > 1:
        return "the range varies along more than one axis"
    source = normalise.inputs[0]
    if known_values(source) is None and varying:
        return "a per-channel range on an activation"
    if varying and any(node.op == "ConvTranspose" for node in output.outputs):
        # ONNX Runtime reads it right, OpenVINO 2024-2025 does not (62 % of a test model's outputs off)
        return "per-channel ConvTranspose weights: a per-axis DequantizeLinear on axis 1 is misread by OpenVINO"
    return r, precision, varying[0] if varying else None


_RANGE_OPS = ("Abs", "Max", "ReduceMax")  # what a range expression is made of


def _static_values(tensor: gs.Tensor) -> np.ndarray | None:
    """The values of a range the graph computes from constants alone (Abs, ReduceMax, Max of a weight), or of
    a calibrated constant; None when they depend on the data. Only those three ops are followed up: following
    every producer walked each path up a dynamic range's activation, which never ended on a residual network
    (2^blocks paths)."""
    values = known_values(tensor)
    if values is not None or len(tensor.inputs) != 1 or tensor.inputs[0].op not in _RANGE_OPS:
        return values
    node = tensor.inputs[0]
    arguments = [_static_values(value) for value in node.inputs]
    if any(argument is None for argument in arguments):
        return None
    if node.op == "Abs":
        return np.abs(arguments[0])
    if node.op == "Max":
        largest = arguments[0]
        for argument in arguments[1:]:
            largest = np.maximum(largest, argument)
        return largest
    if node.op == "ReduceMax":
        axes = node.attrs.get("axes", arguments[1].tolist() if len(arguments) > 1 else None)
        keep = bool(node.attrs.get("keepdims", 1))
        return np.max(arguments[0], axis=None if axes is None else tuple(axes), keepdims=keep)
    return None


def simulated_integers(values: np.ndarray, r: np.ndarray, precision: float) -> np.ndarray:
    """The integers reduce-precision gives ``values`` in the range r (clamped, halves toward zero), computed in
    float32 as the op's function body computes them."""
    normalised = np.clip(values.astype(np.float32) / r, np.float32(-1), np.float32(1))
    steps = np.abs(normalised * np.float32(precision))
    return np.sign(normalised) * np.ceil(steps - np.float32(0.5))


def clamp_to_range(names: Names, prefix: str, source: gs.Tensor, r: np.ndarray) -> tuple[list[gs.Node], gs.Tensor]:
    """``Clip(source, -r, r)`` for a scalar r: the clamp, in the tensor's own units (its bounds carry the clamp
    prefix, so rebuild takes the clamp out with the others)."""
    value = float(np.asarray(r).reshape(-1)[0])
    bounds = [gs.Constant(names.unique(f"{CLAMP_BOUND_PREFIX}{bound}/{prefix}"), np.array(v, np.float32))
              for bound, v in (("min", -value), ("max", value))]
    clamped = gs.Variable(names.unique(f"{source.name}::clamped"))
    return [gs.Node("Clip", name=f"{prefix}/clamp", inputs=[source, *bounds], outputs=[clamped])], clamped
