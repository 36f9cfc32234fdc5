"""Native fused kernels of the analog op set for ONNX Runtime: generated, built, cached and located.

The per-element code of every op is traced from its formula in :mod:`analogize.ops.spec` into C++ (float32
arithmetic in the formula's own order, so deterministic ops agree with the ONNX function bodies), and
compiled with the hand-written kernel framework in ``custom_ops/`` (ONNX Runtime's C ABI declared there,
counter-based random streams, threading through ONNX Runtime's pool) into one shared library. It is built on first
use with g++ and cached under ``$ANALOGIZE_CACHE`` (default ``~/.cache/analogize``), keyed by a hash of its
sources and flags, so a changed op set rebuilds it.

``native_library_path()`` returns the library; sessions made by :mod:`analogize.runtime.sessions` register it, and
users register it in their own sessions with ``SessionOptions.register_custom_ops_library(path)`` (``analogize native`` prints the path). Models
keep their function bodies, so they still run where the library is absent.
"""
from __future__ import annotations

import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from enum import IntEnum
from pathlib import Path

from ..errors import AnalogizeError
from ..ops.spec import OPS, OpSpec, TracedArithmetic

SOURCE_DIR = Path(__file__).resolve().parents[2] / "custom_ops"
LIBRARY_NAME = "libanalogize_ops.so"
CXX_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-march=native", "-fno-math-errno", "-fno-trapping-math",
             # ONNX Runtime's Mul and Add round separately; a fused multiply-add would change the last bit (and
             # GCC 12's straight-line vectoriser emits vfmaddsub even under -ffp-contract=off)
             "-ffp-contract=off", "-fno-tree-slp-vectorize", "-fvisibility=hidden", "-pthread",
             # -march=native tunes the first Zen cores (znver1) for 128-bit vectors, their units' width; the chains
             # run 10-15 % faster there with 256-bit ones all the same (half the instructions), as on every other
             # x86 core with AVX2. The same IEEE operations per lane: the numbers do not change.
             *(("-mprefer-vector-width=256",) if platform.machine() in ("x86_64", "AMD64") else ()))
FUSED_DOMAIN = "ai.analogize.native"
RANDOM_NONE, RANDOM_NORMAL, RANDOM_UNIFORM = 0, 1, 2


class StepKind(IntEnum):
    """The steps of a FusedChain node, numbered as its ``kinds`` attribute numbers them. The C++ enum StepKind is
    generated from this (:func:`generated_steps_header`), so the two cannot drift apart."""

    ANALOG_OP = 0  # an op of the analog op set: its index in OPS is the step's entry in ``ops``
    CLIP = 1  # parameters: low, high
    RELU = 2
    LEAKY_RELU = 3  # parameters: alpha
    # A chain's full scale r, as convert's range nodes compute it: a RANGE step (first, parameters: the floor)
    # measures r = max(max |x| over each vector of the input, floor), the vector's axes given by the node's
    # ``range_axes`` (absent: all); without one, r is the node's second input (one value, or one per element).
    RANGE = 4
    NORMALISE = 5  # x / r
    RESCALE = 6  # x * r


MAX_STEP_ATTRIBUTES = 4  # parameters per step in a FusedChain's ``parameters``
MAX_CHAIN_STEPS = 32  # what one GPU launch takes: steps travel to the GPU by value


def _float_literal(value: float) -> str:
    """A float32 C++ literal that rounds exactly as ONNX's float32 Constant does."""
    import numpy as np

    as_float32 = float(np.float32(value))
    if math.isinf(as_float32):
        return "INFINITY" if as_float32 > 0 else "-INFINITY"
    return f"{as_float32.hex()}f"


class _Emitter:
    def __init__(self):
        self.lines: list[str] = []
        self.count = 0
        self.random = RANDOM_NONE
        self.gated = False

    def let(self, expression: str) -> "_CppValue":
        name = f"t{self.count}"
        self.count += 1
        self.lines.append(f"    const float {name} = {expression};")
        return _CppValue(self, name)

    def term(self, item) -> str:
        if isinstance(item, _CppValue):
            return item.name
        return _float_literal(float(item))


