"""The graph IR's crossings (analogize.passes.graph): what a model keeps through import and export, checked
on models built here with the features graphsurgeon does not model, against the source model and ONNX Runtime."""
import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

from analogize import convert
from analogize.cli import main
from analogize.passes.graph import bodies, export_model, graph_tensors, import_model, new_node, new_variable
from conftest import DEFAULT_MODEL


def round_trip(model):
    return export_model(import_model(model), model)


def outputs(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def float_input(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_unimported_attributes_empty_lists_and_docs_go_back_as_they_were():
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([5.0], np.float32), "values"),
                                       numpy_helper.from_array(np.array([1], np.int64), "indices"), [3])
    constant = helper.make_node("Constant", [], ["c"], sparse_value=sparse, doc_string="a sparse constant")
    reduce = helper.make_node("ReduceSum", ["x"], ["s"], keepdims=1)  # opset 11: axes=[] reduces everything
    reduce.attribute.append(helper.make_attribute("axes", [], attr_type=onnx.AttributeProto.INTS))
    add = helper.make_node("Add", ["s", "c"], ["y"])
    graph = helper.make_graph([constant, reduce, add], "g", [float_input("x", [3])], [float_input("y", [3])],
                              doc_string="the graph")
    graph.input[0].doc_string = "the data"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    exported = round_trip(model)
    assert [n.SerializeToString() for n in exported.graph.node][0] == constant.SerializeToString()
    assert exported.graph.node[1].attribute == model.graph.node[1].attribute
    assert exported.graph.input[0].doc_string == "the data" and exported.graph.doc_string == "the graph"
    x = np.array([1.0, 2.0, 3.0], np.float32)
    np.testing.assert_array_equal(outputs(exported, {"x": x})[0], outputs(model, {"x": x})[0])


def test_the_source_model_is_left_byte_for_byte_as_it_was():
    value = helper.make_tensor("", TensorProto.FLOAT, [1, 4], [0.5] * 4)
    value.ClearField("name")
    nodes = [helper.make_node("Constant", [], ["w"], value=value), helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Relu", ["m"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [float_input("x", [2, 1])], [float_input("y", [2, 4])]),
                              opset_imports=[helper.make_opsetid("", 17)])
    before = model.SerializeToString()
    round_trip(model)
    convert(model, bits=6, ep=0.3, seed=1)
    assert model.SerializeToString() == before


