"""A converted (or clean) ONNX model as a trainable torch module: a compact interpreter of the graph.

Float initializers become parameters (BatchNormalization statistics and Clip bounds stay buffers). Weight
chains (clamp, reduce-precision, noise on the weights) run on every forward pass, so weight noise is drawn
afresh, and their gradient goes straight to the stored weights, clamp included (the reference's weight
path). On activations: straight-through reduce-precision, identity through noise, masked clamp. Analog
ops run through :mod:`analogize.ops.torch_ops` from the same formulas as their ONNX function bodies. Ops
follow ONNX's semantics at opset 13 or newer (older models are raised to 13 first, which turns Upsample
into Resize).

The interpreter runs the protobuf nodes, each decoded once (:class:`_Node`): a FusedChain node stays a
self-contained ``NodeProto``, which copies and pickles of the module rebuild their native chains from (a
graphsurgeon node would carry its whole graph along). The graph-level work, finding the weight path's chain
elements and fusing the chains, runs on graphsurgeon's IR (:mod:`analogize.passes`): one import, one export.

Coverage is measured against ONNX's own backend node tests (:mod:`.coverage`, ``bench/interpreter_coverage.py``).
Every case of the ops real models use (``coverage.MODEL_OPS``) passes, except these, out of scope:

- tensors of types the interpreter does not run (:data:`DTYPES`): strings and the 2- and 4-bit types have no
  torch type, and torch keeps unsigned types wider than 8 bits and the float8 types for storage, without CPU
  kernels (most Cast cases, and the uint16/32/64 cases of Max, Min, Pow, Equal, Less, Greater and TopK);
- BatchNormalization in training mode (fine-tuning trains the weights around it; its statistics stay fixed);
- sequence and optional values (Identity's ``identity_sequence`` and ``identity_opt``);
- Resize's ``downsample_scales_linear_align_corners`` and ``downsample_scales_cubic_align_corners``, whose
  expected outputs contradict the spec (below).

Resize runs every mode (nearest with each nearest_mode, linear, cubic with ``cubic_coeff_a`` and
``exclude_outside``, antialiasing) and every coordinate transformation mode (half_pixel, half_pixel_symmetric,
pytorch_half_pixel, align_corners, asymmetric, tf_crop_and_resize with its extrapolation value), with
``axes`` and ``keep_aspect_ratio_policy``. Coordinates follow the spec's formulas in float32, as ONNX Runtime
computes them; align_corners divides by the output's length in elements, as the spec, ONNX Runtime and
PyTorch do, where ONNX's reference implementation (and the two node tests made with it) divides by the
fractional scale times input length. Pad's negative pads crop before the other modes pad, as in ONNX Runtime.
Attribute values a handler does not implement (LSTM's ``input_forget``, GatherND's ``batch_dims``) fail when
the module is built, naming the node (:data:`ATTRIBUTE_VALUES`).

Existing converters were not used: onnx2torch imports torchvision, which has no CPU build here.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import torch
import torch.nn.functional as tf
from onnx import helper, numpy_helper
from torch import nn

from ..errors import AnalogizeError
from ..native.build import FUSED_DOMAIN
from ..native.fusion import fuse_elementwise_chains
from ..ops.onnx_functions import MIN_OPSET
from ..ops.spec import DOMAIN, OPS
from ..ops.torch_ops import FusedChain, run_op, straight_through_from
from ..passes.chains import CHAIN_ELEMENTS, is_chain_element
from ..passes.graph import export_model, import_model
from ..ranges.mapping import CONVERT_PREFIX, is_range_node
from ..passes.model import default_opset, fit_opset
from ..runtime import sessions as runtime

# the element types the interpreter runs: torch's unsigned types wider than 8 bits and its float8 types have
# (almost) no CPU kernels, and 2- and 4-bit types and strings have no torch type at all
DTYPES = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
          onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16,
          onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32,
          onnx.TensorProto.INT16: torch.int16, onnx.TensorProto.INT8: torch.int8,
          onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.BOOL: torch.bool}
HANDLERS: dict = {}

_AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
_SCATTER_REDUCTIONS = {"none": None, "add": "sum", "mul": "prod", "max": "amax", "min": "amin"}
# ONNX's recurrent activations: the function and the defaults of the alpha and beta it takes
_RNN_ACTIVATIONS = {
    "Relu": (torch.relu, ()), "Tanh": (torch.tanh, ()), "Sigmoid": (torch.sigmoid, ()),
    "Softsign": (tf.softsign, ()), "Softplus": (tf.softplus, ()),
    "LeakyRelu": (tf.leaky_relu, (0.01,)), "Elu": (tf.elu, (1.0,)),
    "ThresholdedRelu": (lambda x, alpha: torch.where(x > alpha, x, torch.zeros_like(x)), (1.0,)),
    "Affine": (lambda x, alpha, beta: alpha * x + beta, (1.0, 0.0)),
    "ScaledTanh": (lambda x, alpha, beta: alpha * torch.tanh(beta * x), (1.0, 1.0)),
    "HardSigmoid": (lambda x, alpha, beta: torch.clamp(alpha * x + beta, 0, 1), (0.2, 0.5))}
_RNN = {"direction": ("forward", "reverse", "bidirectional"), "layout": (0, 1), "activations": tuple(_RNN_ACTIVATIONS)}
# The attribute values the handlers implement, checked when the module is built: a model the interpreter cannot
# run fails before any training, naming its nodes. Attributes not listed take any value ONNX allows.
ATTRIBUTE_VALUES = {
    "Resize": {"mode": ("nearest", "linear", "cubic"),
               "coordinate_transformation_mode": ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel",
                                                  "align_corners", "asymmetric", "tf_crop_and_resize"),
               "nearest_mode": ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil"),
               "keep_aspect_ratio_policy": ("stretch", "not_larger", "not_smaller")},
    "Pad": {"mode": ("constant", "reflect", "edge", "wrap")},
    "DepthToSpace": {"mode": ("DCR", "CRD")},
    "ScatterElements": {"reduction": tuple(_SCATTER_REDUCTIONS)},
    "ScatterND": {"reduction": tuple(_SCATTER_REDUCTIONS)},
    "RNN": _RNN, "GRU": _RNN, "LSTM": {**_RNN, "input_forget": (0,)},
    "Conv": {"auto_pad": _AUTO_PADS}, "ConvTranspose": {"auto_pad": _AUTO_PADS},
    "AveragePool": {"auto_pad": _AUTO_PADS}, "MaxPool": {"auto_pad": _AUTO_PADS, "storage_order": (0, 1)},
    "Cast": {"to": tuple(DTYPES)},
    "Gelu": {"approximate": ("none", "tanh")},
    "GatherND": {"batch_dims": (0,)},
    "BatchNormalization": {"training_mode": (0,)},
}


def handles(*op_types):
    def register(function):
        for op_type in op_types:
            HANDLERS[op_type] = function
        return function

    return register


def array_to_torch(array: np.ndarray) -> torch.Tensor:
    """A numpy array as ONNX's numpy_helper gives it, as a torch tensor (numpy has no bfloat16 of its own)."""
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(array.copy())


