"""Layers inside If/Loop bodies and recurrent layers (LSTM, GRU, RNN) become analog: the converted models pass
ONNX's full check, run in ONNX Runtime, give the original outputs with the chain elements off, and carry noise
that follows the seed; evaluate sets the precision and noise of the chains inside bodies."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from analogize.convert import PAPER_RANGES, ConvertOptions, convert
from analogize.data import Dataset
from analogize.errors import AnalogizeError
from analogize.evaluate.engine import Grid, _CellModels, evaluate
from analogize.ops.spec import DOMAIN
from analogize.passes.chains import RECURRENT_NOTE, remove_analog_chains
from analogize.passes.deterministic import noise_free
from analogize.passes.graph import import_model
from analogize.passes.model import export_with_functions
from analogize.runtime.sessions import create_session

FLOAT = TensorProto.FLOAT
OFF = {"noise": False, "quantize": False, "clamp": False}
CLAMP_ONLY = {"noise": False, "quantize": False}
RANGES = {"unit": PAPER_RANGES, "default": {}}


def value(name, shape, elem=FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def constant_node(output, array):
    return helper.make_node("Constant", [], [output], value=numpy_helper.from_array(array, f"{output}_value"))


def finish(graph):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


def if_model(rng, scale=0.3):
    """x [2, 3, 6, 6] -> If(sum(x) > 0): then Conv (outer-scope weight, body-initializer bias) -> Relu -> Flatten ->
    MatMul (outer-scope weight) + Add (a body Constant's bias); else Flatten -> MatMul (a body Constant's
    weight). A Gemm after the If is a top-level layer."""
    w = lambda *shape: rng.uniform(-scale, scale, shape).astype(np.float32)
    then_branch = helper.make_graph(
        [helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="Conv_3"),
         helper.make_node("Relu", ["c"], ["r"], name="Relu_4"),
         helper.make_node("Flatten", ["r"], ["f"], name="Flatten_5"),
         helper.make_node("MatMul", ["f", "then_w"], ["m"], name="MatMul_6"),
         constant_node("then_b", w(5)),
         helper.make_node("Add", ["m", "then_b"], ["then_out"], name="Add_7")],
        "then", [], [value("then_out", [2, 5])], [numpy_helper.from_array(w(4), "conv_b")])
    else_branch = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["g"], name="Flatten_8"),
         constant_node("else_w", w(108, 5)),
         helper.make_node("MatMul", ["g", "else_w"], ["else_out"], name="MatMul_9")],
        "else", [], [value("else_out", [2, 5])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="ReduceSum_0"),
             helper.make_node("Greater", ["s", "zero"], ["flag"], name="Greater_1"),
             helper.make_node("If", ["flag"], ["h"], then_branch=then_branch, else_branch=else_branch, name="If_0"),
             helper.make_node("Gemm", ["h", "head_w", "head_b"], ["y"], name="Gemm_10")]
    return finish(helper.make_graph(nodes, "if_model", [value("x", [2, 3, 6, 6])], [value("y", [2, 4])],
                                    [numpy_helper.from_array(a, n) for n, a in (
                                        ("zero", np.array(0, np.float32)), ("conv_w", w(4, 3, 3, 3)),
                                        ("then_w", w(64, 5)), ("head_w", w(5, 4)), ("head_b", w(4)))]))


def branch_feeds(rng):
    """One feed per branch: the sign of sum(x) picks it."""
    x = np.abs(rng.uniform(-1, 1, (2, 3, 6, 6))).astype(np.float32)
    return [{"x": x}, {"x": -x}]


def loop_model(rng, scale=0.5):
    """h [2, 4] -> three steps of h = Tanh(h @ W) in a Loop body, W an outer-scope initializer."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h_in", "loop_w"], ["m"], name="MatMul_1"),
         helper.make_node("Tanh", ["m"], ["h_out"], name="Tanh_2"),
         helper.make_node("Identity", ["cond_in"], ["cond_out"], name="Identity_3")],
        "body", [value("i", [], TensorProto.INT64), value("cond_in", [], TensorProto.BOOL), value("h_in", [2, 4])],
        [value("cond_out", [], TensorProto.BOOL), value("h_out", [2, 4])])
    return finish(helper.make_graph(
        [helper.make_node("Loop", ["steps", "", "h"], ["y"], body=body, name="Loop_0")], "loop_model",
        [value("h", [2, 4])], [value("y", [2, 4])],
        [numpy_helper.from_array(np.array(3, np.int64), "steps"),
         numpy_helper.from_array(rng.uniform(-scale, scale, (4, 4)).astype(np.float32), "loop_w")]))


