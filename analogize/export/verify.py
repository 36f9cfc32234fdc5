"""Checking an export against the noise-free simulation, each run by its consumer: ONNX Runtime, or the
``qonnx`` package's executor for a ``qonnx`` export."""
from __future__ import annotations

import numpy as np
import onnx

from ..errors import AnalogizeError
from ..model_io import copy_model
from ..passes.deterministic import noise_free
from .qonnx import QONNX_DOMAIN


def compare_outputs(reference: onnx.ModelProto, exported: onnx.ModelProto, inputs: np.ndarray) -> dict:
    """How far an export's outputs are from the noise-free simulation on real inputs (ties rounding apart).

    A ``qonnx`` export runs in the ``qonnx`` package's executor, the tool that reads that form; the others run
    in ONNX Runtime."""
    from ..data import InputSpec
    from ..runtime.sessions import create_session

    name = InputSpec.of(reference).name
    expected = create_session(noise_free(reference), native=False).run(None, {name: inputs})[0]
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
