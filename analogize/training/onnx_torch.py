"""A converted (or clean) ONNX model as a trainable torch module: a compact interpreter of the graph.

Float initializers become parameters (BatchNormalization statistics and Clip bounds stay buffers). Weight
chains (clamp, reduce-precision, noise on the weights) run on every forward pass, so weight noise is drawn
afresh, and their gradient goes straight to the stored weights, clamp included (the reference's weight
path). On activations: straight-through reduce-precision, identity through noise, masked clamp. Analog
ops run through :mod:`analogize.ops.torch_ops` from the same formulas as their ONNX function bodies. Ops
follow ONNX's semantics at opset 13 or newer (older models are raised to 13 first).

The interpreter runs the protobuf nodes, each decoded once (:class:`_Node`): a FusedChain node stays a
self-contained ``NodeProto``, which copies and pickles of the module rebuild their native chains from (a
graphsurgeon node would carry its whole graph along). The graph-level work, finding the weight path's chain
elements and fusing the chains, runs on graphsurgeon's IR (:mod:`analogize.passes`): one import, one export.

Existing converters were not used: onnx2torch imports torchvision, which has no CPU build here.
"""
from __future__ import annotations

import math

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

_DTYPES = {onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
           onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.INT32: torch.int32,
           onnx.TensorProto.BOOL: torch.bool, onnx.TensorProto.INT8: torch.int8, onnx.TensorProto.UINT8: torch.uint8,
           onnx.TensorProto.FLOAT16: torch.float16}
HANDLERS: dict = {}


def handles(*op_types):
    def register(function):
        for op_type in op_types:
            HANDLERS[op_type] = function
        return function

    return register


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
                value = torch.from_numpy(numpy_helper.to_array(value).copy())
            elif isinstance(value, bytes):
                value = value.decode()
            self.attributes[attribute.name] = value

    def get(self, name, default=None):
        return self.attributes.get(name, default)


def _ints(tensor) -> list[int]:
    return [int(v) for v in torch.as_tensor(tensor).reshape(-1).tolist()]


def _padding(x, pads, spatial, value=0.0):
    """ONNX pads (all begins, then all ends) as symmetric torch padding, padding explicitly when uneven."""
    begins, ends = pads[:spatial], pads[spatial:]
    if begins == ends:
        return x, begins
    flat = []
    for begin, end in zip(reversed(begins), reversed(ends)):
        flat += [begin, end]
    return tf.pad(x, flat, value=value), [0] * spatial


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
    pads = list(node.get("pads", [0] * 2 * spatial))
    if pads[:spatial] != pads[spatial:] or node.get("output_shape") or node.get("auto_pad", "NOTSET") != "NOTSET":
        raise AnalogizeError(f"{node.name}: ConvTranspose with uneven pads, output_shape or auto_pad is not "
                             f"supported")
    function = (tf.conv_transpose1d, tf.conv_transpose2d, tf.conv_transpose3d)[spatial - 1]
    return function(x, w, b, stride=list(node.get("strides", [1] * spatial)), padding=pads[:spatial],
                    output_padding=list(node.get("output_padding", [0] * spatial)), groups=node.get("group", 1),
                    dilation=list(node.get("dilations", [1] * spatial)))


@handles("Gemm")
def _gemm(node, a, b, c=None):
    alpha, beta = node.get("alpha", 1.0), node.get("beta", 1.0)
    if alpha == 1.0 and beta == 1.0 and node.get("transB", 0) and not node.get("transA", 0):
        return tf.linear(a, b, c)  # nn.Linear's form: one op
    a = a.transpose(-1, -2) if node.get("transA", 0) else a
    b = b.transpose(-1, -2) if node.get("transB", 0) else b
    result = alpha * (a @ b)
    return result if c is None else result + beta * c


@handles("MaxPool", "AveragePool")
def _pool(node, x):
    spatial = x.dim() - 2
    kernel = list(node.get("kernel_shape"))
    strides = list(node.get("strides", [1] * spatial))
    dilations = list(node.get("dilations", [1] * spatial))
    pads = _auto_pads(node, x, kernel, strides, dilations)
    if node.op_type == "MaxPool":
        x, padding = _padding(x, pads, spatial, value=-math.inf)
        function = (tf.max_pool1d, tf.max_pool2d, tf.max_pool3d)[spatial - 1]
        return function(x, kernel, strides, padding, dilations, ceil_mode=bool(node.get("ceil_mode", 0)))
    include_pad = bool(node.get("count_include_pad", 0))
    function = (tf.avg_pool1d, tf.avg_pool2d, tf.avg_pool3d)[spatial - 1]
    ceil_mode = bool(node.get("ceil_mode", 0))
    if pads[:spatial] == pads[spatial:]:
        return function(x, kernel, strides, pads[:spatial], ceil_mode=ceil_mode, count_include_pad=include_pad)
    padded, _ = _padding(x, pads, spatial)
    total = function(padded, kernel, strides, 0, ceil_mode=ceil_mode, count_include_pad=True)
    if include_pad:
        return total
    # uneven pads left out of the count: divide by the share of each window that is real input
    inside, _ = _padding(torch.ones_like(x[:1, :1]), pads, spatial)
    return total / function(inside, kernel, strides, 0, ceil_mode=ceil_mode, count_include_pad=True)


@handles("GlobalAveragePool")
def _global_average(node, x):
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@handles("BatchNormalization")
def _batch_norm(node, x, scale, bias, mean, var):
    return tf.batch_norm(x, mean, var, scale, bias, training=False, eps=node.get("epsilon", 1e-5))