STEPS, BATCH, INPUTS, HIDDEN = 5, 2, 3, 4
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
RECURRENT_CASES = [("LSTM", "forward", True), ("LSTM", "bidirectional", True), ("GRU", "reverse", False),
                   ("RNN", "bidirectional", True)]


def recurrent_model(rng, op, direction, lengths, scale=0.4):
    """X [steps, batch, inputs] -> one recurrent layer (with sequence_lens when ``lengths``) -> Y, Y_h."""
    directions = 2 if direction == "bidirectional" else 1
    gates = GATES[op] * HIDDEN
    w = lambda *shape: rng.uniform(-scale, scale, shape).astype(np.float32)
    inputs = [value("x", [STEPS, BATCH, INPUTS])] + \
        ([value("lengths", [BATCH], TensorProto.INT32)] if lengths else []) + [value("h0", [directions, BATCH, HIDDEN])]
    attributes = {"hidden_size": HIDDEN, "direction": direction, **({"linear_before_reset": 1} if op == "GRU" else {})}
    node = helper.make_node(op, ["x", "W", "R", "B", "lengths" if lengths else "", "h0"], ["Y", "Y_h"],
                            name=f"{op}_0", **attributes)
    return finish(helper.make_graph(
        [node], f"{op.lower()}_model", inputs,
        [value("Y", [STEPS, directions, BATCH, HIDDEN]), value("Y_h", [directions, BATCH, HIDDEN])],
        [numpy_helper.from_array(w(directions, gates, INPUTS), "W"),
         numpy_helper.from_array(w(directions, gates, HIDDEN), "R"),
         numpy_helper.from_array(w(directions, 2 * gates), "B")]))


def recurrent_feeds(rng, model):
    feeds = {v.name: rng.uniform(-1, 1, [d.dim_value for d in v.type.tensor_type.shape.dim]).astype(np.float32)
             for v in model.graph.input if v.type.tensor_type.elem_type == FLOAT}
    if any(v.name == "lengths" for v in model.graph.input):
        feeds["lengths"] = np.array([STEPS, 3], np.int32)
    return feeds


def lstm_in_if_model(rng, scale=0.4):
    """An If whose then branch holds an LSTM with Constant-node weights, as exporters inline one (silero-vad)."""
    w = lambda *shape: rng.uniform(-scale, scale, shape).astype(np.float32)
    then_branch = helper.make_graph(
        [constant_node("lw", w(1, 4 * HIDDEN, INPUTS)), constant_node("lr", w(1, 4 * HIDDEN, HIDDEN)),
         constant_node("lb", w(1, 8 * HIDDEN)),
         helper.make_node("LSTM", ["x", "lw", "lr", "lb"], ["ly"], name="LSTM_1", hidden_size=HIDDEN),
         helper.make_node("Squeeze", ["ly", "one"], ["then_out"], name="Squeeze_2")],
        "then", [], [value("then_out", [STEPS, BATCH, HIDDEN])])
    else_branch = helper.make_graph([helper.make_node("Expand", ["zero", "shape"], ["else_out"])], "else", [],
                                    [value("else_out", [STEPS, BATCH, HIDDEN])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["flag"]),
             helper.make_node("If", ["flag"], ["y"], then_branch=then_branch, else_branch=else_branch, name="If_0")]
    return finish(helper.make_graph(
        nodes, "lstm_in_if", [value("x", [STEPS, BATCH, INPUTS])], [value("y", [STEPS, BATCH, HIDDEN])],
        [numpy_helper.from_array(np.array(0, np.float32), "zero"),
         numpy_helper.from_array(np.array([1], np.int64), "one"),
         numpy_helper.from_array(np.array([STEPS, BATCH, HIDDEN], np.int64), "shape")]))


def plain_outputs(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def checked_outputs(model, feeds, deterministic=True):
    """The converted model passes the full check and runs in a plain session and in the package's; without
    random nodes both give the same numbers."""
    onnx.checker.check_model(model, full_check=True)
    plain, ours = plain_outputs(model, feeds), create_session(model).run(None, feeds)
    if deterministic:
        for a, b in zip(plain, ours):
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
    return plain


def assert_close(outputs, reference):
    for out, ref in zip(outputs, reference):
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * float(np.abs(ref).max()))


