"""Whatever model a user brings: several and integer inputs, inputs that come whole per sample, any output shape
(sequences, time-major, maps, integers), scored against numpy re-computations from direct ONNX Runtime runs; and
convert's report of the layers it leaves digital. The graphs are look-alikes of the real wheel models the closing
notes name (a BERT-style encoder, a VAD with a recurrent state and a sample rate, a CTC recogniser)."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from analogize.convert import ConvertOptions, convert
from analogize.data import Feeds, model_feeds
from analogize.errors import AnalogizeError
from analogize.evaluate.engine import Grid, _CellModels, evaluate
from analogize.evaluate.results import csv_rows, table
from analogize.runtime.sessions import create_session
from conftest import session
from test_cli import analogize

FLOAT = TensorProto.FLOAT
EXACT = ConvertOptions(bits=None, precision=2.0**20, clamp=False)  # chains that change almost nothing


def make(nodes, inputs, outputs, initializers, opset=17):
    graph = helper.make_graph(nodes, "look-alike", inputs, outputs,
                              [numpy_helper.from_array(value, name) for name, value in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.fixture(scope="module")
def encoder():
    """BERT-like: int64 token ids and mask in; per-token logits [n, L, 5], pooled logits [n, 5] and the argmax
    ids (int64) out."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["embedded"]),
             helper.make_node("Cast", ["mask"], ["mask_float"], to=FLOAT),
             helper.make_node("Unsqueeze", ["mask_float", "last"], ["mask_3d"]),
             helper.make_node("Mul", ["embedded", "mask_3d"], ["masked"]),
             helper.make_node("MatMul", ["masked", "w"], ["tokens"]),
             helper.make_node("ReduceMean", ["tokens"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("ArgMax", ["tokens"], ["token_ids"], axis=-1, keepdims=0)]
    return make(nodes,
                [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "length"]),
                 helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "length"])],
                [helper.make_tensor_value_info("tokens", FLOAT, ["batch", "length", 5]),
                 helper.make_tensor_value_info("pooled", FLOAT, ["batch", 5]),
                 helper.make_tensor_value_info("token_ids", TensorProto.INT64, ["batch", "length"])],
                {"table": rng.normal(0, 3, (50, 8)).astype(np.float32), "w": rng.normal(0, 1, (8, 5)).astype(np.float32),
                 "last": np.array([-1], np.int64)})


@pytest.fixture(scope="module")
def token_data(tmp_path_factory):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 50, (9, 7))
    mask = (rng.uniform(size=(9, 7)) > 0.2).astype(np.int64)
    path = tmp_path_factory.mktemp("tokens") / "tokens.npz"
    np.savez(path, ids=ids, mask=mask)  # int64 ids, as numpy saves them
    return path, {"ids": ids, "mask": mask}


def metrics_by_numpy(outputs, clean, axis):
    """The fidelity metrics of one pass, computed from scratch."""
    outputs, clean = np.concatenate(outputs).astype(np.float64), np.concatenate(clean).astype(np.float64)
    return {"agreement": float(np.mean(outputs.argmax(axis) == clean.argmax(axis))),
            "rel_error": float(np.linalg.norm(outputs - clean) / np.linalg.norm(clean)),
            "cosine": float(np.sum(outputs * clean) / np.linalg.norm(outputs) / np.linalg.norm(clean))}


