"""ONNX Runtime sessions as the package creates them: on the CPU or a CUDA GPU, chosen thread count, quiet
logging, and the native kernels registered (with element-wise chains fused) when the library can be built.

Set ``ANALOGIZE_NATIVE=0`` to run the ONNX function bodies instead.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from ..devices import gpu_index
from ..errors import AnalogizeError
from ..native.build import FUSED_DOMAIN, native_library_path
from ..native.fusion import fuse_model_chains
from ..ops.spec import DOMAIN
from .blocked_layout import blocked_layout_model
from .options import ORT_ERRORS, session_options

CUDA_PROVIDER = "CUDAExecutionProvider"
_NATIVE_UNAVAILABLE: dict[bool, str] = {}  # by whether the CUDA library was asked for: the reason, said once
_USABLE_GPUS: set[int] = set()  # those a probe session started the CUDA provider on, in this process


def native_enabled() -> bool:
    return os.environ.get("ANALOGIZE_NATIVE", "1") != "0"


def available_native_library(cuda: bool = False):
    """The native library's path, or None (saying why on stderr, once per process) where it cannot be built.

    ``cuda``: the library with CUDA kernels too; where it cannot be built, the CPU library, whose kernels give
    the same numbers and run on the CPU between the GPU's layers."""
    if cuda not in _NATIVE_UNAVAILABLE:
        try:
            return native_library_path(cuda=cuda)
        except AnalogizeError as error:
            _NATIVE_UNAVAILABLE[cuda] = str(error)
            fallback = "the analog ops run on the CPU kernels" if cuda else "using the ONNX function bodies"
            print(f"analogize: native {'CUDA ' if cuda else ''}kernels unavailable ({error}); {fallback}",
                  file=sys.stderr)
    return available_native_library() if cuda else None


def kernels_in_use() -> str:
    """Which implementation of the analog ops sessions run: their noise streams differ, so results say it.
    (The CUDA kernels draw the CPU kernels' streams: both are "native".)"""
    return "native" if native_enabled() and available_native_library() is not None else "function-bodies"


def create_session(model: onnx.ModelProto | bytes, threads: int | None = None, native: bool | None = None,
                   blocked_layout: bool = True, device: str = "cpu") -> ort.InferenceSession:
    """A session for ``model`` on ``device`` (``cpu``, ``cuda`` or ``cuda:N``: ONNX Runtime's CUDA provider,
    the CPU one after it for what CUDA lacks); ``threads`` caps intra-op threads (workers share the cores).

    ``native`` (default: unless ``ANALOGIZE_NATIVE=0``) registers the native kernels for models with analog
    ops (their CUDA kernels too on a GPU) and fuses their element-wise chains; ``blocked_layout`` then lets
    convolutions with analog weights run in ONNX Runtime's blocked CPU layout
    (:mod:`analogize.runtime.blocked_layout`) where it applies.
    """
    check_cuda_usable(device)
    gpu = gpu_index(device)
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(model)
    wanted = native_enabled() if native is None else native
    library = available_native_library(cuda=gpu is not None) \
        if wanted and any(n.domain in (DOMAIN, FUSED_DOMAIN) for n in proto.graph.node) else None
    providers = ["CPUExecutionProvider"] if gpu is None else [(CUDA_PROVIDER, {"device_id": gpu}),
                                                              "CPUExecutionProvider"]
    if library is not None:
        proto, _ = fuse_model_chains(proto)  # a new model where chains fuse: the caller's stays as it is
        blocked = blocked_layout_model(proto, session_options(threads, library)) \
            if blocked_layout and gpu is None else None
        if blocked is not None:
            try:  # optimised already, for this machine
                return ort.InferenceSession(blocked.SerializeToString(), session_options(threads, library, False),
                                            providers=providers)
            except ORT_ERRORS:
                pass  # the plain graph below loads, or says what is wrong
    try:
        session = ort.InferenceSession(proto.SerializeToString(), session_options(threads, library),
                                       providers=providers)
    except ORT_ERRORS as error:
        raise AnalogizeError(f"ONNX Runtime cannot load the model: {str(error).splitlines()[0]}") from None
    if gpu is not None and session.get_providers()[0] != CUDA_PROVIDER:  # ONNX Runtime fell back to the CPU
        raise AnalogizeError(_cuda_unusable(device, "the session started without it"))
    return session


