"""Each op of the set: ONNX function body (run by ONNX Runtime) and torch version against numpy references."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from scipy import stats

import reference as ref
from analogize.errors import AnalogizeError
from analogize.ops.onnx_functions import function_proto
from analogize.ops.spec import DOMAIN, OPS, markdown_reference
from analogize.ops.torch_ops import AnalogOp, apply_op
from conftest import ROOT, run, session

ATTRIBUTES = {
    "ReducePrecision": {"precision": 4.0},
    "StochasticReducePrecision": {"precision": 4.0, "seed": 3.0},
    "AnalogNoise": {"std": 0.1, "seed": 5.0},
    "ReluGeluInterpolation": {"factor": 0.3, "scale": 1.7, "alpha": 0.1},
    "ReluSiluInterpolation": {"factor": 0.6, "scale": 1.3, "alpha": 0.05},
    "ReGluGeGluInterpolation": {"factor": 0.5, "scale": 1.2},
}
DETERMINISTIC = [name for name, spec in OPS.items() if not spec.random]


def numpy_reference(name, x, a):
    if name == "ReducePrecision":
        return ref.reduce_precision(x, a["precision"], a.get("divide", 0.5))
    if name == "ReluGeluInterpolation":
        return ref.gelu_interp(x, a.get("factor", 1), a.get("scale", 1), a.get("alpha", 0))
    if name == "ReluSiluInterpolation":
        return ref.silu_interp(x, a.get("factor", 1), a.get("scale", 1), a.get("alpha", 0))
    if name == "ReGluGeGluInterpolation":
        return ref.glu_interp(x, a.get("factor", 1), a.get("scale", 1), a.get("alpha", 0))
    if name.startswith("Smooth"):
        return ref.smooth(name[len("Smooth"):], x, a.get("temperature", 1.0))
    raise KeyError(name)


def single_op_model(name, shape, opset=17, **attributes):
    out_shape = list(shape[:-1]) + [shape[-1] // 2] if name == "ReGluGeGluInterpolation" else list(shape)
    node = helper.make_node(name, ["x"], ["y"], domain=DOMAIN, **attributes)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, 1)],
                              functions=[function_proto(OPS[name], opset)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_registry_is_the_documented_op_set():
    assert {"ReducePrecision", "StochasticReducePrecision", "AnalogNoise", "ReluGeluInterpolation",
            "ReluSiluInterpolation", "ReGluGeGluInterpolation"} <= set(OPS)
    assert {f"Smooth{g}" for g in ref.SMOOTH_GATES} <= set(OPS)
    assert (ROOT / "docs" / "ops.md").read_text() == markdown_reference(), "regenerate: analogize ops --markdown"


@pytest.mark.parametrize("opset", [13, 17, 23])
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_function_body_matches_numpy_reference(name, opset, rng):
    x = rng.uniform(-3, 3, (5, 8)).astype(np.float32)
    attributes = ATTRIBUTES.get(name, {"temperature": 0.7} if name.startswith("Smooth") else {})
    y = run(single_op_model(name, x.shape, opset, **attributes), x)
    np.testing.assert_allclose(y, numpy_reference(name, x.astype(np.float64), attributes), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_defaults_apply_when_attributes_are_omitted(name, rng):
    x = rng.uniform(-3, 3, (4, 6)).astype(np.float32)
    given = {"precision": 8.0} if name == "ReducePrecision" else {}
    y = run(single_op_model(name, x.shape, **given), x)
    np.testing.assert_allclose(y, numpy_reference(name, x.astype(np.float64), given), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_torch_forward_matches_function_body(name, rng):
    x = rng.uniform(-3, 3, (5, 8)).astype(np.float32)
    attributes = ATTRIBUTES.get(name, {})
    onnx_result = run(single_op_model(name, x.shape, **attributes), x)
    torch_result = apply_op(name, torch.from_numpy(x), **attributes).numpy()
    np.testing.assert_allclose(torch_result, onnx_result, rtol=1e-6, atol=1e-6)


def test_reduce_precision_rounds_halves_toward_zero_and_keeps_2p_plus_1_levels():
    p = 4.0
    ties = np.array([0.125, -0.125, 0.375, -0.375, 0.126, -0.126], np.float32)
    np.testing.assert_array_equal(run(single_op_model("ReducePrecision", ties.shape, precision=p), ties),
                                  [0.0, 0.0, 0.25, -0.25, 0.25, -0.25])
    dense = np.clip(np.linspace(-2, 2, 4001, dtype=np.float32), -1, 1)
    levels = np.unique(run(single_op_model("ReducePrecision", dense.shape, precision=p), dense))
    assert len(levels) == 2 * p + 1 and levels.min() == -1 and levels.max() == 1


@pytest.mark.parametrize("name,derivative,attributes", [
    ("ReluGeluInterpolation", ref.gelu_interp_derivative, {"factor": 0.4, "scale": 1.5, "alpha": 0.1}),
    ("ReluGeluInterpolation", ref.gelu_interp_derivative, {"factor": 0.0}),
    ("ReluSiluInterpolation", ref.silu_interp_derivative, {"factor": 0.7, "alpha": 0.2}),
])
def test_activation_gradients_are_the_analytic_derivatives(name, derivative, attributes):
    x = torch.linspace(-3, 3, 601, dtype=torch.float64).requires_grad_()
    x_with_zero = torch.cat([x, torch.zeros(1, dtype=torch.float64)])
    apply_op(name, x_with_zero, **attributes).sum().backward()
    expected = derivative(np.append(x.detach().numpy(), 0.0), **{"i" if k == "factor" else ("s" if k == "scale" else k): v
                                                                   for k, v in attributes.items()})
    gradient = x.grad.numpy()
    np.testing.assert_allclose(gradient, expected[:-1], rtol=1e-9, atol=1e-12)


def test_rectifier_derivative_at_zero_is_alpha():
    x = torch.zeros(1, requires_grad=True)
    apply_op("ReluGeluInterpolation", x, factor=0.0, alpha=0.2).backward()
    assert x.grad.item() == pytest.approx(0.2)


@pytest.mark.parametrize("name", ["ReducePrecision", "StochasticReducePrecision", "AnalogNoise"])
def test_straight_through_gradient(name):
    x = torch.linspace(-2, 2, 50, requires_grad=True)
    (apply_op(name, x, **ATTRIBUTES[name]) * torch.arange(50.0)).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.arange(50.0))


def test_noise_distribution_freshness_and_seeding():
    x = np.zeros((200, 500), np.float32)
    # the distribution is checked on a seeded stream: an unseeded one would fail these 4-sigma bounds now and then
    seeded = single_op_model("AnalogNoise", x.shape, std=0.05, seed=7.0)
    noise = run(seeded, x)
    assert abs(noise.mean()) < 0.05 * 4 / np.sqrt(x.size)
    assert noise.std() == pytest.approx(0.05, rel=0.01)
    assert stats.normaltest(noise.ravel()[:5000]).pvalue > 1e-3
    assert np.array_equal(run(seeded, x), noise), "a seed must reproduce the noise in a new session"
    s = session(single_op_model("AnalogNoise", x.shape, std=0.05))
    first, second = s.run(None, {"x": x})[0], s.run(None, {"x": x})[0]
    assert not np.array_equal(first, second), "noise must be fresh per run"


def test_stochastic_rounding_is_unbiased():
    x = torch.full((200000,), 0.3)
    y = apply_op("StochasticReducePrecision", x, precision=4.0, seed=1.0)
    assert set(np.unique(y.numpy()).tolist()) == {0.25, 0.5}
    assert y.mean().item() == pytest.approx(0.3, abs=0.002)
    onnx_y = run(single_op_model("StochasticReducePrecision", (200000,), precision=4.0), x.numpy())
    assert onnx_y.mean() == pytest.approx(0.3, abs=0.002)


def test_torch_module_seeded_stream_is_reproducible_and_fresh_per_forward():
    x = torch.zeros(1000)
    first, second = AnalogOp("AnalogNoise", std=0.1, seed=3.0), AnalogOp("AnalogNoise", std=0.1, seed=3.0)
    a1, a2 = first(x), first(x)
    assert torch.equal(a1, second(x)) and not torch.equal(a1, a2)
    assert a1.std().item() == pytest.approx(0.1, rel=0.1)


def test_clamp_gradient_is_masked_inclusive():
    x = torch.tensor([-1.5, -1.0, 0.0, 1.0, 1.5], requires_grad=True)
    torch.clamp(x, -1, 1).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0, 1, 1, 1, 0])


@pytest.mark.parametrize("name,attributes,message", [
    ("ReducePrecision", {}, "needs attribute 'precision'"),
    ("ReducePrecision", {"precision": 0.5}, "precision must be"),
    ("ReducePrecision", {"precision": 4.0, "divide": 1.5}, "divide must be"),
    ("AnalogNoise", {"std": 0.0}, "std must be"),
    ("ReluGeluInterpolation", {"factor": 2.0}, "factor must be"),
    ("SmoothMish", {"temperature": -1.0}, "temperature must be"),
    ("SmoothMish", {"bogus": 1.0}, "no attribute"),
])
def test_bad_attributes_are_rejected(name, attributes, message):
    with pytest.raises(AnalogizeError, match=message):
        OPS[name].resolve(**attributes)