def test_several_integer_inputs_and_every_output_are_scored_as_numpy_scores_them(encoder, token_data):
    path, arrays = token_data
    grid = Grid(bits=(4,), ep=(0.3,), repeats=1, seed=5)
    result = evaluate_file_model(encoder, path, grid, batch_size=4)
    assert result["data"]["inputs"] == {"ids": [7], "mask": [7]} and result["output"] == "tokens"
    described = {entry["name"]: entry for entry in result["data"]["outputs"]}
    assert described["tokens"]["class_axis"] == 2 and described["pooled"]["class_axis"] == 1
    assert described["token_ids"]["class_axis"] is None and described["token_ids"]["dtype"] == "int64"
    assert result["data"]["classes"] == 5 and not result["data"]["labels"]

    # the cell's own model in a session of its own (evaluate's kernels): its first pass draws the evaluation's noise
    builder = _CellModels(encoder, ConvertOptions(), grid)
    cell_model, _ = builder.build(grid.cells()[0])
    noisy, clean = create_session(cell_model), session(encoder)
    feeds = [{name: array[start:start + 4] for name, array in arrays.items()} for start in range(0, 9, 4)]
    noisy_out = [noisy.run(None, feed) for feed in feeds]
    clean_out = [clean.run(None, feed) for feed in feeds]
    cell = result["cells"][0]
    for k, (name, axis) in enumerate((("tokens", 2), ("pooled", 1))):
        expected = metrics_by_numpy([o[k] for o in noisy_out], [c[k] for c in clean_out], axis)
        for metric, value in expected.items():
            assert cell["outputs"][name][f"{metric}_mean"] == pytest.approx(value, rel=1e-9, abs=1e-12), (name, metric)
    ids_match = np.mean(np.concatenate([o[2] for o in noisy_out]) == np.concatenate([c[2] for c in clean_out]))
    assert cell["outputs"]["token_ids"]["agreement_mean"] == pytest.approx(ids_match)
    assert "rel_error_mean" not in cell["outputs"]["token_ids"]  # integers: equal or not
    assert cell["agreement_mean"] == cell["outputs"]["tokens"]["agreement_mean"] < 1.0
    assert 0 < cell["rel_error_mean"] < 1 and cell["snr_db_mean"] > 0

    rows = csv_rows(result)
    assert [(row["kind"], row["output"]) for row in rows if row["kind"] == "cell"] == [
        ("cell", "tokens"), ("cell", "pooled"), ("cell", "token_ids")]
    shown = table(result)
    assert "each output:" in shown and "token_ids" in shown and "rel. error" in shown


def evaluate_file_model(model, path, grid, **settings):
    feeds = model_feeds(f"npz:{path}", model)
    return evaluate(model, feeds, grid, **settings)


def test_a_nearly_exact_cell_agrees_everywhere_and_names_what_it_scores(encoder, token_data):
    path, _ = token_data
    result = evaluate_file_model(encoder, path, Grid(ep=(0.0,), repeats=1), options=EXACT)
    cell = result["cells"][0]
    assert all(metrics["agreement_mean"] == 1.0 for metrics in cell["outputs"].values())
    assert cell["rel_error_mean"] < 1e-5 and cell["cosine_mean"] == pytest.approx(1.0)
    assert any("headline numbers from output 'tokens', the first of 3" in line
               for line in result["data"]["adaptations"])


