"""ONNX Runtime sessions as the package creates them: CPU provider, chosen thread count, quiet logging, and
the native kernels registered (with element-wise chains fused) when the library can be built.

Set ``ANALOGIZE_NATIVE=0`` to run the ONNX function bodies instead.
"""
from __future__ import annotations

import os
import sys

import onnx
import onnxruntime as ort

from ..errors import AnalogizeError
from ..native.build import native_library_path
from ..native.fusion import fuse_model_chains
from ..ops.spec import DOMAIN
from .blocked_layout import blocked_layout_model
from .options import ORT_ERRORS, session_options

_NATIVE_UNAVAILABLE: list[str] = []  # the reason, once it is known; said once per process


def native_enabled() -> bool:
    return os.environ.get("ANALOGIZE_NATIVE", "1") != "0"


def available_native_library():
    """The native library's path, or None (saying why on stderr, once per process) where it cannot be built."""
    if _NATIVE_UNAVAILABLE:
        return None
    try:
        return native_library_path()
    except AnalogizeError as error:
        _NATIVE_UNAVAILABLE.append(str(error))
        print(f"analogize: native kernels unavailable ({error}); using the ONNX function bodies", file=sys.stderr)
        return None


def kernels_in_use() -> str:
    """Which implementation of the analog ops sessions run: their noise streams differ, so results say it."""
    return "native" if native_enabled() and available_native_library() is not None else "function-bodies"


def create_session(model: onnx.ModelProto | bytes, threads: int | None = None,
                   native: bool | None = None, blocked_layout: bool = True) -> ort.InferenceSession:
    """A CPU session for ``model``; ``threads`` caps intra-op threads (workers share the cores).

    ``native`` (default: unless ``ANALOGIZE_NATIVE=0``) registers the native kernels for models with analog
    ops and fuses their element-wise chains; ``blocked_layout`` then lets convolutions with analog weights run
    in ONNX Runtime's blocked layout (:mod:`analogize.runtime.blocked_layout`) where it applies.
    """
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(model)
    wanted = native_enabled() if native is None else native
    library = available_native_library() if wanted and any(n.domain == DOMAIN for n in proto.graph.node) else None
    if library is not None:
        proto, _ = fuse_model_chains(proto)  # a new model where chains fuse: the caller's stays as it is
        blocked = blocked_layout_model(proto, session_options(threads, library)) if blocked_layout else None
        if blocked is not None:
            try:  # optimised already, for this machine
                return ort.InferenceSession(blocked.SerializeToString(), session_options(threads, library, False),
                                            providers=["CPUExecutionProvider"])
            except ORT_ERRORS:
                pass  # the plain graph below loads, or says what is wrong
    try:
        return ort.InferenceSession(proto.SerializeToString(), session_options(threads, library),
                                    providers=["CPUExecutionProvider"])
    except ORT_ERRORS as error:
        raise AnalogizeError(f"ONNX Runtime cannot load the model: {str(error).splitlines()[0]}") from None


def run_session(session: ort.InferenceSession, outputs, feeds: dict) -> list:
    """``session.run`` with ONNX Runtime's failures (shape mismatches, kernel errors) as one-line errors."""
    try:
        return session.run(outputs, feeds)
    except (*ORT_ERRORS, ValueError, RuntimeError) as error:  # RuntimeError: feeds its bindings cannot convert
        message = " ".join(str(error).split())
        raise AnalogizeError(f"ONNX Runtime failed to run the model: {message}") from None
