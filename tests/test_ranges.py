"""Full-scale ranges: each chain acts on x / r and scales back, y = r * chain(x / r), with r from the weights, from
each input vector at run time, or from calibration data; checked against numpy statements of that formula
(tests/reference.py), ONNX Runtime, and the meaning of EP."""
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import reference as ref
from analogize import ConvertOptions
from analogize.cli import main
from analogize.convert import PAPER_RANGES, convert
from analogize.errors import AnalogizeError
from analogize.convert import stored_settings
from analogize.ranges.calibration import CalibrationOptions, SiteValues, choose_range
from analogize.ranges.modes import MIN_RANGE, UNSEEN_RANGE, markdown_reference
from analogize.runtime.sessions import create_session
from conftest import run

P = 16.0  # precision of the tests' chains: coarse, so rounding shows


def gemm_model(weight: np.ndarray, bias: np.ndarray, batch=None) -> onnx.ModelProto:
    """y = x @ W^T + b as Gemm(transB=1), W [out, in]."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, weight.shape[1]])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, weight.shape[0]])]
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "W", "b"], ["y"], transB=1, name="fc")], "g", inputs,
                              outputs, [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def conv_model(weight: np.ndarray) -> onnx.ModelProto:
    channels = weight.shape[1]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, channels, 6, 6])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    graph = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"], name="conv")], "g", inputs, outputs,
                              [numpy_helper.from_array(weight, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def mapped(x, r, p=P, clamp=True):
    """r * RP(clamp(x / r)): the noise-free chain at full scale r (reference formula, float32 like the graph)."""
    x, r = np.float32(x), np.float32(r)
    normalised = (x / r).astype(np.float32)
    if clamp:
        normalised = ref.clamp(normalised)
    return (ref.reduce_precision(normalised, np.float32(p)).astype(np.float32) * r).astype(np.float32)


def largest(x, axis):
    return np.maximum(np.abs(x).max(axis=axis, keepdims=True), MIN_RANGE).astype(np.float32)


@pytest.fixture
def gemm(rng):
    weight = (rng.normal(size=(5, 7)) * [[0.1], [1.0], [3.0], [0.01], [20.0]]).astype(np.float32)
    return gemm_model(weight, rng.normal(size=5).astype(np.float32) * 4), weight


def test_weight_channel_and_dynamic_ranges_follow_the_formula(gemm, rng):
    model, weight = gemm
    bias = numpy_helper.to_array(model.graph.initializer[1])
    x = (rng.normal(size=(4, 7)) * [[0.01], [1.0], [50.0], [300.0]]).astype(np.float32)
    converted = convert(model, ConvertOptions(noise=False, precision=P)).model
    got = run(converted, x)

    xq = mapped(x, largest(x, 1))  # per row of the Gemm input
    wq = mapped(weight, largest(weight, 1))  # per output channel: one row of W [out, in]
    bq = mapped(bias, largest(bias, None))  # one range per bias
    y = (xq @ wq.T + bq).astype(np.float32)
    expected = mapped(y, largest(y, 1))  # the ADC: per output row
    np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-6 * np.abs(expected).max())


def test_weight_tensor_range_takes_one_scale(gemm, rng):
    model, weight = gemm
    x = rng.normal(size=(3, 7)).astype(np.float32)
    converted = convert(model, ConvertOptions(noise=False, precision=P, weight_range="tensor",
                                              activation_range="unit", where=("weights",))).model
    expected = x @ mapped(weight, largest(weight, None)).T + numpy_helper.to_array(model.graph.initializer[1])
    np.testing.assert_allclose(run(converted, x), expected, rtol=1e-5, atol=1e-5)


def test_conv_channel_ranges_and_per_pixel_dynamic_range(rng):
    """A convolution's input vector is one pixel across channels (a column of the unfolded input)."""
    weight = (rng.normal(size=(4, 3, 3, 3)) * np.array([1e-3, 1.0, 10.0, 0.0])[:, None, None, None]).astype(np.float32)
    model = conv_model(weight)
    x = (rng.normal(size=(2, 3, 6, 6)) * np.array([0.5, 200.0])[:, None, None, None]).astype(np.float32)
    converted = convert(model, ConvertOptions(noise=False, precision=P, where=("layer-inputs", "weights"))).model
    got = run(converted, x)
    assert np.isfinite(got).all()  # the all-zero channel maps to 0, not 0 / 0
    xq = mapped(x, largest(x, 1))
    wq = mapped(weight, largest(weight, (1, 2, 3)))
    reference = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"])], "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(wq, "W")]),
        opset_imports=[helper.make_opsetid("", 18)])
    np.testing.assert_allclose(got, run(reference, xq), rtol=1e-5, atol=1e-5)


