"""The ONNX -> torch interpreter against ONNX Runtime on graphs nobody here wrote, and its training rules."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from analogize import convert
from analogize.convert import PAPER_RANGES
from analogize.data import InputSpec
from analogize.errors import AnalogizeError
from analogize.training.onnx_torch import to_torch
from analogize.ops.spec import DOMAIN, OPS
from analogize.passes.model import fit_opset
from conftest import DEFAULT_MODEL, LIGHT_MODELS, session
import reference


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
    compare(convert(model, bits=8, noise=False, activation="interp-gelu", factor=0.5, **PAPER_RANGES).model, x,
            precision=256)


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
    compare(convert(model, bits=6, noise=False, activation="silu", **PAPER_RANGES).model, x, precision=64)


def _matmul_model(weight=np.array([[0.3, -0.7], [1.5, 0.1]], np.float32)):
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("placement", [{}, {"quantize": False}])
def test_weight_chains_pass_the_gradient_straight_to_the_stored_weights(native, placement):
    """The reference's weight path is fully straight-through: no clamp mask (semantics section 3)."""
    weight = np.array([[0.3, -0.7], [1.5, 0.1]], np.float32)  # 1.5 lies outside the clamp range
    converted = convert(_matmul_model(weight), bits=2, noise=False, where=("weights",), **placement,
                        **PAPER_RANGES).model
    module = to_torch(converted, native=native)
    x = torch.tensor([[0.5, -0.25]])
    y = module(x)
    y.sum().backward()
    (parameter,) = list(module.parameters())
    torch.testing.assert_close(parameter.grad, x.T.repeat(1, 2))  # d/dw of sum(x @ w), the clamped one too
    used = np.clip(weight, -1, 1) if placement else reference.reduce_precision(np.clip(weight, -1, 1), 4)
    torch.testing.assert_close(y, x @ torch.from_numpy(used.astype(np.float32)))
    assert module.state_as_initializers().keys() == {"w"}


def test_a_clamp_of_the_model_itself_on_a_parameter_keeps_its_mask():
    """Only convert's chains are the weight path: a clean model's own Clip trains as torch.clamp."""
    graph = helper.make_graph([helper.make_node("Clip", ["s", "low", "high"], ["c"]),
                               helper.make_node("Mul", ["x", "c"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                              [numpy_helper.from_array(np.float32([1.5, 0.5]), "s"),
                               numpy_helper.from_array(np.float32(0), "low"), numpy_helper.from_array(np.float32(1), "high")])
    module = to_torch(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9))
    module(torch.ones(2)).sum().backward()
    (scale,) = list(module.parameters())
    torch.testing.assert_close(scale.grad, torch.tensor([0.0, 1.0]))


def test_weight_chains_with_bounds_made_by_graph_nodes_run_in_graph_order():
    converted = convert(_matmul_model(), bits=2, noise=False, where=("weights",)).model
    for node in converted.graph.node:  # the clamp's bounds now come from Constant nodes, not initializers
        if node.op_type == "Clip":
            node.input[1], node.input[2] = "made_low", "made_high"
    converted.graph.node.insert(0, helper.make_node("Constant", [], ["made_low"], value_float=-1.0))
    converted.graph.node.insert(0, helper.make_node("Constant", [], ["made_high"], value_float=1.0))
    x = torch.tensor([[0.5, -0.25]])
    torch.testing.assert_close(to_torch(converted)(x), to_torch(convert(_matmul_model(), bits=2, noise=False,
                                                                        where=("weights",)).model)(x))


def test_weight_noise_is_drawn_afresh_every_pass_through_native_chains():
    module = to_torch(convert(_matmul_model(), bits=4, ep=0.5, where=("weights",)).model, native=True)
    assert _native_chains(module) and module._weight_path
    x = torch.tensor([[0.5, -0.25]])
    first, second = module(x), module(x)
    assert not torch.equal(first, second)
    (first + second).sum().backward()  # both draws pass their gradient straight to the one stored weight
    torch.testing.assert_close(list(module.parameters())[0].grad, 2 * x.T.repeat(1, 2))


def test_clamps_on_activations_mask_the_gradient():
    model = _chain_model([helper.make_node("Clip", ["x", "lo1", "hi1"], ["a"]),
                          helper.make_node("ReducePrecision", ["a"], ["y"], domain=DOMAIN, precision=2.0)])
    x = torch.tensor([-1.5, -0.5, 0.5, 1.5], requires_grad=True)
    to_torch(model)(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.0, 1.0, 1.0, 0.0]))


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