class _Node:
    """What the interpreter needs of a node, decoded once."""

    def __init__(self, node: onnx.NodeProto):
        self.proto = node
        self.op_type, self.domain, self.name = node.op_type, node.domain, node.name or node.output[0]
        self.inputs, self.outputs = list(node.input), list(node.output)
        self.attributes = {}
        for attribute in node.attribute:
            value = helper.get_attribute_value(attribute)
            if isinstance(value, onnx.TensorProto):
                value = array_to_torch(numpy_helper.to_array(value))
            elif isinstance(value, bytes):
                value = value.decode()
            elif isinstance(value, list) and value and isinstance(value[0], bytes):
                value = [v.decode() for v in value]
            self.attributes[attribute.name] = value

    def get(self, name, default=None):
        return self.attributes.get(name, default)

    def wants(self, output: int) -> bool:
        return len(self.outputs) > output and bool(self.outputs[output])


def _attribute_problems(node: _Node) -> list[str]:
    problems = []
    for name, allowed in ATTRIBUTE_VALUES.get(node.op_type, {}).items():
        value = node.get(name)
        for item in value if isinstance(value, list) else [value]:
            if item is not None and item not in allowed:
                shown = [onnx.TensorProto.DataType.Name(v) for v in (item, *allowed)] if name == "to" else \
                    [item, *allowed]
                problems.append(f"{node.op_type} node {node.name!r} has {name}={shown[0]} (supported: "
                                f"{', '.join(map(str, shown[1:]))})")
    return problems


def _ints(tensor) -> list[int]:
    return [int(v) for v in torch.as_tensor(tensor).reshape(-1).tolist()]


def _padding(x, pads, spatial, value=0.0):
    """ONNX pads (all begins, then all ends) as symmetric torch padding, padding explicitly when uneven."""
    begins, ends = pads[:spatial], pads[spatial:]
    if begins == ends:
        return x, begins
    return tf.pad(x, _torch_pads(begins, ends), value=value), [0] * spatial


def _torch_pads(begins, ends) -> list[int]:
    """Per-axis begin and end pads, first axis first, in torch's order (last axis first, negative crops)."""
    flat = []
    for begin, end in zip(reversed(begins), reversed(ends)):
        flat += [begin, end]
    return flat


def _auto_pads(node, x, kernel, strides, dilations):
    mode = node.get("auto_pad", "NOTSET")
    spatial = x.dim() - 2
    if mode in ("NOTSET", ""):
        return list(node.get("pads", [0] * 2 * spatial))
    if mode == "VALID":
        return [0] * 2 * spatial
    pads_begin, pads_end = [], []
    for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        pads_begin.append(large if mode == "SAME_LOWER" else small)
        pads_end.append(small if mode == "SAME_LOWER" else large)
    return pads_begin + pads_end


@handles("Conv")
def _conv(node, x, w, b=None):
    spatial = x.dim() - 2
    strides = list(node.get("strides", [1] * spatial))
    dilations = list(node.get("dilations", [1] * spatial))
    x, padding = _padding(x, _auto_pads(node, x, w.shape[2:], strides, dilations), spatial)
    function = (tf.conv1d, tf.conv2d, tf.conv3d)[spatial - 1]
    return function(x, w, b, stride=strides, padding=padding, dilation=dilations, groups=node.get("group", 1))


@handles("ConvTranspose")
def _conv_transpose(node, x, w, b=None):
    spatial = x.dim() - 2
    strides = list(node.get("strides", [1] * spatial))
    dilations = list(node.get("dilations", [1] * spatial))
    extra = list(node.get("output_padding", [0] * spatial))
    full_sizes = [s * (n - 1) + (k - 1) * d + 1 for n, k, s, d in zip(x.shape[2:], w.shape[2:], strides, dilations)]
    output_shape, auto_pad = node.get("output_shape"), node.get("auto_pad", "NOTSET")
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER") and node.get("pads") is None:
        # the pads that give the asked-for size (SAME: input size times stride); negative ones extend the output
        wanted = list(output_shape)[-spatial:] if output_shape else [n * s for n, s in zip(x.shape[2:], strides)]
        totals = [full + e - size for full, e, size in zip(full_sizes, extra, wanted)]
        begins = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
        ends = [t - begin for t, begin in zip(totals, begins)]
    else:
        pads = [0] * 2 * spatial if auto_pad == "VALID" else list(node.get("pads", [0] * 2 * spatial))
        begins, ends = pads[:spatial], pads[spatial:]
    function = (tf.conv_transpose1d, tf.conv_transpose2d, tf.conv_transpose3d)[spatial - 1]
    if begins == ends and all(0 <= p for p in begins) and all(e < max(s, d) for e, s, d in
                                                              zip(extra, strides, dilations)):
        return function(x, w, b, stride=strides, padding=begins, output_padding=extra,
                        groups=node.get("group", 1), dilation=dilations)
    full = function(x, w, None, stride=strides, groups=node.get("group", 1), dilation=dilations)
    result = tf.pad(full, _torch_pads([-p for p in begins], [e - p for e, p in zip(extra, ends)]))
    return result if b is None else result + b.reshape(1, -1, *[1] * spatial)


@handles("Gemm")
def _gemm(node, a, b, c=None):
    alpha, beta = node.get("alpha", 1.0), node.get("beta", 1.0)
    if alpha == 1.0 and beta == 1.0 and node.get("transB", 0) and not node.get("transA", 0):
        return tf.linear(a, b, c)  # nn.Linear's form: one op
    a = a.transpose(-1, -2) if node.get("transA", 0) else a
    b = b.transpose(-1, -2) if node.get("transB", 0) else b
    result = alpha * (a @ b)
    return result if c is None else result + beta * c


def _pool_geometry(node, x, kernel, strides, dilations, pads):
    """ONNX's output sizes (ceil_mode included: the last window must start inside the input or its begin
    pad) and the pads past the end pad that the last window reaches."""
    spatial = x.dim() - 2
    sizes, overhang = [], []
    for axis in range(spatial):
        padded = x.shape[2 + axis] + pads[axis] + pads[spatial + axis]
        reach = (kernel[axis] - 1) * dilations[axis] + 1
        size = (padded - reach) / strides[axis] + 1
        if not node.get("ceil_mode", 0):
            size = math.floor(size)
        elif (math.ceil(size) - 1) * strides[axis] >= x.shape[2 + axis] + pads[axis]:
            size = math.ceil(size) - 1
        else:
            size = math.ceil(size)
        sizes.append(size)
        overhang.append(max((size - 1) * strides[axis] + reach - padded, 0))
    return sizes, overhang


