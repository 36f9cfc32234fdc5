"""ONNX function bodies of the analog op set, traced from the formulas in :mod:`analogize.ops.spec`.

A converted model carries these as model-local functions, so stock ONNX Runtime (or any runtime) runs it
without the native library. Bodies use only default-domain ops available from opset 13, and are emitted for
the model's own opset: the ONNX checker requires a function's opset to resolve every op exactly as the
model's does.
"""
from __future__ import annotations

import onnx
from onnx import AttributeProto, helper

from .spec import DOMAIN, OPS, OpSpec, TracedArithmetic

MIN_OPSET = 13  # Clip bounds, Split sizes and Unsqueeze axes as inputs; Constant(value_float) from 12
_INT64_MAX = 2**63 - 1


class _Builder:
    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self._constants: dict = {}
        self._count = 0

    def emit(self, op_type: str, inputs, outputs: int = 1, **attributes):
        names = [f"t{self._count + k}" for k in range(outputs)]
        self._count += outputs
        node = helper.make_node(op_type, [self.value_of(v).name for v in inputs], names)
        for key, value in attributes.items():
            if isinstance(value, _AttributeRef):
                node.attribute.append(value.reference(key))
            elif value is not None:
                node.attribute.append(helper.make_attribute(key, value))
        self.nodes.append(node)
        values = [_Value(self, name) for name in names]
        return values[0] if outputs == 1 else values

    def value_of(self, item) -> "_Value":
        if isinstance(item, _Value):
            return item
        key = item.name if isinstance(item, _AttributeRef) else ("literal", float(item))
        if key not in self._constants:
            if isinstance(item, _AttributeRef):
                self._constants[key] = self.emit("Constant", [], value_float=item)
            else:
                self._constants[key] = self.emit("Constant", [], value_float=float(item))
        return self._constants[key]

    def int64s(self, values):
        return self.emit("Constant", [], value_ints=list(values))


class _Arithmetic(TracedArithmetic):
    """Python operators on traced values emit the matching ONNX ops."""

    builder: _Builder

    def _binary(self, op_type, other, reflected=False):
        left, right = (other, self) if reflected else (self, other)
        return self.builder.emit(op_type, [left, right])

    def __neg__(self):
        return self.builder.emit("Neg", [self])


class _Value(_Arithmetic):
    def __init__(self, builder: _Builder, name: str):
        self.builder, self.name = builder, name


class _AttributeRef(_Arithmetic):
    """A function attribute: forwarded by reference to an op's attribute, or read as a scalar tensor."""

    def __init__(self, builder: _Builder, name: str):
        self.builder, self.name = builder, name

    def reference(self, target: str) -> AttributeProto:
        attribute = AttributeProto()
        attribute.name, attribute.ref_attr_name, attribute.type = target, self.name, AttributeProto.FLOAT
        return attribute


class _OnnxPrimitives:
    def __init__(self, builder: _Builder):
        self._b = builder

    def _unary(op_type):
        return lambda self, x: self._b.emit(op_type, [x])

    abs, sign, ceil, floor = _unary("Abs"), _unary("Sign"), _unary("Ceil"), _unary("Floor")
    erf, exp, sqrt, sigmoid = _unary("Erf"), _unary("Exp"), _unary("Sqrt"), _unary("Sigmoid")
    atan_within_one = _unary("Atan")
    del _unary

    def where(self, condition, if_true, if_false):
        return self._b.emit("Where", [condition, if_true, if_false])

    def normal_like(self, x, std, seed):
        return self._b.emit("RandomNormalLike", [x], mean=0.0, scale=std, seed=seed)

    def uniform_like(self, x, seed):
        return self._b.emit("RandomUniformLike", [x], low=0.0, high=1.0, seed=seed)

    def split_last_half(self, x):
        last_axis = self._b.int64s([-1])
        width = self._b.emit("Slice", [self._b.emit("Shape", [x]), last_axis, self._b.int64s([_INT64_MAX])])
        half = self._b.emit("Div", [width, self._b.int64s([2])])
        first = self._b.emit("Slice", [x, self._b.int64s([0]), half, last_axis])
        second = self._b.emit("Slice", [x, half, self._b.int64s([_INT64_MAX]), last_axis])
        return first, second


def function_proto(spec: OpSpec, opset: int) -> onnx.FunctionProto:
    """The body of ``spec`` for a model whose default-domain opset is ``opset`` (>= 13)."""
    if opset < MIN_OPSET:
        raise ValueError(f"function bodies need default-domain opset >= {MIN_OPSET}, got {opset}")
    builder = _Builder()
    x = _Value(builder, "X")
    attributes = {a.name: _AttributeRef(builder, a.name) for a in spec.attributes}
    result = builder.value_of(spec.formula(_OnnxPrimitives(builder), x, **attributes))
    if result.name == "X":
        builder.emit("Identity", [x])
        result = _Value(builder, builder.nodes[-1].output[0])
    for node in builder.nodes:
        node.output[:] = ["Y" if name == result.name else name for name in node.output]
        node.input[:] = ["Y" if name == result.name else name for name in node.input]
    function = helper.make_function(
        DOMAIN, spec.name, ["X"], ["Y"], builder.nodes, [helper.make_opsetid("", opset)],
        attributes=[a.name for a in spec.attributes if a.default is None], doc_string=f"{spec.doc} Y = {spec.equation}")
    function.attribute_proto.extend(
        helper.make_attribute(a.name, float(a.default)) for a in spec.attributes if a.default is not None)
    return function


def function_protos(op_names, opset: int) -> list[onnx.FunctionProto]:
    return [function_proto(OPS[name], opset) for name in sorted(set(op_names))]
