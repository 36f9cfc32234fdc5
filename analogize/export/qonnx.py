"""``qonnx``: as ``qdq``, but each reduce-precision becomes one QONNX ``Quant`` node (domain
``qonnx.custom_op.general``; scale 1/p, or r / p where a static range folds in (:mod:`.folding`), zero point
0, signed narrow-range integers of the spec's ``integer_bits``, rounding HALF_DOWN). The form the ``qonnx``
package reads.

QONNX's HALF_DOWN, sign(v) * ceil(|v| - 0.5) with v = x / scale, is reduce-precision's own rounding, so a
``qonnx`` export agrees with the noise-free simulation on ties too.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..passes.graph import Names
from ..passes.model import inline_analog_functions, sync_analog_functions
from ..passes.deterministic import make_deterministic
from .folding import clamp_to_range, fold_static_ranges
from .quantizers import replace_quantizers, require_exact_quantizers
from .spec import integer_bits

TARGET = "QONNX Quant"
QONNX_DOMAIN = "qonnx.custom_op.general"  # imported at version 1, as export_model imports every new domain
# Quant carries its integers in float32 tensors, whose whole numbers are exact up to 2^24
QONNX_MAX_PRECISION = 2.0**24


def quant_node(names: Names, name: str, source: gs.Tensor, output: gs.Tensor, precision: float,
               scale: np.ndarray | None = None) -> list[gs.Node]:
    """One Quant node at ``scale`` (default 1/p; any shape that broadcasts), zero point 0, bit width
    :func:`~.spec.integer_bits` (all float32)."""
    parameters = {"scale": np.array(1.0 / precision if scale is None else scale, np.float32),
                  "zero_point": np.array(0.0, np.float32), "bit_width": np.array(integer_bits(precision), np.float32)}
    constants = [gs.Constant(names.unique(f"{output.name}::quant_{key}"), value) for key, value in parameters.items()]
    return [gs.Node("Quant", name=f"{name}/quant", domain=QONNX_DOMAIN,
                    attrs={"narrow": 1, "rounding_mode": "HALF_DOWN", "signed": 1},
                    inputs=[source, *constants], outputs=[output])]


def folded_quant(names: Names, prefix: str, source: gs.Tensor, output: gs.Tensor, precision: float,
                 scale: np.ndarray, axis, values) -> list[gs.Node]:
    """A ranged chain as one Quant at scale r / p (r's shape: per channel broadcasts), behind ``Clip(-r, r)``
    unless the source is a constant inside its range (a weight whose range is its own largest magnitude)."""
    nodes, current = [], source
    r = scale * np.float32(precision)
    if values is None or np.any(np.abs(values) > r):
        nodes, current = clamp_to_range(names, prefix, source, r)
    return nodes + quant_node(names, prefix, current, output, precision, scale)


def qonnx_passes(graph: gs.Graph) -> dict:
    """The graph passes, in order; returns the precisions the quantizers have and the ranges folded into them."""
    make_deterministic(graph)
    require_exact_quantizers(graph, TARGET, QONNX_MAX_PRECISION)
    ranges = fold_static_ranges(graph, folded_quant)
    return {"precisions": replace_quantizers(graph, quant_node) + [r["precision"] for r in ranges if r["folded"]],
            "ranges": ranges}


def qonnx_model_steps(model: onnx.ModelProto, state: dict | None = None) -> onnx.ModelProto:
    """The model-level steps after the export, in order: the bodies of the chain ops nothing calls any more go,
    and ONNX's inliner (which works on a ``ModelProto``) inlines the activations' bodies."""
    sync_analog_functions(model)
    return inline_analog_functions(model)