def _first(sizes) -> tuple:
    """The index of the first ``sizes`` windows along each spatial axis (a window starting in the end pad,
    which ceil_mode leaves out, can fit the padded input)."""
    return (slice(None), slice(None), *(slice(0, size) for size in sizes))


def _window_sums(x, kernel, strides, dilations):
    """The sum of each pooling window, as a depthwise convolution with a kernel of ones."""
    spatial = x.dim() - 2
    flat = x.reshape(-1, 1, *x.shape[2:])
    ones = torch.ones((1, 1, *kernel), dtype=x.dtype)
    sums = (tf.conv1d, tf.conv2d, tf.conv3d)[spatial - 1](flat, ones, stride=strides, dilation=dilations)
    return sums.reshape(*x.shape[:2], *sums.shape[2:])


@handles("MaxPool", "AveragePool")
def _pool(node, x):
    spatial = x.dim() - 2
    kernel = list(node.get("kernel_shape"))
    strides = list(node.get("strides", [1] * spatial))
    dilations = list(node.get("dilations", [1] * spatial))
    pads = _auto_pads(node, x, kernel, strides, dilations)
    ceil_mode = bool(node.get("ceil_mode", 0))
    # torch's pools take symmetric pads up to half the window; its ceil mode ends windows as ONNX does, but
    # averages them over other counts, and its average pools have no dilation
    torch_pads = pads[:spatial] == pads[spatial:] and all(
        2 * p <= (k - 1) * d + 1 for p, k, d in zip(pads, kernel, dilations))
    if node.op_type == "MaxPool":
        function = (tf.max_pool1d, tf.max_pool2d, tf.max_pool3d)[spatial - 1]
        if torch_pads and not node.wants(1):
            return function(x, kernel, strides, pads[:spatial], dilations, ceil_mode=ceil_mode)
        return _max_pool_explicit(node, x, function, kernel, strides, dilations, pads)
    include_pad = bool(node.get("count_include_pad", 0))
    if torch_pads and not ceil_mode and dilations == [1] * spatial:
        function = (tf.avg_pool1d, tf.avg_pool2d, tf.avg_pool3d)[spatial - 1]
        return function(x, kernel, strides, pads[:spatial], count_include_pad=include_pad)
    sizes, overhang = _pool_geometry(node, x, kernel, strides, dilations, pads)
    padded = tf.pad(x, _torch_pads(pads[:spatial], [p + o for p, o in zip(pads[spatial:], overhang)]))
    # what each window averages over: the input, the pads when they count, never the overhang
    counted = tf.pad(torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype), _torch_pads(pads[:spatial], pads[spatial:]),
                     value=float(include_pad))
    counted = tf.pad(counted, _torch_pads([0] * spatial, overhang))
    averages = _window_sums(padded, kernel, strides, dilations) / _window_sums(counted, kernel, strides, dilations)
    return averages[_first(sizes)]


def _max_pool_explicit(node, x, function, kernel, strides, dilations, pads):
    """Max pooling over an explicitly padded input; with ONNX's Indices output, flat indices into the input
    (row-major, or column-major over the spatial axes with storage_order 1)."""
    spatial = x.dim() - 2
    sizes, overhang = _pool_geometry(node, x, kernel, strides, dilations, pads)
    values = x if x.is_floating_point() else x.double()  # the padding is -inf
    padded = tf.pad(values, _torch_pads(pads[:spatial], [p + o for p, o in zip(pads[spatial:], overhang)]),
                    value=-math.inf)
    result, positions = function(padded, kernel, strides, 0, dilations, return_indices=True)
    result, positions = result[_first(sizes)].to(x.dtype), positions[_first(sizes)]
    if not node.wants(1):
        return result
    coordinates = []
    for axis in reversed(range(spatial)):
        coordinates.insert(0, positions % padded.shape[2 + axis] - pads[axis])
        positions = positions // padded.shape[2 + axis]
    order = range(spatial) if node.get("storage_order", 0) else reversed(range(spatial))
    flat, stride = torch.zeros_like(coordinates[0]), 1
    for axis in order:
        flat, stride = flat + coordinates[axis] * stride, stride * x.shape[2 + axis]
    planes = torch.arange(x.shape[0] * x.shape[1]).reshape(*x.shape[:2], *[1] * spatial)
    return result, flat + planes * stride


@handles("GlobalAveragePool")
def _global_average(node, x):
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@handles("GlobalMaxPool")
def _global_max(node, x):
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@handles("BatchNormalization")
def _batch_norm(node, x, scale, bias, mean, var):
    return tf.batch_norm(x, mean, var, scale, bias, training=False, eps=node.get("epsilon", 1e-5))


@handles("InstanceNormalization")
def _instance_norm(node, x, scale, bias):
    return tf.instance_norm(x, weight=scale, bias=bias, eps=node.get("epsilon", 1e-5))


@handles("LayerNormalization")
def _layer_norm(node, x, scale, bias=None):
    axis = node.get("axis", -1) % x.dim()
    epsilon = node.get("epsilon", 1e-5)
    if not node.wants(1) and not node.wants(2) and scale.shape == x.shape[axis:]:
        return tf.layer_norm(x, x.shape[axis:], scale, bias, eps=epsilon)
    # statistics in float32 at least (stash_type 1, the only one ONNX defines)
    stash = x if node.get("stash_type", 1) != 1 or x.dtype == torch.float64 else x.float()
    axes = tuple(range(axis, x.dim()))
    mean = stash.mean(dim=axes, keepdim=True)
    inverse_deviation = torch.rsqrt((stash - mean).square().mean(dim=axes, keepdim=True) + epsilon)
    result = ((stash - mean) * inverse_deviation).to(x.dtype) * scale
    return (result if bias is None else result + bias), mean, inverse_deviation


@handles("LRN")
def _lrn(node, x):
    return tf.local_response_norm(x, node.get("size"), node.get("alpha", 1e-4), node.get("beta", 0.75),
                                  node.get("bias", 1.0))


@handles("Softmax")
def _softmax(node, x):
    return tf.softmax(x, dim=node.get("axis", -1))


@handles("LogSoftmax")
def _log_softmax(node, x):
    return tf.log_softmax(x, dim=node.get("axis", -1))


@handles("Relu")
def _relu(node, x):
    return tf.relu(x)


@handles("LeakyRelu")
def _leaky_relu(node, x):
    return tf.leaky_relu(x, node.get("alpha", 0.01))


@handles("Elu")
def _elu(node, x):
    return tf.elu(x, node.get("alpha", 1.0))


