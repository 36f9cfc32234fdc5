"""The ONNX -> torch interpreter against ONNX Runtime on graphs nobody here wrote, and its training rules."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from analogize import convert
from analogize.data import InputSpec
from analogize.errors import AnalogizeError
from analogize.onnx_torch import to_torch
from analogize.rewrite import fit_opset
from conftest import DEFAULT_MODEL, LIGHT_MODELS, session


def with_random_weights(model, rng):
    """The light models hold every weight as ConstantOfShape of one value, so all their logits are equal;
    random weights make the comparison mean something."""
    model, _ = fit_opset(model)
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for position, node in enumerate(model.graph.node):
        if node.op_type == "ConstantOfShape" and node.input[0] in shapes:
            shape = [int(v) for v in shapes[node.input[0]]]
            if len(shape) > 1:
                values = rng.normal(0, 1 / np.sqrt(np.prod(shape[1:])), shape).astype(np.float32)
            else:  # biases and batch-norm statistics (variances must stay positive)
                values = rng.uniform(0.5, 1.5, shape).astype(np.float32)
            model.graph.node[position].CopyFrom(helper.make_node(
                "Constant", [], [node.output[0]], value=numpy_helper.from_array(values)))
    return model


def compare(model, x, precision=None):
    """Outputs of the torch module against ONNX Runtime's. With reduce-precision (``precision`` p), float
    sums taken in another order may land a value on the other side of a rounding step: allow a few such
    one-step flips, nothing else."""
    name = InputSpec.of(model).name
    expected = session(model).run(None, {name: x})[0]
    with torch.no_grad():
        actual = to_torch(model).eval()(torch.from_numpy(x))
    actual = (actual[0] if isinstance(actual, tuple) else actual).numpy()
    tolerance = 1e-4 * max(1.0, float(np.abs(expected).max()))
    if precision is None:
        np.testing.assert_allclose(actual, expected, atol=tolerance, rtol=1e-4)
    else:
        difference = np.abs(actual - expected)
        assert np.mean(difference > tolerance) < 0.05 and difference.max() <= 4 / precision + tolerance
    return expected


# The 224x224 VGG-19, AlexNet and ZFNet take half a minute each in eager torch; the other five cover their ops.
_SLOW_LIGHT = ("vgg19", "alexnet", "zfnet512")


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.slow) if any(k in p for k in _SLOW_LIGHT) else p
                                  for p in LIGHT_MODELS], ids=lambda p: p.rsplit("/", 1)[-1][6:-5])
def test_light_models_match_onnx_runtime(path, rng):
    model = with_random_weights(onnx.load(path), rng)
    x = rng.uniform(0, 1, [d or 1 for d in InputSpec.of(model).shape]).astype(np.float32)
    logits = compare(model, x)
    assert np.ptp(logits) > 0  # the random weights make the outputs depend on the input
    compare(convert(model, bits=8, noise=False, activation="interp-gelu", factor=0.5).model, x, precision=256)


@pytest.mark.parametrize("name, options", [("convnet", {"width": 0.25}), ("vgg_a", {"width": 0.125, "pool_size": 1}),
                                           ("resnet18", {"width": 0.125}), ("vit", {})])
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_zoo_exports_match_onnx_runtime(name, options, exporter, tmp_path, rng):
    from analogize.zoo import create_model, export_onnx

    torch.manual_seed(0)
    path = tmp_path / "model.onnx"
    export_onnx(create_model(name, **options), path, (3, 32, 32), exporter=exporter)
    model = onnx.load(path)
    x = rng.uniform(0, 1, (2, 3, 32, 32)).astype(np.float32)
    compare(model, x)
    compare(convert(model, bits=6, noise=False, activation="silu").model, x, precision=64)


def test_weight_chains_train_straight_through_with_a_masked_clamp():
    weight = np.array([[0.3, -0.7], [1.5, 0.1]], np.float32)  # 1.5 lies outside the clamp range
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    converted = convert(model, bits=2, noise=False, where=("weights",)).model
    module = to_torch(converted)
    x = torch.tensor([[0.5, -0.25]])
    module(x).sum().backward()
    (parameter,) = list(module.parameters())
    expected = x.T.repeat(1, 2) * torch.tensor([[1.0, 1.0], [0.0, 1.0]])  # d/dw of sum(x @ w), zero if clamped
    torch.testing.assert_close(parameter.grad, expected)
    assert module.state_as_initializers().keys() == {"w"}


def test_noise_is_drawn_afresh_every_forward_and_follows_torch_seeding():
    module = to_torch(convert(onnx.load(DEFAULT_MODEL), bits=6, ep=0.5).model)
    x = torch.rand(4, 1, 8, 8)
    first, second = module(x), module(x)
    assert not torch.equal(first, second)
    torch.manual_seed(3)
    again = module(x)
    torch.manual_seed(3)
    assert torch.equal(module(x), again)


def test_batch_norm_statistics_are_buffers_not_parameters(rng):
    model = with_random_weights(onnx.load([p for p in LIGHT_MODELS if "resnet50" in p][0]), rng)
    module = to_torch(model)
    parameter_names = {module.names[k] for k in module.weights}
    statistics = {n.input[k] for n in model.graph.node if n.op_type == "BatchNormalization" for k in (3, 4)}
    assert statistics and not statistics & parameter_names


def test_unsupported_ops_are_named_with_their_node():
    graph = helper.make_graph([helper.make_node("Hardmax", ["x"], ["y"], name="pick")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    with pytest.raises(AnalogizeError, match="unsupported op Hardmax \\(node 'pick'\\)"):
        to_torch(model)
