"""The analog op set: every op's name, attributes, defaults, valid ranges, formula and doc, declared once.

A formula is a plain function ``formula(F, x, **attributes)`` written against a small namespace ``F`` of
primitives (``F.abs``, ``F.erf``, ``F.where``, ``F.normal_like`` ...) plus Python arithmetic on its values.
Each backend supplies its own ``F``:

- :mod:`analogize.ops.onnx_functions` traces the formula into an ONNX ``FunctionProto`` (the portable body
  every converted model carries);
- :mod:`analogize.ops.torch_ops` runs it on torch tensors, so autograd yields the analytic derivatives of the
  activations, and wraps ops marked ``straight_through`` with an identity gradient.

The conventions follow ``shared/reference/analog-semantics.md``; where that reference leaves a choice open
(the derivative of ReLU at 0), this module fixes it: ``R'(0) = alpha`` for every interpolation, because
``R`` is written as ``where(x > 0, x, alpha * x)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

DOMAIN = "ai.analogize"
DOMAIN_VERSION = 1


FLOAT32_LIMIT = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class Attribute:
    name: str
    doc: str
    default: Optional[float] = None  # None and not required: absent unless given
    minimum: float = -math.inf
    maximum: float = math.inf
    minimum_inclusive: bool = True
    required: bool = False

    def check(self, op_name: str, value) -> float:
        from ..errors import AnalogizeError

        if isinstance(value, bool) or not isinstance(value, (int, float)):
            value = math.nan
        stored = float(np.float32(value)) if abs(value) < FLOAT32_LIMIT else math.inf  # as the model file holds it
        low_ok = stored >= self.minimum if self.minimum_inclusive else stored > self.minimum
        if not math.isfinite(stored) or not low_ok or stored > self.maximum:
            bracket = "[" if self.minimum_inclusive else "("
            raise AnalogizeError(
                f"{op_name}.{self.name} must be a number in {bracket}{self.minimum}, {self.maximum}] that float32 "
                f"holds (models store attributes as float32), got {value!r}")
        return float(value)


@dataclass(frozen=True)
class OpSpec:
    name: str
    doc: str
    formula: Callable
    attributes: tuple[Attribute, ...] = ()
    #: training-time gradient is the identity (reduce-precision: the true gradient is zero almost everywhere;
    #: noise: x + n has gradient 1 anyway, and saying so lets training fuse it into native chains)
    straight_through: bool = False
    #: draws random numbers; results differ per run unless a seed is given
    random: bool = False
    equation: str = ""

    def attribute(self, name: str) -> Attribute:
        for attr in self.attributes:
            if attr.name == name:
                return attr
        raise KeyError(f"{self.name} has no attribute {name!r}")

    def resolve(self, **given) -> dict:
        """Validated attribute values with defaults filled in; optional ones left out when not given."""
        unknown = set(given) - {a.name for a in self.attributes}
        if unknown:
            from ..errors import AnalogizeError

            raise AnalogizeError(f"{self.name} has no attribute(s) {', '.join(sorted(unknown))}")
        values = {}
        for attr in self.attributes:
            value = given.get(attr.name, attr.default)
            if value is None and attr.required:
                from ..errors import AnalogizeError

                raise AnalogizeError(f"{self.name} needs attribute {attr.name!r}: {attr.doc}")
            if value is not None:
                values[attr.name] = attr.check(self.name, value)
        return values


class TracedArithmetic:
    """Python operators on a value traced through a formula, as ONNX op names: a backend implements
    ``_binary(op_type, other, reflected)`` (Add, Sub, Mul, Div, Greater, Less) and ``__neg__``."""

    def _binary(self, op_type: str, other, reflected: bool = False):
        raise NotImplementedError

    def __add__(self, other):
        return self._binary("Add", other)

    def __radd__(self, other):
        return self._binary("Add", other, True)

    def __sub__(self, other):
        return self._binary("Sub", other)

    def __rsub__(self, other):
        return self._binary("Sub", other, True)

    def __mul__(self, other):
        return self._binary("Mul", other)

    def __rmul__(self, other):
        return self._binary("Mul", other, True)

    def __truediv__(self, other):
        return self._binary("Div", other)

    def __rtruediv__(self, other):
        return self._binary("Div", other, True)

    def __gt__(self, other):
        return self._binary("Greater", other)

    def __lt__(self, other):
        return self._binary("Less", other)


SEED = Attribute("seed", "integer-valued seed of the random stream (a float, like RandomNormalLike's); "
                         "absent: fresh noise on every run", None)
PRECISION = Attribute("precision", "quantisation steps per unit p (levels on [-1, 1]: 2p + 1)", None, 1.0,
                      required=True)
FACTOR = Attribute("factor", "interpolation factor i: 0 is (leaky) ReLU, 1 is the smooth activation", 1.0, 0.0, 1.0)
SCALE = Attribute("scale", "input scale s of the smooth activation, f(x) = x * gate(s * x)", 1.0, 0.0,
                  minimum_inclusive=False)
ALPHA = Attribute("alpha", "negative slope of the rectifier R(x) = max(alpha * x, x)", 0.0, 0.0, 1.0)
TEMPERATURE = Attribute("temperature", "temperature T of z * gate(z / T)", 1.0, 0.0, minimum_inclusive=False)


def reduce_precision(F, x, precision, divide):
    return F.sign(x) * F.ceil(F.abs(x * precision) - divide) / precision


def stochastic_reduce_precision(F, x, precision, seed=None):
    scaled = F.abs(x * precision)
    lower = F.floor(scaled)
    rounded = F.where(F.uniform_like(x, seed) < scaled - lower, lower + 1.0, lower)
    return F.sign(x) * rounded / precision


def analog_noise(F, x, std, seed=None):
    return x + F.normal_like(x, std, seed)


def _rectifier(F, x, alpha):
    return F.where(x > 0.0, x, x * alpha)


def _interpolate(F, x, smooth, factor, alpha):
    rectified = _rectifier(F, x, alpha)
    return rectified + (smooth - rectified) * factor


def _gelu(F, x, scale):
    return x * (F.erf(x * (scale / math.sqrt(2.0))) + 1.0) * 0.5


def relu_gelu_interpolation(F, x, factor, scale, alpha):
    return _interpolate(F, x, _gelu(F, x, scale), factor, alpha)


def relu_silu_interpolation(F, x, factor, scale, alpha):
    return _interpolate(F, x, x * F.sigmoid(x * scale), factor, alpha)


def reglu_geglu_interpolation(F, x, factor, scale, alpha):
    value, gate = F.split_last_half(x)
    return value * relu_gelu_interpolation(F, gate, factor, scale, alpha)


def _at_most_20(F, u):
    """Where a gate is 1 in float32 and float64 alike: capping u keeps e^u finite, whose overflow would make the
    gradient through the untaken side NaN."""
    return F.where(u > 20.0, 20.0, u)  # NaN stays NaN, in values and gradients


def _mish_gate(e):
    """tanh(softplus(u)) with e = e^u: tanh(log(1 + e)) = n / (n + 2), n = e (e + 2); one exp and one division
    in place of exp, log and exp again, and accurate relative to the value for u far below 0."""
    n = e * (e + 2.0)
    return n / (n + 2.0)


def _guderman_gate(F, u):
    """1/2 + (2/pi) atan(tanh(u)) as (2/pi) atan(e^(2u)) (atan(tanh(u)) = atan(e^(2u)) - pi/4, the Gudermannian's
    two forms), and for u > 0 as 1 - (2/pi) atan(e^(-2u)) (atan(y) + atan(1/y) = pi/2): atan's argument
    e^(-2|u|) stays in (0, 1], so e^ never overflows, nothing cancels against 1/2 for u below 0, and atan needs no
    range reduction (a division in the native kernels). Both sides are the same analytic function, so autograd
    differentiates either exactly; at u = 0 the side taken is 2u's, whose slope is the gate's own (|u|'s would be
    0)."""
    gate_below_half = F.atan_within_one(F.exp(F.where(u > 0.0, u * -2.0, u * 2.0))) * (2.0 / math.pi)
    return F.where(u > 0.0, 1.0 - gate_below_half, gate_below_half)


# Gates a(u) of the smooth-ReLU family z * a(z / T) (seed 002, "critical initialisation" paper).
SMOOTH_GATES: dict[str, tuple[Callable, str]] = {
    "Swish": (lambda F, u: F.sigmoid(u), "1 / (1 + exp(-u))"),
    "Gelu": (lambda F, u: (F.erf(u * (1.0 / math.sqrt(2.0))) + 1.0) * 0.5, "Phi(u)"),
    "Gumbel": (lambda F, u: F.exp(-F.exp(-u)), "exp(-exp(-u))"),
    "Algebraic": (lambda F, u: (u / F.sqrt(u * u + 1.0) + 1.0) * 0.5, "(u / sqrt(u^2 + 1) + 1) / 2"),
    "Guderman": (_guderman_gate, "1/2 + (2/pi) atan(tanh(u))"),
    "Mish": (lambda F, u: _mish_gate(F.exp(_at_most_20(F, u))), "tanh(softplus(u))"),
}


def _smooth_formula(gate):
    def smooth(F, x, temperature):
        return x * gate(F, x / temperature)

    return smooth


def _declare() -> dict[str, OpSpec]:
    interp_attrs = (FACTOR, SCALE, ALPHA)
    specs = [
        OpSpec("ReducePrecision", "Round to the grid of step 1/p; exact halves go toward zero when divide = 0.5.",
               reduce_precision,
               (PRECISION, Attribute("divide", "rounding threshold d: round up when frac(|x p|) > d", 0.5, 0.0, 1.0)),
               straight_through=True, equation="sign(x) * ceil(|x p| - d) / p"),
        OpSpec("StochasticReducePrecision",
               "Unbiased stochastic rounding to the grid of step 1/p: up with probability frac(|x p|).",
               stochastic_reduce_precision, (PRECISION, SEED), straight_through=True, random=True,
               equation="sign(x) * (floor(|x p|) + [U < frac(|x p|)]) / p, U ~ Uniform(0, 1)"),
        OpSpec("AnalogNoise", "Additive Gaussian noise, applied in training and inference alike.", analog_noise,
               (Attribute("std", "standard deviation of the noise (> 0; leave the op out for none)", None, 0.0,
                          minimum_inclusive=False, required=True), SEED),
               straight_through=True, random=True, equation="x + N(0, std^2)"),
        OpSpec("ReluGeluInterpolation", "Linear interpolation between (leaky) ReLU and GELU with scale s.",
               relu_gelu_interpolation, interp_attrs,
               equation="R(x) + i (x Phi(s x) - R(x)), R(x) = x if x > 0 else alpha x"),
        OpSpec("ReluSiluInterpolation", "Linear interpolation between (leaky) ReLU and SiLU with scale s.",
               relu_silu_interpolation, interp_attrs,
               equation="R(x) + i (x sigmoid(s x) - R(x)), R(x) = x if x > 0 else alpha x"),
        OpSpec("ReGluGeGluInterpolation",
               "Gated unit: split the last axis into halves (a, b); a times the ReLU-GELU interpolation of b.",
               reglu_geglu_interpolation, interp_attrs, equation="a * I(b), (a, b) = split(x, 2, axis=-1)"),
    ]
    for gate_name, (gate, gate_equation) in SMOOTH_GATES.items():
        specs.append(OpSpec(f"Smooth{gate_name}", f"Smooth-ReLU family member {gate_name}LU with temperature T.",
                            _smooth_formula(gate), (TEMPERATURE,), equation=f"z * a(z / T), a(u) = {gate_equation}"))
    return {spec.name: spec for spec in specs}


OPS: dict[str, OpSpec] = _declare()


def markdown_reference() -> str:
    """The op-set reference page (``docs/ops.md`` is this text; a test keeps them equal)."""
    lines = [f"# The `{DOMAIN}` op set (version {DOMAIN_VERSION})", "",
             "Generated from `analogize/ops/spec.py` by `analogize ops --markdown`; do not edit by hand.", "",
             "Every op maps one float tensor `X` to one tensor `Y` and ships as an ONNX model-local function, "
             "so any ONNX runtime can execute it. Clamping uses the standard `Clip`.", ""]
    for spec in OPS.values():
        flags = [word for word, on in (("straight-through gradient", spec.straight_through),
                                        ("random", spec.random)) if on]
        lines += [f"## {spec.name}", "", spec.doc, "", f"`Y = {spec.equation}`" + (
            f" ({', '.join(flags)})" if flags else ""), "", "| attribute | default | range | meaning |",
                  "|---|---|---|---|"]
        for attr in spec.attributes:
            default = "required" if attr.required else ("absent" if attr.default is None else f"{attr.default:g}")
            low = "[" if attr.minimum_inclusive else "("
            lines.append(f"| `{attr.name}` | {default} | {low}{attr.minimum:g}, {attr.maximum:g}] | {attr.doc} |")
        lines.append("")
    return "\n".join(lines)