class _CppValue(TracedArithmetic):
    _SYNTAX = {"Add": "{} + {}", "Sub": "{} - {}", "Mul": "{} * {}", "Div": "{} / {}",
               "Greater": "({} > {}) ? 1.0f : 0.0f", "Less": "({} < {}) ? 1.0f : 0.0f"}

    def __init__(self, emitter: _Emitter, name: str):
        self.emitter, self.name = emitter, name

    def _binary(self, op_type, other, reflected=False):
        left, right = (other, self) if reflected else (self, other)
        return self.emitter.let(self._SYNTAX[op_type].format(self.emitter.term(left), self.emitter.term(right)))

    def __neg__(self):
        return self.emitter.let(f"-{self.name}")


class _CppPrimitives:
    """Element-wise C++ for each primitive; ``analogize_*`` helpers live in custom_ops/analogize_math.h."""

    def __init__(self, emitter: _Emitter):
        self._e = emitter

    def _call(function):
        return lambda self, x: self._e.let(f"{function}({self._e.term(x)})")

    # fabsf, ceilf, floorf and sqrtf are exact in IEEE arithmetic on both sides; the transcendental functions are
    # analogize_math.h's own, which vectorise and give CPU and CUDA the same numbers
    abs, sign, ceil, floor = _call("fabsf"), _call("analogize_sign"), _call("ceilf"), _call("floorf")
    erf, exp, sqrt, sigmoid = _call("analogize_erf"), _call("analogize_exp"), _call("sqrtf"), _call("analogize_sigmoid")
    atan_within_one = _call("analogize_atan_within_one")
    del _call

    def where(self, condition, if_true, if_false):
        e = self._e
        return e.let(f"({e.term(condition)} != 0.0f) ? {e.term(if_true)} : {e.term(if_false)}")

    def normal_like(self, x, std, seed):
        self._e.random = RANDOM_NORMAL
        return self._e.let(f"random * {self._e.term(std)}")

    def uniform_like(self, x, seed):
        self._e.random = RANDOM_UNIFORM
        return self._e.let("random")

    def split_last_half(self, x):
        self._e.gated = True
        return _CppValue(self._e, "x"), _CppValue(self._e, "gate")


def _kernel_source(index: int, spec: OpSpec) -> tuple[str, int, bool]:
    emitter = _Emitter()
    parameters = {a.name: _CppValue(emitter, f"attr[{k}]") for k, a in enumerate(spec.attributes)}
    result = spec.formula(_CppPrimitives(emitter), _CppValue(emitter, "x"), **parameters)
    body = "\n".join(emitter.lines)
    source = (f"// {spec.name}: Y = {spec.equation}\n"
              f"ANALOGIZE_HD float op_{index}(float x, float gate, const float* attr, float random) {{\n"
              f"    (void)gate; (void)attr; (void)random;\n{body}\n    return {emitter.term(result)};\n}}\n")
    return source, emitter.random, emitter.gated


