"""The torch interpreter against ONNX's own backend node tests, and a recurrent sequence model against ONNX
Runtime, with its gradients."""
import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from analogize.errors import AnalogizeError
from analogize.training.coverage import MODEL_OPS, coverage
from analogize.training.onnx_torch import to_torch
from conftest import session


def test_every_case_of_the_ops_real_models_use_passes_or_is_out_of_scope_for_a_reason():
    report = coverage(MODEL_OPS)
    assert set(report) == set(MODEL_OPS)
    assert all(entry.cases for entry in report.values()), "an op with no node test cases"
    failures = {f"{op}/{case}": why for op, entry in report.items() for case, why in entry.failed.items()}
    assert not failures, failures
    assert all(why for entry in report.values() for why in entry.skipped.values())
    # out of scope stays the exception: types torch cannot run account for most skips (Cast's float8 and 4-bit)
    assert sum(len(entry.passed) for entry in report.values()) > 500


def _model(nodes, inputs, outputs, initializers=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_all_missing_ops_are_named_at_once_with_their_counts():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    nodes = [helper.make_node("Hardmax", ["x"], ["a"], name="first"),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Hardmax", ["b"], ["c"], name="second"),
             helper.make_node("Det", ["c"], ["d"], name="det")]
    model = _model(nodes, [x], [helper.make_tensor_value_info("d", TensorProto.FLOAT, [])])
    with pytest.raises(AnalogizeError) as raised:
        to_torch(model)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith("unsupported ops Det (node 'det'), Hardmax (2 nodes, first 'first');")


@pytest.mark.parametrize("op_type, attributes, named", [
    ("Resize", {"mode": "area"}, "mode=area"),
    ("Pad", {"mode": "mirror"}, "mode=mirror"),
    ("Cast", {"to": TensorProto.STRING}, "to=STRING"),
])
def test_unsupported_attribute_values_fail_when_built_naming_node_and_value(op_type, attributes, named):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])
    inputs = {"Resize": ["x", "", "scales"], "Pad": ["x", "pads"], "Cast": ["x"]}[op_type]
    constants = [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
                 numpy_helper.from_array(np.zeros(8, np.int64), "pads")]
    node = helper.make_node(op_type, inputs, ["y"], name="odd", **attributes)
    model = _model([node], [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], constants)
    with pytest.raises(AnalogizeError, match=f"{op_type} node 'odd' has {named} \\(supported: "):
        to_torch(model)


def _sequence_classifier(rng, steps, batch, features, hidden, classes):
    """A real-shaped sequence model: a bidirectional GRU (ragged sequence lengths) feeding an LSTM with
    peepholes, whose last hidden state goes through layer norm and a linear classifier."""
    def weights(name, *shape):
        return numpy_helper.from_array(rng.normal(0, 0.4, shape).astype(np.float32), name)

    initializers = [
        weights("gru_w", 2, 3 * hidden, features), weights("gru_r", 2, 3 * hidden, hidden),
        weights("gru_b", 2, 6 * hidden),
        numpy_helper.from_array(np.array([steps, steps - 3, 2, steps - 1][:batch], np.int32), "lengths"),
        weights("lstm_w", 1, 4 * hidden, 2 * hidden), weights("lstm_r", 1, 4 * hidden, hidden),
        weights("lstm_b", 1, 8 * hidden), weights("lstm_p", 1, 3 * hidden),
        weights("norm_scale", hidden), weights("norm_bias", hidden),
        weights("fc_w", classes, hidden), weights("fc_b", classes),
        numpy_helper.from_array(np.array([steps, batch, 2 * hidden], np.int64), "merged"),
        numpy_helper.from_array(np.array([0], np.int64), "first_axis")]
    nodes = [
        helper.make_node("GRU", ["x", "gru_w", "gru_r", "gru_b", "lengths"], ["gru_y"], hidden_size=hidden,
                         direction="bidirectional", linear_before_reset=1),
        helper.make_node("Transpose", ["gru_y"], ["by_step"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["by_step", "merged"], ["features"]),
        helper.make_node("LSTM", ["features", "lstm_w", "lstm_r", "lstm_b", "lengths", "", "", "lstm_p"],
                         ["", "lstm_h"], hidden_size=hidden),
        helper.make_node("Squeeze", ["lstm_h", "first_axis"], ["last"]),
        helper.make_node("LayerNormalization", ["last", "norm_scale", "norm_bias"], ["normed"]),
        helper.make_node("Gemm", ["normed", "fc_w", "fc_b"], ["logits"], transB=1),
        helper.make_node("LogSoftmax", ["logits"], ["y"], axis=-1)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, batch, features])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])], initializers)


def test_a_recurrent_sequence_model_matches_onnx_runtime_and_trains(rng):
    model = _sequence_classifier(rng, steps=7, batch=4, features=5, hidden=8, classes=3)
    x = rng.normal(0, 1, (7, 4, 5)).astype(np.float32)
    expected = session(model).run(None, {"x": x})[0]
    module = to_torch(model)
    result = module(torch.from_numpy(x))
    np.testing.assert_allclose(result.detach().numpy(), expected, rtol=1e-4, atol=1e-6)
    (-result[:, 0].sum()).backward()
    gradients = {module.names[key]: parameter.grad for key, parameter in module.weights.items()}
    assert set(gradients) >= {"gru_w", "gru_r", "gru_b", "lstm_w", "lstm_r", "lstm_b", "lstm_p", "fc_w"}
    assert all(g is not None and g.abs().sum() > 0 for g in gradients.values()), \
        [name for name, g in gradients.items() if g is None or not g.abs().sum() > 0]