@handles("LayerNormalization")
def _layer_norm(node, x, scale, bias=None):
    axis = node.get("axis", -1) % x.dim()
    return tf.layer_norm(x, x.shape[axis:], scale, bias, eps=node.get("epsilon", 1e-5))


@handles("LRN")
def _lrn(node, x):
    return tf.local_response_norm(x, node.get("size"), node.get("alpha", 1e-4), node.get("beta", 0.75),
                                  node.get("bias", 1.0))


@handles("Softmax")
def _softmax(node, x):
    return tf.softmax(x, dim=node.get("axis", -1))


@handles("Relu")
def _relu(node, x):
    return tf.relu(x)


@handles("LeakyRelu")
def _leaky_relu(node, x):
    return tf.leaky_relu(x, node.get("alpha", 0.01))


@handles("Clip")
def _clip(node, x, low=None, high=None):
    return torch.clamp(x, low, high)


_ELEMENTWISE = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Pow": torch.pow, "Equal": torch.eq,
                "Greater": torch.gt, "Less": torch.lt, "MatMul": torch.matmul, "Erf": torch.erf, "Exp": torch.exp,
                "Sqrt": torch.sqrt, "Tanh": torch.tanh, "Sigmoid": torch.sigmoid, "Neg": torch.neg,
                "Abs": torch.abs, "Sign": torch.sign, "Ceil": torch.ceil, "Floor": torch.floor, "Log": torch.log,
                "Not": torch.logical_not, "And": torch.logical_and}
for _op_type, _function in _ELEMENTWISE.items():
    HANDLERS[_op_type] = (lambda function: lambda node, *args: function(*args))(_function)


@handles("Div")
def _div(node, a, b):
    integer = not a.is_floating_point() and not b.is_floating_point()
    return torch.div(a, b, rounding_mode="trunc") if integer else a / b


@handles("Where")
def _where(node, condition, a, b):
    return torch.where(condition, a, b)


@handles("Sum")
def _sum(node, *values):
    total = values[0]
    for value in values[1:]:
        total = total + value
    return total


@handles("Identity", "Dropout")
def _identity(node, x, *ignored):
    return x


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
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.dim()
    for start, end, axis, step in zip(starts, ends, axes, steps):
        if step < 0:
            raise AnalogizeError(f"{node.name}: Slice with negative steps is not supported")
        size = x.shape[axis]
        start = max(0, min(size, start + size if start < 0 else start))
        end = max(0, min(size, end + size if end < 0 else end))
        index[axis] = slice(start, end, step)
    return x[tuple(index)]


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


@handles("Gather")
def _gather(node, x, indices):
    axis = node.get("axis", 0) % x.dim()
    indices = torch.where(indices < 0, indices + x.shape[axis], indices)
    return torch.index_select(x, axis, indices.reshape(-1)).reshape(
        x.shape[:axis] + indices.shape + x.shape[axis + 1:])


@handles("GatherND")
def _gather_nd(node, x, indices):
    if node.get("batch_dims", 0):
        raise AnalogizeError(f"{node.name}: GatherND with batch_dims is not supported")
    depth = indices.shape[-1]
    flat = indices.reshape(-1, depth)
    gathered = x[tuple(flat[:, k] for k in range(depth))]
    return gathered.reshape(indices.shape[:-1] + x.shape[depth:])


@handles("Shape")
def _shape(node, x):
    shape = torch.tensor(x.shape, dtype=torch.int64)
    return shape[node.get("start", 0):node.get("end", None)]


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
    return x.to(_DTYPES[node.get("to")])


@handles("Expand")
def _expand(node, x, shape):
    return x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(shape))))


def _reduction(reduce):
    def handler(node, x, axes=None):
        axes = _ints(axes) if axes is not None else node.get("axes")
        keep = bool(node.get("keepdims", 1))
        if axes is None or axes == []:
            return reduce(x, tuple(range(x.dim())), keep) if not node.get("noop_with_empty_axes", 0) else x
        return reduce(x, tuple(axes), keep)

    return handler


HANDLERS["ReduceMean"] = _reduction(lambda x, dims, keep: x.mean(dim=dims, keepdim=keep))
HANDLERS["ReduceMax"] = _reduction(lambda x, dims, keep: x.amax(dim=dims, keepdim=keep))


@handles("Max")
def _max(node, *values):
    largest = values[0]
    for value in values[1:]:
        largest = torch.maximum(largest, value)
    return largest


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
        unsupported = sorted({(n.op_type, n.name) for n in nodes if not _supported(n)})
        if unsupported:
            op_type, name = unsupported[0]
            raise AnalogizeError(f"unsupported op {op_type} (node {name!r})"
                                 + (f" and {len(unsupported) - 1} more" if len(unsupported) > 1 else "")
                                 + "; analogize's torch interpreter covers the zoo and ONNX light models' ops")
        # BatchNormalization statistics, Clip bounds and the constants convert adds (range floors, calibrated
        # ranges: these stay as calibrated) are not weights to train
        statistics = {n.inputs[k] for n in nodes if n.op_type == "BatchNormalization" for k in (3, 4)}
        statistics |= {name for n in nodes if n.op_type == "Clip" for name in n.inputs[1:]}
        statistics |= {t.name for t in model.graph.initializer if t.name.startswith(CONVERT_PREFIX)}
        self._keys: dict[str, str] = {}
        self.weights = nn.ParameterDict()
        for tensor in model.graph.initializer:
            value = torch.from_numpy(numpy_helper.to_array(tensor).copy())
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