@handles("Selu")
def _selu(node, x):
    return node.get("gamma", 1.05070102214813232421875) * tf.elu(x, node.get("alpha", 1.67326319217681884765625))


@handles("PRelu")
def _prelu(node, x, slope):
    return torch.where(x < 0, x * slope, x)


@handles("HardSigmoid")
def _hard_sigmoid(node, x):
    return torch.clamp(node.get("alpha", 0.2) * x + node.get("beta", 0.5), 0, 1)


@handles("Gelu")
def _gelu(node, x):
    return tf.gelu(x, approximate=node.get("approximate", "none"))


@handles("Clip")
def _clip(node, x, low=None, high=None):
    return x if low is None and high is None else torch.clamp(x, low, high)


_ELEMENTWISE = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Equal": torch.eq, "Greater": torch.gt,
                "Less": torch.lt, "GreaterOrEqual": torch.ge, "LessOrEqual": torch.le, "MatMul": torch.matmul,
                "Erf": torch.erf, "Exp": torch.exp, "Sqrt": torch.sqrt, "Tanh": torch.tanh,
                "Sigmoid": torch.sigmoid, "Neg": torch.neg, "Abs": torch.abs, "Sign": torch.sign,
                "Ceil": torch.ceil, "Floor": torch.floor, "Round": torch.round, "Log": torch.log,
                "Reciprocal": torch.reciprocal, "Sin": torch.sin, "Cos": torch.cos, "Softplus": tf.softplus,
                "Softsign": tf.softsign, "HardSwish": tf.hardswish, "Not": torch.logical_not,
                "And": torch.logical_and, "Or": torch.logical_or, "Xor": torch.logical_xor}
for _op_type, _function in _ELEMENTWISE.items():
    HANDLERS[_op_type] = (lambda function: lambda node, *args: function(*args))(_function)


@handles("Div")
def _div(node, a, b):
    integer = not a.is_floating_point() and not b.is_floating_point()
    return torch.div(a, b, rounding_mode="trunc") if integer else a / b


@handles("Pow")
def _pow(node, base, exponent):
    return torch.pow(base, exponent).to(base.dtype)  # ONNX keeps the base's type, integer bases included


@handles("Where")
def _where(node, condition, a, b):
    return torch.where(condition, a, b)


@handles("Sum", "Mean")
def _sum(node, *values):
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total / len(values) if node.op_type == "Mean" else total


@handles("Max", "Min")
def _extreme(node, *values):
    pick = torch.maximum if node.op_type == "Max" else torch.minimum
    result = values[0]
    for value in values[1:]:
        result = pick(result, value)
    return result


@handles("Identity")
def _identity(node, x):
    return x


@handles("Dropout")
def _dropout(node, x, *ignored):
    """Inference: nothing dropped (the mask, where asked for, keeps everything)."""
    return (x, torch.ones_like(x, dtype=torch.bool)) if node.wants(1) else x


@handles("Flatten")
def _flatten(node, x):
    axis = node.get("axis", 1) % max(x.dim(), 1)
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


@handles("Reshape")
def _reshape(node, x, shape):
    shape = _ints(shape)
    if not node.get("allowzero", 0):
        shape = [x.shape[k] if s == 0 else s for k, s in enumerate(shape)]
    return x.reshape(shape)


@handles("Transpose")
def _transpose(node, x):
    return x.permute(node.get("perm", list(reversed(range(x.dim())))))


@handles("Concat")
def _concat(node, *values):
    return torch.cat(values, dim=node.get("axis"))


@handles("Split")
def _split(node, x, split=None):
    axis = node.get("axis", 0)
    if split is not None:
        return torch.split(x, _ints(split), dim=axis)
    parts = node.get("num_outputs", len(node.outputs))
    return torch.split(x, math.ceil(x.shape[axis] / parts), dim=axis)