def generated_header() -> str:
    """C++ for every op: its element function and its row in the table the library registers."""
    parts = ["// Generated from analogize/ops/spec.py by analogize.native.build; do not edit.", "#pragma once", ""]
    rows, loop_arguments = [], []
    for index, spec in enumerate(OPS.values()):
        source, random, gated = _kernel_source(index, spec)
        parts.append(source)
        loop_arguments.append(f"{'gates[i]' if gated else '0.0f'}, a, {'random[i]' if random else '0.0f'}")
        attributes = ", ".join(
            f'{{"{a.name}", {"NAN" if a.default is None else _float_literal(a.default)}, {int(a.required)}}}'
            for a in spec.attributes)
        rows.append(f'    {{"{spec.name}", {random}, {int(gated)}, {int(spec.straight_through)}, {len(spec.attributes)}, '
                    f'{{{attributes}}}}},')
    elements = [f"        case {k}: return op_{k}(x, gate, attr, random);" for k in range(len(loop_arguments))]
    parts += ["// One element of any op: the CUDA kernels' dispatch.",
              "ANALOGIZE_HD float apply_op_element(int op, float x, float gate, const float* attr, float random) {",
              "    switch (op) {", *elements, "        default: return x;", "    }", "}", ""]
    parts += ["#ifndef ANALOGIZE_DEVICE_ONLY  // the CPU side: the registration table and vectorisable loops",
              "static const OpDescription kOps[] = {", *rows, "};", ""]
    # One loop per op with its element function inlined, so the compiler can vectorise it.
    # Attributes are copied to locals first: the compiler cannot prove that ``values`` does not alias them.
    # Only the gated ops read gates[i], and only the random ones random[i]: the others' buffers stay unset.
    cases = [f"        case {k}: for (size_t i = 0; i < count; ++i) values[i] = op_{k}(values[i], {arguments}); return;"
             for k, arguments in enumerate(loop_arguments)]
    parts += ["static inline void apply_op(int op, float* __restrict values, const float* __restrict gates,",
              "                            const float* attr, const float* __restrict random, size_t count) {",
              "    (void)gates; (void)random;", "    const float a[4] = {attr[0], attr[1], attr[2], attr[3]};",
              "    switch (op) {", *cases, "        default: return;", "    }", "}", "#endif", ""]
    return "\n".join(parts)


def generated_steps_header() -> str:
    """C++ declarations of :class:`StepKind` and the chain limits, for custom_ops/chain.h."""
    kinds = ", ".join(f"k{''.join(word.capitalize() for word in kind.name.split('_'))} = {kind.value}"
                      for kind in StepKind)
    return "\n".join(["// Generated from analogize/native/build.py (StepKind); do not edit.", "#pragma once", "",
                      f"enum StepKind {{ {kinds} }};", f"constexpr int kMaxAttributes = {MAX_STEP_ATTRIBUTES};",
                      f"constexpr int kMaxDeviceSteps = {MAX_CHAIN_STEPS};", ""])


def _sources() -> list[Path]:
    if not SOURCE_DIR.is_dir():
        raise AnalogizeError(f"the native kernel sources ({SOURCE_DIR}) are missing; install analogize from its "
                             f"source tree (pip install -e .) to build them")
    return sorted(p for p in SOURCE_DIR.iterdir() if p.suffix in (".cpp", ".cu", ".h"))


def _cache_dir() -> Path:
    return Path(os.environ.get("ANALOGIZE_CACHE") or Path.home() / ".cache" / "analogize")


def _compiler() -> str:
    wanted = os.environ.get("CXX")
    compiler = shutil.which(wanted) if wanted else shutil.which("g++") or shutil.which("c++")
    if not compiler:
        raise AnalogizeError(f"no C++ compiler ({wanted or 'g++'}) found to build the native kernels; install g++ "
                             f"or set CXX (models still run through their function bodies)")
    return compiler


