"""How much of ONNX's own backend node tests the torch interpreter (:mod:`.onnx_torch`) passes.

Each node test case (``onnx/backend/test/data/node/<case>``) is a one-node model with its inputs and expected
outputs. A case counts for the op type of its single default-domain node; it runs through :class:`OnnxModule`
and its outputs must match the expected ones in shape, element type and value (floats within rtol 1e-4 /
atol 1e-5, NaN where NaN is expected; integers and booleans exactly). Cases the interpreter does not aim at
are skipped with the reason: tensors of types it does not run (strings, 2- and 4-bit types, float8, unsigned
types wider than 8 bits, which torch stores but has no CPU kernels for), sequence or optional values, nodes
in training mode, and two Resize cases whose expected outputs contradict the spec (see ``_AGAINST_SPEC``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from .onnx_torch import DTYPES, OnnxModule, array_to_torch

NODE_TESTS = Path(onnx.__file__).parent / "backend" / "test" / "data" / "node"

# the ops the interpreter commits to covering: what vision, sequence and transformer models exported to
# ONNX use (issue 16)
MODEL_OPS = (
    "Where", "Expand", "Gather", "GatherElements", "ScatterElements", "ScatterND", "Tile", "Einsum",
    "LayerNormalization", "Softmax", "LogSoftmax", "Erf", "GRU", "LSTM", "RNN", "Pad", "Upsample", "Resize",
    "TopK", "CumSum", "HardSigmoid", "HardSwish", "GlobalMaxPool", "Max", "Min", "Reciprocal", "ReduceMax",
    "ReduceMin", "ReduceSum", "ReduceMean", "ReduceProd", "ReduceL2", "Range", "Slice", "Mean", "Sqrt", "Pow",
    "Softplus", "Elu", "Selu", "PRelu", "LeakyRelu", "Sigmoid", "Tanh", "ArgMax", "ArgMin", "Equal", "Less",
    "Greater", "Not", "Cast", "Shape", "Size", "ConstantOfShape", "NonZero", "DepthToSpace", "SpaceToDepth",
    "InstanceNormalization", "BatchNormalization", "Conv", "ConvTranspose", "MatMul", "Gemm", "AveragePool",
    "MaxPool", "GlobalAveragePool", "Flatten", "Reshape", "Transpose", "Concat", "Split", "Squeeze", "Unsqueeze",
    "Identity", "Neg", "Abs", "Exp", "Log", "Floor", "Ceil", "Clip", "Relu")

RTOL, ATOL = 1e-4, 1e-5
# cases whose expected outputs were typed in to 4 decimals: compared at ONNX's own runner tolerance
_ROUNDED_EXPECTATIONS = {"test_averagepool_2d_ceil_last_window_starts_on_pad": 1e-3}
# cases whose expected outputs contradict the spec: ONNX's reference implementation that made them maps
# align_corners coordinates by the fractional output width (scale times input length) where the spec, ONNX
# Runtime and PyTorch use the output's length in elements
_AGAINST_SPEC = dict.fromkeys(
    ["test_resize_downsample_scales_linear_align_corners", "test_resize_downsample_scales_cubic_align_corners"],
    "expected outputs use a fractional output width for align_corners, against the spec and ONNX Runtime")


@dataclass
class OpCoverage:
    """One op type's cases by outcome: passed case names, and failed and skipped ones with the reason."""

    op_type: str
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def cases(self) -> int:
        return len(self.passed) + len(self.failed) + len(self.skipped)

    def as_dict(self) -> dict:
        return {"op": self.op_type, "cases": self.cases, "passed": len(self.passed), "failed": len(self.failed),
                "skipped": len(self.skipped), "failures": self.failed, "skips": self.skipped}


def node_cases(op_types=None, root: Path = NODE_TESTS) -> dict[str, list[Path]]:
    """The case folders per op type (all op types when ``op_types`` is None), in name order."""
    wanted = None if op_types is None else set(op_types)
    found: dict[str, list[Path]] = {op_type: [] for op_type in op_types or ()}
    for case in sorted(Path(root).iterdir()):
        model = case / "model.onnx"
        if not model.is_file():
            continue
        nodes = onnx.load(str(model), load_external_data=False).graph.node
        if len(nodes) != 1 or nodes[0].domain not in ("", "ai.onnx"):
            continue
        if wanted is None or nodes[0].op_type in wanted:
            found.setdefault(nodes[0].op_type, []).append(case)
    return found


