"""analogize convert: semantics of the rewritten graph against numpy/torch references, and coverage."""
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper, version_converter

import reference as ref
from analogize import zoo
from analogize.convert import PAPER_RANGES, ConvertOptions, convert, convert_file
from analogize.errors import AnalogizeError
from analogize.noise_model import ep_to_std
from analogize.ops.spec import DOMAIN
from conftest import DEFAULT_MODEL, LIGHT_MODELS, run, session

ALL_OFF = dict(noise=False, quantize=False, clamp=False)


def mlp_model(weights, biases, opset=17, matmul=False):
    """x -> [Gemm|MatMul+Add] -> Relu -> ... -> output, weights as initializers."""
    nodes, inits, current = [], [], "x"
    for k, (w, b) in enumerate(zip(weights, biases)):
        inits += [numpy_helper.from_array(w, f"w{k}"), numpy_helper.from_array(b, f"b{k}")]
        out = f"h{k}" if k < len(weights) - 1 else "y"
        pre = f"z{k}"
        if matmul:
            nodes += [helper.make_node("MatMul", [current, f"w{k}"], [f"m{k}"], name=f"matmul{k}"),
                      helper.make_node("Add", [f"m{k}", f"b{k}"], [pre if k < len(weights) - 1 else out],
                                       name=f"bias{k}")]
        else:
            nodes.append(helper.make_node("Gemm", [current, f"w{k}", f"b{k}"], [pre if k < len(weights) - 1 else out],
                                          name=f"gemm{k}"))
        if k < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [pre], [out], name=f"relu{k}"))
        current = out
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", weights[0].shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", weights[-1].shape[1]])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


@pytest.fixture
def mlp(rng):
    weights = [rng.normal(0, 0.5, (6, 5)).astype(np.float32), rng.normal(0, 0.5, (5, 3)).astype(np.float32)]
    biases = [rng.normal(0, 0.3, 5).astype(np.float32), rng.normal(0, 0.3, 3).astype(np.float32)]
    return weights, biases


def test_everything_off_gives_identical_outputs(rng):
    model = onnx.load(DEFAULT_MODEL)
    x = rng.uniform(0, 1, (17, 1, 8, 8)).astype(np.float32)
    converted = convert(model, **ALL_OFF).model
    np.testing.assert_array_equal(run(converted, x), run(model, x))


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=lambda p: p.rsplit("/", 1)[-1][6:-5])
def test_light_models_convert_check_and_run(path, rng):
    model = onnx.load(path)
    result = convert(model, activation="interp-gelu", factor=0.5, seed=0)
    onnx.checker.check_model(result.model, full_check=True)
    x = rng.uniform(0, 1, (1, 3, 224, 224)).astype(np.float32)
    noisy = run(result.model, x)
    assert np.isfinite(noisy).all()
    assert result.report["layers"] and result.report["activations"]["swapped"]
    off = convert(model, **ALL_OFF).model
    np.testing.assert_allclose(run(off, x), run(model, x), rtol=1e-5, atol=1e-6)


