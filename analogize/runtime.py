"""ONNX Runtime sessions as the package creates them: CPU provider, chosen thread count, quiet logging."""
from __future__ import annotations

import onnx
import onnxruntime as ort

from .errors import AnalogizeError


_ORT_ERRORS = tuple(getattr(ort.capi.onnxruntime_pybind11_state, name) for name in
                         ("Fail", "InvalidGraph", "InvalidArgument", "NotImplemented", "RuntimeException"))


def create_session(model: onnx.ModelProto | bytes, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session for ``model``; ``threads`` caps intra-op threads (workers share the cores)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    data = model if isinstance(model, bytes) else model.SerializeToString()
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except _ORT_ERRORS as error:
        raise AnalogizeError(f"ONNX Runtime cannot load the model: {str(error).splitlines()[0]}") from None


def run_session(session: ort.InferenceSession, outputs, feeds: dict) -> list:
    """``session.run`` with ONNX Runtime's failures (shape mismatches, kernel errors) as one-line errors."""
    try:
        return session.run(outputs, feeds)
    except (*_ORT_ERRORS, ValueError) as error:
        message = " ".join(str(error).split())
        raise AnalogizeError(f"ONNX Runtime failed to run the model: {message}") from None
