"""``export``: a converted model as a deterministic graph in one of :data:`FORMATS`, plus its spec."""
from __future__ import annotations

import onnx

from ..errors import AnalogizeError
from ..native.fusion import unfuse_chains
from ..passes.graph import cycle_collection_paused, export_model, import_model
from .plain import plain_model_steps, plain_passes
from .qdq import qdq_model_steps, qdq_passes
from .qonnx import qonnx_model_steps, qonnx_passes
from .spec import EXPORT_KEY, describe, exportable_settings

FORMATS = ("qdq", "qonnx", "plain")
# format -> (its graph passes: graph -> state, its model-level steps after the export: (model, state) -> model)
_PIPELINES = {
    "qdq": (qdq_passes, qdq_model_steps),
    "qonnx": (qonnx_passes, qonnx_model_steps),
    "plain": (plain_passes, plain_model_steps),
}


def check_request(format: str, keep_noise: bool) -> None:
    if format not in FORMATS:
        raise AnalogizeError(f"unknown export format {format!r}: choose from {', '.join(FORMATS)}")
    if keep_noise and format != "plain":
        raise AnalogizeError("--keep-noise applies to --format plain only; hardware formats are deterministic")


@cycle_collection_paused()
def export(model: onnx.ModelProto, format: str = "qdq", keep_noise: bool = False) -> tuple[onnx.ModelProto, dict]:
    """The deterministic graph in ``format`` and the spec of the analog settings it came from.

    Pipeline:

    1. model level: :func:`check_request`; :func:`~.spec.exportable_settings` (the settings record is metadata);
    2. :func:`~analogize.passes.graph.import_model`;
    3. :func:`~analogize.native.fusion.unfuse_chains`: a fast-form file's fused chains, node by node again;
    4. :func:`~.spec.describe`: the spec, read before any other edit;
    5. the format's graph passes (:func:`~.qdq.qdq_passes`, :func:`~.qonnx.qonnx_passes`,
       :func:`~.plain.plain_passes`); the hardware formats fold static ranges into their scales
       (:mod:`.folding`), which the spec records per tensor;
    6. :func:`~analogize.passes.graph.export_model`;
    7. model level: the format's steps (function bodies, ONNX's inliner, the opset move: see each
       ``*_model_steps``), the format recorded in the metadata, ONNX's checker.
    """
    check_request(format, keep_noise)
    settings = exportable_settings(model)
    graph = import_model(model)
    unfuse_chains(graph)
    spec = describe(graph, settings)
    graph_passes, model_steps = _PIPELINES[format]
    state = graph_passes(graph, keep_noise=True) if keep_noise else graph_passes(graph)  # plain only
    _record_folded_ranges(spec, state.get("ranges", []))
    exported = model_steps(export_model(graph, model), state)
    exported.metadata_props.add(key=EXPORT_KEY, value=format)
    spec["export"] = {"format": format, "noise": "kept" if keep_noise else "removed"}
    try:
        onnx.checker.check_model(exported)
    except onnx.checker.ValidationError as error:  # a source graph out of order, which convert took as it was
        raise AnalogizeError(f"the exported model is not valid ONNX ({str(error).splitlines()[0]}); check that the "
                             f"source model is (onnx.checker.check_model), re-export it and convert it again") from None
    return exported, spec


def _record_folded_ranges(spec: dict, folds: list[dict]) -> None:
    """Each ranged tensor's entry says how its range reached the export: folded into the quantizer's scale
    (``scale``: r / p, one value or one per channel along ``axis``), or left as Div and Mul around it, and why."""
    by_tensor = {(fold["site"], fold["tensor"]): fold for fold in folds}
    for entry in spec["tensors"]:
        fold = by_tensor.get((entry["site"], entry["tensor"]))
        if fold is not None:
            entry["export_range"] = {key: fold[key] for key in ("folded", "scale", "axis", "why") if key in fold}