def test_activation_swap_matches_torch_network(rng):
    torch.manual_seed(0)
    net = zoo.create_model("convnet", in_channels=1, image_size=8, width=0.25, stages=1, hidden=(16,)).eval()
    path = zoo.export_onnx(net, _tmp("swap.onnx"), (1, 8, 8))
    converted = convert(onnx.load(path), activation="interp-silu", factor=0.3, scale=1.5, alpha=0.1, **ALL_OFF).model
    x = rng.uniform(0, 1, (9, 1, 8, 8)).astype(np.float32)

    class InterpSilu(torch.nn.Module):
        def forward(self, z):
            r = torch.maximum(0.1 * z, z)
            return r + 0.3 * (z * torch.sigmoid(1.5 * z) - r)

    swapped = torch.nn.Sequential(*[InterpSilu() if isinstance(m, torch.nn.ReLU) else m for m in net])
    with torch.no_grad():
        expected = swapped(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(run(converted, x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("matmul", [False, True])
def test_quantize_and_clamp_match_numpy_semantics(mlp, matmul, rng):
    weights, biases = mlp
    model = mlp_model(weights, biases, matmul=matmul)
    p = 2.0**5
    converted = convert(model, bits=5, noise=False, activation="gelu", **PAPER_RANGES)
    x = rng.uniform(-1.5, 1.5, (32, 6)).astype(np.float32)
    chain = ref.clamp_then_reduce
    h = x.astype(np.float64)
    for k, (w, b) in enumerate(zip(weights, biases)):
        h = chain(h, p) @ chain(w, p) + chain(b, p)  # DOA on input, weights, biases
        h = chain(h, p)  # AOD after the layer
        if k < len(weights) - 1:
            h = ref.gelu_interp(h)
    np.testing.assert_allclose(run(converted.model, x), h, rtol=1e-5, atol=1e-5)
    sites = {(s["site"], s["layer"]) for s in converted.report["inserted"]}
    layer0 = "matmul0" if matmul else "gemm0"
    assert {("input", None), ("weight", layer0), ("bias", layer0), ("layer-output", layer0)} <= sites


def noise_only_model(rng, std=None, ep=None, seed=None, width=400):
    identity = np.eye(width, dtype=np.float32)
    model = mlp_model([identity], [np.zeros(width, np.float32)])
    return convert(model, where=("input",), quantize=False, clamp=False, std=std, ep=ep, bits=6, seed=seed,
                   **PAPER_RANGES).model


def test_noise_has_the_std_the_ep_formula_predicts(rng):
    model = noise_only_model(rng, ep=0.3)
    x = np.full((250, 400), 0.25, np.float32)
    s = session(model)
    first = s.run(None, {"x": x})[0] - x
    second = s.run(None, {"x": x})[0] - x
    expected = ep_to_std(0.3, 64)
    assert expected == pytest.approx(ref.ep_to_std(0.3, 64))
    assert first.std() == pytest.approx(expected, rel=0.02)
    assert abs(first.mean()) < 4 * expected / np.sqrt(x.size)
    assert not np.array_equal(first, second)
    # the fraction of values pushed past half a quantisation step is the EP itself
    assert np.mean(np.abs(first) > 0.5 / 64) == pytest.approx(0.3, abs=0.01)


def test_seeded_noise_is_reproducible_and_independent_between_nodes(rng, mlp):
    weights, biases = mlp
    model = mlp_model(weights, biases)
    x = rng.uniform(-1, 1, (64, 6)).astype(np.float32)
    a = convert(model, seed=11, std=0.05).model
    b = convert(model, seed=11, std=0.05).model
    c = convert(model, seed=12, std=0.05).model
    np.testing.assert_array_equal(run(a, x), run(b, x))
    assert not np.array_equal(run(a, x), run(c, x))
    seeds = [attr.f for node in a.graph.node if node.op_type == "AnalogNoise" for attr in node.attribute
             if attr.name == "seed"]
    assert len(seeds) == len(set(seeds)) > 3


def test_where_and_exclude_select_sites(mlp):
    weights, biases = mlp
    model = mlp_model(weights, biases)
    report = convert(model, where=("weights",), exclude=("gemm1",)).report
    assert [(s["site"], s["layer"]) for s in report["inserted"]] == [("weight", "gemm0")]
    assert report["skipped_layers"] == [{"node": "gemm1", "op_type": "Gemm", "reason": "excluded by --exclude"}]
    report = convert(model, activation="gelu", exclude=("Relu",)).report
    assert report["activations"]["swapped"] == []


def test_inline_writes_standard_ops_only(mlp, rng):
    weights, biases = mlp
    model = mlp_model(weights, biases)
    x = rng.uniform(-1, 1, (8, 6)).astype(np.float32)
    with_functions = convert(model, seed=3, activation="interp-gelu", factor=0.5).model
    inlined = convert(model, seed=3, activation="interp-gelu", factor=0.5, inline=True).model
    onnx.checker.check_model(inlined, full_check=True)
    assert all(node.domain in ("", "ai.onnx") for node in inlined.graph.node)
    assert DOMAIN not in {o.domain for o in inlined.opset_import} and not inlined.functions
    np.testing.assert_allclose(run(inlined, x), run(with_functions, x), rtol=1e-6)


@pytest.mark.parametrize("opset", range(13, 24))
def test_opsets_13_to_23(opset, mlp, rng):
    weights, biases = mlp
    converted = convert(mlp_model(weights, biases, opset=opset), activation="smooth-mish", seed=0).model
    onnx.checker.check_model(converted, full_check=True)
    assert np.isfinite(run(converted, rng.uniform(-1, 1, (4, 6)).astype(np.float32))).all()


def test_opset_is_fitted_and_reported(mlp):
    weights, biases = mlp
    report = convert(mlp_model(weights, biases, opset=9)).report
    assert report["opset_upgrades"] == [{"pass": "fit_opset", "from": 9, "to": 13}]
    report = convert(mlp_model(weights, biases, opset=23)).report
    assert report["opset_upgrades"] == [{"pass": "fit_opset", "from": 23, "to": 21}]
    assert convert(mlp_model(weights, biases, opset=23), noise=False).report["opset_upgrades"] == []


@pytest.mark.parametrize("source, target", [(11, 13), (9, 13), (23, 21)])
def test_the_opset_move_without_weights_gives_the_version_converters_model(source, target, rng):
    """fit_opset keeps large float weights out of ONNX's version converter and puts them back: the moved model is
    the converter's own, byte for byte, whatever its adapters read (here Reshape's shape, Split's sizes, a small
    float tensor, two weights of one name, a weight's doc_string), and the caller's model is left as it was."""
    from analogize.passes.model import fit_opset
    weight = rng.normal(size=(64, 32)).astype(np.float32)
    split_sizes = [8, 24] if source >= 13 else None
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["h", "small"], ["a"]),
             helper.make_node("Reshape", ["a", "shape"], ["r"]),
             helper.make_node("Split", ["r", "sizes"] if split_sizes else ["r"], ["s0", "s1"], axis=1,
                              **({} if split_sizes else {"split": [8, 24]})),
             helper.make_node("Add", ["s1", "W2"], ["y"]), helper.make_node("MatMul", ["h", "W3"], ["z"])]
    documented = numpy_helper.from_array(weight, "W")
    documented.doc_string = "the converter drops a tensor's doc_string and metadata_props"
    documented.metadata_props.add(key="k", value="v")
    initializers = [documented, numpy_helper.from_array(np.ones(32, np.float32), "small"),
                    numpy_helper.from_array(np.array([-1, 32], np.int64), "shape"),
                    numpy_helper.from_array(rng.normal(size=(1, 24)).astype(np.float32), "W2"),
                    *(numpy_helper.from_array(rng.normal(size=(32, 32)).astype(np.float32), "W3") for _ in range(2))]
    if split_sizes:
        initializers.append(numpy_helper.from_array(np.array(split_sizes, np.int64), "sizes"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("s0", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", source)])
    before = model.SerializeToString()
    moved, _ = fit_opset(model, minimum=13, maximum=21)
    assert model.SerializeToString() == before
    assert moved.SerializeToString() == version_converter.convert_version(model, target).SerializeToString()
    assert [i for i in moved.graph.initializer if i.name == "W"][0].raw_data == weight.tobytes()


def test_dynamic_batch(rng):
    converted = convert(onnx.load(DEFAULT_MODEL), seed=1).model
    for batch in (1, 5, 64):
        assert run(converted, rng.uniform(0, 1, (batch, 1, 8, 8)).astype(np.float32)).shape == (batch, 10)


def test_external_data_round_trip(tmp_path, rng):
    model = onnx.load(DEFAULT_MODEL)
    source = tmp_path / "external.onnx"
    onnx.save_model(model, str(source), save_as_external_data=True, location="external.onnx.data", size_threshold=0)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    report = convert_file(source, out_dir / "converted.onnx", **ALL_OFF)
    assert (out_dir / "converted.onnx.data").exists() and report["output"].endswith("converted.onnx")
    x = rng.uniform(0, 1, (3, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(run(out_dir / "converted.onnx", x), run(onnx.load(DEFAULT_MODEL), x))


@pytest.mark.parametrize("where", ["WWWWWWWW", "CCCCCCCC"])
def test_tensor_names_not_utf8_are_refused(where, tmp_path):
    """A weight's name and a Constant node's tensor name (tensors take the load check's slower path, which skips
    their weights) that are not UTF-8 give one line, not a pass tripping on bytes."""
    constant = helper.make_node("Constant", [], ["c"],
                                value=numpy_helper.from_array(np.ones(2, np.float32), "CCCCCCCC"))
    graph = helper.make_graph([constant, helper.make_node("MatMul", ["x", "WWWWWWWW"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
                              [numpy_helper.from_array(np.ones((2, 2), np.float32), "WWWWWWWW")])
    source = tmp_path / "bad.onnx"
    source.write_bytes(helper.make_model(graph).SerializeToString().replace(where.encode(), b"\xff\xfe" + b"W" * 6))
    with pytest.raises(AnalogizeError, match="TensorProto name is not UTF-8"):
        convert_file(source, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("kind", ["graph", "graphs"])
def test_an_analog_node_holding_a_graph_is_refused(kind, tmp_path):
    """Passes take the analog ops' nodes to hold no bodies: a file whose analog node holds one (its body reading
    an outer tensor) is refused in one line as it loads, not fused away under it or crashed on in export."""
    from analogize.model_io import load_model

    body = helper.make_graph([helper.make_node("Identity", ["x"], ["b"])], "body", [],
                             [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 2])])
    node = helper.make_node("ReducePrecision", ["x"], ["y"], domain=DOMAIN, precision=0.1)
    node.attribute.append(helper.make_attribute("extra", body if kind == "graph" else [body]))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    source = tmp_path / "held.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)]),
              source)
    with pytest.raises(AnalogizeError, match=f"{DOMAIN} node .* holds a graph"):
        load_model(source)


@pytest.mark.parametrize("exporter", zoo.EXPORTERS)
@pytest.mark.parametrize("name,config,shape", [
    ("convnet", dict(width=0.125), (3, 32, 32)),
    ("vgg_a", dict(width=0.0625, classifier_width=32, pool_size=1), (3, 32, 32)),
    ("resnet18", dict(width=0.0625, imagenet_stem=False), (3, 16, 16)),
    ("vit", dict(image_size=16, dim=32, depth=2, heads=2, dim_head=16, mlp_dim=32), (3, 16, 16)),
])
def test_zoo_exports_convert_check_and_run(name, config, shape, exporter, rng):
    torch.manual_seed(0)
    net = zoo.create_model(name, **config).eval()
    path = zoo.export_onnx(net, _tmp(f"{name}_{exporter}.onnx"), shape, exporter=exporter)
    x = rng.uniform(0, 1, (2, *shape)).astype(np.float32)
    with torch.no_grad():
        clean = net(torch.from_numpy(x)).numpy()
    model = onnx.load(path)
    np.testing.assert_allclose(run(convert(model, **ALL_OFF).model, x), clean, rtol=1e-4, atol=1e-4)
    result = convert(model, activation="gelu", seed=0)
    onnx.checker.check_model(result.model, full_check=True)
    assert np.isfinite(run(result.model, x)).all()
    relus = sum(isinstance(m, torch.nn.ReLU) for m in net.modules())
    assert len(result.report["activations"]["swapped"]) >= min(relus, 1)
    linear = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in net.modules())
    assert len(result.report["layers"]) == linear


@pytest.mark.parametrize("options,message", [
    (dict(bits=0), "bits must be"), (dict(bits=30), "bits must be"), (dict(ep=1.0), "EP"),
    (dict(ep=-0.1), "EP"), (dict(ep=0.2, std=0.1), "either --ep or --std"), (dict(precision=0.5), "precision"),
    (dict(std=-1.0), "std"), (dict(where=("nowhere",)), "unknown placement"), (dict(activation="tanh"), "activation"),
    (dict(activation="interp-gelu", factor=1.5), "factor"), (dict(seed=-3), "seed"),
])
def test_bad_options_are_rejected(options, message):
    with pytest.raises(AnalogizeError, match=message):
        convert(onnx.load(DEFAULT_MODEL), **options)


def test_already_converted_and_nothing_to_convert():
    converted = convert(onnx.load(DEFAULT_MODEL)).model
    with pytest.raises(AnalogizeError, match="already converted"):
        convert(converted)
    graph = helper.make_graph([helper.make_node("Identity", ["i"], ["o"])], "g",
                              [helper.make_tensor_value_info("i", TensorProto.INT64, [3])],
                              [helper.make_tensor_value_info("o", TensorProto.INT64, [3])])
    with pytest.raises(AnalogizeError, match="nothing to convert"):
        convert(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_input_model_is_not_modified():
    model = onnx.load(DEFAULT_MODEL)
    before = model.SerializeToString()
    convert(model, activation="gelu")
    assert model.SerializeToString() == before


def test_options_round_trip_through_metadata():
    converted = convert(onnx.load(DEFAULT_MODEL), bits=4, ep=0.25, seed=5)
    import json
    stored = json.loads(next(p.value for p in converted.model.metadata_props if p.key == "analogize.settings"))
    assert stored["precision"] == 16 and stored["ep"] == pytest.approx(0.25)
    assert stored["std"] == pytest.approx(ref.ep_to_std(0.25, 16))
    assert ConvertOptions.from_dict(stored["options"]) == ConvertOptions(bits=4, ep=0.25, seed=5)


def _tmp(name):
    import tempfile
    from pathlib import Path
    directory = Path(tempfile.gettempdir()) / "analogize-tests"
    directory.mkdir(exist_ok=True)
    return directory / name


def test_ir3_model_with_initializers_as_inputs_stays_valid(mlp):
    weights, biases = mlp
    model = mlp_model(weights, biases, opset=8)
    model.ir_version = 3
    model.graph.input.extend(helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.dims))
                             for t in model.graph.initializer)
    for options in (dict(noise=False, quantize=False), {}):
        converted = convert(model, **options).model
        onnx.checker.check_model(converted, full_check=True)
        assert converted.ir_version >= 4
        # IR 3 listed initializers as inputs because it had to; still listed at IR 4+ they would be overridable
        assert [value.name for value in converted.graph.input] == ["x"]


def test_initializers_a_newer_model_lists_as_inputs_stay_overridable(mlp):
    weights, biases = mlp
    model = mlp_model(weights, biases)
    model.graph.input.append(helper.make_tensor_value_info("b0", TensorProto.FLOAT, list(biases[0].shape)))
    converted = convert(model, noise=False, quantize=False, clamp=False).model
    assert [value.name for value in converted.graph.input] == ["x", "b0"]


def test_model_local_functions_survive_or_are_refused(mlp):
    weights, biases = mlp
    model = mlp_model(weights, biases, opset=17)
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type, relu.domain = "MyRelu", "custom"
    model.opset_import.append(helper.make_opsetid("custom", 1))
    model.functions.append(helper.make_function("custom", "MyRelu", ["X"], ["Y"], [helper.make_node("Relu", ["X"], ["Y"])],
                                                [helper.make_opsetid("", 17)]))
    model.ir_version = 10
    converted = convert(model, seed=0).model
    assert {f.name for f in converted.functions} >= {"MyRelu", "AnalogNoise"}
    assert np.isfinite(run(converted, np.zeros((2, 6), np.float32))).all()
    model.opset_import[0].version = 23
    model.functions[0].opset_import[0].version = 23
    with pytest.raises(AnalogizeError, match="local functions"):
        convert(model)


def test_new_names_do_not_clash_with_subgraph_names(rng):
    """A name generated for the top level must not shadow one defined inside an If body."""
    weight = numpy_helper.from_array(rng.normal(0, 0.3, (4, 4)).astype(np.float32), "W")
    zero = numpy_helper.from_array(np.array(0, np.float32), "zero")
    body = lambda name, nodes: helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(
        nodes[-1].output[0], TensorProto.FLOAT, [2, 4])])
    then_branch = body("then", [helper.make_node("Relu", ["x"], ["y::pre_analog"]),
                                helper.make_node("Neg", ["y::pre_analog"], ["then_out"])])
    else_branch = body("else", [helper.make_node("Neg", ["x"], ["else_out"])])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("ReduceSum", ["y"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["out"], then_branch=then_branch, else_branch=else_branch)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 4])], [weight, zero])
    converted = convert(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)).model
    onnx.checker.check_model(converted, full_check=True)
    assert run(converted, rng.normal(size=(2, 4)).astype(np.float32)).shape == (2, 4)
