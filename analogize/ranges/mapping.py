"""The nodes that give a chain its full scale r: ``Div(x, r) -> chain -> Mul(., r)`` around the chain's
elements, with r one of

- ``Max(ReduceMax(Abs(t), axes, keepdims=1), MIN_RANGE)`` of the weight itself (weight modes, a constant
  expression ONNX Runtime folds once per session, and that training recomputes as the weights move) or of the
  chain's input at run time (``dynamic``);
- an initializer (``calibrated``), filled from calibration data by :mod:`analogize.ranges.calibration`.

Only standard ONNX ops, so the file runs the same in any runtime. ``unit`` inserts nothing: the chain is the
paper's, bit for bit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import AnalogizeError
from ..passes.graph import known_values, new_node, new_variable
from .modes import (ACTIVATION_RANGE_MODES, DEFAULT_ACTIVATION_RANGE, DEFAULT_WEIGHT_RANGE, MIN_RANGE,
                    UNSEEN_RANGE, WEIGHT_RANGE_MODES, WEIGHT_SITES)

CONVERT_PREFIX = "analogize/"  # the names of the nodes and constants convert adds
RANGE_NODE_SUFFIXES = ("range_abs", "range_max", "range_floor", "normalise", "rescale")
REDUCE_AXES_AS_INPUT_OPSET = 18  # ReduceMax takes its axes as an input from opset 18


@dataclass(frozen=True)
class RangeSettings:
    """The range mode of the weight sites (weights, biases) and of the activation sites."""

    weights: str = DEFAULT_WEIGHT_RANGE
    activations: str = DEFAULT_ACTIVATION_RANGE

    def __post_init__(self):
        for kind, modes, value in (("weight", WEIGHT_RANGE_MODES, self.weights),
                                   ("activation", ACTIVATION_RANGE_MODES, self.activations)):
            if value not in modes:
                raise AnalogizeError(f"unknown {kind} range {value!r}: choose from {', '.join(modes)}")

    def mode(self, site: str) -> str:
        return self.weights if site in WEIGHT_SITES else self.activations


UNIT_RANGES = RangeSettings("unit", "unit")


@dataclass(frozen=True)
class Scope:
    """Which values share one r: those that differ only along ``axes`` (None: the whole tensor)."""

    axes: tuple[int, ...] | None
    label: str


WHOLE_TENSOR = Scope(None, "per tensor")
PER_ELEMENT = Scope((), "per element")  # r = |x| itself


def per_sample(rank: int | None) -> Scope:
    return Scope(tuple(range(1, rank)), "per sample") if rank is not None and rank >= 2 else WHOLE_TENSOR


#: recurrent layers: their W [directions, gates x hidden, input] and R [directions, gates x hidden, hidden] are
#: rank 3 by the op's definition, one output channel (a gate unit) per row; X is [steps, batch, input] or, with
#: layout 1, [batch, steps, input]
RECURRENT_OPS = ("LSTM", "GRU", "RNN")


def einsum_axes(equation: str, weight_first: bool) -> dict | None:
    """For an Einsum of one activation and one constant operand: the axes each range reduces over, by site:
    the weight's contracted axes (one range per output channel), the data's contracted axes (one DAC gain per
    input vector), and the output axes that come from the weight (one ADC gain per output vector). None for
    equations with an ellipsis or without an explicit output, where the vectors cannot be read off."""
    text = equation.replace(" ", "")
    inputs, arrow, output = text.partition("->")
    terms = inputs.split(",")
    if not arrow or "." in text or len(terms) != 2:
        return None
    weight, data = (terms[0], terms[1]) if weight_first else (terms[1], terms[0])
    return {"weight": tuple(k for k, letter in enumerate(weight) if letter not in output),
            "data": tuple(k for k, letter in enumerate(data) if letter not in output),
            "output": tuple(k for k, letter in enumerate(output) if letter not in data)}


def weight_scope(mode: str, op: str, attrs: dict, shape, weight_first: bool) -> Scope:
    """The values of a layer's weight that share one conductance scale: all (``tensor``), or those of one output
    channel (``channel``): Conv [O, I, k...], ConvTranspose [I, O, k...], Gemm and MatMul by their operand
    order and transposition, a recurrent layer's W and R by row. A weight of unknown shape, or a grouped
    ConvTranspose (whose output channels interleave groups along two axes), takes one range, and the report says
    why."""
    rank = len(shape) if shape is not None else None
    if mode == "tensor" or rank is not None and rank < 2:
        return WHOLE_TENSOR
    if op in RECURRENT_OPS:  # exporters compute these weights (slices, concatenations): the shape is often unseen
        return Scope((2,), "per output channel")
    if op == "Einsum":
        axes = einsum_axes(attrs.get("equation", ""), weight_first)
        return Scope(None, "per tensor (an Einsum with an ellipsis)") if axes is None else \
            Scope(axes["weight"], "per output channel")
    if rank is None:
        return Scope(None, "per tensor (the weight's shape is unknown)")
    if op == "Conv":
        axes = tuple(range(1, rank))
    elif op == "ConvTranspose":
        if attrs.get("group", 1) != 1:
            return Scope(None, "per tensor (grouped ConvTranspose)")
        axes = (0, *range(2, rank))
    elif op == "Gemm":  # the output's rows come from A, its columns from B
        transposed = attrs.get("transA" if weight_first else "transB", 0)
        axes = ((0,) if transposed else (1,)) if weight_first else ((1,) if transposed else (0,))
    else:  # MatMul: W @ x has one output row per row of W, x @ W one column per column of W
        axes = (rank - 1,) if weight_first else (rank - 2,)
    return Scope(axes, "per output channel")


def activation_scope(op: str, attrs: dict, data_rank: int | None, weight_rank: int | None, weight_first: bool,
                     output: bool) -> Scope:
    """The values of a layer's input (or ``output``) vector that share one DAC (ADC) gain at run time: one
    pixel across channels for a convolution, one row of a Gemm or MatMul, one column where the weight comes
    first (its samples are columns), the whole vector where the data is one. A MatMul with a vector weight
    outputs one value per input vector, so each output value is its own range; where a weight-first MatMul's
    input rank is unknown, each value is too (a per-column range on a vector would not load). A recurrent layer
    reads one input vector per time step and sample."""
    if op in RECURRENT_OPS:
        return Scope((2,), "per time step")
    if op == "Einsum":
        axes = einsum_axes(attrs.get("equation", ""), weight_first)
        if axes is None:
            return per_sample(data_rank)
        return Scope(axes["output" if output else "data"], "per output vector" if output else "per input vector")
    if op in ("Conv", "ConvTranspose"):
        return Scope((1,), "per pixel")
    if op == "Gemm":
        if weight_first:  # Y = W B: B [K, N] (or [N, K] transposed) holds one sample per column of Y
            return Scope((0,), "per column") if output or not attrs.get("transB", 0) else Scope((1,), "per row")
        return Scope((0,), "per row") if attrs.get("transA", 0) and not output else Scope((1,), "per row")
    if output and weight_rank == 1:
        return PER_ELEMENT
    if data_rank is not None and data_rank < 2:
        return WHOLE_TENSOR
    if weight_first:
        return Scope((-2,), "per column") if data_rank is not None else \
            Scope((), "per element (the input's rank is unknown)")
    return Scope((-1,), "per row")


def is_range_node(node: gs.Node) -> bool:
    """Whether convert made ``node`` to compute a chain's range or map the chain to it."""
    return node.name.startswith(CONVERT_PREFIX) and node.name.rpartition("/")[2] in RANGE_NODE_SUFFIXES