def graphs(graph):
    """``graph`` and every graph nested in it, with their path."""
    yield "", graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                for path, inner in graphs(attribute.g):
                    yield f"{node.name}/{attribute.name}/{path}", inner


def analog_ops(model):
    return {path: [n.op_type for n in graph.node if n.domain == DOMAIN] for path, graph in graphs(model.graph)}


def test_layers_inside_if_branches_convert_and_are_named_by_path(rng):
    model = if_model(rng)
    result = convert(model, seed=0)
    report = result.report
    assert sorted(report["layers"]) == ["Gemm_10", "If_0/else_branch/MatMul_9", "If_0/then_branch/Conv_3",
                                        "If_0/then_branch/MatMul_6"]
    assert report["skipped_layers"] == [] and report["notes"] == []
    sites = {(site["site"], site["tensor"]): site["layer"] for site in report["inserted"]}
    # weights as an outer-scope initializer, a body initializer and body Constant nodes all get chains
    assert sites[("weight", "conv_w")] == "If_0/then_branch/Conv_3"
    assert sites[("bias", "conv_b")] == "If_0/then_branch/Conv_3"
    assert sites[("weight", "else_w")] == "If_0/else_branch/MatMul_9"
    assert sites[("bias", "then_b")] == "If_0/then_branch/MatMul_6"  # the Add after the MatMul is its bias
    assert sites[("layer-output", "else_out")] == "If_0/else_branch/MatMul_9"
    # x is read at the top level and in both branches: one input chain serves every read
    assert [key for key in sites if key[1] == "x"] == [("input", "x")]
    ops = analog_ops(result.model)
    assert ops["If_0/then_branch/"] and ops["If_0/else_branch/"] and ops[""]
    converted = result.model
    assert "conv_w" in {t.name for t in converted.graph.initializer}  # outer weights stay outside the body
    defined = [name for _, graph in graphs(converted.graph) for name in
               [*(t.name for t in graph.initializer), *(o for n in graph.node for o in n.output)]]
    assert len(defined) == len(set(defined))  # new names never clash, across the graph and its bodies
    for feeds in branch_feeds(rng):
        checked_outputs(converted, feeds, deterministic=False)
    excluded = convert(model, exclude=("If_0/then_branch/Conv_3",)).report
    assert {"node": "If_0/then_branch/Conv_3", "op_type": "Conv", "reason": "excluded by --exclude"} in \
        excluded["skipped_layers"]
    assert not any("--exclude" in line for line in excluded["warnings"])


@pytest.mark.parametrize("ranges", RANGES)
@pytest.mark.parametrize("elements", [OFF, CLAMP_ONLY], ids=["off", "clamp-only"])
def test_if_bodies_keep_the_original_outputs_with_the_elements_off(rng, ranges, elements):
    model = if_model(rng, scale=0.02)  # inside [-1, 1] everywhere: the unit range's clamp cuts nothing
    converted = convert(model, ConvertOptions(**elements, **RANGES[ranges])).model
    for feeds in branch_feeds(rng):
        assert_close(checked_outputs(converted, feeds), plain_outputs(model, feeds))


def test_noise_inside_bodies_changes_the_outputs_and_follows_the_seed(rng):
    model = if_model(rng)
    body_only = {"where": ("layer-inputs", "weights", "biases", "layer-outputs"), "exclude": ("Gemm_10",)}
    first, second = (convert(model, seed=seed, **body_only).model for seed in (1, 2))
    ops = analog_ops(first)
    assert ops[""] == [] and "AnalogNoise" in ops["If_0/then_branch/"] and "AnalogNoise" in ops["If_0/else_branch/"]
    # the function bodies live at model level, for ops used only inside bodies too
    assert sorted(f.name for f in first.functions) == ["AnalogNoise", "ReducePrecision"]
    assert any(entry.domain == DOMAIN for entry in first.opset_import)
    seeds = [a.f for _, graph in graphs(first.graph) for n in graph.node if n.op_type == "AnalogNoise"
             for a in n.attribute if a.name == "seed"]
    assert sorted(seeds) == [1.0 + k for k in range(len(seeds))] and len(seeds) == 11
    unseeded = convert(model, **body_only).model
    assert not [a for _, graph in graphs(unseeded.graph) for n in graph.node if n.domain == DOMAIN
                for a in n.attribute if a.name == "seed"]
    for feeds in branch_feeds(rng):
        clean = plain_outputs(model, feeds)[0]
        noisy = checked_outputs(first, feeds, deterministic=False)[0]
        assert not np.allclose(noisy, clean, rtol=1e-4, atol=0)
        assert not np.allclose(noisy, checked_outputs(second, feeds, deterministic=False)[0], rtol=1e-4, atol=0)
        np.testing.assert_array_equal(plain_outputs(first, feeds)[0], noisy)  # seeded: the same draw each session