@handles("Slice")
def _slice(node, x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = [a % x.dim() for a in _ints(axes)] if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    backwards = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        size = x.shape[axis]
        start, end = start + size if start < 0 else start, end + size if end < 0 else end
        if step > 0:
            index[axis] = slice(max(0, min(size, start)), max(0, min(size, end)), step)
        else:  # torch slices forwards only
            backwards.append((axis, torch.arange(max(-1, min(size - 1, start)), max(-1, min(size - 1, end)), step)))
    x = x[tuple(index)]
    for axis, positions in backwards:
        x = x.index_select(axis, positions)
    return x


@handles("Unsqueeze")
def _unsqueeze(node, x, axes=None):
    axes = sorted(a % (x.dim() + len(_ints(axes))) for a in _ints(axes)) if axes is not None else \
        sorted(node.get("axes"))
    for axis in axes:
        x = x.unsqueeze(axis)
    return x


@handles("Squeeze")
def _squeeze(node, x, axes=None):
    axes = _ints(axes) if axes is not None else node.get("axes")
    return x.squeeze() if axes is None else x.squeeze(tuple(a % x.dim() for a in axes))


def _non_negative(indices, size):
    return torch.where(indices < 0, indices + size, indices)


@handles("Gather")
def _gather(node, x, indices):
    axis = node.get("axis", 0) % x.dim()
    indices = _non_negative(indices, x.shape[axis])
    return torch.index_select(x, axis, indices.reshape(-1)).reshape(
        x.shape[:axis] + indices.shape + x.shape[axis + 1:])


@handles("GatherElements")
def _gather_elements(node, x, indices):
    axis = node.get("axis", 0) % x.dim()
    return torch.gather(x, axis, _non_negative(indices, x.shape[axis]))


@handles("GatherND")
def _gather_nd(node, x, indices):
    depth = indices.shape[-1]
    flat = indices.reshape(-1, depth)
    gathered = x[tuple(flat[:, k] for k in range(depth))]
    return gathered.reshape(indices.shape[:-1] + x.shape[depth:])


def _scatter(node, x, axis, indices, updates):
    reduction = _SCATTER_REDUCTIONS[node.get("reduction", "none")]
    if reduction is None:
        return x.scatter(axis, indices, updates)
    return x.scatter_reduce(axis, indices, updates, reduction, include_self=True)


@handles("ScatterElements")
def _scatter_elements(node, x, indices, updates):
    axis = node.get("axis", 0) % x.dim()
    return _scatter(node, x, axis, _non_negative(indices, x.shape[axis]), updates)


@handles("ScatterND")
def _scatter_nd(node, x, indices, updates):
    # the indexed leading axes as one: a scatter along axis 0 of the flattened data, one row per index tuple
    depth = indices.shape[-1]
    rows = torch.zeros(indices.shape[:-1], dtype=torch.int64)
    for axis in range(depth):
        rows = rows * x.shape[axis] + _non_negative(indices[..., axis], x.shape[axis])
    flat = x.reshape(-1, *x.shape[depth:]).flatten(1)
    updates = updates.reshape(rows.numel(), flat.shape[1])
    return _scatter(node, flat, 0, rows.reshape(-1, 1).expand_as(updates), updates).reshape(x.shape)


@handles("Tile")
def _tile(node, x, repeats):
    return x.repeat(_ints(repeats))


@handles("Einsum")
def _einsum(node, *values):
    return torch.einsum(node.get("equation").replace(" ", ""), *values)


@handles("TopK")
def _top_k(node, x, k):
    axis = node.get("axis", -1)
    # a stable sort keeps equal values in index order, as ONNX asks
    values, indices = torch.sort(x, dim=axis, descending=bool(node.get("largest", 1)), stable=True)
    count = _ints(k)[0]
    return values.narrow(axis, 0, count), indices.narrow(axis, 0, count)


@handles("ArgMax", "ArgMin")
def _arg_extreme(node, x):
    axis, keep = node.get("axis", 0) % x.dim(), bool(node.get("keepdims", 1))
    find = torch.argmax if node.op_type == "ArgMax" else torch.argmin
    if node.get("select_last_index", 0):
        return x.shape[axis] - 1 - find(x.flip(axis), dim=axis, keepdim=keep)
    return find(x, dim=axis, keepdim=keep)


@handles("CumSum")
def _cumsum(node, x, axis):
    axis = _ints(axis)[0] % x.dim()
    reverse = bool(node.get("reverse", 0))
    x = x.flip(axis) if reverse else x
    sums = x.cumsum(axis, dtype=x.dtype)
    if node.get("exclusive", 0):
        sums = torch.cat([torch.zeros_like(sums.narrow(axis, 0, 1)), sums.narrow(axis, 0, x.shape[axis] - 1)], axis)
    return sums.flip(axis) if reverse else sums


@handles("Range")
def _range(node, start, limit, delta):
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


@handles("Pad")
def _pad(node, x, pads, value=None, axes=None):
    axes = [a % x.dim() for a in _ints(axes)] if axes is not None else list(range(x.dim()))
    pads = _ints(pads)
    begins, ends = [0] * x.dim(), [0] * x.dim()
    for position, axis in enumerate(axes):
        begins[axis], ends[axis] = pads[position], pads[len(axes) + position]
    mode = node.get("mode", "constant")
    if mode == "constant":
        return tf.pad(x, _torch_pads(begins, ends), value=0 if value is None else value.item())
    # negative pads crop first (as ONNX Runtime does: wrap then reads the cropped tensor), then each output
    # position reads an input position: one gather per padded axis
    x = tf.pad(x, _torch_pads([min(b, 0) for b in begins], [min(e, 0) for e in ends]))
    for axis, (begin, end) in enumerate(zip(begins, ends)):
        if begin > 0 or end > 0:
            size = x.shape[axis]
            positions = torch.arange(-max(begin, 0), size + max(end, 0))
            if mode == "edge":
                positions = positions.clamp(0, size - 1)
            elif mode == "wrap":
                positions = positions.remainder(size)
            else:
                period = max(2 * (size - 1), 1)
                positions = positions.remainder(period)
                positions = torch.where(positions >= size, period - positions, positions)
            x = x.index_select(axis, positions)
    return x


def _resize_taps(node, ratios: np.ndarray, scale: float) -> np.ndarray:
    """The weights of the input points around each output point (ONNX's reference coefficients), from the
    fractional position ``ratios`` in (0, 1] of the output points between two input points."""
    mode, antialias = node.get("mode", "nearest"), node.get("antialias", 0) and scale < 1
    if mode == "nearest":
        rounding = node.get("nearest_mode", "round_prefer_floor")
        right = {"round_prefer_floor": ratios > 0.5, "round_prefer_ceil": ratios >= 0.5,
                 "floor": np.zeros_like(ratios, dtype=bool), "ceil": np.ones_like(ratios, dtype=bool)}[rounding]
        right = right | (ratios == 1)
        return np.stack([~right, right], axis=1).astype(np.float64)
    if mode == "linear" and not antialias:
        return np.stack([1 - ratios, ratios], axis=1)
    a = node.get("cubic_coeff_a", -0.75)

    def cubic(distance):
        distance = np.abs(distance)
        near = ((a + 2) * distance - (a + 3)) * distance * distance + 1
        far = ((a * distance - 5 * a) * distance + 8 * a) * distance - 4 * a
        return np.where(distance <= 1, near, np.where(distance < 2, far, 0.0))

    if not antialias:
        return cubic(np.stack([ratios + 1, ratios, 1 - ratios, 2 - ratios], axis=1))
    # antialiasing stretches the kernel by the downscale: more taps, each weighted by its scaled distance
    support = 1 if mode == "linear" else 2
    first = int(np.floor(-support / scale) + 1)
    distances = (np.arange(first, 2 - first)[None, :] - ratios[:, None]) * scale
    weights = np.clip(1 - np.abs(distances), 0, 1) if mode == "linear" else cubic(distances)
    return weights / weights.sum(axis=1, keepdims=True)


def _resize_axis(node, x, axis, scale, size, roi):
    """Resize along one axis (ONNX's Resize is separable), as a gather for nearest, else a matrix product."""
    length = x.shape[axis]
    # coordinates as the spec writes them, in float32 as ONNX Runtime computes them: an output point that
    # lands on an input point in exact arithmetic lands on the same side of it
    out, scale = np.arange(size, dtype=np.float32), np.float32(scale)
    mode = node.get("coordinate_transformation_mode", "half_pixel")
    outside = None
    if mode == "align_corners":
        source = out * np.float32(length - 1) / np.float32(max(size - 1, 1))
    elif mode == "asymmetric":
        source = out / scale
    elif mode == "tf_crop_and_resize":
        begin, end = np.float32(roi[0]), np.float32(roi[1])
        source = begin * (length - 1) + out * (end - begin) * (length - 1) / np.float32(size - 1) if size > 1 else \
            np.full(size, 0.5 * (begin + end) * (length - 1), dtype=np.float32)
        outside = (source < 0) | (source > length - 1)
    elif mode == "pytorch_half_pixel" and size == 1:
        source = np.zeros(1, dtype=np.float32)
    elif mode == "half_pixel_symmetric":
        offset = np.float32(length / 2) * (1 - np.float32(size) / (scale * length))
        source = offset + (out + np.float32(0.5)) / scale - np.float32(0.5)
    else:
        source = (out + np.float32(0.5)) / scale - np.float32(0.5)
    source = source.astype(np.float64)
    below = np.floor(source)
    # an output point on an input point takes it as the right one of its pair (ratio 1)
    ratios = np.where(source == below, 1.0, source - below)
    weights = _resize_taps(node, ratios, scale)
    taps = weights.shape[1]
    first = below.astype(np.int64) - taps // 2 + 1 - (source == below)
    points = first[:, None] + np.arange(taps)[None, :]
    if node.get("exclude_outside", 0):
        weights = np.where((points < 0) | (points >= length), 0.0, weights)
        weights = weights / np.where(weights.sum(axis=1, keepdims=True) == 0, 1, weights.sum(axis=1, keepdims=True))
    points = np.clip(points, 0, length - 1)
    if node.get("mode", "nearest") == "nearest":
        result = x.index_select(axis, torch.from_numpy(points[np.arange(size), weights.argmax(axis=1)]))
    else:
        matrix = np.zeros((size, length))
        np.add.at(matrix, (np.repeat(np.arange(size), taps), points.reshape(-1)), weights.reshape(-1))
        compute = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        result = (x.to(compute).movedim(axis, -1) @ torch.from_numpy(matrix).to(compute).T).movedim(-1, axis)
        if not x.is_floating_point():
            info = torch.iinfo(x.dtype)
            result = result.round().clamp(info.min, info.max)
        result = result.to(x.dtype)
    if outside is not None and outside.any():
        shape = [1] * x.dim()
        shape[axis] = size
        result = torch.where(torch.from_numpy(outside).reshape(shape),
                             torch.tensor(node.get("extrapolation_value", 0.0), dtype=result.dtype), result)
    return result


@handles("Resize")
def _resize(node, x, roi=None, scales=None, sizes=None):
    axes = [a % x.dim() for a in node.get("axes", range(x.dim()))]
    lengths = [x.shape[a] for a in axes]
    if sizes is not None and sizes.numel():
        wanted = _ints(sizes)
        factors = [w / n for w, n in zip(wanted, lengths)]
        policy = node.get("keep_aspect_ratio_policy", "stretch")
        if policy != "stretch":
            factor = min(factors) if policy == "not_larger" else max(factors)
            factors = [factor] * len(axes)
            wanted = [int(factor * n + 0.5) for n in lengths]
    elif scales is not None and scales.numel():
        factors = [float(v) for v in scales.reshape(-1).tolist()]
        # in float32, as ONNX Runtime computes it: floor(5 * 2.6f) is 13 there and 12 in float64
        wanted = [int(np.float32(f) * np.float32(n)) for f, n in zip(factors, lengths)]
    else:
        raise AnalogizeError(f"{node.name}: Resize needs scales or sizes")
    roi = [float(v) for v in roi.reshape(-1).tolist()] if roi is not None and roi.numel() else None
    for position, (axis, factor, size) in enumerate(zip(axes, factors, wanted)):
        interval = None if roi is None else (roi[position], roi[len(axes) + position])
        if math.isclose(factor, 1.0) and size == x.shape[axis] and (
                interval is None or math.isclose(interval[0], 0.0) and math.isclose(interval[1], 1.0)):
            continue
        x = _resize_axis(node, x, axis, factor, size, interval)
    return x


@handles("DepthToSpace")
def _depth_to_space(node, x):
    n, c, h, w = x.shape
    block = node.get("blocksize")
    if node.get("mode", "DCR") == "DCR":
        x = x.reshape(n, block, block, c // block ** 2, h, w).permute(0, 3, 4, 1, 5, 2)
    else:
        x = x.reshape(n, c // block ** 2, block, block, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c // block ** 2, h * block, w * block)


@handles("SpaceToDepth")
def _space_to_depth(node, x):
    n, c, h, w = x.shape
    block = node.get("blocksize")
    x = x.reshape(n, c, h // block, block, w // block, block).permute(0, 3, 5, 1, 2, 4)
    return x.reshape(n, c * block ** 2, h // block, w // block)


@handles("Shape")
def _shape(node, x):
    shape = torch.tensor(x.shape, dtype=torch.int64)
    return shape[node.get("start", 0):node.get("end", None)]


@handles("Size")
def _size(node, x):
    return torch.tensor(x.numel(), dtype=torch.int64)


@handles("NonZero")
def _non_zero(node, x):
    return torch.nonzero(x).t()


@handles("ConstantOfShape")
def _constant_of_shape(node, shape):
    value = node.get("value", torch.zeros(1))
    return torch.full(_ints(shape), value.reshape(-1)[0].item(), dtype=value.dtype)


@handles("Constant")
def _constant(node):
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in node.attributes:
            value = node.attributes[key]
            if key.startswith("value_int"):
                return torch.tensor(value, dtype=torch.int64)
            return value if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float32)
    raise AnalogizeError(f"{node.name}: Constant of this kind is not supported")


@handles("Cast")
def _cast(node, x):
    return x.to(DTYPES[node.get("to")])


@handles("CastLike")
def _cast_like(node, x, like):
    return x.to(like.dtype)


@handles("Expand")
def _expand(node, x, shape):
    return x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(shape))))


def _product(x, dims, keep):
    for dim in sorted(dims, reverse=True):
        x = x.prod(dim, keepdim=keep, dtype=x.dtype)
    return x


def _extreme_reduction(reduce, empty):
    """amax / amin, with ONNX's result over no elements (the identity: -inf / inf) where torch raises."""
    def extreme(x, dims, keep):
        if all(x.shape[d] for d in dims):
            return reduce(x, dim=dims, keepdim=keep)
        shape = [1 if d in dims else n for d, n in enumerate(x.shape) if keep or d not in dims]
        fill = empty if x.is_floating_point() else getattr(torch.iinfo(x.dtype), "min" if empty < 0 else "max")
        return torch.full(shape, fill, dtype=x.dtype)

    return extreme


def _mean(x, dims, keep):
    return x.mean(dim=dims, keepdim=keep) if x.is_floating_point() else \
        x.double().mean(dim=dims, keepdim=keep).to(x.dtype)


_REDUCTIONS = {
    "ReduceSum": lambda x, dims, keep: x.sum(dim=dims, keepdim=keep, dtype=x.dtype),
    "ReduceMean": _mean,
    "ReduceMax": _extreme_reduction(torch.amax, -math.inf),
    "ReduceMin": _extreme_reduction(torch.amin, math.inf),
    "ReduceProd": _product,
    "ReduceL1": lambda x, dims, keep: x.abs().sum(dim=dims, keepdim=keep, dtype=x.dtype),
    "ReduceL2": lambda x, dims, keep: torch.linalg.vector_norm(x, 2, dim=dims, keepdim=keep),
    "ReduceSumSquare": lambda x, dims, keep: x.square().sum(dim=dims, keepdim=keep, dtype=x.dtype),
    "ReduceLogSum": lambda x, dims, keep: x.sum(dim=dims, keepdim=keep).log(),
    "ReduceLogSumExp": lambda x, dims, keep: torch.logsumexp(x, dim=dims, keepdim=keep)}


@handles(*_REDUCTIONS)
def _reduce(node, x, axes=None):
    axes = _ints(axes) if axes is not None else node.get("axes")
    if not axes:
        if node.get("noop_with_empty_axes", 0):
            return x
        axes = range(x.dim())
    return _REDUCTIONS[node.op_type](x, tuple(sorted(a % x.dim() for a in axes)), bool(node.get("keepdims", 1)))


def _rnn_activations(node, defaults: list[str], directions: int) -> list[list]:
    """Each direction's activation functions, alpha and beta bound (consumed in order by the functions that
    take them, ONNX's defaults after the lists run out)."""
    names = node.get("activations") or defaults
    if len(names) == len(defaults):  # one list for both directions
        names = names * directions
    supplied = [list(node.get("activation_alpha", [])), list(node.get("activation_beta", []))]
    bound = []
    for name in names:
        function, parameter_defaults = _RNN_ACTIVATIONS[name]
        parameters = [supplied[k].pop(0) if supplied[k] else default for k, default in enumerate(parameter_defaults)]
        bound.append(lambda x, function=function, parameters=parameters: function(x, *parameters))
    return [bound[d * len(defaults):(d + 1) * len(defaults)] for d in range(directions)]


def _rnn_step(node, activations, inputs, hidden, cell, recurrent, recurrent_bias, peepholes):
    """One time step of one direction, from the step's input projection (its bias included)."""
    clip = node.get("clip")

    def gate(values):
        return values if clip is None else values.clamp(-clip, clip)

    if node.op_type == "RNN":
        return activations[0](gate(inputs + hidden @ recurrent.T + recurrent_bias)), None
    size = hidden.shape[-1]
    if node.op_type == "GRU":
        f, g = activations
        mixed = hidden @ recurrent[:2 * size].T + recurrent_bias[:2 * size]
        update = f(gate(inputs[..., :size] + mixed[..., :size]))
        reset = f(gate(inputs[..., size:2 * size] + mixed[..., size:]))
        weights, bias = recurrent[2 * size:], recurrent_bias[2 * size:]
        if node.get("linear_before_reset", 0):
            candidate = reset * (hidden @ weights.T + bias)
        else:
            candidate = (reset * hidden) @ weights.T + bias
        candidate = g(gate(inputs[..., 2 * size:] + candidate))
        return (1 - update) * candidate + update * hidden, None
    f, g, h = activations
    into, out, forget, candidate = (inputs + hidden @ recurrent.T + recurrent_bias).chunk(4, dim=-1)
    peep_into, peep_out, peep_forget = peepholes.chunk(3) if peepholes is not None else (0, 0, 0)
    into, forget = f(gate(into + peep_into * cell)), f(gate(forget + peep_forget * cell))
    cell = forget * cell + into * g(gate(candidate))
    return f(gate(out + peep_out * cell)) * h(cell), cell


_RNN_DEFAULT_ACTIVATIONS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}