def test_unit_ranges_insert_no_range_nodes_and_keep_the_paper_chain(gemm, rng):
    model, weight = gemm
    converted = convert(model, ConvertOptions(noise=False, precision=P, **PAPER_RANGES)).model
    assert not {"Div", "Mul", "Abs", "ReduceMax", "Max"} & {node.op_type for node in converted.graph.node}
    x = rng.normal(size=(3, 7)).astype(np.float32)
    bias = numpy_helper.to_array(model.graph.initializer[1])
    y = mapped(x, 1.0) @ mapped(weight, 1.0).T + mapped(bias, 1.0)
    np.testing.assert_allclose(run(converted, x), mapped(y, 1.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["unit", "dynamic", "calibrated"])
def test_ep_is_the_chance_of_moving_past_half_a_step_in_every_mode(mode, tmp_path, rng):
    ep, precision = 0.3, 64.0
    model = gemm_model(np.eye(6, dtype=np.float32), np.zeros(6, np.float32))
    x = (rng.uniform(-1, 1, size=(4000, 6)) * rng.choice([0.5, 20.0, 900.0], size=(4000, 1))).astype(np.float32)
    if mode == "unit":
        x = np.clip(x, -1, 1)
    data = tmp_path / "calibration.npz"
    np.savez(data, x=x)
    options = ConvertOptions(precision=precision, ep=ep, quantize=False, clamp=False, where=("input",),
                             weight_range="unit", activation_range=mode, seed=3,
                             **({"calibrate": f"npz:{data}", "calibration_method": "max"} if mode == "calibrated" else {}))
    result = convert(model, options)
    moved = np.abs(run(result.model, x) - x)
    if mode == "dynamic":
        r = np.abs(x).max(axis=1, keepdims=True)
    else:
        r = result.report["inserted"][0]["range"].get("value", 1.0)
    fraction = float(np.mean(moved > r / (2 * precision)))
    assert abs(fraction - ep) < 0.02, fraction


def test_zero_weights_and_zero_inputs_give_no_nan(rng):
    model = gemm_model(np.zeros((3, 4), np.float32), np.zeros(3, np.float32))
    converted = convert(model, ConvertOptions(precision=P, ep=0.2, seed=1)).model
    out = run(converted, np.zeros((2, 4), np.float32))
    assert np.isfinite(out).all()
    assert all(np.isfinite(numpy_helper.to_array(t)).all() for t in converted.graph.initializer)


def test_calibration_methods_choose_from_the_values_seen():
    values = SiteValues()
    data = np.concatenate([np.linspace(0, 1, 10000), [50.0]]).astype(np.float32)
    values.add(data, budget=1 << 20)
    assert choose_range(values, CalibrationOptions("x", method="max"), 16.0, 0.0) == 50.0
    assert choose_range(values, CalibrationOptions("x", method="percentile", percentile=99.0), 16.0, 0.0) == \
        pytest.approx(np.percentile(data, 99.0))
    mse = choose_range(values, CalibrationOptions("x", method="mse"), 16.0, 0.0)
    assert 1.0 <= mse < 50.0  # clipping one outlier costs less than rounding everything on a grid 50 wide

    def error(r):
        return np.mean((mapped(data, r) - data) ** 2)

    assert error(mse) < error(50.0)
    assert choose_range(SiteValues(), CalibrationOptions("x"), 16.0, 0.0) == UNSEEN_RANGE


def test_calibrated_ranges_are_stored_in_the_model_with_clip_fractions(gemm, rng, tmp_path):
    model, _ = gemm
    x = (rng.normal(size=(64, 7)) * 30).astype(np.float32)
    np.savez(tmp_path / "c.npz", x=x)
    result = convert(model, ConvertOptions(noise=False, calibrate=f"npz:{tmp_path / 'c.npz'}",
                                           calibration_method="percentile", percentile=90.0))
    sites = {site["site"]: site["range"] for site in result.report["inserted"]}
    assert sites["input"]["value"] == pytest.approx(np.percentile(np.abs(x), 90.0), rel=1e-6)
    assert sites["input"]["clipped"] == pytest.approx(0.1, abs=0.01)
    stored = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert float(stored[sites["input"]["range_tensor"]]) == pytest.approx(sites["input"]["value"])
    assert result.report["warnings"] and "clip more than" in result.report["warnings"][0]
    settings = stored_settings(result.model)
    assert settings["calibration"]["samples"] == 64 and settings["ranges"][0]["range"]["mode"] == "calibrated"


@pytest.mark.parametrize("data, message", [
    ("bad_shape", "samples have 15 values but the model.s input .x. takes 7"),
    ("few", "needs at least 8"),
    ("nan", "NaN or infinite"),
])
def test_bad_calibration_data_is_one_line_error(gemm, tmp_path, data, message):
    model, _ = gemm
    arrays = {"bad_shape": np.ones((20, 5, 3), np.float32), "few": np.ones((3, 7), np.float32),
              "nan": np.full((20, 7), np.nan, np.float32)}[data]
    np.savez(tmp_path / "c.npz", x=arrays)
    with pytest.raises(AnalogizeError, match=message):
        convert(model, ConvertOptions(calibrate=f"npz:{tmp_path / 'c.npz'}"))


def test_calibrated_mode_without_data_and_bad_options_are_refused(gemm):
    model, _ = gemm
    with pytest.raises(AnalogizeError, match="needs calibration data"):
        convert(model, ConvertOptions(activation_range="calibrated"))
    with pytest.raises(AnalogizeError, match="unknown weight range"):
        convert(model, ConvertOptions(weight_range="column"))
    with pytest.raises(AnalogizeError, match="calibration method"):
        convert(model, ConvertOptions(calibrate="digits", calibration_method="kl"))


def test_cli_reports_ranges_and_refuses_bad_calibration(gemm, tmp_path, capsys):
    model, _ = gemm
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    np.savez(tmp_path / "few.npz", x=np.ones((2, 7), np.float32))
    code = main(["convert", str(path), "-o", str(tmp_path / "o.onnx"), "--calibrate", f"npz:{tmp_path / 'few.npz'}"])
    _, err = capsys.readouterr()
    assert code != 0 and "needs at least" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()
    assert main(["convert", str(path), "-o", str(tmp_path / "o.onnx"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["settings"]["range_modes"] == {"weights": "channel", "activations": "dynamic"}


@pytest.mark.parametrize("weight_range, activation_range", [("channel", "dynamic"), ("tensor", "unit")])
def test_native_kernels_equal_function_bodies_with_ranges(gemm, rng, weight_range, activation_range):
    """Bit for bit without noise (the noise streams of the two differ, as without ranges)."""
    model, _ = gemm
    converted = convert(model, ConvertOptions(precision=P, noise=False, weight_range=weight_range,
                                              activation_range=activation_range)).model
    x = (rng.normal(size=(8, 7)) * 40).astype(np.float32)
    native = create_session(converted, native=True).run(None, {"x": x})[0]
    bodies = create_session(converted, native=False).run(None, {"x": x})[0]
    np.testing.assert_array_equal(native, bodies)


@pytest.mark.parametrize("activation_range", ["dynamic", "calibrated"])
def test_native_ops_equal_function_bodies_on_a_conv_model_with_ranges(activation_range, rng):
    """The registered library's ops against the inlined bodies, one op at a time. ONNX Runtime's layout
    optimisations are off in both: with them it may run the convolutions blocked (NCHWc) in the session whose
    chains are standard ops and not in the other, and blocked convolutions round differently."""
    import onnxruntime as ort

    from analogize import native_library_path
    from conftest import DEFAULT_MODEL

    calibration = {"calibrate": "digits", "calibration_samples": 64} if activation_range == "calibrated" else {}
    model = convert(onnx.load(DEFAULT_MODEL), bits=6, noise=False, activation_range=activation_range,
                    **calibration).model
    x = rng.uniform(0, 1, (8, 1, 8, 8)).astype(np.float32)
    results = []
    for native in (False, True):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        if native:
            options.register_custom_ops_library(str(native_library_path()))
        results.append(ort.InferenceSession(model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"]).run(None, {"input": x})[0])
    np.testing.assert_array_equal(*results)


def test_torch_runs_the_ranges_as_onnx_runtime_and_remaps_weights_as_they_train(gemm, rng):
    """Training recomputes a weight's range from the weight on every pass (reprogramming the chip), and the
    weight path passes the gradient straight to the stored weight."""
    import torch

    from analogize.training.onnx_torch import to_torch

    model, weight = gemm
    converted = convert(model, ConvertOptions(precision=P, noise=False)).model
    x = (rng.normal(size=(6, 7)) * 30).astype(np.float32)
    module = to_torch(converted, native=False)
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), run(converted, x), rtol=1e-5, atol=1e-4)
    names = {name: key for key, name in module.names.items()}
    assert set(module.state_as_initializers()) == {"W", "b"}  # the range floor is no weight
    doubled = weight * 2
    with torch.no_grad():
        module.weights[names["W"]].copy_(torch.from_numpy(doubled))
        moved = module(torch.from_numpy(x)).numpy()
    reprogrammed = onnx.ModelProto()
    reprogrammed.CopyFrom(converted)
    for tensor in reprogrammed.graph.initializer:
        if tensor.name == "W":
            tensor.CopyFrom(numpy_helper.from_array(doubled, "W"))
    np.testing.assert_allclose(moved, run(reprogrammed, x), rtol=1e-5, atol=1e-4)
    module(torch.from_numpy(x)).sum().backward()
    gradient = module.weights[names["W"]].grad.numpy()
    assert np.isfinite(gradient).all() and np.abs(gradient).sum() > 0


def test_docs_ranges_page_is_generated_from_the_declarations():
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "ranges.md"
    assert page.read_text() == markdown_reference()


def test_a_model_trained_without_clamp_keeps_its_answers_and_calibration_matches_onnx_runtime_int8(tmp_path):
    """bench/calibration_vs_ort.py on its own model (a BatchNorm ResNet trained on raw-scale digits, activations
    far outside [-1, 1]), at fewer epochs: with no data the default ranges keep top-1 agreement >= 99 % at 8 bits,
    calibration's relative error stays within 1.2x of ONNX Runtime's static int8 on the same samples, and the
    paper's unit range is shown to be useless here."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import calibration_vs_ort as bench

    path = bench.train_batchnorm_resnet(tmp_path / "resnet_bn.onnx", epochs=3)
    calibration, test = bench.digits_inputs(64)
    result = bench.compare(path, calibration, test, tmp_path)
    forms = result["forms"]
    assert forms["analog-dynamic"]["agreement"] >= 0.99
    assert result["error_ratios"]["analog-calibrated-bits8/ort-int8"] <= 1.2
    assert forms["analog-unit"]["agreement"] < 0.5


def test_weights_written_as_constant_nodes_get_per_channel_ranges_too(rng):
    """paddle2onnx writes weights as Constant nodes, whose outputs carry no shape: per-channel ranges still
    apply (a per-tensor range on BatchNorm-folded depthwise weights rounds the small channels to zero)."""
    weight = (rng.normal(size=(4, 1, 3, 3)) * np.array([1e-3, 1.0, 10.0, 0.1])[:, None, None, None]).astype(np.float32)
    nodes = [helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(weight)),
             helper.make_node("Conv", ["x", "W"], ["y"], group=4, name="depthwise")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = convert(model, ConvertOptions(noise=False, precision=P, where=("weights",)))
    (site,) = result.report["inserted"]
    assert site["range"]["scope"] == "per output channel" and site["range"]["channels"] == 4
    assert site["range"]["min"] == pytest.approx(np.abs(weight[0]).max())
    x = rng.normal(size=(2, 4, 6, 6)).astype(np.float32)
    reference = helper.make_model(helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], group=4)], "r",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(mapped(weight, largest(weight, (1, 2, 3))), "W")]),
        opset_imports=[helper.make_opsetid("", 17)])
    np.testing.assert_allclose(run(result.model, x), run(reference, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("format", ["qonnx", "qdq"])
def test_a_calibrated_export_equals_the_noise_free_simulation_and_rebuilds(format):
    """With static ranges the hardware formats compute the simulation's numbers exactly (the Div and Mul of each
    range stay standard ops around the quantizers); the spec gives each tensor's range; rebuild gives back the
    noisy simulation, draw for draw."""
    from conftest import DEFAULT_MODEL

    from analogize.data import digits
    from analogize.export import compare_outputs, export, rebuild

    if format == "qonnx":
        pytest.importorskip("qonnx")
    original = convert(onnx.load(DEFAULT_MODEL), bits=6, ep=0.5, seed=7, calibrate="digits",
                       calibration_samples=64).model
    exported, spec = export(original, format)
    x = digits("test")[0][:100]
    check = compare_outputs(original, exported, x)
    assert check["mismatch_rate"] == 0.0, check
    by_site = {(t["site"], t["tensor"]): t["range"] for t in spec["tensors"]}
    assert by_site[("input", "input")]["mode"] == "calibrated" and "value" in by_site[("input", "input")]
    assert all(r["mode"] == "channel" for (site, _), r in by_site.items() if site == "weight")
    rebuilt = rebuild(exported, json.loads(json.dumps(spec)))
    ours, theirs = create_session(original), create_session(rebuilt)
    for _ in range(2):
        np.testing.assert_array_equal(ours.run(None, {"input": x})[0], theirs.run(None, {"input": x})[0])


def test_openvino_compiles_a_calibrated_qdq_export_with_onnx_runtime_s_numbers(tmp_path):
    openvino = pytest.importorskip("openvino")
    from conftest import DEFAULT_MODEL

    from analogize.data import digits
    from analogize.export import analog_spec, export

    converted = convert(onnx.load(DEFAULT_MODEL), bits=6, ep=0.3, seed=2, calibrate="digits",
                        calibration_samples=64).model
    exported, _ = export(converted, "qdq")
    onnx.save(exported, tmp_path / "model.qdq.onnx")
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(str(tmp_path / "model.qdq.onnx")), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    x = digits("test")[0][:100]
    theirs, ours = compiled(x)[0], create_session(exported, native=False).run(None, {"input": x})[0]
    # OpenVINO may round an exact tie the other way: at most one output step apart, rarely, same answers
    step = max(t["range"]["value"] for t in analog_spec(converted)["tensors"] if t["site"] == "layer-output") / 64
    difference = np.abs(theirs - ours)
    assert difference.max() <= step * 1.01 and np.mean(difference > 1e-5) < 0.05
    assert np.mean(theirs.argmax(1) == ours.argmax(1)) >= 0.99


def _layer_model(kind, rng):
    """(model, one sample's input, the batch axis) for layer shapes whose samples do not lie on axis 0."""
    float_info = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    weight = rng.normal(size=(3, 4)).astype(np.float32)
    if kind == "matmul-weight-first":  # y = W @ x, samples are columns of x
        nodes, x_shape, axis = [helper.make_node("MatMul", ["W", "x"], ["y"], name="wx")], [4, None], 1
    elif kind == "gemm-weight-first":
        nodes, x_shape, axis = [helper.make_node("Gemm", ["W", "x"], ["y"], name="wx")], [4, None], 1
    elif kind == "conv-weight-through-identity":
        weight = rng.normal(size=(3, 2, 3, 3)).astype(np.float32)
        nodes = [helper.make_node("Identity", ["W"], ["W2"]), helper.make_node("Conv", ["x", "W2"], ["y"], name="c")]
        x_shape, axis = [None, 2, 5, 5], 0
    else:  # matmul with a vector input
        nodes, x_shape, axis = [helper.make_node("MatMul", ["W", "x"], ["y"], name="wx")], [4], None
    graph = helper.make_graph(nodes, "g", [float_info("x", x_shape)], [float_info("y", None)],
                              [numpy_helper.from_array(weight, "W")])
    sample_shape = [d or 1 for d in x_shape]
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), sample_shape, axis


@pytest.mark.parametrize("kind", ["matmul-weight-first", "gemm-weight-first", "conv-weight-through-identity",
                                  "matmul-vector"])
def test_a_sample_s_dynamic_ranges_never_depend_on_the_rest_of_the_batch(kind, rng):
    model, sample_shape, axis = _layer_model(kind, rng)
    converted = convert(model, ConvertOptions(precision=P, noise=False)).model
    sample = rng.normal(size=sample_shape).astype(np.float32)
    alone = run(converted, sample)
    assert np.isfinite(alone).all()
    if axis is None:
        return  # one vector: it runs, which a per-column range on a vector would not
    batch = np.concatenate([sample, 1000 * rng.normal(size=sample_shape).astype(np.float32)], axis=axis)
    together = run(converted, batch)
    np.testing.assert_array_equal(np.take(together, [0], axis=axis), alone)


def test_weights_of_unknown_shape_say_they_take_one_range():
    model, _, _ = _layer_model("conv-weight-through-identity", np.random.default_rng(0))
    sites = convert(model, ConvertOptions(noise=False)).report["inserted"]
    assert {site["range"]["scope"] for site in sites if site["site"] == "weight"} == \
        {"per tensor (the weight's shape is unknown)"}


def test_calibration_handles_float64_arrays_fixed_batches_and_outliers(tmp_path, rng):
    model = gemm_model(rng.normal(size=(3, 4)).astype(np.float32), np.zeros(3, np.float32), batch=4)
    data = rng.normal(size=(30, 4))  # float64, as numpy saves by default; 30 is no multiple of 4
    data[0, 0] = 1e4  # one outlier
    np.savez(tmp_path / "c.npz", x=data)
    result = convert(model, ConvertOptions(noise=False, calibrate=f"npz:{tmp_path / 'c.npz'}", where=("input",),
                                           calibration_method="percentile", percentile=99.0))
    (site,) = result.report["inserted"]
    assert result.report["settings"]["calibration"]["samples"] == 28  # whole batches of 4
    assert site["range"]["value"] < 5  # the outlier clips, the other values keep their steps
    with pytest.raises(AnalogizeError, match="no --calibrate DATA"):
        convert(model, ConvertOptions(calibration_method="max"))


def test_rebuild_restores_calibrated_ranges_of_unnamed_layers(tmp_path, rng):
    from analogize.export import export, rebuild

    model = gemm_model(rng.normal(size=(3, 4)).astype(np.float32), np.zeros(3, np.float32))
    for node in model.graph.node:
        node.name = ""
    np.savez(tmp_path / "c.npz", x=rng.normal(size=(16, 4)).astype(np.float32))
    converted = convert(model, ConvertOptions(bits=6, ep=0.3, seed=1, calibrate=f"npz:{tmp_path / 'c.npz'}")).model
    exported, spec = export(converted, "qdq")
    rebuilt = rebuild(exported, json.loads(json.dumps(spec)))
    x = rng.normal(size=(5, 4)).astype(np.float32)
    np.testing.assert_array_equal(create_session(rebuilt).run(None, {"x": x})[0],
                                  create_session(converted).run(None, {"x": x})[0])


def test_evaluate_cells_take_the_calibrated_ranges_convert_would_choose_for_their_bits_and_noise():
    """Calibration runs once; each cell's mse ranges are chosen from what it saw for the cell's precision and
    noise, so a cell's model is the one convert writes for the cell's flags (compared with noise off, where
    the cell's chains keep other intermediate names but the same numbers)."""
    from conftest import DEFAULT_MODEL

    from analogize.data import digits
    from analogize.evaluate.engine import Grid, _CellModels

    model = onnx.load(DEFAULT_MODEL)
    options = ConvertOptions(calibrate="digits", calibration_samples=64)
    grid = Grid(bits=(3, 7), ep=(0.0, 0.4), seed=4)
    builder = _CellModels(model, options, grid)
    x = digits("test")[0][:64]
    values = {}
    for cell in grid.cells():
        built, _ = builder.build(cell)
        expected = convert(model, options, bits=cell.bits, ep=cell.ep).model
        ranges = {site["tensor"]: site["range"]["value"] for site in stored_settings(built)["ranges"]
                  if site["range"]["mode"] == "calibrated"}
        assert ranges == {site["tensor"]: site["range"]["value"] for site in stored_settings(expected)["ranges"]
                          if site["range"]["mode"] == "calibrated"}, cell.key
        values[cell.key] = ranges
        if not cell.ep:
            np.testing.assert_array_equal(create_session(built).run(None, {"input": x})[0],
                                          create_session(expected).run(None, {"input": x})[0])
    assert len({tuple(sorted(v.items())) for v in values.values()}) > 1  # mse's choice moves with bits and EP


@pytest.mark.parametrize("layout", ["x-at-vector", "vector-at-x", "vector-weight-first-2d"])
def test_a_vector_weight_gives_each_output_value_its_own_range(layout, rng):
    """x @ w with w a vector: one output value per sample, so one range per value (a per-row reduction would run
    over the batch), and the model loads whichever side the vector is on."""
    weight = rng.normal(size=5).astype(np.float32)
    operands, shape, axis = {"x-at-vector": (["x", "W"], [None, 5], 0), "vector-at-x": (["W", "x"], [None, 5, 2], 0),
                             "vector-weight-first-2d": (["W", "x"], [5, None], 1)}[layout]
    graph = helper.make_graph([helper.make_node("MatMul", operands, ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "W")])
    converted = convert(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                        ConvertOptions(precision=P, noise=False)).model
    sample = rng.normal(size=[d or 1 for d in shape]).astype(np.float32)
    batch = np.concatenate([sample, 1000 * rng.normal(size=sample.shape).astype(np.float32)], axis=axis)
    np.testing.assert_array_equal(np.take(run(converted, batch), [0], axis=min(axis, 0)), run(converted, sample))


def test_hand_edited_specs_are_refused_in_one_line(tmp_path, rng):
    from analogize.export import export, rebuild

    model = gemm_model(rng.normal(size=(3, 4)).astype(np.float32), np.zeros(3, np.float32))
    np.savez(tmp_path / "c.npz", x=rng.normal(size=(16, 4)).astype(np.float32))
    exported, spec = export(convert(model, ConvertOptions(calibrate=f"npz:{tmp_path / 'c.npz'}")).model, "qdq")
    # an edited spec is refused by its schema, or no longer matches the settings the export records: refused
    # before its ranges are read
    for edit, message in ((lambda s: s["settings"]["ranges"][0]["range"].update(value=0), "does not belong"),
                          (lambda s: s["settings"]["ranges"][0]["range"].update(value="abc"),
                           r"settings\.ranges\[0\]\.range\.value must be a finite number"),
                          (lambda s: s["settings"].pop("ranges"), "does not belong"),
                          (lambda s: s["settings"].update(ranges={"a": 1}), "settings.ranges must be an array"),
                          (lambda s: s["settings"].pop("options"), "settings.options is missing"),
                          (lambda s: s["settings"]["ranges"].__setitem__(0, 5),
                           r"settings\.ranges\[0\] must be an object")):
        edited = json.loads(json.dumps(spec))
        edit(edited)
        with pytest.raises(AnalogizeError, match=message):
            rebuild(exported, edited)
    options = ConvertOptions(calibrate=f"npz:{tmp_path / 'c.npz'}")  # convert's own check of recorded ranges
    for recorded, message in (([dict(spec["settings"]["ranges"][0], range={"value": 0})], "a number > 0"),
                              ([], "no recorded range"), ([5], "not a list of sites")):
        with pytest.raises(AnalogizeError, match=message):
            convert(model, options, recorded_ranges=recorded)


def test_calibration_sees_the_swapped_activations(tmp_path):
    """With --activation the calibrated ranges are those of the model with the new activations."""
    from conftest import DEFAULT_MODEL

    model = onnx.load(DEFAULT_MODEL)
    swapped = convert(model, ConvertOptions(calibrate="digits", calibration_method="max", calibration_samples=64,
                                            activation="gelu", noise=False))
    kept = convert(model, ConvertOptions(calibrate="digits", calibration_method="max", calibration_samples=64,
                                         noise=False))
    largest = lambda result: {s["tensor"]: s["range"]["value"] for s in result.report["inserted"]  # noqa: E731
                              if s["range"]["mode"] == "calibrated"}
    assert largest(swapped)["logits"] != largest(kept)["logits"]
    assert max(s["range"]["clipped"] for s in swapped.report["inserted"] if "clipped" in s["range"]) == 0.0


def test_a_weight_first_matmul_on_a_tensor_of_unknown_rank_still_loads(rng):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["t"]), helper.make_node("MatMul", ["W", "t"], ["y"])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "W")])
    result = convert(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                     ConvertOptions(precision=P, noise=False))
    assert "per element (the input's rank is unknown)" in {s["range"]["scope"] for s in result.report["inserted"]}
    assert np.isfinite(run(result.model, rng.normal(size=5).astype(np.float32))).all()


