"""The noise-free simulation: noise out, stochastic rounding made deterministic. Every export format starts
from it, and :func:`analogize.export.verify.compare_outputs` runs it as the reference."""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from ..passes.attributes import round_deterministically
from ..passes.chains import remove_analog_chains
from ..passes.graph import export_model, import_model
from ..passes.model import sync_analog_functions


def make_deterministic(graph: gs.Graph) -> dict:
    """Take the noise elements out and turn stochastic reduce-precision into reduce-precision."""
    return {"noise_removed": remove_analog_chains(graph, ("noise",)), "rounded": round_deterministically(graph)}


def noise_free(model: onnx.ModelProto) -> onnx.ModelProto:
    """The converted model without its noise, still in the analog op set.

    Pipeline: import; :func:`make_deterministic`; export; :func:`~analogize.passes.model.sync_analog_functions`
    (model level: the function bodies follow the nodes, ReducePrecision's added, the noise's dropped)."""
    graph = import_model(model)
    make_deterministic(graph)
    deterministic = export_model(graph, model)
    sync_analog_functions(deterministic)
    return deterministic