def _weight_range(weight: np.ndarray, scope: Scope, name: str) -> dict:
    """The r a weight's range expression computes, for the report: one value, or the spread over channels."""
    axes = scope.axes if scope.axes is not None else tuple(range(weight.ndim))
    if weight.size == 0:
        return {"value": MIN_RANGE}
    largest = np.maximum(np.max(weight, axis=axes), -np.min(weight, axis=axes)).astype(np.float64)
    if not np.isfinite(largest).all():  # max and min carry a NaN or infinity through: no array-wide scan
        raise AnalogizeError(f"weight {name!r} holds NaN or infinite values, which give its range no size (the "
                             f"simulation would output NaN); fix the model's weights")
    largest = np.maximum(largest, MIN_RANGE)
    if largest.size == 1:
        return {"value": float(largest.reshape(-1)[0])}
    return {"min": float(largest.min()), "max": float(largest.max()), "channels": int(largest.size)}


class RangeBuilder:
    """Makes the nodes of each chain's range; shares one floor constant per graph."""

    def __init__(self, names, opset: int):
        self.names, self.opset = names, opset
        self._floor: gs.Constant | None = None

    def range_of(self, source: gs.Tensor, mode: str, scope: Scope, prefix: str) -> tuple[list, gs.Tensor, dict]:
        """(nodes computing r, r, the report's record of it)."""
        if mode == "calibrated":
            value = gs.Constant(self.names.unique(f"{prefix}/range"), np.array(UNSEEN_RANGE, np.float32))
            return [], value, {"mode": mode, "scope": WHOLE_TENSOR.label, "range_tensor": value.name}
        if self._floor is None:
            self._floor = gs.Constant(self.names.unique(f"{CONVERT_PREFIX}range_floor"),
                                      np.array(MIN_RANGE, np.float32))
        record = {"mode": mode, "scope": scope.label}
        values = known_values(source)
        if values is not None:
            record.update(_weight_range(values, scope, source.name))
        magnitude = new_variable(self.names.unique(f"{source.name}::abs"))
        largest = new_variable(self.names.unique(f"{source.name}::absmax"))
        value = new_variable(self.names.unique(f"{source.name}::range"))
        if scope.axes == ():  # each value its own range: no reduction
            nodes = [new_node("Abs", f"{prefix}/range_abs", inputs=[source], outputs=[magnitude]),
                     new_node("Max", f"{prefix}/range_floor", inputs=[magnitude, self._floor], outputs=[value])]
            return nodes, value, record
        reduce_inputs, reduce_attrs = [magnitude], {"keepdims": 1}
        if scope.axes is not None:
            if self.opset >= REDUCE_AXES_AS_INPUT_OPSET:
                reduce_inputs.append(gs.Constant(self.names.unique(f"{source.name}::range_axes"),
                                                 np.array(scope.axes, np.int64)))
            else:
                reduce_attrs["axes"] = list(scope.axes)
        nodes = [new_node("Abs", f"{prefix}/range_abs", inputs=[source], outputs=[magnitude]),
                 new_node("ReduceMax", f"{prefix}/range_max", attrs=reduce_attrs, inputs=reduce_inputs,
                          outputs=[largest]),
                 new_node("Max", f"{prefix}/range_floor", inputs=[largest, self._floor], outputs=[value])]
        return nodes, value, record

    def wrap(self, source: gs.Tensor, target: gs.Tensor, value: gs.Tensor, prefix: str):
        """The tensors a chain runs between inside ``Div(source, r) -> chain -> Mul(., r) -> target``, and the
        two nodes."""
        normalised = new_variable(self.names.unique(f"{target.name}::normalised"))
        scaled = new_variable(self.names.unique(f"{target.name}::unscaled"))
        return normalised, scaled, [
            new_node("Div", f"{prefix}/normalise", inputs=[source, value], outputs=[normalised]),
            new_node("Mul", f"{prefix}/rescale", inputs=[scaled, value], outputs=[target])]