def _digits_model(**options):
    from conftest import DEFAULT_MODEL

    return convert(onnx.load(DEFAULT_MODEL), bits=6, ep=0.3, seed=4, **options).model


def test_a_calibrated_qdq_export_is_an_ordinary_quantised_model_with_scales_r_over_p():
    """Weights as int8 initializers behind per-channel DequantizeLinear at max|W_c| / p (computed here from the
    original weights), activations QuantizeLinear -> DequantizeLinear at the calibrated r / p; no range node
    left; the spec says so per tensor."""
    from analogize.export import export

    converted = _digits_model(calibrate="digits", calibration_samples=64)
    exported, spec = export(converted, "qdq")
    ops = {node.op_type for node in exported.graph.node}
    assert not ops & {"Div", "Mul", "Abs", "ReduceMax", "Max"} and "DequantizeLinear" in ops
    stored = {t.name: numpy_helper.to_array(t) for t in exported.graph.initializer}
    original = {t.name: numpy_helper.to_array(t) for t in converted.graph.initializer}
    for node in (n for n in exported.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in stored):
        integers, scale = stored[node.input[0]], stored[node.input[1]]
        assert integers.dtype == np.int8 and np.abs(integers).max() <= 64
        weight = original[node.input[0].partition("::")[0]]
        axes = tuple(range(1, weight.ndim)) if weight.ndim > 1 else None
        expected = (np.abs(weight).max(axis=axes) / np.float32(64)).astype(np.float32)
        np.testing.assert_array_equal(scale, expected)
        if weight.ndim > 1:
            assert helper.get_attribute_value(node.attribute[0]) == 0  # per output channel
    entries = {(t["site"], t["tensor"]): t for t in spec["tensors"]}
    assert all(t["export_range"]["folded"] for t in entries.values())
    calibrated = entries[("input", "input")]
    quantize = next(n for n in exported.graph.node if n.op_type == "QuantizeLinear" and n.input[0].startswith("input"))
    assert float(stored[quantize.input[1]]) == np.float32(calibrated["range"]["value"]) / 64
    assert calibrated["export_range"]["scale"] == float(stored[quantize.input[1]])


