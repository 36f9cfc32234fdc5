"""Native fused kernels of the analog op set for ONNX Runtime: generated, built, cached and located.

The per-element code of every op is traced from its formula in :mod:`analogize.ops` into C++ (float32
arithmetic in the formula's own order, so deterministic ops agree with the ONNX function bodies), and
compiled with the hand-written kernel framework in ``custom_ops/`` (ONNX Runtime's C ABI declared there,
counter-based random streams, threading through ONNX Runtime's pool) into one shared library. It is built on first
use with g++ and cached under ``$ANALOGIZE_CACHE`` (default ``~/.cache/analogize``), keyed by a hash of its
sources and flags, so a changed op set rebuilds it.

``native_library_path()`` returns the library; sessions made by :mod:`analogize.runtime` register it, and
users register it in their own sessions with ``SessionOptions.register_custom_ops_library(path)`` (``analogize native`` prints the path). Models
keep their function bodies, so they still run where the library is absent.
"""
from __future__ import annotations

import ctypes
import hashlib
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx
from onnx import helper

from .errors import AnalogizeError
from .ops import DOMAIN, OPS, OpSpec, TracedArithmetic

SOURCE_DIR = Path(__file__).resolve().parent.parent / "custom_ops"
LIBRARY_NAME = "libanalogize_ops.so"
CXX_FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-march=native", "-fno-math-errno", "-fno-trapping-math",
             # ONNX Runtime's Mul and Add round separately; a fused multiply-add would change the last bit (and
             # GCC 12's straight-line vectoriser emits vfmaddsub even under -ffp-contract=off)
             "-ffp-contract=off", "-fno-tree-slp-vectorize", "-fvisibility=hidden", "-pthread")
FUSED_DOMAIN = "ai.analogize.native"
RANDOM_NONE, RANDOM_NORMAL, RANDOM_UNIFORM = 0, 1, 2


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
    parts = ["// Generated from analogize/ops.py by analogize.native; do not edit.", "#pragma once", ""]
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
    header = generated_header()
    digest = hashlib.sha256()
    for path in _sources():
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(header.encode() + " ".join((compiler, *CXX_FLAGS, *((nvcc, *NVCC_FLAGS) if cuda else ()))).encode())
    digest.update(_host_isa().encode())
    target = _cache_dir() / digest.hexdigest()[:16] / (CUDA_LIBRARY_NAME if cuda else LIBRARY_NAME)
    if target.exists():
        return target
    try:
        return _compile(target, header, compiler, nvcc, verbose)
    except OSError as error:
        raise AnalogizeError(f"cannot build the native kernels in {target.parent} ({error.strerror or error}); "
                             f"set ANALOGIZE_CACHE to a writable directory") from None