def vad_like():
    """A VAD's interface: audio [1, 8] and a recurrent state [2, 1, 4] in (batch inside, on axis 1), an int64
    sample rate as a scalar; a probability [1, 1] and the new state out."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("MatMul", ["audio", "w"], ["hidden"]),
             helper.make_node("ReduceSum", ["state", "axes"], ["state_sum"], keepdims=0),
             helper.make_node("Cast", ["sr"], ["rate"], to=FLOAT),
             helper.make_node("Div", ["rate", "scale"], ["rate_scaled"]),
             helper.make_node("Add", ["hidden", "state_sum"], ["mixed"]),
             helper.make_node("Mul", ["mixed", "rate_scaled"], ["mixed_rate"]),
             helper.make_node("MatMul", ["mixed_rate", "v"], ["logit"]),
             helper.make_node("Sigmoid", ["logit"], ["probability"]),
             helper.make_node("Add", ["state", "mixed_rate"], ["new_state"])]
    return make(nodes,
                [helper.make_tensor_value_info("audio", FLOAT, [1, 8]),
                 helper.make_tensor_value_info("state", FLOAT, [2, 1, 4]),
                 helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                [helper.make_tensor_value_info("probability", FLOAT, [1, 1]),
                 helper.make_tensor_value_info("new_state", FLOAT, [2, 1, 4])],
                {"w": rng.normal(0, 1, (8, 4)).astype(np.float32), "v": rng.normal(0, 1, (4, 1)).astype(np.float32),
                 "axes": np.array([0], np.int64), "scale": np.array(16000, np.float32)})


def test_inputs_that_come_whole_run_one_sample_at_a_time(tmp_path):
    model = vad_like()
    rng = np.random.default_rng(3)
    arrays = {"audio": rng.normal(0, 0.5, (6, 1, 8)).astype(np.float32),
              "state": rng.normal(0, 0.1, (6, 2, 1, 4)).astype(np.float32), "sr": np.full(6, 16000)}
    np.savez(tmp_path / "vad.npz", **arrays)
    feeds = model_feeds(f"npz:{tmp_path / 'vad.npz'}", model)
    assert feeds.whole == {"audio", "state", "sr"} and len(feeds) == 6
    grid = Grid(bits=(6,), ep=(0.2,), repeats=1, seed=1)
    result = evaluate(model, feeds, grid)
    assert result["batch_size"] == 1 and any("one sample per run" in line for line in result["data"]["adaptations"])
    cell_model, _ = _CellModels(model, ConvertOptions(), grid).build(grid.cells()[0])
    noisy, clean = create_session(cell_model), session(model)
    runs = [{name: np.asarray(array[k]) for name, array in arrays.items()} for k in range(6)]
    noisy_out, clean_out = [noisy.run(None, feed) for feed in runs], [clean.run(None, feed) for feed in runs]
    expected = metrics_by_numpy([o[1] for o in noisy_out], [c[1] for c in clean_out], axis=2)
    for metric, value in expected.items():
        assert result["cells"][0]["outputs"]["new_state"][f"{metric}_mean"] == pytest.approx(value, rel=1e-9)
    assert result["data"]["outputs"][0]["class_axis"] == 1 and result["data"]["outputs"][0]["classes"] is None \
        or result["data"]["outputs"][0]["class_axis"] is None  # one probability: nothing to take an argmax over


def test_time_major_outputs_of_a_fixed_batch_model_drop_the_padding_on_their_batch_axis():
    """A CTC-style head: a model fixed at batch 4 emits [time 5, batch 4, classes 3]; 10 samples need a padded
    last batch, whose padding lies on axis 1."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["flat"]),
             helper.make_node("Reshape", ["flat", "shape"], ["batch_major"]),
             helper.make_node("Transpose", ["batch_major"], ["logits"], perm=[1, 0, 2])]
    model = make(nodes, [helper.make_tensor_value_info("x", FLOAT, [4, 6])],
                 [helper.make_tensor_value_info("logits", FLOAT, [5, 4, 3])],
                 {"w": rng.normal(0, 1, (6, 15)).astype(np.float32), "shape": np.array([4, 5, 3], np.int64)})
    x = rng.uniform(-1, 1, (10, 6)).astype(np.float32)
    result = evaluate(model, Feeds("ten", {"x": x}), Grid(bits=(3,), ep=(0.0,), repeats=1))
    assert result["batch_size"] == 4 and result["data"]["outputs"][0]["class_axis"] == 2
    cell_model, _ = _CellModels(model, ConvertOptions(), Grid(bits=(3,), ep=(0.0,))).build(
        Grid(bits=(3,), ep=(0.0,)).cells()[0])
    padded = np.concatenate([x, np.zeros((2, 6), np.float32)])
    noisy = np.concatenate([session(cell_model).run(None, {"x": padded[k:k + 4]})[0] for k in (0, 4, 8)], axis=1)[:, :10]
    clean = np.concatenate([session(model).run(None, {"x": padded[k:k + 4]})[0] for k in (0, 4, 8)], axis=1)[:, :10]
    assert result["cells"][0]["agreement_mean"] == pytest.approx(np.mean(noisy.argmax(2) == clean.argmax(2)))
    assert result["cells"][0]["rel_error_mean"] == pytest.approx(np.linalg.norm(noisy - clean) / np.linalg.norm(clean),
                                                                 rel=1e-6)