@pytest.mark.parametrize("convention, folded_sites", [("pow2", {"weight", "bias"}), ("pow2-minus-1", set())])
def test_dynamic_ranges_and_rounded_scales_stay_unfolded_and_qonnx_stays_bit_exact(convention, folded_sites,
                                                                                   tmp_path):
    """Default ranges: weights fold, per-sample activation ranges cannot (the spec says why); a precision that
    is not a power of two folds nothing. With folded scales QONNX's own executor still gives the noise-free
    simulation's numbers bit for bit."""
    pytest.importorskip("qonnx")
    from analogize.data import digits
    from analogize.export import export, run_in_qonnx
    from analogize.passes.deterministic import noise_free

    converted = _digits_model(bit_convention=convention)
    exported, spec = export(converted, "qonnx")
    assert {t["site"] for t in spec["tensors"] if t["export_range"]["folded"]} == folded_sites
    reasons = {t["export_range"].get("why", "").split(":")[0] for t in spec["tensors"] if not t["export_range"]["folded"]}
    assert reasons == ({"dynamic range"} if convention == "pow2" else {"precision 63 is not a power of two, so r / p "
                                                                        "is not exact in float32"})
    if convention != "pow2":  # Quant's x / (1/p) is then not x * p: test_export covers that case
        return
    x = digits("test")[0][:50]
    # ONNX Runtime's extended optimizations (blocked-layout convolutions) sum in another order than the node by
    # node execution qonnx does; with the basic ones both run the same arithmetic
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    reference = ort.InferenceSession(noise_free(converted).SerializeToString(), options,
                                     providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(run_in_qonnx(exported, {"input": x})[0], reference.run(None, {"input": x})[0])


def test_per_channel_conv_transpose_weights_stay_unfolded_for_openvino(rng):
    """OpenVINO misreads a per-axis DequantizeLinear on a ConvTranspose weight's axis 1 (a review measured 62 % of
    the outputs off); those weights keep Div and Mul, and the export still equals the simulation in ONNX Runtime."""
    from analogize.export import compare_outputs, export

    weight = rng.normal(size=(3, 4, 2, 2)).astype(np.float32)
    model = helper.make_model(helper.make_graph(
        [helper.make_node("ConvTranspose", ["x", "W"], ["y"])], "t",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, 6, 6])], [numpy_helper.from_array(weight, "W")]),
        opset_imports=[helper.make_opsetid("", 17)])
    exported, spec = export(convert(model, bits=6, ep=0.3, seed=1).model, "qdq")
    weight_entry = next(t for t in spec["tensors"] if t["site"] == "weight")
    assert not weight_entry["export_range"]["folded"] and "ConvTranspose" in weight_entry["export_range"]["why"]
    assert compare_outputs(convert(model, bits=6, ep=0.3, seed=1).model, exported,
                           rng.uniform(-1, 1, (4, 3, 5, 5)).astype(np.float32))["top1_agreement"] == 1.0