def test_an_initializer_read_only_in_if_branches_stays_in_the_outer_graph_and_overridable():
    weight = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    branch = [helper.make_graph([helper.make_node(op, ["x", "w"], [f"{op}_out"])], op, [],
                                [float_input(f"{op}_out", [4])]) for op in ("Add", "Mul")]
    node = helper.make_node("If", ["flag"], ["y"], then_branch=branch[0], else_branch=branch[1])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
                                            float_input("x", [4]), float_input("w", [4])],
                              [float_input("y", [4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    exported = round_trip(model)
    assert [t.name for t in exported.graph.initializer] == ["w"]
    assert all(not a.g.initializer for a in exported.graph.node[0].attribute)
    assert [v.name for v in exported.graph.input] == ["flag", "x", "w"]
    feeds = {"flag": np.array(False), "x": np.ones(4, np.float32), "w": np.full(4, 3.0, np.float32)}
    np.testing.assert_array_equal(outputs(exported, feeds)[0], outputs(model, feeds)[0])


def test_unused_overridable_initializers_keep_their_inputs():
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [float_input("x", [2]), float_input("spare", [2])], [float_input("y", [2])],
                              [numpy_helper.from_array(np.zeros(2, np.float32), "spare")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    exported = round_trip(model)
    assert [v.name for v in exported.graph.input] == ["x", "spare"]
    assert [t.name for t in exported.graph.initializer] == ["spare"]


def test_a_model_importing_ai_onnx_gets_no_second_default_domain():
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [float_input("x", [1, 2])],
                              [float_input("y", [1, 2])], [numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx", 17)])
    converted = convert(model, bits=6, noise=False).model
    assert [(e.domain, e.version) for e in converted.opset_import] == [("ai.onnx", 17), ("ai.analogize", 1)]
    x = np.array([[0.25, -0.5]], np.float32)
    np.testing.assert_array_equal(outputs(converted, {"x": x})[0], x)


def test_sequence_inputs_get_no_chain_and_keep_their_type():
    sequence = helper.make_tensor_sequence_value_info("parts", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("ConcatFromSequence", ["parts"], ["joined"], axis=0),
             helper.make_node("MatMul", ["joined", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [sequence], [float_input("y", None)],
                              [numpy_helper.from_array(np.ones((4, 1), np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    result = convert(model, bits=6, noise=False)
    assert "input" not in {site["site"] for site in result.report["inserted"]}
    assert result.model.graph.input[0] == sequence
    parts = [np.full(2, 0.125, np.float32), np.full(2, 0.25, np.float32)]
    np.testing.assert_array_equal(outputs(result.model, {"parts": parts})[0], [0.75])


def test_a_sparse_initializer_weight_stays_digital_as_before():
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([2.0], np.float32), "w"),
                                       numpy_helper.from_array(np.array([0], np.int64), "w_indices"), [2, 2])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [float_input("x", [1, 2])],
                              [float_input("y", [1, 2])], sparse_initializer=[sparse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    report = convert(model, bits=6, noise=False, data_inputs=("x",)).report  # x reaches no analog layer
    # the unnamed layer node is named <op>_<position>, as reports and plans address it
    assert report["layers"] == [] and [s["node"] for s in report["skipped_layers"]] == ["MatMul_0"]


def test_graphsurgeon_warnings_never_reach_the_json_on_stdout(tmp_path, capsys):
    # duplicate node names inside a branch make graphsurgeon warn; stdout must stay one JSON document
    branch = helper.make_graph([helper.make_node("Relu", ["x"], ["r1"], name="same"),
                                helper.make_node("Relu", ["r1"], ["r2"], name="same")], "b", [],
                               [float_input("r2", [1, 2])])
    nodes = [helper.make_node("If", ["flag"], ["h"], then_branch=branch, else_branch=branch),
             helper.make_node("MatMul", ["h", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
                                           float_input("x", [1, 2])], [float_input("y", [1, 2])],
                              [numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")])
    path = tmp_path / "dup.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    assert main(["convert", str(path), "-o", str(tmp_path / "out.onnx"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layers"] == [""] or len(report["layers"]) == 1


@pytest.mark.parametrize("elem_type", [TensorProto.FLOAT])
def test_an_optional_input_is_a_one_line_error_or_converts(elem_type, tmp_path, capsys):
    optional = helper.make_value_info("maybe", helper.make_optional_type_proto(
        helper.make_tensor_type_proto(elem_type, [2])))
    nodes = [helper.make_node("OptionalHasElement", ["maybe"], ["has"]),
             helper.make_node("MatMul", ["x", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [optional, float_input("x", [1, 2])],
                              [float_input("y", [1, 2]), helper.make_tensor_value_info("has", TensorProto.BOOL, [])],
                              [numpy_helper.from_array(np.eye(2, dtype=np.float32), "w")])
    path = tmp_path / "optional.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    code = main(["convert", str(path), "-o", str(tmp_path / "out.onnx")])
    error = capsys.readouterr().err
    assert code == 0 or (code == 2 and len(error.strip().splitlines()) == 1 and "Traceback" not in error)


def _with_pass_edits(graph):
    """A changed weight, a new constant and a weight no node reads any more, as passes make them."""
    tensors = graph.tensors()
    tensors["w1"].values = np.full(tensors["w1"].shape, 0.25, np.float32)
    graph.nodes[0].inputs[1] = gs.Constant("new", np.ones(tensors["w0"].shape, np.float32))


def test_an_export_written_into_its_source_equals_a_fresh_export():
    """export_model(in_place=True) keeps the weights the graph holds unchanged where they lie; the file is the one
    a fresh export writes (initializers in the source's order, new ones after), the caller having given it up."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.normal(size=(3, 3)).astype(np.float32), f"w{k}") for k in range(3)]
    spare = numpy_helper.from_array(np.zeros(3, np.float32), "spare")
    nodes = [helper.make_node("MatMul", ["x", "w0"], ["a"]), helper.make_node("MatMul", ["a", "w1"], ["b"]),
             helper.make_node("MatMul", ["b", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [float_input("x", [1, 3]), float_input("spare", [3])],
                              [float_input("y", [1, 3])], [weights[2], spare, weights[0], weights[1]])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for edit in (None, _with_pass_edits):
        fresh_graph, given_up = import_model(model), onnx.ModelProto()
        given_up.CopyFrom(model)
        in_place_graph = import_model(given_up)
        for graph_ir in (fresh_graph, in_place_graph) if edit else ():
            edit(graph_ir)
        fresh = export_model(fresh_graph, model)
        written = export_model(in_place_graph, given_up, in_place=True)
        assert written is given_up and written.SerializeToString() == fresh.SerializeToString()
        expected = ["w2", "spare", "w0", "w1"] if edit is None else ["w2", "spare", "w1", "new"]
        assert [t.name for t in written.graph.initializer] == expected
    digits = onnx.load(DEFAULT_MODEL)
    given_up = onnx.ModelProto()
    given_up.CopyFrom(digits)
    assert convert(given_up, bits=6, ep=0.3, seed=1, reuse_input=True).model.SerializeToString() == \
        convert(digits, bits=6, ep=0.3, seed=1).model.SerializeToString()


def _state(item):
    """An IR object's fields, its io lists by the names they hold and the side they keep in step."""
    return {key: (type(value), [entry.name for entry in value], value.field_name) if key in ("inputs", "outputs")
            else (type(value), value) for key, value in vars(item).items()}


def test_the_quick_node_and_variable_are_graphsurgeons_own():
    """new_node and new_variable skip graphsurgeon's constructors (the passes' hot path): they must build what
    those build, io lists kept in step included."""
    for attrs, domain in ((None, None), ({"std": 0.1}, "ai.analogize")):
        made_in, made_out = new_variable("a"), new_variable("b")
        made = new_node("AnalogNoise", "n", [made_in], [made_out], attrs, domain)
        given_in, given_out = gs.Variable("a"), gs.Variable("b")
        given = gs.Node("AnalogNoise", name="n", attrs=attrs, inputs=[given_in], outputs=[given_out], domain=domain)
        assert _state(made) == _state(given)
        assert _state(made_in) == _state(given_in) and _state(made_out) == _state(given_out)
        assert made_in.outputs == [made] and made_out.inputs == [made]


def _tensor_state(tensor):
    values = getattr(tensor, "_values", None)  # a constant's values as graphsurgeon holds them, not yet loaded
    stored = (type(values), getattr(values.tensor, "name", None), tuple(values.shape), str(values.dtype),
              values.nbytes) if isinstance(values, LazyValues) else type(values)
    return (type(tensor), tensor.name, str(tensor.dtype), tensor.shape, getattr(tensor, "type", None),
            [node.name for node in tensor.inputs], [node.name for node in tensor.outputs],
            getattr(tensor, "data_location", None), getattr(tensor, "_export_dtype", None), stored)


def _graph_state(graph):
    """What graphsurgeon's import makes of a graph: its nodes, their attributes (bodies and tensors by their own
    state), the tensors they share and the graph's fields."""
    def attribute(value):
        if isinstance(value, gs.Graph):
            return _graph_state(value)
        return _tensor_state(value) if isinstance(value, gs.Tensor) else value

    return ([(node.op, node.name, node.domain, {key: attribute(value) for key, value in node.attrs.items()},
              [_tensor_state(tensor) for tensor in node.inputs], [_tensor_state(tensor) for tensor in node.outputs])
             for node in graph.nodes],
            [_tensor_state(tensor) for tensor in graph.inputs], [_tensor_state(tensor) for tensor in graph.outputs],
            {name: _tensor_state(tensor) for name, tensor in graph.tensors().items()},
            (graph.name, graph.doc_string, graph.opset, graph.producer_name, graph.producer_version, graph.ir_version,
             [function.unique_id for function in graph.functions]))


def test_the_import_builds_what_graphsurgeons_import_builds():
    """import_model imports the top-level nodes itself (graphsurgeon's constructors cost most of the time): the
    graph must be graphsurgeon's, on a model with the corners of its import."""
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([2.0], np.float32), "sparse"),
                                       numpy_helper.from_array(np.array([0], np.int64), "sparse_indices"), [2])
    branch = helper.make_graph([helper.make_node("Add", ["x", "w"], ["b"])], "branch", [], [float_input("b", [2])])
    body = helper.make_function("local", "twice", ["t"], ["u"], [helper.make_node("Add", ["t", "t"], ["u"])],
                                [helper.make_opsetid("", 17)])
    half = helper.make_tensor("half", TensorProto.BFLOAT16, [2], [1, 2])
    external = numpy_helper.from_array(np.ones(2, np.float32), "outside")
    onnx.external_data_helper.set_external_data(external, "weights.bin")  # only its record is imported
    external.ClearField("raw_data")
    nodes = [helper.make_node("Clip", ["x", "", "high"], ["c"], name="clip", doc_string="kept"),
             helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.ones(2, np.float32))),
             helper.make_node("Constant", [], ["words"], value_strings=["a", "b"]),
             helper.make_node("Constant", [], ["scale"], value_float=0.5),
             helper.make_node("Constant", [], ["steps"], value_floats=[0.5, 1.5]),
             helper.make_node("Constant", [], ["sizes"], value_ints=[2, 3]),
             helper.make_node("Cast", ["half"], ["wide"], to=TensorProto.FLOAT),
             helper.make_node("Add", ["wide", "outside"], ["sum"]),
             helper.make_node("LeakyRelu", ["sum"], ["leaky"], alpha=0.25),
             helper.make_node("Resize", ["leaky", "", "scales"], ["big"], mode="linear",
                              coordinate_transformation_mode="align_corners"),
             helper.make_node("Pad", ["big", "pads"], ["padded"], mode="reflect"),
             helper.make_node("If", ["flag"], ["i"], then_branch=branch, else_branch=branch),
             helper.make_node("twice", ["c"], ["d"], domain="local"),
             helper.make_node("Add", ["d", "unmade"], ["e"], domain=""),
             helper.make_node("Concat", ["e", "k", "i", "sparse"], ["y"], axis=0, name="join")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("flag", TensorProto.BOOL, []),
                                           float_input("x", [2]), float_input("w", [2])],
                              [float_input("y", None)],
                              [numpy_helper.from_array(np.ones(2, np.float32), "w"),
                               numpy_helper.from_array(np.array(1.0, np.float32), "high"), half, external,
                               numpy_helper.from_array(np.array([2.0], np.float32), "scales"),
                               numpy_helper.from_array(np.array([1, 1], np.int64), "pads"),
                               numpy_helper.from_array(np.ones(3, np.float16), "unused_half")],
                              doc_string="doc", value_info=[helper.make_value_info("c", onnx.TypeProto()),
                                                            float_input("c", ["n"]), float_input("e", [2])],
                              sparse_initializer=[sparse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=[body], producer_name="test")
    for source in (model, onnx.load(DEFAULT_MODEL)):
        imported = import_model(source)
        assert _graph_state(imported) == _graph_state(gs.import_onnx(source))
        for graph in (imported, *bodies(imported)):  # graph_tensors: graphsurgeon's tensors(), entry for entry
            assert list(graph_tensors(graph).items()) == list(graph.tensors().items())
