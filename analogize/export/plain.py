"""``plain``: the analog op set inlined into standard ops; noise removed, or kept (``keep_noise``)."""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from ..passes.model import inline_analog_functions, sync_analog_functions
from ..passes.deterministic import make_deterministic


def plain_passes(graph: gs.Graph, keep_noise: bool = False) -> dict:
    """The graph passes: :func:`~analogize.passes.deterministic.make_deterministic` unless the noise stays, else none."""
    return {} if keep_noise else make_deterministic(graph)


def plain_model_steps(model: onnx.ModelProto, _=None) -> onnx.ModelProto:
    """The model-level steps after the export: the function bodies follow the nodes (ReducePrecision's added
    for rounded stochastic nodes, those nothing calls dropped), then ONNX's inliner, which works on a
    ``ModelProto``, expands every analog op into standard ops."""
    sync_analog_functions(model)
    return inline_analog_functions(model)
