"""Chains fused with their full scale r (Div -> chain -> Mul, and the Abs -> ReduceMax -> Max that measure r):
bit for bit the function bodies' numbers without noise, the unfused kernels' noise with it, and r measured in the
blocked layout, given as an input, or refused in one line."""
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from analogize.native.build import FUSED_DOMAIN, MAX_CHAIN_STEPS, StepKind, generated_steps_header
from analogize.native.fusion import RANGE_AXES, RANGE_BLOCK, fuse_elementwise_chains, fuse_model_chains
from analogize.ops.spec import DOMAIN, OPS
from analogize.passes.graph import export_model, import_model
from analogize.passes.model import sync_analog_functions
from analogize.ranges.modes import MIN_RANGE
from test_native import run

RANGE_NODES = {"Abs", "ReduceMax", "Max", "Div", "Mul"}


def ranged_nodes(source, target, axes, opset, noise, calibrated, initializers, prefix=""):
    """The nodes of ``target = r * RP(clip(source / r))`` (noise after the rounding where asked), r = max(max |x|
    over ``axes``, MIN_RANGE), or the initializer ``calibrated``, as convert writes them."""
    nodes, r = [], f"{prefix}r"
    if calibrated is not None:
        initializers.append(numpy_helper.from_array(np.float32(calibrated), r))
    else:
        reduce_inputs, reduce_attributes = [f"{prefix}magnitude"], {"keepdims": 1}
        if axes is not None and opset >= 18:
            initializers.append(numpy_helper.from_array(np.array(axes, np.int64), f"{prefix}axes"))
            reduce_inputs.append(f"{prefix}axes")
        elif axes is not None:
            reduce_attributes["axes"] = list(axes)
        nodes += [helper.make_node("Abs", [source], [f"{prefix}magnitude"], name=f"{prefix}range_abs"),
                  helper.make_node("ReduceMax", reduce_inputs, [f"{prefix}largest"], name=f"{prefix}range_max",
                                   **reduce_attributes),
                  helper.make_node("Max", [f"{prefix}largest", "floor"], [r], name=f"{prefix}range_floor")]
    nodes += [helper.make_node("Div", [source, r], [f"{prefix}n"], name=f"{prefix}normalise"),
              helper.make_node("Clip", [f"{prefix}n", "low", "high"], [f"{prefix}c"], name=f"{prefix}clamp"),
              helper.make_node("ReducePrecision", [f"{prefix}c"], [f"{prefix}q"], domain=DOMAIN, precision=16.0,
                               name=f"{prefix}quantize")]
    if noise:
        nodes.append(helper.make_node("AnalogNoise", [f"{prefix}q"], [f"{prefix}z"], domain=DOMAIN, std=0.05,
                                      seed=3.0 + len(prefix), name=f"{prefix}noise"))
    nodes.append(helper.make_node("Mul", [f"{prefix}z" if noise else f"{prefix}q", r], [target],
                                  name=f"{prefix}rescale"))
    return nodes


