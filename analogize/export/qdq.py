"""``qdq``: noise removed; each reduce-precision becomes QuantizeLinear -> DequantizeLinear with scale 1/p and
zero point 0 (int8 when p <= 127, else int16, which needs opset 21); clamps stay ``Clip``; activations are
decomposed into standard ops. Static ranges fold into the scales (:mod:`.folding`): weights become integer
initializers behind a per-axis DequantizeLinear at r / p, calibrated activations QuantizeLinear ->
DequantizeLinear at r / p. The form ONNX Runtime, OpenVINO and TensorRT read.

Rounding: reduce-precision sends exact halves toward zero, QuantizeLinear to even, so the two differ on inputs
that land exactly halfway between two levels; :func:`analogize.export.verify.compare_outputs` measures how
often that changes a model's outputs on real data.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..passes.graph import Names
from ..passes.model import default_opset, fit_opset, inline_analog_functions, sync_analog_functions
from ..passes.deterministic import make_deterministic
from .folding import clamp_to_range, fold_static_ranges, simulated_integers
from .quantizers import replace_quantizers, require_exact_quantizers

TARGET = "QDQ"
QDQ_INT16_OPSET = 21  # QuantizeLinear/DequantizeLinear take int16 from opset 21
QDQ_MAX_PRECISION = 32767  # int16 levels
INT8_MAX_PRECISION = 127


def _integer_type(precision: float):
    return np.int8 if precision <= INT8_MAX_PRECISION else np.int16


def qdq_pair(names: Names, name: str, source: gs.Tensor, output: gs.Tensor, precision: float) -> list[gs.Node]:
    """QuantizeLinear -> DequantizeLinear at scale 1/p, zero point 0 in the narrowest integer that holds p."""
    scale = gs.Constant(names.unique(f"{output.name}::qdq_scale"), np.array(1.0 / precision, np.float32))
    zero = gs.Constant(names.unique(f"{output.name}::qdq_zero_point"), np.array(0, _integer_type(precision)))
    quantized = gs.Variable(names.unique(f"{output.name}::quantized"))
    return [gs.Node("QuantizeLinear", name=f"{name}/quantize", inputs=[source, scale, zero], outputs=[quantized]),
            gs.Node("DequantizeLinear", name=f"{name}/dequantize", inputs=[quantized, scale, zero],
                    outputs=[output])]


def folded_qdq(names: Names, prefix: str, source: gs.Tensor, output: gs.Tensor, precision: float,
               scale: np.ndarray, axis, values) -> list[gs.Node]:
    """A ranged chain at scale s = r / p: a constant becomes integers rounded as the simulation rounds them,
    read by ``DequantizeLinear`` (per axis where r is per channel); an activation becomes ``Clip(-r, r)`` ->
    QuantizeLinear -> DequantizeLinear."""
    integer = _integer_type(precision)
    flat = scale.reshape(-1) if axis is not None else scale.reshape(())
    scale_tensor = gs.Constant(names.unique(f"{output.name}::qdq_scale"), np.array(flat, np.float32))
    zero = gs.Constant(names.unique(f"{output.name}::qdq_zero_point"), np.zeros(flat.shape, integer))
    attrs = {} if axis is None else {"axis": axis}
    r = scale * np.float32(precision)
    if values is not None:
        integers = gs.Constant(names.unique(f"{source.name}::quantized"),
                               simulated_integers(values, r, precision).astype(integer))
        return [gs.Node("DequantizeLinear", name=f"{prefix}/dequantize", attrs=attrs,
                        inputs=[integers, scale_tensor, zero], outputs=[output])]
    nodes, clamped = clamp_to_range(names, prefix, source, r)
    quantized = gs.Variable(names.unique(f"{output.name}::quantized"))
    return nodes + [
        gs.Node("QuantizeLinear", name=f"{prefix}/quantize", inputs=[clamped, scale_tensor, zero], outputs=[quantized]),
        gs.Node("DequantizeLinear", name=f"{prefix}/dequantize", inputs=[quantized, scale_tensor, zero],
                outputs=[output])]


def qdq_passes(graph: gs.Graph) -> dict:
    """The graph passes, in order; returns the precisions the quantizers have and the ranges folded into them."""
    make_deterministic(graph)
    require_exact_quantizers(graph, TARGET, QDQ_MAX_PRECISION)
    ranges = fold_static_ranges(graph, folded_qdq)
    return {"precisions": replace_quantizers(graph, qdq_pair) + [r["precision"] for r in ranges if r["folded"]],
            "ranges": ranges}


def qdq_model_steps(model: onnx.ModelProto, state: dict) -> onnx.ModelProto:
    """The model-level steps after the export, in order:

    - :func:`~analogize.passes.model.sync_analog_functions`: the bodies of the chain ops nothing calls any more
      go (function bodies are the model's ``FunctionProto`` messages);
    - :func:`~analogize.passes.model.inline_analog_functions`: the activations' bodies are inlined by ONNX's
      inliner, which works on a ``ModelProto``;
    - :func:`~analogize.passes.model.fit_opset` to 21 when a pair needs int16: ONNX's version converter works on
      whole models and refuses models with local functions, so it runs last, on the inlined model (it passes
      the int16 pairs through unchanged; its shape inference also records their types in ``value_info``).
    """
    sync_analog_functions(model)
    model = inline_analog_functions(model)
    if max(state["precisions"], default=0) > INT8_MAX_PRECISION and default_opset(model) < QDQ_INT16_OPSET:
        model, _ = fit_opset(model, minimum=QDQ_INT16_OPSET)
    return model
