"""Independent numpy statements of the reference semantics (shared/reference/analog-semantics.md), and
reference models built from the shipped one (tests and benches share them).

Written from the reference text, not from analogize.ops.spec, so tests compare two separate implementations.
"""
import math
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from scipy.special import erf, erfinv

SQRT2 = math.sqrt(2.0)


def reduce_precision(x, p, d=0.5):
    return np.sign(x) * np.ceil(np.abs(x * p) - d) / p


def clamp(x):
    return np.clip(x, -1.0, 1.0)


def ep_to_std(ep, p):
    return 1.0 / (2.0 * SQRT2 * p * erfinv(1.0 - ep))


def phi_cdf(x):
    return 0.5 * (1.0 + erf(x / SQRT2))


def phi_pdf(x):
    return np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def rectifier(x, alpha):
    return np.maximum(alpha * x, x)


def gelu_interp(x, i=1.0, s=1.0, alpha=0.0):
    r = rectifier(x, alpha)
    return r + i * (x * phi_cdf(s * x) - r)


def silu_interp(x, i=1.0, s=1.0, alpha=0.0):
    r = rectifier(x, alpha)
    return r + i * (x / (1.0 + np.exp(-s * x)) - r)


def rectifier_derivative(x, alpha):
    return alpha * (x <= 0) + 1.0 * (x > 0)


def gelu_interp_derivative(x, i=1.0, s=1.0, alpha=0.0):
    r = rectifier_derivative(x, alpha)
    return r + i * (phi_cdf(s * x) + s * x * phi_pdf(s * x) - r)


def silu_interp_derivative(x, i=1.0, alpha=0.0):
    r = rectifier_derivative(x, alpha)
    return r + i * (np.exp(x) * (1 + x + np.exp(x)) / (1 + np.exp(x)) ** 2 - r)


SMOOTH_GATES = {
    "Swish": lambda u: 1.0 / (1.0 + np.exp(-u)),
    "Gelu": phi_cdf,
    "Gumbel": lambda u: np.exp(-np.exp(-u)),
    "Algebraic": lambda u: (u / np.sqrt(u * u + 1.0) + 1.0) / 2.0,
    "Guderman": lambda u: 0.5 + (2.0 / math.pi) * np.arctan(np.tanh(u)),
    "Mish": lambda u: np.tanh(np.log1p(np.exp(u))),
}


def smooth(name, z, temperature=1.0):
    return z * SMOOTH_GATES[name](z / temperature)


def glu_interp(x, i=1.0, s=1.0, alpha=0.0):
    a, b = np.split(x, 2, axis=-1)
    return a * gelu_interp(b, i, s, alpha)


def clamp_then_reduce(x, p):
    """The noise-free DOA/AOD chain: clamp to [-1, 1], then reduce precision."""
    return reduce_precision(clamp(x), p)


def fragile_digits(outlier: float = 1000.0) -> onnx.ModelProto:
    """The shipped ConvNet with /2/Conv made fragile and its clean function kept: /0/Conv's channel 0 is dead
    (always 0 after its ReLU) and /2/Conv weighs that channel by an outlier, so /2/Conv's per-channel weight range
    is ``outlier`` times its real weights, which then round to zero."""
    model = onnx.load(Path(__file__).resolve().parents[1] / "models" / "digits_convnet.onnx")
    tensors = {tensor.name: tensor for tensor in model.graph.initializer}
    w0, b0, w2 = (numpy_helper.to_array(tensors[name]).copy() for name in ("0.weight", "0.bias", "2.weight"))
    w0[0], b0[0] = 0.0, -1.0
    w2[:, 0] = outlier * np.abs(w2).max()
    for name, values in (("0.weight", w0), ("0.bias", b0), ("2.weight", w2)):
        tensors[name].CopyFrom(numpy_helper.from_array(values.astype(np.float32), name))
    return model