def ranged_model(shape, axes, opset=18, noise=False, calibrated=None, again=None):
    """``ranged_nodes`` from x to y; with ``again`` (the axes of a second range), those nodes, a Relu, and a second
    chain like the first, with a range measured on the Relu's output: convert's chains around a layer's output
    and the next layer's input."""
    initializers = [numpy_helper.from_array(np.float32(MIN_RANGE), "floor"),
                    numpy_helper.from_array(np.float32(-1), "low"), numpy_helper.from_array(np.float32(1), "high")]
    if again is None:
        nodes = ranged_nodes("x", "y", axes, opset, noise, calibrated, initializers)
    else:
        nodes = [*ranged_nodes("x", "out", axes, opset, noise, calibrated, initializers),
                 helper.make_node("Relu", ["out"], ["relu"], name="relu"),
                 *ranged_nodes("relu", "y", again, opset, noise, None, initializers, "next/")]
    graph = helper.make_graph(nodes, "ranged", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    sync_analog_functions(model)
    return model


def fused(model):
    result, count = fuse_model_chains(model)
    assert count == 1
    return result


def values(shape, rng):
    """Values over many scales, a vector of zeros (r is the floor) and signed zeros."""
    x = (rng.normal(size=shape) * np.exp(rng.uniform(-8, 8, size=shape))).astype(np.float32)
    x.reshape(-1)[:7] = [0.0, -0.0, 1e-30, -3.0, 5e5, 0.5, -0.25]
    x[0] = 0.0
    return x


# per pixel, per row, per column, per sample, per tensor; slabs larger than a task's share (pieces of a slab)
CASES = [((4, 16, 5, 6), (1,), 18), ((4, 16, 5, 6), (1,), 17), ((3, 7, 40), (-1,), 18), ((3, 7, 40), (-2,), 17),
         ((4, 16, 5, 6), (1, 2, 3), 18), ((4, 16, 5, 6), None, 18), ((2, 70000), (1,), 18),
         ((1, 8, 300, 300), (1,), 18)]


@pytest.mark.parametrize("shape, axes, opset", CASES)
def test_a_fused_ranged_chain_equals_the_function_bodies_bit_for_bit(shape, axes, opset, rng):
    model = ranged_model(shape, axes, opset)
    chain = fused(model)
    node = next(n for n in chain.graph.node if n.domain == FUSED_DOMAIN)
    assert [n.op_type for n in chain.graph.node] == ["FusedChain"], "the range nodes are taken in"
    kinds = helper.get_attribute_value(node.attribute[0])
    assert kinds == [StepKind.RANGE, StepKind.NORMALISE, StepKind.CLIP, StepKind.ANALOG_OP, StepKind.RESCALE]
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert attributes.get(RANGE_AXES) == (None if axes is None else list(axes))
    x = values(shape, rng)
    np.testing.assert_array_equal(run(chain, x), run(model, x, native=False))


@pytest.mark.parametrize("shape, axes", [((), None), ((5,), None), ((0, 5), (1,)), ((3, 0), (1,))])
def test_scalars_and_empty_tensors(shape, axes, rng):
    model = ranged_model(shape, axes)
    x = np.asarray(rng.normal(size=shape) * 3, dtype=np.float32)
    ours = run(fused(model), x)
    assert ours.shape == shape
    np.testing.assert_array_equal(ours, run(model, x, native=False))


@pytest.mark.parametrize("shape, axes", [((4, 16, 5, 6), (1,)), ((2, 70000), (1,)), ((1, 8, 300, 300), (1,))])
def test_with_noise_a_fused_ranged_chain_draws_the_unfused_kernels_streams(shape, axes, rng):
    model = ranged_model(shape, axes, noise=True)
    x = values(shape, rng)
    for ours, theirs in zip(run(fused(model), x, runs=2), run(model, x, runs=2)):
        np.testing.assert_array_equal(ours, theirs)
    assert not np.array_equal(*run(fused(model), x, runs=2)), "fresh noise on every run"


TWO_STAGES = [((4, 16, 5, 6), (1,)), ((2, 48, 30, 30), (1,)), ((3, 700), (-1,)), ((1, 8, 300, 300), (1,))]


@pytest.mark.parametrize("shape, axes", TWO_STAGES)
def test_a_range_measured_again_on_the_chain_s_output_is_one_more_stage_of_the_same_node(shape, axes, rng):
    model = ranged_model(shape, axes, again=axes)
    chain = fused(model)
    kinds = helper.get_attribute_value(chain.graph.node[0].attribute[0])
    assert [n.op_type for n in chain.graph.node] == ["FusedChain"]
    stage = [StepKind.RANGE, StepKind.NORMALISE, StepKind.CLIP, StepKind.ANALOG_OP, StepKind.RESCALE]
    assert kinds == [*stage, StepKind.RELU, *stage]
    x = values(shape, rng)
    np.testing.assert_array_equal(run(chain, x), run(model, x, native=False))
    noisy = ranged_model(shape, axes, noise=True, again=axes)
    for ours, theirs in zip(run(fused(noisy), x, runs=2), run(noisy, x, runs=2)):
        np.testing.assert_array_equal(ours, theirs)  # the unfused kernels' streams


def test_a_range_measured_again_over_other_axes_is_a_chain_of_its_own(rng):
    model = ranged_model((4, 16, 5, 6), (1,), again=(1, 2, 3))
    result, count = fuse_model_chains(model)
    assert count == 2 and [n.op_type for n in result.graph.node] == ["FusedChain"] * 2
    x = values((4, 16, 5, 6), rng)
    np.testing.assert_array_equal(run(result, x), run(model, x, native=False))


def test_a_calibrated_range_is_the_chain_s_second_input(rng):
    model = ranged_model((3, 50), None, calibrated=2.5)
    chain = fused(model)
    node = chain.graph.node[0]
    assert list(node.input) == ["x", "r"] and RANGE_AXES not in {a.name for a in node.attribute}
    x = values((3, 50), rng)
    np.testing.assert_array_equal(run(chain, x), run(model, x, native=False))


def test_a_nan_makes_its_vector_nan_and_leaves_the_others_alone(rng):
    model = ranged_model((4, 16, 5, 6), (1,))
    x = values((4, 16, 5, 6), rng)
    x[1, 9, 2, 3] = np.nan
    ours, theirs = run(fused(model), x), run(model, x, native=False)
    assert np.isnan(ours[1, :, 2, 3]).all()
    mask = np.ones(x.shape, bool)
    mask[1, :, 2, 3] = False
    np.testing.assert_array_equal(ours[mask], theirs[mask])


def chain_node_model(attributes, inputs=("x",), initializers=(), opset=17):
    node = helper.make_node("FusedChain", list(inputs), ["y"], domain=FUSED_DOMAIN, **attributes)
    graph = helper.make_graph([node], "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], list(initializers))
    imports = [helper.make_opsetid("", opset), helper.make_opsetid(FUSED_DOMAIN, 1)]
    return helper.make_model(graph, opset_imports=imports, ir_version=10)


def steps(*kinds, floor=MIN_RANGE):
    """Attributes of a chain of ``kinds``: a RANGE step's floor, a rounding of precision 16."""
    parameters = {StepKind.RANGE: [floor, 0, 0, 0], StepKind.ANALOG_OP: [16.0, 0.5, 0, 0]}
    return {"kinds": list(kinds), "ops": [list(OPS).index("ReducePrecision") if k == StepKind.ANALOG_OP else -1
                                          for k in kinds],
            "parameters": [p for k in kinds for p in parameters.get(k, [0.0] * 4)], "seeds": [-1.0] * len(kinds)}


@pytest.mark.parametrize("block", [8, 16])
@pytest.mark.parametrize("stages", [1, 2])
def test_a_range_per_pixel_is_measured_across_blocked_channels(block, stages, rng):
    plain = values((3, 32, 7, 5), rng)
    blocked = plain.reshape(3, 32 // block, block, 7, 5).transpose(0, 1, 3, 4, 2).reshape(plain.shape).copy()
    stage = (StepKind.RANGE, StepKind.NORMALISE, StepKind.ANALOG_OP, StepKind.RESCALE)
    chain = steps(*stage, *((StepKind.RELU, *stage) if stages == 2 else ()))
    expected = run(chain_node_model({**chain, RANGE_AXES: [1]}), plain)
    ours = run(chain_node_model({**chain, RANGE_AXES: [1], RANGE_BLOCK: block}), blocked)
    unblocked = ours.reshape(3, 32 // block, 7, 5, block).transpose(0, 1, 4, 2, 3).reshape(plain.shape)
    np.testing.assert_array_equal(unblocked, expected)


def test_a_range_input_holds_one_value_or_one_per_element(rng):
    x = values((6, 40), rng)
    ranges = np.abs(rng.normal(size=(6, 40))).astype(np.float32) + 0.5
    chain = steps(StepKind.NORMALISE, StepKind.ANALOG_OP, StepKind.RESCALE)
    ours = run(chain_node_model(chain, ("x", "r"), [numpy_helper.from_array(ranges, "r")]), x)
    rounded = np.sign(x / ranges) * np.ceil(np.abs(x / ranges * np.float32(16)) - np.float32(0.5)) / np.float32(16)
    np.testing.assert_array_equal(ours, (rounded.astype(np.float32) * ranges).astype(np.float32))


@pytest.mark.parametrize("attributes, inputs, message", [
    ({RANGE_AXES: [1, 3]}, ("x",), "range_axes must name one contiguous run of the input's 4 axes"),
    ({RANGE_AXES: [4]}, ("x",), "range_axes must name one contiguous run"),
    ({RANGE_AXES: [2], RANGE_BLOCK: 3}, ("x",), "a blocked range needs one range axis whose size is a multiple"),
    ({}, ("x", "r"), "a chain measures its range or reads it from its second input, not both"),
])
def test_ranges_the_kernel_cannot_take_are_one_line_errors(attributes, inputs, message):
    model = chain_node_model({**steps(StepKind.RANGE, StepKind.NORMALISE, StepKind.RESCALE), **attributes}, inputs,
                             [numpy_helper.from_array(np.float32(2), "r")])
    with pytest.raises(Exception, match=message):
        run(model, np.ones((2, 3, 4, 5), np.float32))


def test_a_chain_without_a_range_to_scale_by_and_a_late_range_step_are_refused():
    with pytest.raises(Exception, match="neither measures one nor has a second input"):
        run(chain_node_model(steps(StepKind.NORMALISE, StepKind.ANALOG_OP)), np.ones(4, np.float32))
    with pytest.raises(Exception, match="a chain measures a range again only after measuring one first"):
        run(chain_node_model(steps(StepKind.ANALOG_OP, StepKind.RANGE)), np.ones(4, np.float32))
    wrong = chain_node_model(steps(StepKind.NORMALISE, StepKind.RESCALE), ("x", "r"),
                             [numpy_helper.from_array(np.ones(3, np.float32), "r")])
    with pytest.raises(Exception, match="the range input must be float32 with one value or one per element"):
        run(wrong, np.ones(4, np.float32))


def test_a_range_read_elsewhere_or_a_chain_that_stops_before_its_mul_keeps_the_standard_nodes():
    shared = ranged_model((2, 5), (1,))
    shared.graph.output.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))  # r read twice
    interrupted = ranged_model((2, 5), (1,))
    interrupted.graph.node.insert(5, helper.make_node("Sigmoid", ["q"], ["s"]))  # no fusable step between
    interrupted.graph.node[-1].input[0] = "s"
    for model in (shared, interrupted):
        result, _ = fuse_model_chains(model)
        assert RANGE_NODES <= {n.op_type for n in result.graph.node}
        chain = next(n for n in result.graph.node if n.domain == FUSED_DOMAIN)
        assert StepKind.RANGE not in helper.get_attribute_value(chain.attribute[0])


@pytest.mark.parametrize("calibrated", [None, 0.5])
def test_a_one_value_range_or_floor_of_higher_rank_than_the_chain_is_not_taken_in(calibrated, rng):
    """A (1, 1, 1) r or floor broadcasts a rank-2 input up to rank 3, which a fused node, shaped as its input,
    cannot give: the standard nodes stay, and the output keeps the shape the model computes."""
    model = ranged_model((3, 5), (1,), calibrated=calibrated)
    name = "r" if calibrated is not None else "floor"
    tensor = next(t for t in model.graph.initializer if t.name == name)
    tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).reshape(1, 1, 1), name))
    result, _ = fuse_model_chains(model)
    assert "Div" in {n.op_type for n in result.graph.node}
    x = values((3, 5), rng)
    assert run(result, x).shape == run(model, x, native=False).shape == (1, 3, 5)