@handles("RNN", "GRU", "LSTM")
def _recurrent(node, x, w, r, b=None, lengths=None, initial_h=None, initial_c=None, peepholes=None):
    """The input projections of all steps at once, then a loop over time per direction. Past a batch entry's
    sequence length its state holds and its outputs are zero (a reverse pass starts at its own last step)."""
    batch_first = node.get("layout", 0) == 1
    if batch_first:
        x = x.transpose(0, 1)
        initial_h = None if initial_h is None else initial_h.transpose(0, 1)
        initial_c = None if initial_c is None else initial_c.transpose(0, 1)
    steps, batch = x.shape[:2]
    directions, size = w.shape[0], r.shape[-1]
    activations = _rnn_activations(node, _RNN_DEFAULT_ACTIVATIONS[node.op_type], directions)
    backwards = node.get("direction", "forward") == "reverse"
    outputs, hiddens, cells = [], [], []
    for direction in range(directions):
        if b is None:
            input_bias, recurrent_bias = 0, x.new_zeros(r.shape[1])
        else:
            input_bias, recurrent_bias = b[direction].chunk(2)
        projected = x @ w[direction].T + input_bias
        hidden = x.new_zeros(batch, size) if initial_h is None else initial_h[direction]
        cell = x.new_zeros(batch, size) if initial_c is None else initial_c[direction]
        step_outputs = [None] * steps
        for step in reversed(range(steps)) if backwards or direction == 1 else range(steps):
            new_hidden, new_cell = _rnn_step(node, activations[direction], projected[step], hidden, cell,
                                             r[direction], recurrent_bias,
                                             None if peepholes is None else peepholes[direction])
            if lengths is not None:
                running = (step < lengths).unsqueeze(-1)
                new_hidden = torch.where(running, new_hidden, hidden)
                new_cell = None if new_cell is None else torch.where(running, new_cell, cell)
                step_outputs[step] = torch.where(running, new_hidden, torch.zeros_like(new_hidden))
            else:
                step_outputs[step] = new_hidden
            hidden, cell = new_hidden, new_cell
        outputs.append(torch.stack(step_outputs))
        hiddens.append(hidden)
        cells.append(cell)
    results = [torch.stack(outputs, dim=1), torch.stack(hiddens)]
    if node.op_type == "LSTM":
        results.append(torch.stack(cells))
    if batch_first:
        results = [results[0].permute(2, 0, 1, 3)] + [state.transpose(0, 1) for state in results[1:]]
    return tuple(results)


