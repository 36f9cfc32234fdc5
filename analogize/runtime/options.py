"""Session options and error types shared by every ONNX Runtime session the package makes."""
from __future__ import annotations

import onnxruntime as ort

ORT_ERRORS = tuple(getattr(ort.capi.onnxruntime_pybind11_state, name) for name in
                   ("Fail", "InvalidGraph", "InvalidArgument", "NotImplemented", "RuntimeException"))


def session_options(threads: int | None, library, optimise: bool = True) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # fatal only: a failing run or load is an exception the caller words as one line; ONNX Runtime's own log of
    # it (severity 3) was a second, longer line on stderr
    options.log_severity_level = 4
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if library is not None:
        options.register_custom_ops_library(str(library))
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return options