def check_cuda_usable(device: str) -> None:
    """Refuse, in one line saying why, a CUDA ``device`` that ONNX Runtime cannot run sessions on here: no CUDA
    provider in this build, or one that does not start (no GPU, driver or CUDA libraries). ONNX Runtime then
    falls back to the CPU without an error, so a probe session is made once per GPU and process."""
    gpu = gpu_index(device)
    if gpu is None or gpu in _USABLE_GPUS:
        return
    if CUDA_PROVIDER not in ort.get_available_providers():
        raise AnalogizeError(f"--device {device}: this onnxruntime ({ort.__version__}) has no CUDA execution "
                             f"provider; pip install onnxruntime-gpu in place of onnxruntime, or use --device cpu")
    probe = helper.make_model(helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "cuda-probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # not 4 as elsewhere: its logged errors, captured below, are the only cause given
    failure = None
    with _captured_output() as messages:
        if hasattr(ort, "preload_dlls"):  # the CUDA and cuDNN libraries of pip's nvidia packages (torch's)
            ort.preload_dlls()
        try:
            providers = ort.InferenceSession(probe.SerializeToString(), options, providers=[
                (CUDA_PROVIDER, {"device_id": gpu}), "CPUExecutionProvider"]).get_providers()
        except ORT_ERRORS as error:
            failure = _cause(str(error).splitlines()[0])
    if failure or providers[0] != CUDA_PROVIDER:
        raise AnalogizeError(_cuda_unusable(device, failure or _first_cause(messages)))
    _USABLE_GPUS.add(gpu)


def _cuda_unusable(device: str, reason: str) -> str:
    version = getattr(ort, "cuda_version", None) or "its"
    return (f"--device {device}: ONNX Runtime's CUDA provider does not start here ({reason}); run on a machine "
            f"with an NVIDIA GPU, its driver and the CUDA {version} and cuDNN 9 libraries, or use --device cpu")


@contextlib.contextmanager
def _captured_output():
    """Collect what is printed or warned (``preload_dlls``) and what ONNX Runtime logs to the stderr file
    descriptor (why its CUDA provider did not start: the only place it says so) instead of showing it; yields
    the list that receives the lines once the block ends."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    printed = io.StringIO()
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            log.seek(0)
            lines.extend(log.read().decode(errors="replace").splitlines() + printed.getvalue().splitlines())


_COLOUR = re.compile(r"\x1b\[[0-9;]*m")
# what onnxruntime's Python layer prints (between banners of asterisks) when a provider fails and it falls back
_FALLBACK_NOTICE = re.compile(r"EP Error:? (?P<error>.*?) (?:when )?using \[")


def _first_cause(lines: list[str]) -> str:
    """The cause in ONNX Runtime's messages: that of its first logged error, else of its Python layer's fallback
    notice, else of its first warning, else of the first message."""
    lines = [_COLOUR.sub("", line).strip() for line in lines]
    lines = [line for line in lines if line and not line.startswith("*")]  # the notice's banners
    for level in ("[E:", "EP Error", "[W:", ""):
        line = next((line for line in lines if level in line), None)
        if line is not None:
            notice = _FALLBACK_NOTICE.search(line)
            return _cause(notice["error"] if notice else line)
    return "ONNX Runtime gave no reason"


def _cause(message: str) -> str:
    """An ONNX Runtime message's last clause (``... : FAIL : what``), and of a library that failed to load,
    the loader's words."""
    clause = message.split("] ")[-1].split(" : ")[-1]
    return clause.rpartition("with error: ")[2].strip() or clause.strip()


def run_session(session: ort.InferenceSession, outputs, feeds: dict) -> list:
    """``session.run`` with ONNX Runtime's failures (shape mismatches, kernel errors) as one-line errors."""
    try:
        return session.run(outputs, feeds)
    except (*ORT_ERRORS, ValueError, RuntimeError) as error:  # RuntimeError: feeds its bindings cannot convert
        message = " ".join(str(error).split())
        raise AnalogizeError(f"ONNX Runtime failed to run the model: {message}") from None