def _analog(node, x):
    return run_op(OPS[node.op_type], x, None, node.analog_values)


def _weight_path_values(graph: gs.Graph, trained: set, initializers: set) -> dict[str, str]:
    """Each value on the weight path, with the parameter it comes from: the outputs of convert's chain
    elements (its clamps, straight-through analog ops) and range nodes that read one trained parameter,
    directly or through the path, and otherwise only initializers (the path runs before the graph; a weight's
    range is recomputed from the weight on every pass, as reprogramming a chip would)."""
    origin: dict[str, str] = {}
    for node in graph.nodes:
        element = is_range_node(node) or is_chain_element(node, CHAIN_ELEMENTS) and (
            node.domain != DOMAIN or OPS[node.op].straight_through)
        if not element:
            continue
        parameters, constant_otherwise = set(), True
        for tensor in node.inputs:
            if tensor.name in trained or tensor.name in origin:
                parameters.add(origin.get(tensor.name, tensor.name))
            elif tensor.name and tensor.name not in initializers:
                constant_otherwise = False
        if len(parameters) == 1 and constant_otherwise:
            origin[node.outputs[0].name] = parameters.pop()
    return origin


def _supported(node: _Node) -> bool:
    if node.domain == DOMAIN:
        return node.op_type in OPS
    return node.domain in ("", "ai.onnx") and node.op_type in HANDLERS