def test_chains_in_bodies_come_out_and_inline(rng):
    model = if_model(rng)
    converted = convert(model, bits=6, seed=3).model
    graph = import_model(converted)
    assert remove_analog_chains(graph) > 0
    clean = export_with_functions(graph, converted)
    assert not any(analog_ops(clean).values()) and not clean.functions
    deterministic = noise_free(converted)
    assert not any("AnalogNoise" in ops for ops in analog_ops(deterministic).values())
    inlined = convert(model, bits=6, noise=False, inline=True).model
    assert not any(analog_ops(inlined).values()) and not inlined.functions
    for feeds in branch_feeds(rng):
        np.testing.assert_array_equal(checked_outputs(clean, feeds)[0], plain_outputs(model, feeds)[0])
        assert_close(checked_outputs(inlined, feeds), checked_outputs(convert(model, bits=6, noise=False).model, feeds))


def test_a_loop_body_layer_converts(rng):
    model = loop_model(rng)
    feeds = {"h": rng.uniform(-1, 1, (2, 4)).astype(np.float32)}
    for ranges in RANGES.values():
        result = convert(model, ConvertOptions(**OFF, **ranges))
        assert result.report["layers"] == ["Loop_0/body/MatMul_1"]
        assert_close(checked_outputs(result.model, feeds), plain_outputs(model, feeds))
    noisy = [checked_outputs(convert(model, seed=seed, where=("layer-inputs", "weights")).model, feeds,
                             deterministic=False)[0] for seed in (1, 2)]
    assert analog_ops(convert(model, where=("weights",)).model)[""] == []
    assert not np.allclose(noisy[0], plain_outputs(model, feeds)[0], rtol=1e-4, atol=0)
    assert not np.allclose(noisy[0], noisy[1], rtol=1e-4, atol=0)


def test_calibrated_activations_leave_body_layers_digital_with_the_reason(rng, tmp_path):
    np.savez(tmp_path / "cal.npz", x=rng.uniform(-1, 1, (16, 3, 6, 6)).astype(np.float32))
    report = convert(if_model(rng), calibrate=f"npz:{tmp_path / 'cal.npz'}", seed=1).report
    assert report["layers"] == ["Gemm_10"]
    assert {entry["node"] for entry in report["skipped_layers"]} == {
        "If_0/else_branch/MatMul_9", "If_0/then_branch/Conv_3", "If_0/then_branch/MatMul_6"}
    assert all("calibration reads top-level tensors only" in entry["reason"] for entry in report["skipped_layers"])


@pytest.mark.parametrize("op,direction,lengths", RECURRENT_CASES)
def test_recurrent_layers_get_weight_bias_and_input_chains(rng, op, direction, lengths):
    model = recurrent_model(rng, op, direction, lengths)
    report = convert(model, seed=0).report
    assert report["layers"] == [f"{op}_0"] and report["skipped_layers"] == []
    assert report["notes"] == [{"layer": f"{op}_0", "note": RECURRENT_NOTE}]
    sites = {(site["site"], site["tensor"]): site["range"] for site in report["inserted"]}
    rows = (2 if direction == "bidirectional" else 1) * GATES[op] * HIDDEN
    assert sites[("weight", "W")]["scope"] == sites[("weight", "R")]["scope"] == "per output channel"
    assert sites[("weight", "W")]["channels"] == sites[("weight", "R")]["channels"] == rows
    assert sites[("bias", "B")]["scope"] == "per tensor"
    assert sites[("input", "x")]["scope"] == "per time step"
    assert not any(site == "layer-output" for site, _ in sites)  # the op's matrix-vector outputs lie inside it
    inner = {(site["site"], site["tensor"]) for site in
             convert(model, where=("layer-inputs", "weights", "biases")).report["inserted"]}
    assert inner == {("layer-input", "x"), ("weight", "W"), ("weight", "R"), ("bias", "B")}


