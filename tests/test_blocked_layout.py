"""Noisy convolutions in ONNX Runtime's blocked layout: the same numbers, fresh weight noise, exact fallback."""
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from analogize import convert, native_library_path
from analogize.convert import PAPER_RANGES
from analogize.native.build import StepKind
from analogize.runtime.blocked_layout import (NCHWC_DOMAIN, SENTINEL_CAPACITY, _elementwise, blocked_layout_model,
                                              nchwc_block_size, sentinel_numbers, sentinels)
from analogize.model_io import copy_model
from analogize.native.fusion import RANGE_BLOCK, fuse_model_chains
from analogize.runtime.options import session_options
from analogize.runtime.sessions import create_session

pytestmark = pytest.mark.skipif("avx2" not in Path("/proc/cpuinfo").read_text(errors="ignore")
                                if Path("/proc/cpuinfo").exists() else True,
                                reason="ONNX Runtime blocks convolutions on x86 CPUs with AVX2 or AVX-512 only")


def optimiser_options():
    return session_options(None, native_library_path())


def conv_model(rng, channels=(16, 32, 16), pointwise_bias=True):
    first, middle, last = channels
    weights = {"w1": rng.normal(0, 0.3, (middle, first, 3, 3)), "b1": rng.normal(0, 0.1, middle),
               "w2": rng.normal(0, 0.3, (last, middle, 1, 1)), "b2": rng.normal(0, 0.1, last)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2" if pointwise_bias else ""], ["y"])]
    graph = helper.make_graph(nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, first, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, last, 8, 8])],
                              [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def fused(model):
    return fuse_model_chains(model)[0]


def test_weight_chains_return_on_the_blocked_weights_and_chains_run_on_blocked_tensors(rng):
    model = fused(convert(conv_model(rng), bits=6, ep=0.3, seed=1, **PAPER_RANGES).model)
    before = copy_model(model)
    blocked = blocked_layout_model(model, optimiser_options())
    assert model == before, "the caller's model is left alone"
    producer = {name: node for node in blocked.graph.node for name in node.output}
    convolutions = [n for n in blocked.graph.node if n.op_type == "Conv"]
    assert len(convolutions) == 2 and all(n.domain == NCHWC_DOMAIN for n in convolutions)
    for conv in convolutions:  # weights and biases recomputed (clamp, quantise, noise) on every run
        assert all(_elementwise(producer[name]) for name in conv.input[1:3])
    reorders = [n.op_type for n in blocked.graph.node if n.domain == NCHWC_DOMAIN and n.op_type.startswith("Reorder")]
    assert reorders == ["ReorderInput", "ReorderOutput"], "only into the layout at the input and out at the output"


def test_without_noise_the_blocked_session_equals_the_function_bodies_bit_for_bit(rng):
    # ONNX Runtime folds the function bodies' constant weight chains and blocks those convolutions too, so
    # both sessions run the same convolution on the same quantised weights
    model = convert(conv_model(rng), bits=6, noise=False, **PAPER_RANGES).model
    assert blocked_layout_model(fused(model), optimiser_options()) is not None
    x = rng.uniform(-1, 1, (2, 16, 8, 8)).astype(np.float32)
    native = create_session(model, native=True).run(None, {"x": x})[0]
    bodies = create_session(model, native=False).run(None, {"x": x})[0]
    np.testing.assert_array_equal(native, bodies)


def test_with_the_default_ranges_weights_take_their_ranges_as_inputs_and_activations_are_measured_blocked(rng):
    # per-channel weight ranges computed once from the stored weights, reordered with them; per-pixel activation
    # ranges measured across the blocked channels
    model = convert(conv_model(rng), bits=6, noise=False).model
    blocked = blocked_layout_model(fused(model), optimiser_options())
    producer = {name: node for node in blocked.graph.node for name in node.output}
    stored = {t.name: numpy_helper.to_array(t) for t in blocked.graph.initializer}
    convolutions = [n for n in blocked.graph.node if n.op_type == "Conv"]
    assert len(convolutions) == 2 and all(n.domain == NCHWC_DOMAIN for n in convolutions)
    for conv in convolutions:
        for name in conv.input[1:3]:
            chain = producer[name]
            attributes = {a.name: helper.get_attribute_value(a) for a in chain.attribute}
            assert attributes["kinds"][0] == StepKind.NORMALISE and stored[chain.input[1]].shape == stored[
                chain.input[0]].shape
    between = producer[convolutions[1].input[0]]
    attributes = {a.name: helper.get_attribute_value(a) for a in between.attribute}
    assert attributes["kinds"][0] == StepKind.RANGE and attributes[RANGE_BLOCK] in (8, 16)
    assert attributes[RANGE_BLOCK] == nchwc_block_size()
    reorders = [n.op_type for n in blocked.graph.node if n.domain == NCHWC_DOMAIN and n.op_type.startswith("Reorder")]
    assert reorders == ["ReorderInput", "ReorderOutput"]
    x = rng.uniform(-1, 1, (2, 16, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(create_session(model, native=True).run(None, {"x": x})[0],
                                  create_session(model, native=False).run(None, {"x": x})[0])


def test_with_the_default_ranges_noise_is_fresh_per_run_and_reproducible_per_seed(rng):
    base = conv_model(rng)
    model = convert(base, bits=6, ep=0.3, seed=5).model
    assert blocked_layout_model(fused(model), optimiser_options()) is not None
    x = rng.uniform(-1, 1, (2, 16, 8, 8)).astype(np.float32)
    clean = create_session(convert(base, bits=6, noise=False).model, native=False).run(None, {"x": x})[0]
    session = create_session(model, native=True)
    first, second = (session.run(None, {"x": x})[0] for _ in range(2))
    assert not np.array_equal(first, second)
    np.testing.assert_array_equal(create_session(model, native=True).run(None, {"x": x})[0], first)
    assert 0 < np.abs(first - clean).mean() < 0.1 * np.abs(clean).mean()


def test_weight_noise_is_fresh_per_run_with_the_declared_spread_and_reproducible_per_seed(rng):
    # a 1x1 convolution of ones sums a row of its noisy weights: the noise has std * sqrt(16) around the clean sum
    identity = np.eye(16, dtype=np.float32).reshape(16, 16, 1, 1) * 0.5
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "pointwise",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 1, 1])],
                              [numpy_helper.from_array(identity, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    std = 0.02
    noisy = convert(model, std=std, quantize=False, clamp=False, where=("weights",), seed=3, **PAPER_RANGES).model
    assert blocked_layout_model(fused(noisy), optimiser_options()) is not None
    session, x = create_session(noisy, native=True), np.ones((1, 16, 1, 1), np.float32)
    draws = np.stack([session.run(None, {"x": x})[0].ravel() for _ in range(300)])
    noise = draws - 0.5
    assert abs(noise.mean()) < 4 * 4 * std / np.sqrt(noise.size)
    assert noise.std() == pytest.approx(4 * std, rel=0.08)
    assert len({row.tobytes() for row in draws}) == len(draws), "fresh weight noise on every run"
    again = create_session(noisy, native=True)
    np.testing.assert_array_equal(again.run(None, {"x": x})[0].ravel(), draws[0])


def test_padded_channels_fall_back_to_the_plain_graph(rng):
    # 20 and 10 channels are padded to whole blocks of 8 (AVX2) or 16 (AVX-512): a padded weight is no
    # permutation of the stored one
    model = convert(conv_model(rng, channels=(16, 20, 10)), bits=6, ep=0.3, seed=1, **PAPER_RANGES).model
    assert blocked_layout_model(fused(model), optimiser_options()) is None
    x = rng.uniform(-1, 1, (2, 16, 8, 8)).astype(np.float32)
    first, second = (create_session(model, native=True).run(None, {"x": x})[0] for _ in range(2))
    assert first.shape == (2, 10, 8, 8) and np.array_equal(first, second)  # seeded: a new session repeats it


def test_tensors_with_equal_values_are_told_apart_by_their_sentinels(rng):
    model = conv_model(rng, channels=(16, 16, 16))
    for tensor in model.graph.initializer:
        if tensor.name in ("b1", "b2"):
            tensor.CopyFrom(numpy_helper.from_array(np.zeros(16, np.float32), tensor.name))
    converted = convert(model, bits=6, noise=False, **PAPER_RANGES).model
    assert blocked_layout_model(fused(converted), optimiser_options()) is not None
    x = rng.uniform(-1, 1, (2, 16, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(create_session(converted, native=True).run(None, {"x": x})[0],
                                  create_session(converted, native=False).run(None, {"x": x})[0])


def batch_norm_model(rng, pointwise_bias):
    model = conv_model(rng, channels=(16, 16, 16), pointwise_bias=pointwise_bias)
    model.graph.node[1].CopyFrom(helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["r1"]))
    model.graph.initializer.extend([numpy_helper.from_array(np.full(16, v, np.float32), name) for name, v in
                                    (("g", 1.0), ("be", 0.0), ("mu", 0.0), ("var", 99.0))])
    return model


def test_a_bias_the_optimiser_folds_with_a_batch_norm_keeps_its_chain_on_the_plain_tensor(rng):
    # the folded bias is the stored one scaled (zeros stay zeros): a chain put back on it would skip the scale
    model = batch_norm_model(rng, pointwise_bias=False)
    for tensor in model.graph.initializer:
        if tensor.name == "b1":
            tensor.CopyFrom(numpy_helper.from_array(np.zeros(16, np.float32), "b1"))
    noisy = convert(model, std=0.5, quantize=False, clamp=False, where=("biases",), seed=2, **PAPER_RANGES).model
    assert blocked_layout_model(fused(noisy), optimiser_options()) is None  # its only chain is kept: no gain
    x = np.zeros((2, 16, 8, 8), np.float32)
    session = create_session(noisy, native=True)
    clean = create_session(model, native=False).run(None, {"x": x})[0]
    spread = np.std([session.run(None, {"x": x})[0] - clean for _ in range(40)], axis=0)
    # bias noise 0.5 / sqrt(99) through a 1x1 convolution of 16 weights ~ N(0, 0.3^2): about 0.06 (0.6 unscaled)
    assert np.median(spread) < 0.2


def test_chains_the_optimiser_folds_stay_in_front_of_their_conv_and_the_others_are_blocked(rng):
    # the batch norm scales the first convolution's weight and bias, so their chains stay where they were; the
    # second convolution's go onto its blocked tensors
    model = batch_norm_model(rng, pointwise_bias=True)
    converted = convert(model, bits=6, noise=False, where=("weights", "biases"), **PAPER_RANGES).model
    blocked = blocked_layout_model(fused(converted), optimiser_options())
    producer = {name: node for node in blocked.graph.node for name in node.output}
    pointwise = [n for n in blocked.graph.node if n.op_type == "Conv" and n.domain == NCHWC_DOMAIN
                 and all(_elementwise(producer.get(name, onnx.NodeProto())) for name in n.input[1:3])]
    assert len(pointwise) == 1
    x = rng.uniform(-1, 1, (2, 16, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(create_session(converted, native=True).run(None, {"x": x})[0],
                               create_session(converted, native=False).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)


def test_weights_written_as_constant_nodes_are_blocked_too(rng):
    model = conv_model(rng, channels=(16, 16, 16))
    weight = next(t for t in model.graph.initializer if t.name == "w2")
    model.graph.initializer.remove(weight)
    shape = numpy_helper.from_array(np.array([16], np.int64), "b2_shape")
    bias = next(t for t in model.graph.initializer if t.name == "b2")
    model.graph.initializer.remove(bias)
    model.graph.initializer.append(shape)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["w2"], value=weight))
    model.graph.node.insert(0, helper.make_node("ConstantOfShape", ["b2_shape"], ["b2"],
                                                value=numpy_helper.from_array(np.float32([0.25]))))
    converted = convert(model, bits=6, noise=False, **PAPER_RANGES).model
    blocked = blocked_layout_model(fused(converted), optimiser_options())
    producer = {name: node for node in blocked.graph.node for name in node.output}
    convolutions = [n for n in blocked.graph.node if n.op_type == "Conv"]
    assert len(convolutions) == 2 and all(n.domain == NCHWC_DOMAIN for n in convolutions)
    assert all(_elementwise(producer[name]) for conv in convolutions for name in conv.input[1:3])
    x = rng.uniform(-1, 1, (2, 16, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(create_session(converted, native=True).run(None, {"x": x})[0],
                                  create_session(converted, native=False).run(None, {"x": x})[0])


def test_sentinels_are_distinct_finite_floats_beyond_float32_integers_and_survive_a_round_trip():
    # float32 integers stop being exact at 2^24; ResNet-50 alone has 25 million weights
    for first in (0, 2**24 - 2, 2**30, SENTINEL_CAPACITY - 4):
        values = sentinels(first, (2, 2))
        assert np.all(np.isfinite(values)) and np.all(values > 0) and len(np.unique(values)) == 4
        np.testing.assert_array_equal(sentinel_numbers(values).ravel(), np.arange(first, first + 4))
    assert np.all(sentinel_numbers(np.zeros(3, np.float32)) < 0)  # padding is never a sentinel


def test_graphs_with_control_flow_keep_the_plain_layout(rng):
    model = conv_model(rng, channels=(16, 16, 16))
    branch = helper.make_graph([helper.make_node("Identity", ["r1"], ["z"])], "branch", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    model.graph.node.append(helper.make_node("If", ["flag"], ["picked"], then_branch=branch, else_branch=branch))
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "flag"))
    model.graph.output.append(helper.make_tensor_value_info("picked", TensorProto.FLOAT, None))
    converted = convert(model, bits=6, noise=False, where=("layer-inputs",), **PAPER_RANGES).model
    assert blocked_layout_model(fused(converted), optimiser_options()) is None
    x = rng.uniform(-1, 1, (2, 16, 8, 8)).astype(np.float32)
    native = create_session(converted, native=True).run(None, {"x": x})
    bodies = create_session(converted, native=False).run(None, {"x": x})
    np.testing.assert_array_equal(native[1], bodies[1])
