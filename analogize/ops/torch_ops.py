"""Torch versions of the analog op set, run from the same formulas as the ONNX function bodies.

Gradients follow the reference's training rules: activations are differentiated by autograd through their
formula (the analytic derivative, with R'(0) = alpha); ops marked straight-through (reduce-precision, noise)
pass the gradient unchanged; clamping is ``torch.clamp``, whose gradient is masked to the inclusive range.

A chain of straight-through ops, clamps and rectifiers (a FusedChain node of :mod:`analogize.native`) runs as
one native pass on CPU float32 tensors, which also writes the chain's slope for the backward pass: a dozen
small torch ops per chain cost more than the layers themselves in a small network.
"""
from __future__ import annotations

import torch
import torch.nn.functional as tf

from ..native import fusion
from ..native.build import StepKind
from ..native.torch_chain import TorchChain
from ..runtime import sessions
from .spec import OPS, OpSpec


class _TorchPrimitives:
    abs, sign, ceil, floor = staticmethod(torch.abs), staticmethod(torch.sign), staticmethod(torch.ceil), \
        staticmethod(torch.floor)
    erf, exp, sqrt, sigmoid = staticmethod(torch.erf), staticmethod(torch.exp), staticmethod(torch.sqrt), \
        staticmethod(torch.sigmoid)
    atan_within_one = staticmethod(torch.atan)

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


def _run_native(chain: TorchChain, x: torch.Tensor, run: int, with_slope: bool):
    """The chain's output on contiguous CPU float32 ``x``, and its slope when ``with_slope`` (else None)."""
    output = torch.empty_like(x)
    slope = torch.empty_like(x) if with_slope else None
    chain.run(x.data_ptr(), output.data_ptr(), None if slope is None else slope.data_ptr(), x.numel(), run,
              torch.get_num_threads())
    return output, slope


class _ChainWithSlope(torch.autograd.Function):
    """A native chain whose backward pass multiplies the gradient by the slope the chain wrote."""

    @staticmethod
    def forward(ctx, x, chain: TorchChain, run: int):
        output, slope = _run_native(chain, x, run, with_slope=True)
        ctx.save_for_backward(slope)
        return output

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.saved_tensors[0], None, None


class _StraightThroughFrom(torch.autograd.Function):
    @staticmethod
    def forward(ctx, count: int, *tensors):
        return tensors[count:]  # autograd returns them as views carrying this node

    @staticmethod
    def backward(ctx, *grads):
        return (None, *grads, *([None] * len(grads)))


def straight_through_from(sources: list[torch.Tensor], results: list[torch.Tensor]) -> list[torch.Tensor]:
    """``results`` (computed from ``sources`` element by element, without gradient) with each gradient passed
    unchanged to its source: one autograd node for all of them."""
    return list(_StraightThroughFrom.apply(len(sources), *sources, *results))


class FusedChain:
    """A FusedChain node in torch, with the training rules above: one native pass (``native_chain``, when
    ``native_wanted`` and the library can be built) for CPU float32 tensors, and the steps one by one in torch
    for any other tensor, or without the library. ``seeds`` key the native random streams."""

    def __init__(self, node, seeds: list[float], native_wanted: bool):
        self._made_from = node, seeds, native_wanted
        self.native_chain = TorchChain(node, seeds) if native_wanted and \
            sessions.available_native_library() is not None else None
        self.steps = []
        for kind, op_name, parameters in fusion.chain_steps(node):
            analog = None
            if op_name is not None:
                spec = OPS[op_name]
                analog = spec, {a.name: v for a, v in zip(spec.attributes, parameters) if a.name != "seed" and v == v}
            self.steps.append((kind, analog, parameters))

    def __reduce__(self):  # a copy builds its own native chain, or runs step by step where none can be built
        return FusedChain, self._made_from

    def __call__(self, x: torch.Tensor, run: int) -> torch.Tensor:
        """The chain on ``x``; native random steps draw from their streams at ``run``."""
        chain = self.native_chain
        if chain is None or x.device.type != "cpu" or x.dtype != torch.float32:
            return self.step_by_step(x)
        x = x.contiguous()
        if x.requires_grad and torch.is_grad_enabled():
            return _ChainWithSlope.apply(x, chain, run)
        return _run_native(chain, x, run, with_slope=False)[0]

    def step_by_step(self, x: torch.Tensor) -> torch.Tensor:
        for kind, analog, parameters in self.steps:
            if kind == StepKind.CLIP:
                x = torch.clamp(x, parameters[0], parameters[1])
            elif kind == StepKind.RELU:
                x = tf.relu(x)
            elif kind == StepKind.LEAKY_RELU:
                x = tf.leaky_relu(x, parameters[0])
            else:
                x = run_op(analog[0], x, None, analog[1])
        return x