def _compile(target: Path, header: str, compiler: str, nvcc: str | None, verbose: bool) -> Path:
    cuda = nvcc is not None
    target.parent.mkdir(parents=True, exist_ok=True)
    if verbose:
        print(f"analogize: building the native {'CPU and CUDA' if cuda else 'CPU'} kernels (first use) into "
              f"{target.parent} ...", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        work = Path(work)
        (work / "analogize_generated.h").write_text(header)
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
        os.replace(staged, target)  # atomic: a concurrent build leaves one complete library
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


# FusedChain step kinds: the StepKind enum of custom_ops/analogize_ops.cpp.
STEP_ANALOG, STEP_CLIP, STEP_RELU, STEP_LEAKY_RELU = 0, 1, 2, 3
MAX_STEP_ATTRIBUTES = 4  # kMaxAttributes in custom_ops/chain.h
MAX_CHAIN_STEPS = 32  # kMaxDeviceSteps in custom_ops/chain.h: what one GPU launch takes
_OP_INDEX = {name: index for index, name in enumerate(OPS)}  # the order of kOps


def _gated(spec: OpSpec) -> bool:
    return _kernel_source(0, spec)[2]


#: analog ops of one input, computed element by element (all but the gated ones)
ELEMENTWISE_OPS = {name for name, spec in OPS.items() if not _gated(spec)}


def _step(node, scalars: dict, straight_through_only: bool):
    """(kind, op index, parameters, seed) of a node FusedChain can take, or None."""
    attributes = {a.name: a for a in node.attribute}
    if any(a.type != onnx.AttributeProto.FLOAT for a in node.attribute):
        return None  # an INT seed or precision is invalid: the op's own kernel refuses it
    if node.domain == DOMAIN and node.op_type in ELEMENTWISE_OPS and len(node.input) == 1 and (
            OPS[node.op_type].straight_through or not straight_through_only):
        spec = OPS[node.op_type]
        values = []
        for attribute in spec.attributes:
            if attribute.name in attributes:
                values.append(attributes[attribute.name].f)
            elif attribute.required:
                return None  # left to the op's own kernel, which reports it
            else:
                values.append(math.nan if attribute.default is None else attribute.default)
        seed = attributes["seed"].f if "seed" in attributes else -1.0
        return STEP_ANALOG, _OP_INDEX[node.op_type], values, seed
    if node.domain not in ("", "ai.onnx"):
        return None
    if node.op_type == "Relu":
        return STEP_RELU, -1, [], -1.0
    if node.op_type == "LeakyRelu":
        return STEP_LEAKY_RELU, -1, [attributes["alpha"].f if "alpha" in attributes else 0.01], -1.0
    if node.op_type == "Clip" and not attributes:
        bounds = [(-math.inf, math.inf)[k] if len(node.input) <= k + 1 or not node.input[k + 1]
                  else scalars.get(node.input[k + 1]) for k in range(2)]
        if None not in bounds:
            return STEP_CLIP, -1, bounds, -1.0
    return None


def _names_read_in_subgraphs(graph) -> set:
    """Every name a node inside a control-flow body reads (values captured from outer graphs among them)."""
    names = set()
    for node in graph.node:
        for attribute in node.attribute:
            for body in [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs):
                names.update(name for inner in body.node for name in inner.input)
                names.update(value.name for value in body.output)
                names.update(_names_read_in_subgraphs(body))
    return names


def fuse_elementwise_chains(model, straight_through_only: bool = False) -> int:
    """Replace each run of two or more element-wise nodes (analog ops, Clip with constant bounds, Relu,
    LeakyRelu), where each feeds only the next, by one FusedChain node: one pass over memory instead of one
    per node, with the same numbers (each random step keeps its seed). Only for sessions that load the
    native library: the node has no function body.

    ``straight_through_only`` leaves out the analog ops whose training gradient is not the identity (the
    activations), so that a chain's gradient is the slope :class:`TorchChain` computes beside it."""
    import numpy as np
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    graph_inputs = {v.name for v in graph.input}  # an initializer that is also an input can be overridden
    scalars = {t.name: float(numpy_helper.to_array(t).reshape(-1)[0]) for t in graph.initializer
               if t.data_type == TensorProto.FLOAT and int(np.prod(t.dims)) == 1 and t.name not in graph_inputs}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    for name in _names_read_in_subgraphs(graph) | {v.name for v in graph.output}:
        uses[name] = uses.get(name, 0) + 2  # never fuse away a graph output or a value a subgraph reads
    consumer = {}
    for position, node in enumerate(graph.node):
        for name in node.input:
            consumer[name] = position
    steps = [_step(node, scalars, straight_through_only) for node in graph.node]
    taken = [False] * len(graph.node)
    replacement: dict[int, object] = {}
    fused = 0
    for start, node in enumerate(graph.node):
        if taken[start] or steps[start] is None:
            continue
        chain = [start]
        while len(chain) < MAX_CHAIN_STEPS:
            output = graph.node[chain[-1]].output[0]
            following = consumer.get(output)
            if uses.get(output) != 1 or following is None or steps[following] is None or taken[following] \
                    or graph.node[following].input[0] != output:
                break
            chain.append(following)
        # Analog ops take float32 only, so a chain with one of them is all float32, as FusedChain requires.
        if len(chain) < 2 or all(steps[p][0] != STEP_ANALOG for p in chain):
            continue
        for position in chain:
            taken[position] = True
        kinds, ops, parameters, seeds = [], [], [], []
        for position in chain:
            kind, op, values, seed = steps[position]
            kinds.append(kind)
            ops.append(op)
            parameters += list(values) + [0.0] * (MAX_STEP_ATTRIBUTES - len(values))
            seeds.append(seed)
        first, last = graph.node[chain[0]], graph.node[chain[-1]]
        replacement[start] = helper.make_node(
            "FusedChain", [first.input[0]], [last.output[0]], name=f"fused/{first.name or first.output[0]}",
            domain=FUSED_DOMAIN, kinds=kinds, ops=ops, parameters=parameters, seeds=seeds)
        fused += 1
    if not fused:
        return 0
    nodes = [replacement.get(position, node) for position, node in enumerate(graph.node)
             if position in replacement or not taken[position]]
    graph.ClearField("node")
    graph.node.extend(nodes)
    model.opset_import.append(helper.make_opsetid(FUSED_DOMAIN, 1))
    return fused


def chain_steps(node) -> list[tuple[int, str | None, list[float]]]:
    """A FusedChain node's steps as (kind, analog op name or None, parameters), for running them elsewhere."""
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    names = list(OPS)
    return [(kind, names[op] if kind == STEP_ANALOG else None,
             list(attributes["parameters"][k * MAX_STEP_ATTRIBUTES:(k + 1) * MAX_STEP_ATTRIBUTES]))
            for k, (kind, op) in enumerate(zip(attributes["kinds"], attributes["ops"]))]


class TorchChain:
    """A FusedChain of straight-through steps run in this process by the native library, on raw float32
    buffers: torch training's fused chains (:mod:`analogize.torch_ops` wraps it for autograd). Each step's
    random stream is keyed by ``seeds`` and advanced by the ``run`` each call passes."""

    _library: ctypes.CDLL | None = None

    def __init__(self, node, seeds: list[float]):
        library = self._load()
        attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        steps = len(attributes["kinds"])
        if not len(attributes["ops"]) == len(seeds) == steps or \
                len(attributes["parameters"]) != MAX_STEP_ATTRIBUTES * steps:
            raise AnalogizeError(f"{node.name}: kinds, ops and seeds must describe the same steps, with "
                                 f"{MAX_STEP_ATTRIBUTES} parameters each")
        self._handle = library.analogize_torch_chain_new(
            (ctypes.c_int64 * steps)(*attributes["kinds"]), (ctypes.c_int64 * steps)(*attributes["ops"]),
            (ctypes.c_float * len(attributes["parameters"]))(*attributes["parameters"]),
            (ctypes.c_float * steps)(*seeds), steps)
        if not self._handle:
            raise AnalogizeError(f"{node.name}: the native library cannot run this chain in training (an analog "
                                 f"op without a straight-through gradient, or an unknown step)")
        self._run = library.analogize_torch_chain_run
        self._free = library.analogize_torch_chain_free
        self._made_from = node, list(seeds)

    def __reduce__(self):  # copies and pickles build their own native chain, never share one
        return TorchChain, self._made_from

    @classmethod
    def _load(cls) -> ctypes.CDLL:
        if cls._library is None:
            library = ctypes.CDLL(str(native_library_path()))
            pointer, size = ctypes.c_void_p, ctypes.c_size_t
            library.analogize_torch_chain_new.restype = pointer
            library.analogize_torch_chain_new.argtypes = [pointer, pointer, pointer, pointer, size]
            library.analogize_torch_chain_run.restype = None
            library.analogize_torch_chain_run.argtypes = [pointer, pointer, pointer, pointer, size, ctypes.c_uint64,
                                                          ctypes.c_int]
            library.analogize_torch_chain_free.argtypes = [pointer]
            cls._library = library
        return cls._library

    def run(self, source: int, target: int, slope: int | None, count: int, run: int, threads: int) -> None:
        """Chain ``count`` floats at address ``source`` into ``target``; where ``slope`` is an address, the
        chain's training-time derivative goes there."""
        self._run(self._handle, source, target, slope, count, run, threads)

    def __del__(self):
        if getattr(self, "_handle", None):
            self._free(self._handle)