@pytest.mark.parametrize("op,direction,lengths", RECURRENT_CASES)
@pytest.mark.parametrize("ranges", RANGES)
@pytest.mark.parametrize("elements", [OFF, CLAMP_ONLY], ids=["off", "clamp-only"])
def test_recurrent_layers_keep_the_original_outputs_with_the_elements_off(rng, op, direction, lengths, ranges,
                                                                          elements):
    model = recurrent_model(rng, op, direction, lengths)
    feeds = recurrent_feeds(rng, model)
    converted = convert(model, ConvertOptions(**elements, **RANGES[ranges])).model
    assert_close(checked_outputs(converted, feeds), plain_outputs(model, feeds))


@pytest.mark.parametrize("op,direction,lengths", RECURRENT_CASES)
def test_noise_reaches_recurrent_layers_and_follows_the_seed(rng, op, direction, lengths):
    model = recurrent_model(rng, op, direction, lengths)
    feeds = recurrent_feeds(rng, model)
    clean = plain_outputs(model, feeds)
    # the noise on W, R, B and X alone: no chain on the graph inputs
    first, second = (checked_outputs(convert(model, seed=seed, where=("layer-inputs", "weights", "biases")).model,
                                     feeds, deterministic=False) for seed in (1, 2))
    for a, b, c in zip(first, second, clean):
        assert not np.allclose(a, c, rtol=1e-4, atol=0) and not np.allclose(a, b, rtol=1e-4, atol=0)


def test_a_recurrent_layer_inside_an_if_body_converts(rng):
    model = lstm_in_if_model(rng)
    x = rng.uniform(0, 1, (STEPS, BATCH, INPUTS)).astype(np.float32)
    report = convert(model, seed=0).report
    assert report["layers"] == ["If_0/then_branch/LSTM_1"]
    assert report["notes"][0]["layer"] == "If_0/then_branch/LSTM_1"
    assert {(site["site"], site["tensor"]) for site in report["inserted"]} >= {("weight", "lw"), ("weight", "lr"),
                                                                               ("bias", "lb")}
    for ranges in RANGES.values():
        assert_close(checked_outputs(convert(model, ConvertOptions(**CLAMP_ONLY, **ranges)).model, {"x": x}),
                     plain_outputs(model, {"x": x}))
    noisy = checked_outputs(convert(model, seed=1).model, {"x": x}, deterministic=False)[0]
    assert not np.allclose(noisy, plain_outputs(model, {"x": x})[0], rtol=1e-4, atol=0)


def test_an_evaluate_grid_sets_the_precision_and_noise_of_chains_in_bodies(rng):
    model = if_model(rng)
    options = ConvertOptions(where=("layer-inputs", "weights", "biases", "layer-outputs"))
    grid = Grid(bits=(2, 10), ep=(0.0, 0.3), repeats=1, seed=3)
    builder = _CellModels(model, options, grid)
    for cell in grid.cells():
        built, settings = builder.build(cell)
        body_nodes = [node for path, graph in graphs(built.graph) if path for node in graph.node
                      if node.domain == DOMAIN]
        precisions = {a.f for n in body_nodes if n.op_type == "ReducePrecision" for a in n.attribute
                      if a.name == "precision"}
        assert precisions == {2.0 ** cell.bits}, cell.key
        noise = [n for n in body_nodes if n.op_type == "AnalogNoise"]
        if cell.ep:
            assert [a.f for n in noise for a in n.attribute if a.name == "std"] == \
                [pytest.approx(settings["std"])] * len(noise)
            assert len({a.f for n in noise for a in n.attribute if a.name == "seed"}) == len(noise) == 11
        else:
            assert not noise
    x = rng.uniform(-1, 1, (8, 3, 6, 6)).astype(np.float32)
    result = evaluate(model, Dataset("uniform", x, None, "nchw"), Grid(bits=(2, 10), ep=(0.0,), repeats=1),
                      options, fidelity=True)
    coarse, fine = result["cells"]
    assert coarse["rel_error_mean"] > 10 * fine["rel_error_mean"] > 0
    # a converted model's body chains are varied too
    converted = convert(model, options, bits=6, seed=0).model
    varied, _ = _CellModels(converted, ConvertOptions(), Grid(bits=(3,), ep=(0.0,))).build(
        next(iter(Grid(bits=(3,), ep=(0.0,)).cells())))
    assert {a.f for path, graph in graphs(varied.graph) if path for n in graph.node
            if n.op_type == "ReducePrecision" for a in n.attribute if a.name == "precision"} == {8.0}