def _host_isa() -> str:
    """What -march=native compiles for: a cache shared between machines must not hand one another's code."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {flags}"


NVCC_FLAGS = ("-O3", "-std=c++17", "-Xcompiler", "-fPIC,-fvisibility=hidden",
              # the CPU kernels round every + and * separately; so must the GPU, for the same numbers
              "--fmad=false",
              "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
              "-gencode", "arch=compute_90,code=compute_90")
CUDA_LIBRARY_NAME = "libanalogize_ops_cuda.so"


def _nvcc() -> str:
    nvcc = shutil.which("nvcc") or shutil.which(str(Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin/nvcc"))
    if not nvcc:
        raise AnalogizeError("no CUDA compiler (nvcc) found to build the CUDA kernels; the CPU kernels need none")
    return nvcc


def _run(command: list[str]) -> None:
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        lines = finished.stderr.strip().splitlines()
        first_error = next((line for line in lines if "error" in line), lines[-1] if lines else "no message")
        raise AnalogizeError(f"building the native kernels failed ({Path(command[0]).name}): {first_error}")


def build(verbose: bool = True, cuda: bool = False) -> Path:
    """Build the library (with CUDA kernels too when ``cuda``) unless the cache holds one for these sources."""
    compiler = _compiler()
    nvcc = _nvcc() if cuda else None
    headers = {"analogize_generated.h": generated_header(), "analogize_steps.h": generated_steps_header()}
    digest = hashlib.sha256()
    for path in _sources():
        digest.update(path.name.encode() + path.read_bytes())
    for name, text in headers.items():
        digest.update(name.encode() + text.encode())
    digest.update(" ".join((compiler, *CXX_FLAGS, *((nvcc, *NVCC_FLAGS) if cuda else ()))).encode())
    digest.update(_host_isa().encode())
    target = _cache_dir() / digest.hexdigest()[:16] / (CUDA_LIBRARY_NAME if cuda else LIBRARY_NAME)
    _check_private(target)
    if _verified(target):
        return target
    try:  # absent, or truncated or altered since it was built: (re)build it
        return _compile(target, headers, compiler, nvcc, verbose)
    except OSError as error:
        raise AnalogizeError(f"cannot build the native kernels in {target.parent} ({error.strerror or error}); "
                             f"set ANALOGIZE_CACHE to a writable directory") from None


def _digest_file(target: Path) -> Path:
    return target.with_name(f"{target.name}.sha256")


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_private(target: Path) -> None:
    """Refuse a cache that someone else could have written: loading a library runs its code as this user."""
    uid = getattr(os, "getuid", lambda: None)()
    for path in (target, target.parent, target.parent.parent):
        try:
            status = path.stat()
        except OSError:  # absent (or under a file): nothing there to trust or distrust; building says why
            continue
        if (uid is not None and status.st_uid != uid) or status.st_mode & 0o022:
            raise AnalogizeError(f"the native kernel cache {path} is not yours or is writable by others, so a library "
                                 f"in it could run someone else's code; set ANALOGIZE_CACHE to a private directory")


def _verified(target: Path) -> bool:
    """Whether ``target`` is the library this cache built: its hash matches the one written beside it."""
    try:
        return _file_hash(target) == _digest_file(target).read_text().strip()
    except OSError:
        return False


def _compile(target: Path, headers: dict[str, str], compiler: str, nvcc: str | None, verbose: bool) -> Path:
    cuda = nvcc is not None
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if verbose:
        print(f"analogize: building the native {'CPU and CUDA' if cuda else 'CPU'} kernels (first use) into "
              f"{target.parent} ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        work = Path(work)
        for name, text in headers.items():
            (work / name).write_text(text)
        includes = [f"-I{work}", f"-I{SOURCE_DIR}"]
        staged = work / target.name
        if not cuda:
            _run([compiler, *CXX_FLAGS, *includes, str(SOURCE_DIR / "analogize_ops.cpp"), "-o", str(staged)])
        else:
            cpu_flags = [f for f in CXX_FLAGS if f != "-shared"]
            _run([compiler, *cpu_flags, "-DANALOGIZE_WITH_CUDA", *includes, "-c",
                  str(SOURCE_DIR / "analogize_ops.cpp"), "-o", str(work / "cpu.o")])
            _run([nvcc, *NVCC_FLAGS, *includes, "-c", str(SOURCE_DIR / "analogize_cuda.cu"), "-o", str(work / "cuda.o")])
            # the CUDA runtime linked statically: the library loads (and its CPU kernels run) without a GPU
            _run([nvcc, "-shared", "-cudart", "static", str(work / "cpu.o"), str(work / "cuda.o"), "-o", str(staged)])
        (work / "digest").write_text(_file_hash(staged) + "\n")
        os.replace(staged, target)  # atomic: a concurrent build leaves one complete library
        os.replace(work / "digest", _digest_file(target))  # last: a library without it is built again
    return target


_LIBRARIES: dict[bool, Path] = {}


def native_library_path(cuda: bool = False) -> Path:
    """The built native library for ONNX Runtime (building it on first use); AnalogizeError says why not.

    ``cuda`` asks for the library that also registers CUDA kernels (under the same op names, so it serves
    CPU sessions too); it needs nvcc to build and a GPU to run them.
    """
    if cuda not in _LIBRARIES or not _LIBRARIES[cuda].exists():
        _LIBRARIES[cuda] = build(cuda=cuda)
    return _LIBRARIES[cuda]