def _unsupported_ops_message(nodes: list[_Node]) -> str:
    """Every missing op type at once, with how many nodes use it and the first of them."""
    kinds = [n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}:{n.op_type}" for n in nodes]
    first = {}
    for kind, node in zip(kinds, nodes):
        first.setdefault(kind, node.name)
    counts = Counter(kinds)
    listed = ", ".join(f"{kind} (node {first[kind]!r})" if count == 1 else
                       f"{kind} ({count} nodes, first {first[kind]!r})" for kind, count in sorted(counts.items()))
    return (f"unsupported op{'s' if len(counts) > 1 else ''} {listed}; analogize's torch interpreter runs the ops "
            f"in analogize.training.onnx_torch.HANDLERS: rewrite these nodes or add handlers for them")


class OnnxModule(nn.Module):
    """Runs an ONNX graph in torch. ``parameters()`` are its float initializers (the weights).

    ``native`` (default: unless ``ANALOGIZE_NATIVE=0``) runs each chain of straight-through analog ops,
    clamps and rectifiers as one native pass where the library can be built (:class:`torch_ops.FusedChain`).
    """

    def __init__(self, model: onnx.ModelProto, native: bool | None = None):
        super().__init__()
        if default_opset(model) < MIN_OPSET:
            model, _ = fit_opset(model)
        nodes = [_Node(node) for node in model.graph.node]
        unsupported = [n for n in nodes if not _supported(n)]
        if unsupported:
            raise AnalogizeError(_unsupported_ops_message(unsupported))
        problems = [problem for n in nodes if n.domain in ("", "ai.onnx") for problem in _attribute_problems(n)]
        if problems:
            raise AnalogizeError("unsupported attribute values: " + "; ".join(problems))
        # BatchNormalization statistics, Clip bounds and the constants convert adds (range floors, calibrated
        # ranges: these stay as calibrated) are not weights to train
        statistics = {n.inputs[k] for n in nodes if n.op_type == "BatchNormalization" for k in (3, 4)}
        statistics |= {name for n in nodes if n.op_type == "Clip" for name in n.inputs[1:]}
        statistics |= {t.name for t in model.graph.initializer if t.name.startswith(CONVERT_PREFIX)}
        self._keys: dict[str, str] = {}
        self.weights = nn.ParameterDict()
        for tensor in model.graph.initializer:
            value = array_to_torch(numpy_helper.to_array(tensor))
            key = f"t{len(self._keys)}"
            self._keys[tensor.name] = key
            if value.is_floating_point() and tensor.name not in statistics:
                self.weights[key] = nn.Parameter(value)
            else:
                self.register_buffer(key, value)
        self.input_names = [v.name for v in model.graph.input if v.name not in self._keys]
        self.output_names = [v.name for v in model.graph.output]
        self.names = {key: name for name, key in self._keys.items()}
        # One pipeline on graphsurgeon's IR: the weight path is read off the graph as convert left it, then its
        # chains are fused (straight-through steps only: a chain's gradient is then the slope TorchChain
        # writes), and the interpreter runs the exported nodes. The weights above stay the model's initializers.
        graph = import_model(model)
        weight_values = _weight_path_values(graph, {self.names[key] for key in self.weights}, set(self._keys))
        if any(n.domain == DOMAIN for n in nodes) and fuse_elementwise_chains(graph, straight_through_only=True):
            nodes = [_Node(node) for node in export_model(graph, model).graph.node]
        wanted = runtime.native_enabled() if native is None else native
        self.nodes = nodes
        steps = 0
        for node in self.nodes:
            node.chain = None
            if node.domain == FUSED_DOMAIN:
                count = len(node.get("kinds"))
                seeds = [float(steps + k) for k in range(count)]  # distinct streams; the run varies per forward
                steps += count
                node.chain = FusedChain(node.proto, seeds, wanted)
            elif node.domain == DOMAIN:  # validated once; torch's RNG replaces the seed
                node.analog_values = OPS[node.op_type].resolve(
                    **{k: v for k, v in node.attributes.items() if k != "seed"})
        self._draws_runs = any(n.chain is not None and n.chain.native_chain is not None for n in self.nodes)
        # The weight path (the chains convert put on the parameters) depends on no input: it runs first,
        # without gradient, and its results take the gradient straight to their parameters, as the reference
        # trains weights.
        self._weight_path = [n for n in self.nodes if n.outputs and n.outputs[0] in weight_values]
        self._graph_nodes = [n for n in self.nodes if not (n.outputs and n.outputs[0] in weight_values)]
        read = {name for n in self._graph_nodes for name in n.inputs} | set(self.output_names)
        self._weight_results = [(name, weight_values[name]) for name in weight_values if name in read]

    def forward(self, *inputs):
        if len(inputs) != len(self.input_names):
            raise AnalogizeError(f"the model takes {len(self.input_names)} inputs, got {len(inputs)}")
        # looked up once per pass: a module attribute lookup costs as much as a small op
        values = {self.names[key]: value for key, value in self.weights.named_parameters()}
        values.update((self.names[key], value) for key, value in self.named_buffers(recurse=False))
        values.update(zip(self.input_names, inputs))
        # one draw from torch's generator per pass advances every native chain's random streams
        run = int(torch.randint(0, 2 ** 62, (), dtype=torch.int64)) if self._draws_runs else 0
        if self._weight_path:
            with torch.no_grad():
                for node in self._weight_path:
                    self._run_node(node, values, run)
            names = [name for name, _ in self._weight_results]
            values.update(zip(names, straight_through_from(
                [values[parameter] for _, parameter in self._weight_results], [values[n] for n in names])))
        for node in self._graph_nodes:
            self._run_node(node, values, run)
        outputs = [values[name] for name in self.output_names]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    def _run_node(self, node: _Node, values: dict, run: int) -> None:
        arguments = [values[name] if name else None for name in node.inputs]
        while arguments and arguments[-1] is None:
            arguments.pop()
        if node.chain is not None:
            result = node.chain(arguments[0], run)
        else:
            result = (_analog if node.domain == DOMAIN else HANDLERS[node.op_type])(node, *arguments)
        results = result if isinstance(result, (tuple, list)) else (result,)
        for name, value in zip(node.outputs, results):
            if name:
                values[name] = value

    def state_as_initializers(self) -> dict[str, np.ndarray]:
        """The current weights by their ONNX initializer names (what a tuned model writes back)."""
        return {self.names[key]: value.detach().cpu().numpy() for key, value in self.weights.items()}


def to_torch(model: onnx.ModelProto, native: bool | None = None) -> OnnxModule:
    return OnnxModule(model, native)
