"""Torch versions of the analog op set, run from the same formulas as the ONNX function bodies.

Gradients follow the reference's training rules: activations are differentiated by autograd through their
formula (the analytic derivative, with R'(0) = alpha); ops marked straight-through (reduce-precision) pass
the gradient unchanged; additive noise has an identity gradient by construction; clamping is ``torch.clamp``,
whose gradient is masked to the inclusive range.
"""
from __future__ import annotations

import torch
import torch.nn.functional as tf

from .ops import OPS, OpSpec


class _TorchPrimitives:
    abs, sign, ceil, floor = staticmethod(torch.abs), staticmethod(torch.sign), staticmethod(torch.ceil), \
        staticmethod(torch.floor)
    erf, exp, sqrt, atan = staticmethod(torch.erf), staticmethod(torch.exp), staticmethod(torch.sqrt), \
        staticmethod(torch.atan)
    sigmoid, tanh, softplus = staticmethod(torch.sigmoid), staticmethod(torch.tanh), staticmethod(tf.softplus)

    def __init__(self, generator: torch.Generator | None = None):
        self.generator = generator

    @staticmethod
    def where(condition, if_true, if_false):
        return torch.where(condition, if_true, if_false)

    def normal_like(self, x, std, seed):
        return torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=self.generator) * std

    def uniform_like(self, x, seed):
        return torch.rand(x.shape, dtype=x.dtype, device=x.device, generator=self.generator)

    @staticmethod
    def split_last_half(x):
        return x.chunk(2, dim=-1)


class _StraightThrough(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, compute):
        return compute(x)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def apply_op(spec: OpSpec | str, x: torch.Tensor, generator: torch.Generator | None = None, **attributes):
    """Apply one op of the set to ``x``; ``attributes`` are validated and defaulted from its declaration."""
    spec = OPS[spec] if isinstance(spec, str) else spec
    return run_op(spec, x, generator, spec.resolve(**attributes))


def run_op(spec: OpSpec, x: torch.Tensor, generator: torch.Generator | None, values: dict):
    """:func:`apply_op` with ``values`` already resolved (validating once, not on every training step)."""
    if spec.random and generator is None and "seed" in values:
        generator = torch.Generator(device=x.device).manual_seed(int(values["seed"]))
    primitives = _TorchPrimitives(generator)

    def compute(tensor):
        return spec.formula(primitives, tensor, **values)

    if spec.straight_through:
        return _StraightThrough.apply(x, compute)
    return compute(x)


class AnalogOp(torch.nn.Module):
    """One op of the set as a module; a seeded random op keeps its stream, so each forward draws afresh."""

    def __init__(self, op_name: str, **attributes):
        super().__init__()
        self.spec = OPS[op_name]
        self.attributes = self.spec.resolve(**attributes)
        self._generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.random and "seed" in self.attributes and (
                self._generator is None or self._generator.device != x.device):
            self._generator = torch.Generator(device=x.device).manual_seed(int(self.attributes["seed"]))
        return run_op(self.spec, x, self._generator, self.attributes)

    def extra_repr(self) -> str:
        return f"{self.spec.name}, " + ", ".join(f"{k}={v:g}" for k, v in self.attributes.items())