def _chain_model(nodes, functions=()):
    """x -> the given element-wise nodes (names chained a -> b -> ...) -> y, on float32 vectors."""
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
                              [numpy_helper.from_array(np.float32(v), n) for n, v in
                               (("lo1", -1), ("hi1", 1), ("lo2", -0.5), ("hi2", 0.5), ("lo3", -10), ("hi3", 10))])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)],
                             ir_version=9)


def _native_chains(module):
    return [node for node in module.nodes if node.chain is not None and node.chain.native_chain is not None]


def test_native_chains_equal_the_reference_and_torch_ops_in_value_and_gradient():
    p = 4.0
    model = _chain_model([
        helper.make_node("Clip", ["x", "lo1", "hi1"], ["a"]),
        helper.make_node("ReducePrecision", ["a"], ["b"], domain=DOMAIN, precision=p),
        helper.make_node("LeakyRelu", ["b"], ["c"], alpha=0.1),
        helper.make_node("Clip", ["c", "lo2", "hi2"], ["d"]),
        helper.make_node("Relu", ["d"], ["y"])])
    ties = (np.arange(-9, 9) + 0.5) / p  # exact halves between steps, where rounding direction shows
    values = np.concatenate([ties, [-1.5, -1, -0.5, -0.0, 0, 0.5, 1, 1.5, 0.126, -0.126],
                             np.random.default_rng(0).uniform(-1.5, 1.5, 200_000)]).astype(np.float32)
    native_module, torch_module = to_torch(model, native=True), to_torch(model, native=False)
    assert len(_native_chains(native_module)) == 1 and not _native_chains(torch_module)
    results = []
    for module in (native_module, torch_module):
        x = torch.from_numpy(values.copy()).requires_grad_()
        y = module(x)
        y.backward(torch.arange(len(values), dtype=torch.float32) % 7 + 1)
        results.append((y.detach().numpy(), x.grad.numpy()))
    (native_y, native_grad), (torch_y, torch_grad) = results
    rounded = reference.reduce_precision(reference.clamp(values), p)
    leaky = np.where(rounded > 0, rounded, 0.1 * rounded).astype(np.float32)
    clipped = np.clip(leaky, -0.5, 0.5)
    np.testing.assert_array_equal(native_y, np.maximum(clipped, 0))
    np.testing.assert_array_equal(native_y, torch_y)
    slope = (np.abs(values) <= 1) * np.where(rounded > 0, 1, 0.1) * (np.abs(leaky) <= 0.5) * (clipped > 0)
    expected_grad = (slope * (np.arange(len(values)) % 7 + 1)).astype(np.float32)
    np.testing.assert_allclose(native_grad, expected_grad, rtol=1e-6, atol=0)
    np.testing.assert_array_equal(native_grad, torch_grad)


