"""The noise-free simulation: noise out, stochastic rounding made deterministic. Every export format starts
from it, export's verification runs it as the reference, and evaluate measures SNR against it."""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from ..native.fusion import unfuse_chains
from .attributes import round_deterministically
from .chains import remove_analog_chains
from .graph import import_model
from .model import export_with_functions


def make_deterministic(graph: gs.Graph) -> dict:
    """Take the noise elements out and turn stochastic reduce-precision into reduce-precision."""
    return {"noise_removed": remove_analog_chains(graph, ("noise",)), "rounded": round_deterministically(graph)}


def noise_free(model: onnx.ModelProto) -> onnx.ModelProto:
    """The converted model without its noise, still in the analog op set.

    Pipeline: import; :func:`~analogize.native.fusion.unfuse_chains` (a fast-form model's noise is inside its
    fused chains); :func:`make_deterministic`; :func:`~.model.export_with_functions` (ReducePrecision's body
    added, the noise's dropped)."""
    graph = import_model(model)
    unfuse_chains(graph)
    make_deterministic(graph)
    return export_with_functions(graph, model)