def test_outputs_noise_cannot_reach_are_called_identical_and_constant_ones_are_warned_about(encoder, token_data):
    path, _ = token_data
    constant = onnx.ModelProto()
    constant.CopyFrom(encoder)
    constant.graph.node.append(helper.make_node("ReduceSum", ["table"], ["table_total"], keepdims=0))
    constant.graph.output.append(helper.make_tensor_value_info("table_total", FLOAT, []))
    result = evaluate_file_model(constant, path, Grid(bits=(6,), ep=(0.3,), repeats=2))
    total = result["cells"][0]["outputs"]["table_total"]
    assert total["snr_note"] == "identical to the noise-free output" and total["snr_db_mean"] is None
    silent = onnx.ModelProto()
    silent.CopyFrom(encoder)
    silent.graph.node.extend([helper.make_node("Cast", ["ids"], ["ids_float"], to=FLOAT),
                              helper.make_node("Mul", ["ids_float", "zero"], ["zeros"])])
    silent.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), "zero"))
    silent.graph.output.append(helper.make_tensor_value_info("zeros", FLOAT, ["batch", "length"]))
    same = evaluate_file_model(silent, path, Grid(bits=(6,), ep=(0.3,), repeats=1), batch_size=3)
    assert any("'zeros' is the same for every sample" in line for line in same["warnings"])
    assert same["cells"][0]["outputs"]["zeros"]["rel_error_mean"] is None  # no error relative to nothing


def test_labels_are_scored_only_against_class_scores_and_class_axes_are_checked(encoder, token_data, tmp_path):
    path, arrays = token_data
    np.savez(tmp_path / "labelled.npz", **arrays, y=np.arange(9) % 5)
    labelled = model_feeds(f"npz:{tmp_path / 'labelled.npz'}", encoder)
    with pytest.raises(AnalogizeError, match=r"labels need an output of class scores shaped \(samples, classes\)"):
        evaluate(encoder, labelled, Grid(repeats=1))
    pooled = evaluate(encoder, labelled, Grid(ep=(0.0,), repeats=1), EXACT, output="pooled")
    scores = session(encoder).run(["pooled"], arrays)[0]
    assert pooled["clean"]["accuracy_mean"] == pytest.approx(np.mean(scores.argmax(1) == np.arange(9) % 5))
    for class_axis, message in ((7, "not an axis of output 'tokens'"), ({"nope": 1}, "names output 'nope'"),
                                ("1", "must be a whole number")):
        with pytest.raises(AnalogizeError, match=message):
            evaluate(encoder, labelled, Grid(repeats=1), fidelity=True, class_axis=class_axis)
    along_length = evaluate(encoder, labelled, Grid(ep=(0.0,), repeats=1), fidelity=True, class_axis={"tokens": 1})
    assert along_length["data"]["outputs"][0]["class_axis"] == 1