def test_native_chain_noise_is_gaussian_fresh_per_pass_seeded_by_torch_and_independent_between_chains():
    from scipy import stats

    std = 0.1
    model = _chain_model([
        helper.make_node("AnalogNoise", ["x"], ["a"], domain=DOMAIN, std=std),
        helper.make_node("Clip", ["a", "lo3", "hi3"], ["b"]),
        helper.make_node("Relu", ["b"], ["c"]),  # ends the first chain: Relu(c) feeds two nodes
        helper.make_node("AnalogNoise", ["c"], ["d"], domain=DOMAIN, std=std),
        helper.make_node("Clip", ["d", "lo3", "hi3"], ["e"]),
        helper.make_node("Add", ["c", "e"], ["y"])])
    module = to_torch(model)
    assert len(_native_chains(module)) == 2
    x = torch.full((300_000,), 5.0, requires_grad=True)  # far from every clamp and rectifier edge
    torch.manual_seed(7)
    y = module(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 2.0))  # straight through both chains and the Add
    first = _native_chains(module)[0].chain
    inputs = torch.full((300_000,), 5.0)
    second = _native_chains(module)[1].chain
    with torch.no_grad():
        one, two = first(inputs, run=11), second(inputs, run=11)
    noise_one, noise_two = (one - 5).numpy(), (two - 5).numpy()
    for noise in (noise_one, noise_two):
        assert abs(noise.mean()) < 4 * std / np.sqrt(noise.size)
        assert abs(noise.std() / std - 1) < 0.01
        assert stats.normaltest(noise[:100_000]).pvalue > 1e-3
    assert abs(np.corrcoef(noise_one, noise_two)[0, 1]) < 0.01
    with torch.no_grad():
        assert torch.equal(first(inputs, run=11), one)  # a stream is a function of its run
        assert not torch.equal(first(inputs, run=12), one)
    torch.manual_seed(7)
    assert torch.equal(module(x), y) and not torch.equal(module(x), y)


def test_modules_with_native_chains_copy_and_pickle():
    import copy
    import pickle

    module = to_torch(convert(onnx.load(DEFAULT_MODEL), bits=4, ep=0.5).model)
    x = torch.rand(4, 1, 8, 8)
    for twin in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        torch.manual_seed(1)
        expected = module(x)
        torch.manual_seed(1)
        torch.testing.assert_close(twin(x), expected)
    del module
    assert twin(x).shape == expected.shape  # its chains outlive the original's


def test_a_pickled_module_loads_step_by_step_where_the_library_cannot_be_built(monkeypatch):
    import pickle

    import analogize.runtime.sessions

    module = to_torch(convert(onnx.load(DEFAULT_MODEL), bits=4, noise=False).model)
    data = pickle.dumps(module)
    monkeypatch.setattr(analogize.runtime.sessions, "available_native_library", lambda: None)
    restored = pickle.loads(data)
    assert _native_chains(module) and not _native_chains(restored)
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), module(x))


def test_native_chains_give_the_same_numbers_on_any_thread_count():
    module = to_torch(convert(onnx.load(DEFAULT_MODEL), bits=4, ep=0.5).model)
    chain = _native_chains(module)[-1].chain
    x = torch.rand(5, 64 * 1024) * 4 - 2  # five chunks of work
    threads = torch.get_num_threads()
    try:
        outputs = []
        for count in (1, 2, 3, 8):
            torch.set_num_threads(count)
            with torch.no_grad():
                outputs.append(chain(x, run=4))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(outputs[0], other) for other in outputs[1:])


def test_chains_run_step_by_step_for_other_dtypes_and_activations_stay_out_of_native_chains():
    model = convert(onnx.load(DEFAULT_MODEL), bits=6, noise=False, activation="interp-gelu", factor=0.5).model
    module = to_torch(model)
    chains = _native_chains(module)
    assert chains and not any(node.op_type == "ReluGeluInterpolation" for node in chains)
    assert any(node.op_type == "ReluGeluInterpolation" for node in module.nodes)
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        single = module(x)
        double = module.double()(x.double())
    assert double.dtype == torch.float64
    torch.testing.assert_close(double.float(), single, atol=2 / 64, rtol=0)


def test_a_native_training_chain_refuses_an_activation():
    from analogize.native.build import FUSED_DOMAIN, StepKind
    from analogize.native.torch_chain import TorchChain

    op = list(OPS).index("ReluGeluInterpolation")
    node = helper.make_node("FusedChain", ["x"], ["y"], name="chain", domain=FUSED_DOMAIN,
                            kinds=[StepKind.ANALOG_OP, StepKind.CLIP], ops=[op, -1],
                            parameters=[1, 1, 0, 0, -1, 1, 0, 0], seeds=[-1, -1])
    with pytest.raises(AnalogizeError, match="chain: the native library cannot run this chain in training"):
        TorchChain(node, [0.0, 1.0])
