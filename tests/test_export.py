"""Exports checked by their consumers: ONNX Runtime, OpenVINO's compiler, and a rebuild of the simulation."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import reference as ref
from analogize import convert
from analogize.data import digits
from analogize.errors import AnalogizeError
from analogize.export import analog_spec, compare_outputs, export, rebuild
from analogize.runtime import create_session
from conftest import DEFAULT_MODEL, session
from test_cli import analogize


@pytest.fixture(scope="module")
def test_images():
    return digits("test")


@pytest.fixture(scope="module")
def converted():
    return convert(onnx.load(DEFAULT_MODEL), bits=6, ep=0.3, seed=2, activation="interp-gelu", factor=0.5).model


def single_op_model(precision, opset=17):
    graph = helper.make_graph([helper.make_node("ReducePrecision", ["x"], ["y"], domain="ai.analogize",
                                                name="analogize/input/x/quantize", precision=precision)],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    from analogize.rewrite import attach_functions, store_settings

    attach_functions(model, ["ReducePrecision"])
    store_settings(model, {"options": {"bit_convention": "pow2"}, "precision": precision})
    return model


def test_qdq_is_standard_onnx_and_agrees_with_the_noise_free_simulation(converted, test_images):
    exported, spec = export(converted, "qdq")
    assert not any(n.domain for n in exported.graph.node) and not exported.functions
    quantizers = [n for n in exported.graph.node if n.op_type == "QuantizeLinear"]
    assert len(quantizers) == sum(1 for t in spec["tensors"] if t["precision"]) == 20
    assert {n.op_type for n in exported.graph.node} >= {"Clip", "QuantizeLinear", "DequantizeLinear", "Erf"}
    onnx.checker.check_model(exported, full_check=True)
    check = compare_outputs(converted, exported, test_images[0])
    assert check["top1_agreement"] >= 0.98 and check["max_abs_difference"] <= 4 / 64


@pytest.mark.parametrize("precision, integer_type", [(64.0, TensorProto.INT8), (256.0, TensorProto.INT16)])
def test_qdq_differs_from_reduce_precision_exactly_on_ties(precision, integer_type, rng):
    model = single_op_model(precision)
    exported, _ = export(model, "qdq")
    zero_points = [t for t in exported.graph.initializer if "zero_point" in t.name]
    assert [t.data_type for t in zero_points] == [integer_type]
    x = np.concatenate([rng.uniform(-1, 1, 20_000), (np.arange(-64, 64) + 0.5) / precision]).astype(np.float32)
    expected = ref.reduce_precision(x, precision).astype(np.float32)
    actual = session(exported).run(None, {"x": x})[0]
    ties = np.abs(np.abs(x * np.float32(precision)) % 1 - 0.5) == 0
    np.testing.assert_array_equal(actual[~ties], expected[~ties])
    assert np.all(np.abs(actual[ties] - expected[ties]) <= 1 / precision)
    assert np.any(actual[ties] != expected[ties])  # half to even, not toward zero: the documented mismatch


def test_openvino_compiles_the_qdq_export_with_onnx_runtime_s_results(converted, test_images, tmp_path):
    openvino = pytest.importorskip("openvino")
    exported, _ = export(converted, "qdq")
    path = tmp_path / "model.qdq.onnx"
    onnx.save(exported, path)
    core = openvino.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    theirs = compiled(test_images[0])[0]
    ours = session(exported).run(None, {"input": test_images[0]})[0]
    assert np.mean(theirs.argmax(1) == ours.argmax(1)) >= 0.99
    np.testing.assert_allclose(theirs, ours, atol=2 / 64)


def test_plain_export_is_the_simulation_in_standard_ops(converted, test_images):
    plain, spec = export(converted, "plain")
    assert not plain.functions and spec["export"] == {"format": "plain", "noise": "removed"}
    assert compare_outputs(converted, plain, test_images[0])["mismatch_rate"] == 0.0
    noisy, _ = export(converted, "plain", keep_noise=True)
    assert "RandomNormalLike" in {n.op_type for n in noisy.graph.node} and not noisy.functions


def test_the_spec_describes_every_analog_tensor(converted):
    spec = analog_spec(converted)
    assert (spec["format"], spec["version"]) == ("analogize.spec", 1)
    sites = {t["site"] for t in spec["tensors"]}
    assert sites == {"input", "layer-input", "weight", "bias", "layer-output"}
    for tensor in spec["tensors"]:
        assert tensor["precision"] == 64 and tensor["bits"] == 6 and tensor["integer_bits"] == 8
        assert tensor["clamp"] == [-1.0, 1.0] and tensor["rounding"] == "half-toward-zero"
        assert tensor["ep"] == pytest.approx(0.3, abs=1e-6) and tensor["std"] == pytest.approx(ref.ep_to_std(0.3, 64))
    assert [t["order"] for t in spec["tensors"] if t["site"] == "layer-output"][0] == ["noise", "clamp", "quantize"]
    assert len(spec["activations"]) == 4
    assert spec["activations"][0]["op_type"] == "ReluGeluInterpolation"
    assert spec["activations"][0]["attributes"]["factor"] == 0.5
    json.dumps(spec)


@pytest.mark.parametrize("native", [False, True])
def test_rebuild_from_qdq_and_spec_gives_back_the_noisy_simulation(native, test_images):
    original = convert(onnx.load(DEFAULT_MODEL), bits=6, ep=0.5, seed=7).model
    exported, spec = export(original, "qdq")
    rebuilt = rebuild(exported, json.loads(json.dumps(spec)))
    x = test_images[0][:100]
    ours, theirs = create_session(original, native=native), create_session(rebuilt, native=native)
    for _ in range(2):  # fresh noise on every run, the same draws on both
        np.testing.assert_array_equal(ours.run(None, {"input": x})[0], theirs.run(None, {"input": x})[0])


def test_bad_exports_are_refused(converted):
    with pytest.raises(AnalogizeError, match="convert it first"):
        export(onnx.load(DEFAULT_MODEL), "qdq")
    with pytest.raises(AnalogizeError, match="plain only"):
        export(converted, "qdq", keep_noise=True)
    with pytest.raises(AnalogizeError, match="unknown export format"):
        export(converted, "tflite")
    with pytest.raises(AnalogizeError, match="--inline"):
        export(convert(onnx.load(DEFAULT_MODEL), bits=6, inline=True).model, "qdq")
    with pytest.raises(AnalogizeError, match="up to 32767"):
        export(convert(onnx.load(DEFAULT_MODEL), bits=16, noise=False).model, "qdq")
    with pytest.raises(AnalogizeError, match="divide"):
        export(convert(onnx.load(DEFAULT_MODEL), bits=6, divide=0.3, noise=False).model, "qdq")
    plain, spec = export(converted, "plain")
    with pytest.raises(AnalogizeError, match="qdq export"):
        rebuild(plain, spec)


def test_cli_export_writes_model_and_spec_and_refuses_clean_models(tmp_path, capsys, converted):
    source = tmp_path / "analog.onnx"
    onnx.save(converted, source)
    output = tmp_path / "out.qdq.onnx"
    code, out, err = analogize(capsys, "export", source, "--format", "qdq", "-o", output, "--verify-data", "digits",
                               "--limit", "100")
    assert code == 0, err
    assert "top-1 agreement" in out and (tmp_path / "out.qdq.spec.json").exists()
    spec = json.loads((tmp_path / "out.qdq.spec.json").read_text())
    assert spec["verification"]["samples"] == 100
    code, out, err = analogize(capsys, "rebuild", output, "--spec", tmp_path / "out.qdq.spec.json",
                               "-o", tmp_path / "rebuilt.onnx")
    assert code == 0 and (tmp_path / "rebuilt.onnx").exists(), err
    code, _, err = analogize(capsys, "export", DEFAULT_MODEL, "-o", tmp_path / "clean.onnx")
    assert code == 2 and "convert it first" in err and not (tmp_path / "clean.onnx").exists()