@pytest.mark.parametrize("arrays, message", [
    ({"ids": np.zeros((4, 7), np.int64)}, r"no array for the model's input\(s\) mask"),
    ({"ids": np.zeros((4, 7)), "mask": np.ones((4, 7), np.int64)}, "holds float64 values but the model's input takes int64"),
    ({"ids": np.zeros((4, 7), np.int64), "mask": np.ones((3, 7), np.int64)}, "different sample counts"),
    ({"ids": np.zeros((4, 7, 2, 1), np.int64), "mask": np.ones((4, 7), np.int64)}, "does not fit the model's input"),
    ({"ids": np.full((4, 7), 2**40), "mask": np.ones((4, 7), np.int64)}, None),  # int64 takes it
])
def test_bad_feeds_are_refused_in_one_line(encoder, tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    if message is None:
        assert len(model_feeds(f"npz:{tmp_path / 'bad.npz'}", encoder)) == 4
        return
    with pytest.raises(AnalogizeError, match=message):
        model_feeds(f"npz:{tmp_path / 'bad.npz'}", encoder)


def test_bad_feeds_for_special_inputs_are_refused(tmp_path):
    model = vad_like()
    for arrays, message in (
            ({"audio": np.full((3, 1, 8), np.nan, np.float32), "state": np.zeros((3, 2, 1, 4), np.float32),
              "sr": np.full(3, 16000)}, "NaN"),
            ({"audio": np.zeros((3, 1, 8), np.float32), "state": np.zeros((3, 2, 1, 4), np.float32),
              "sr": np.full(3, 2.5)}, "store whole numbers"),):
        np.savez(tmp_path / "bad.npz", **arrays)
        with pytest.raises(AnalogizeError, match=message):
            model_feeds(f"npz:{tmp_path / 'bad.npz'}", model)
    with pytest.raises(AnalogizeError, match="3 inputs .*give data as npz:PATH holding one array per input"):
        model_feeds("digits", model)
    with pytest.raises(AnalogizeError, match="takes int64 values, not images"):
        model_feeds("digits", make([helper.make_node("Cast", ["i"], ["o"], to=FLOAT)],
                                   [helper.make_tensor_value_info("i", TensorProto.INT64, ["n", 3])],
                                   [helper.make_tensor_value_info("o", FLOAT, ["n", 3])], {}))


def test_the_cli_evaluates_a_two_input_model_and_names_its_class_axes(encoder, token_data, tmp_path, capsys):
    path, _ = token_data
    onnx.save(encoder, tmp_path / "encoder.onnx")
    code, out, err = analogize(capsys, "evaluate", str(tmp_path / "encoder.onnx"), "--data", f"npz:{path}", "--bits", "6",
                             "--ep", "0.2", "--repeats", "1", "--class-axis", "tokens=2,pooled=1", "--json", "-")
    assert code == 0, err
    result = json.loads(out)
    assert [entry["class_axis"] for entry in result["data"]["outputs"]] == [2, 1, None]
    code, _, err = analogize(capsys, "evaluate", str(tmp_path / "encoder.onnx"), "--data", f"npz:{path}", "--class-axis", "x=a")
    assert code == 2 and "OUTPUT=AXIS" in err
    code, _, err = analogize(capsys, "evaluate", str(tmp_path / "encoder.onnx"), "--data", "digits")
    assert code == 2 and "2 inputs" in err and len(err.strip().splitlines()) == 1


def test_convert_reaches_into_bodies_lists_what_it_leaves_digital_and_says_when_a_swap_finds_nothing():
    rng = np.random.default_rng(5)
    branch = helper.make_graph([helper.make_node("MatMul", ["x", "inner_w"], ["branch_out"])], "branch", [],
                               [helper.make_tensor_value_info("branch_out", FLOAT, ["n", 3])])

    def model(top_level_layer: bool):
        nodes = [helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=branch),
                 helper.make_node("MatMulInteger", ["q", "qw"], ["qy"])]
        outputs = [helper.make_tensor_value_info("y", FLOAT, ["n", 3]),
                   helper.make_tensor_value_info("qy", TensorProto.INT32, ["n", 3])]
        if top_level_layer:
            nodes.append(helper.make_node("MatMul", ["x", "inner_w"], ["z"]))
            outputs.append(helper.make_tensor_value_info("z", FLOAT, ["n", 3]))
        return make(nodes, [helper.make_tensor_value_info("x", FLOAT, ["n", 4]),
                            helper.make_tensor_value_info("q", TensorProto.UINT8, ["n", 4])], outputs,
                    {"inner_w": rng.normal(size=(4, 3)).astype(np.float32), "flag": np.array(True),
                     "qw": rng.integers(0, 255, (4, 3)).astype(np.uint8)})

    integer_only = make([helper.make_node("MatMulInteger", ["q", "qw"], ["qy"])],
                        [helper.make_tensor_value_info("q", TensorProto.UINT8, ["n", 4])],
                        [helper.make_tensor_value_info("qy", TensorProto.INT32, ["n", 3])],
                        {"qw": rng.integers(0, 255, (4, 3)).astype(np.uint8)})
    with pytest.raises(AnalogizeError, match=r"the model's 1 layers stay digital \(1 x an integer"):
        convert(integer_only)
    report = convert(model(True), activation="gelu").report
    # unnamed layers are named <op>_<position> (in their own graph), so plans and reports can address them
    assert sorted(report["layers"]) == ["If/else_branch/MatMul_0", "If/then_branch/MatMul_0", "MatMul_2"]
    assert [(entry["op_type"], entry["reason"].split(":")[0]) for entry in report["skipped_layers"]] == [
        ("MatMulInteger", "an integer (quantised) layer")]
    assert any("--activation gelu: the model has no ReLU to swap" in line for line in report["warnings"])