def test_review_edges_of_bodies_and_recurrent_layers(rng):
    """A recurrent layer's initial state stays digital (one range over its [directions, batch, hidden] would
    mix samples); a body input named like an outer constant is data, not a weight; swaps and placements that
    reach nothing say so."""
    model = recurrent_model(rng, "LSTM", "forward", False)
    report = convert(model, bits=6, ep=0.3).report
    assert {site["tensor"] for site in report["inserted"] if site["site"] == "input"} == {"x"}  # h0 left digital
    feeds = recurrent_feeds(rng, model)
    converted = convert(model, bits=6, noise=False).model
    moved = dict(feeds, h0=feeds["h0"].copy())
    moved["h0"][:, 1] *= 3  # sample 1's state only: sample 0's output must not move
    np.testing.assert_array_equal(checked_outputs(converted, feeds)[0][:, :, 0],
                                  checked_outputs(converted, moved)[0][:, :, 0])
    only_outputs = convert(model, bits=6, where=("layer-outputs",)).report
    assert any("no chain was inserted" in line for line in only_outputs["warnings"])

    shadowed = loop_model(rng)  # the body reads h_in; an outer initializer of that name must not make it a weight
    shadowed.graph.initializer.append(numpy_helper.from_array(np.ones((2, 4), np.float32), "h_in"))
    sites = convert(shadowed, bits=6, ep=0.3).report["inserted"]
    assert not [site for site in sites if site["site"] == "weight" and site["tensor"] == "h_in"]
    assert [site for site in sites if site["site"] == "weight" and site["tensor"] == "loop_w"]

    relu_inside = loop_model(rng)
    relu_inside.graph.node[0].attribute[0].g.node[1].op_type = "Relu"
    warnings = convert(relu_inside, bits=6, activation="gelu").report["warnings"]
    assert any("1 ReLUs lie inside If/Loop/Scan bodies" in line for line in warnings)


def test_the_interpreter_sizes_resize_outputs_in_float32_as_onnx_runtime_does():
    import torch

    from analogize.training.onnx_torch import to_torch

    model = helper.make_model(helper.make_graph(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")], "r", [value("x", [1, 1, 5, 5])],
        [value("y", None)], [numpy_helper.from_array(np.array([1, 1, 2.6, 1.4], np.float32), "scales")]),
        opset_imports=[helper.make_opsetid("", 17)])
    x = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ours = to_torch(model, native=False)(torch.from_numpy(x))
    assert tuple(ours.shape) == theirs.shape == (1, 1, 13, 7)


def test_calibration_data_with_dynamic_ranges_reads_only_top_level_tensors_and_a_plan_cannot_calibrate_a_body(
        rng, tmp_path):
    """--calibrate with --activation-range dynamic records what the data did at the top-level sites (body tensors
    are not the model's outputs to read); a plan asking for calibrated ranges on a body layer is refused."""
    np.savez(tmp_path / "cal.npz", x=rng.uniform(-1, 1, (16, 3, 6, 6)).astype(np.float32))
    data = f"npz:{tmp_path / 'cal.npz'}"
    report = convert(if_model(rng), calibrate=data, activation_range="dynamic", seed=1).report
    assert len(report["layers"]) == 4
    seen = {site["tensor"] for site in report["inserted"] if "largest_seen" in site["range"]}
    assert seen and seen <= {"x", "h", "y"}
    plan = {"format": "analogize.plan", "version": 1,
            "layers": {"If_0/then_branch/Conv_3": {"activation_range": "calibrated"}}}
    with pytest.raises(AnalogizeError, match=r"calibrated ranges inside an If/Loop/Scan body \(If_0/then_branch/\)"):
        convert(if_model(rng), calibrate=data, activation_range="dynamic", plan=plan)