def test_training_s_fusion_leaves_the_ranges_to_the_graph():
    graph = import_model(ranged_model((2, 5), (1,)))
    assert fuse_elementwise_chains(graph, straight_through_only=True) == 1
    assert RANGE_NODES <= {n.op for n in graph.nodes}
    assert len(export_model(graph, ranged_model((2, 5), (1,))).graph.node) == 6


def test_a_ranged_chain_counts_its_range_step_against_the_gpu_s_limit():
    model = ranged_model((2, 5), (1,))
    for k in range(MAX_CHAIN_STEPS):  # Relus after the Mul, more than one launch takes
        model.graph.node[-1].output[0] = f"relu{k}"
        model.graph.node.append(helper.make_node("Relu", [f"relu{k}"], ["y"]))
    kinds = helper.get_attribute_value(fuse_model_chains(model)[0].graph.node[0].attribute[0])
    assert len(kinds) == MAX_CHAIN_STEPS and kinds[0] == StepKind.RANGE


def test_the_cpp_step_kinds_are_generated_from_the_python_declaration():
    header = generated_steps_header()
    for kind in StepKind:
        name = "k" + "".join(word.capitalize() for word in kind.name.split("_"))
        assert f"{name} = {kind.value}" in header
    assert "kAnalogOp = 0" in header and "kMaxAttributes = 4" in header