def _why_out_of_scope(case: Path, model: onnx.ModelProto) -> str | None:
    if case.name in _AGAINST_SPEC:
        return _AGAINST_SPEC[case.name]
    node = model.graph.node[0]
    schema_inputs = [i.name for i in onnx.defs.get_schema(node.op_type).inputs]
    if any(a.name == "training_mode" and a.i for a in node.attribute) or any(
            name == "training_mode" and given for name, given in zip(schema_inputs, node.input)):
        return "training mode (the interpreter runs inference semantics)"
    for value in list(model.graph.input) + list(model.graph.output):
        if not value.type.HasField("tensor_type"):
            return f"{value.type.WhichOneof('value')} value {value.name!r} (the interpreter runs tensors)"
        element = value.type.tensor_type.elem_type
        if element not in DTYPES:
            name = onnx.TensorProto.DataType.Name(element)
            if name.startswith("FLOAT8") or name in ("UINT16", "UINT32", "UINT64"):
                return f"{name} tensors (torch stores them but has no CPU kernels for them)"
            return f"{name} tensors (torch has no such type)"
    return None


def _mismatch(name: str, actual, expected: torch.Tensor, rtol: float) -> str | None:
    if not isinstance(actual, torch.Tensor):
        return f"{name}: got {type(actual).__name__}, not a tensor"
    if actual.shape != expected.shape:
        return f"{name}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    if actual.dtype != expected.dtype:
        return f"{name}: type {actual.dtype}, expected {expected.dtype}"
    actual = actual.detach()
    if not actual.is_floating_point():
        different = int((actual != expected).sum())
        return f"{name}: {different} of {actual.numel()} values differ" if different else None
    actual, expected = actual.double().numpy(), expected.double().numpy()
    close = np.isclose(actual, expected, rtol=rtol, atol=ATOL, equal_nan=True)
    if close.all():
        return None
    worst = np.nanmax(np.abs(actual - expected)[~close])
    return f"{name}: {int((~close).sum())} of {close.size} values differ (largest difference {worst:.3g})"


def run_case(case: Path) -> tuple[str, str | None]:
    """One case's outcome, ``"passed"``, ``"failed"`` or ``"skipped"``, with the reason for the latter two."""
    model = onnx.load(str(case / "model.onnx"))
    why = _why_out_of_scope(case, model)
    if why:
        return "skipped", why
    data = case / "test_data_set_0"
    inputs = [array_to_torch(_read_tensor(data / f"input_{k}.pb")) for k in range(len(model.graph.input))]
    expected = [array_to_torch(_read_tensor(data / f"output_{k}.pb")) for k in range(len(model.graph.output))]
    try:
        with torch.no_grad():
            results = OnnxModule(model, native=False)(*inputs)
    except Exception as error:  # a case's failure is data for the table, whatever raised it
        return "failed", f"{type(error).__name__}: {(str(error).splitlines() or [''])[0]}"
    results = results if isinstance(results, tuple) else (results,)
    rtol = _ROUNDED_EXPECTATIONS.get(case.name, RTOL)
    problems = [_mismatch(value.name, actual, wanted, rtol)
                for value, actual, wanted in zip(model.graph.output, results, expected)]
    problems = [problem for problem in problems if problem]
    return ("failed", "; ".join(problems)) if problems else ("passed", None)


def _read_tensor(path: Path) -> np.ndarray:
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(tensor)


def coverage(op_types=None) -> dict[str, OpCoverage]:
    """Every node test case of ``op_types`` (default: all op types) run through the interpreter, per op type."""
    report = {}
    for op_type, folders in node_cases(op_types).items():
        report[op_type] = entry = OpCoverage(op_type)
        for folder in folders:
            outcome, reason = run_case(folder)
            if outcome == "passed":
                entry.passed.append(folder.name)
            else:
                getattr(entry, outcome)[folder.name] = reason
    return report