def test_a_lone_image_input_named_x_still_gets_its_images_adapted(tmp_path):
    """Paddle exporters name the input 'x', as the npz convention names images: uint8 images are still divided
    by 255 and normalised as asked, not fed raw."""
    model = make([helper.make_node("Relu", ["x"], ["y"])], [helper.make_tensor_value_info("x", FLOAT, ["n", 1, 8, 8])],
                 [helper.make_tensor_value_info("y", FLOAT, ["n", 1, 8, 8])], {})
    np.savez(tmp_path / "u8.npz", x=np.full((3, 8, 8), 255, np.uint8))
    from analogize.data import Preprocessing

    feeds = model_feeds(f"npz:{tmp_path / 'u8.npz'}", model, Preprocessing(mean=(0.5,), std=(0.25,)))
    assert feeds.arrays["x"].max() == pytest.approx(2.0) and any("normalised" in note for note in feeds.notes)
    with pytest.raises(AnalogizeError, match="adapt images for a model with one image"):
        model_feeds("npz:unused.npz", vad_like(), Preprocessing(size=(4, 4)))


def detector_like():
    """Post-processing whose output shape follows the data: the indices of the scores above 0 (NonZero), as NMS
    keeps a varying number of boxes."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["scores"]),
             helper.make_node("Greater", ["scores", "zero"], ["kept"]),
             helper.make_node("NonZero", ["kept"], ["boxes"])]
    return make(nodes, [helper.make_tensor_value_info("x", FLOAT, ["n", 6])],
                [helper.make_tensor_value_info("scores", FLOAT, ["n", 40]),
                 helper.make_tensor_value_info("boxes", TensorProto.INT64, [2, "k"])],
                {"w": rng.normal(0, 1, (6, 40)).astype(np.float32), "zero": np.array(0.0, np.float32)})


def test_outputs_whose_shape_changes_under_noise_are_not_scored_and_say_why(tmp_path):
    x = np.random.default_rng(7).normal(size=(16, 6)).astype(np.float32)
    result = evaluate(detector_like(), Feeds("boxes", {"x": x}), Grid(bits=(3,), ep=(0.5,), repeats=2), batch_size=4)
    boxes = result["cells"][-1]["outputs"]["boxes"]
    assert boxes["agreement_mean"] is None and boxes["invalid_batches_mean"] > 0
    assert "shape differs from the clean output's" in boxes["note"]
    assert any("output 'boxes' is not scored where" in line for line in result["warnings"])
    rows = [row for row in csv_rows(result) if row["output"] == "boxes" and row["kind"] == "cell"]
    assert all(row["rel_error_mean"] is None and row["snr_db_mean"] is None for row in rows)  # not the primary's


def test_non_finite_outputs_give_no_numbers_and_the_json_stays_valid(tmp_path):
    from analogize.evaluate.results import write_json

    model = make([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Log", ["m"], ["y"])],
                 [helper.make_tensor_value_info("x", FLOAT, ["n", 6])], [helper.make_tensor_value_info("y", FLOAT, ["n", 4])],
                 {"w": np.random.default_rng(8).normal(size=(6, 4)).astype(np.float32)})
    x = np.random.default_rng(9).normal(size=(8, 6)).astype(np.float32)
    result = evaluate(model, Feeds("logs", {"x": x}), Grid(bits=(6,), ep=(0.3,), repeats=1))
    assert result["cells"][0]["rel_error_mean"] is None and "NaN or infinite" in result["cells"][0]["note"]
    write_json(result, tmp_path / "result.json")
    assert json.loads((tmp_path / "result.json").read_text())["cells"][0]["agreement_mean"] is None


def test_scored_outputs_class_axes_and_padding_are_checked(encoder, token_data, tmp_path):
    path, arrays = token_data
    only = evaluate_file_model(encoder, path, Grid(ep=(0.0,), repeats=1), outputs=["pooled"])
    assert list(only["cells"][0]["outputs"]) == ["tokens", "pooled"]
    assert any("'tokens': agreement is the argmax along axis 2" in line for line in only["warnings"])
    with pytest.raises(AnalogizeError, match="no output 'nope'"):
        evaluate_file_model(encoder, path, Grid(repeats=1), outputs=["nope"])
    with pytest.raises(AnalogizeError, match="holds int64 values, not class scores"):
        evaluate_file_model(encoder, path, Grid(repeats=1), class_axis={"token_ids": 1})
    np.savez(tmp_path / "uneven.npz", ids=arrays["ids"], mask=arrays["mask"][:5], y=np.zeros((9, 5)))
    with pytest.raises(AnalogizeError, match="different sample counts"):
        model_feeds(f"npz:{tmp_path / 'uneven.npz'}", encoder, limit=3)
    np.save(tmp_path / "bare.npy", arrays["ids"])
    with pytest.raises(AnalogizeError, match="one bare array"):
        model_feeds(f"npz:{tmp_path / 'bare.npy'}", encoder)
    np.savez(tmp_path / "targets.npz", **arrays, y=np.zeros((9, 5)))  # regression targets: fine unless scored
    assert model_feeds(f"npz:{tmp_path / 'targets.npz'}", encoder, labels=False).labels is None
    square = make([helper.make_node("MatMul", ["x", "w"], ["y"])], [helper.make_tensor_value_info("x", FLOAT, [4, 6])],
                  [helper.make_tensor_value_info("y", FLOAT, [4, 4])],
                  {"w": np.ones((6, 4), np.float32)})
    x = np.ones((6, 6), np.float32)
    assert evaluate(square, Feeds("six", {"x": x}), Grid(ep=(0.0,), repeats=1))["batch_size"] == 4  # axis 0 first
    with pytest.raises(AnalogizeError, match="multiple of 4"):
        evaluate(detector_like_fixed(), Feeds("six", {"x": x}), Grid(ep=(0.0,), repeats=1))


def detector_like_fixed():
    """A fixed-batch model whose output's batch axis cannot be found: [4 anchors x 5] flattened for batch 4."""
    return make([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Reshape", ["m", "shape"], ["y"])],
                [helper.make_tensor_value_info("x", FLOAT, [4, 6])], [helper.make_tensor_value_info("y", FLOAT, [20])],
                {"w": np.ones((6, 5), np.float32), "shape": np.array([-1], np.int64)})


def test_attention_products_are_digital_unless_asked_for_then_both_operands_get_dacs():
    """A @ B with both operands activations (attention's Q K^T, A V): digital by default and listed; with
    analog_products, each row of A and each column of B gets its own DAC gain and the result an ADC chain,
    checked against numpy's reduce-precision of the same numbers."""
    rng = np.random.default_rng(11)
    model = make([helper.make_node("MatMul", ["a", "b"], ["out"])],
                 [helper.make_tensor_value_info("a", FLOAT, ["n", 3, 6]),
                  helper.make_tensor_value_info("b", FLOAT, ["n", 6, 4])],
                 [helper.make_tensor_value_info("out", FLOAT, ["n", 3, 4])], {})
    with pytest.raises(AnalogizeError, match="an activation-by-activation product: digital unless asked for"):
        convert(model, where=("input", "layer-inputs"))  # its inputs reach no layer: nothing is left to convert
    a, b = rng.normal(0, 2, (2, 3, 6)).astype(np.float32), rng.normal(0, 0.5, (2, 6, 4)).astype(np.float32)
    converted = convert(model, bits=4, noise=False, analog_products=True, where=("layer-inputs", "layer-outputs"))
    scopes = {(site["site"], site["tensor"]): site["range"]["scope"] for site in converted.report["inserted"]}
    assert scopes == {("layer-input", "a"): "per row", ("layer-input", "b"): "per column",
                      ("layer-output", "out"): "per row"}
    onnx.checker.check_model(converted.model, full_check=True)

    def reduce_precision(x, axis, p=16.0):
        r = np.maximum(np.abs(x).max(axis=axis, keepdims=True), np.finfo(np.float32).tiny).astype(np.float32)
        u = np.clip(x / r, -1, 1)
        return (np.sign(u) * np.ceil(np.abs(u * np.float32(p)) - np.float32(0.5)) / np.float32(p) * r).astype(
            np.float32)

    expected = reduce_precision(reduce_precision(a, -1) @ reduce_precision(b, -2), -1)
    np.testing.assert_allclose(session(converted.model).run(None, {"a": a, "b": b})[0], expected, rtol=1e-5, atol=1e-6)
    plain = convert(model, noise=False, quantize=False, clamp=False, analog_products=True).model
    np.testing.assert_array_equal(session(plain).run(None, {"a": a, "b": b})[0],
                                  session(model).run(None, {"a": a, "b": b})[0])
    noisy = [session(convert(model, bits=6, ep=0.3, seed=seed, analog_products=True).model).run(
        None, {"a": a, "b": b})[0] for seed in (1, 2)]
    assert not np.array_equal(*noisy)


@pytest.mark.parametrize("equation, weight_first", [("bij,jk->bik", False), ("kj,bij->bik", True)])
def test_an_einsum_with_a_constant_operand_is_the_layer_its_matmul_would_be(equation, weight_first):
    """The same product written as Einsum and as MatMul converts to the same numbers: weight ranges per output
    channel, a DAC gain per input vector, an ADC gain per output vector (read off the equation)."""
    rng = np.random.default_rng(12)
    weight = rng.normal(size=(6, 4)).astype(np.float32)
    stored = weight.T.copy() if weight_first else weight
    inputs = [helper.make_tensor_value_info("x", FLOAT, ["n", 3, 6])]
    outputs = [helper.make_tensor_value_info("y", FLOAT, ["n", 3, 4])]
    operands = ["w", "x"] if weight_first else ["x", "w"]
    einsum = make([helper.make_node("Einsum", operands, ["y"], equation=equation)], inputs, outputs, {"w": stored})
    matmul = make([helper.make_node("MatMul", ["x", "w"], ["y"])], inputs, outputs, {"w": weight})
    x = rng.normal(0, 3, (2, 3, 6)).astype(np.float32)
    ours, theirs = (convert(model, bits=4, noise=False) for model in (einsum, matmul))
    assert {site["site"]: site["range"]["scope"] for site in ours.report["inserted"]} == {
        "input": "per input vector", "weight": "per output channel", "layer-output": "per output vector"}
    np.testing.assert_allclose(session(ours.model).run(None, {"x": x})[0], session(theirs.model).run(None, {"x": x})[0],
                               rtol=1e-5, atol=1e-6)
    assert ours.report["layers"] and not ours.report["skipped_layers"]
    loose = make([helper.make_node("Einsum", ["x", "w"], ["y"], equation="...j,jk->...k")], inputs, outputs,
                 {"w": weight})
    scopes = {site["site"]: site["range"]["scope"] for site in convert(loose, bits=4).report["inserted"]}
    assert scopes["weight"].startswith("per tensor") and scopes["input"] == "per sample"
