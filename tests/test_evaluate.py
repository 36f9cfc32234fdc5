"""``evaluate``: numbers checked against independent torch/numpy evaluations and direct ONNX Runtime runs."""
import json

import numpy as np
import onnx
import pytest
import torch

import reference as ref
from analogize.ops.spec import DOMAIN
from analogize.passes.attributes import analog_nodes, seed_random_ops
from analogize.passes.chains import remove_analog_chains
from analogize.passes.graph import export_model, import_model
from analogize.passes.model import sync_analog_functions
from analogize.convert import PAPER_RANGES, ConvertOptions, convert
from analogize.data import load_dataset
from analogize.errors import AnalogizeError
from analogize.evaluate.engine import ActivationVariant, Cell, Grid, _CellModels, evaluate, node_seeds, parse_shard
from analogize.ops.spec import OPS
from analogize.runtime.sessions import create_session
from analogize.evaluate.results import merge_results
from conftest import DEFAULT_MODEL, ROOT, session

CONFIG = json.loads((ROOT / "models" / "digits_convnet.json").read_text())


@pytest.fixture(scope="module")
def model():
    return onnx.load(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def seeded(model, cell_seed):
    """``model`` with its random nodes seeded as evaluate seeds a cell."""
    count = sum(1 for n in model.graph.node if n.domain == DOMAIN and OPS[n.op_type].random)
    graph = import_model(model)
    seed_random_ops(graph, node_seeds(cell_seed, count))
    return export_model(graph, model)


def torch_digits_model(model):
    from analogize.zoo import create_model

    network = create_model(CONFIG["model"], **{k: tuple(v) if isinstance(v, list) else v
                                                 for k, v in CONFIG["config"].items()}).eval()
    weights = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy()) for t in model.graph.initializer}
    network.load_state_dict(weights)
    return network


def reference_forward(network, x, p, std, generator=None):
    """The paper's fully analog network, from the reference text: a DOA chain (clamp, reduce, noise) on every
    layer's input, weight and bias; an AOD chain (noise, clamp, reduce) on its output."""

    def noise(t):
        return t if std == 0 else t + std * torch.randn(t.shape, generator=generator, dtype=t.dtype)

    def doa(t):
        return noise(torch.from_numpy(ref.clamp_then_reduce(t.detach().numpy(), p)))

    def aod(t):
        return torch.from_numpy(ref.clamp_then_reduce(noise(t).detach().numpy(), p))

    h = torch.from_numpy(x).double()
    for module in network:
        if isinstance(module, torch.nn.Conv2d):
            h = aod(torch.nn.functional.conv2d(doa(h), doa(module.weight.double()), doa(module.bias.double()),
                                               padding=module.padding))
        elif isinstance(module, torch.nn.Linear):
            h = aod(torch.nn.functional.linear(doa(h), doa(module.weight.double()), doa(module.bias.double())))
        else:
            h = module(h)
    return h.detach().numpy()


def test_noise_free_accuracy_matches_a_torch_forward_of_the_reference_semantics(model, digits):
    result = evaluate(model, digits, Grid(bits=(4, 6), ep=(0.0,), repeats=1), ConvertOptions(**PAPER_RANGES))
    network = torch_digits_model(model)
    with torch.no_grad():
        clean = network(torch.from_numpy(digits.x)).numpy()
    assert result["clean"]["accuracy_mean"] == np.mean(clean.argmax(1) == digits.y)
    assert result["clean"]["top5_mean"] == np.mean(np.any(np.argsort(-clean, 1)[:, :5] == digits.y[:, None], 1))
    for cell in result["cells"]:
        logits = reference_forward(network, digits.x, 2.0 ** cell["bits"], 0.0)
        # float32 (ONNX Runtime) and float64 (here) may round a value on a step boundary differently
        assert abs(cell["accuracy_mean"] - np.mean(logits.argmax(1) == digits.y)) <= 2 / len(digits)
        assert abs(cell["agreement_mean"] - np.mean(logits.argmax(1) == clean.argmax(1))) <= 2 / len(digits)
    assert result["cells"][0]["accuracy_mean"] < result["clean"]["accuracy_mean"]  # 4 bits costs accuracy


def test_noisy_accuracy_matches_torch_noise_within_error_bars(model, digits):
    repeats, bits, ep = 8, 4, 0.5
    result = evaluate(model, digits, Grid(bits=(bits,), ep=(ep,), repeats=repeats, seed=3),
                      ConvertOptions(**PAPER_RANGES))
    cell = result["cells"][0]
    assert cell["std"] == pytest.approx(ref.ep_to_std(ep, 2.0**bits))
    network = torch_digits_model(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        ours = [np.mean(reference_forward(network, digits.x, 2.0**bits, cell["std"], generator).argmax(1) == digits.y)
                for _ in range(repeats)]
    spread = np.hypot(cell["accuracy_std"], np.std(ours, ddof=1)) / np.sqrt(repeats)
    assert abs(cell["accuracy_mean"] - np.mean(ours)) <= 3 * spread + 0.005
    assert cell["accuracy_mean"] < result["clean"]["accuracy_mean"] - 0.02  # heavy noise costs accuracy


def test_cell_metrics_equal_direct_onnxruntime_runs_of_the_converted_model(model, digits):
    grid = Grid(bits=(5,), ep=(0.4,), activations=("interp-gelu:0.5",), repeats=3, seed=9)
    result = evaluate(model, digits, grid, batch_size=100)
    cell = result["cells"][0]
    converted = seeded(convert(model, bits=5, ep=0.4, activation="interp-gelu", factor=0.5).model, cell["seed"])
    noisy = create_session(converted)  # as any session made by analogize: native kernels when built
    quiet_model = convert(model, bits=5, noise=False, activation="interp-gelu", factor=0.5).model
    noise_free = session(quiet_model).run(None, {"input": digits.x})[0]
    clean = session(model).run(None, {"input": digits.x})[0]
    for r in range(3):
        logits = np.concatenate([noisy.run(None, {"input": digits.x[s:s + 100]})[0] for s in range(0, 450, 100)])
        assert cell["per_repeat"]["accuracy"][r] == np.mean(logits.argmax(1) == digits.y)
        assert cell["per_repeat"]["agreement"][r] == np.mean(logits.argmax(1) == clean.argmax(1))
        snr = 10 * np.log10(np.sum(noise_free.astype(np.float64) ** 2) / np.sum((logits - noise_free) ** 2.0))
        assert cell["per_repeat"]["snr_db"][r] == pytest.approx(snr, rel=1e-6)
    assert len(set(cell["per_repeat"]["snr_db"])) == 3  # each repeat is a fresh draw


def test_cell_model_is_what_convert_writes_for_the_cell_options(model, digits):
    grid = Grid(bits=(3, 7), ep=(0.0, 0.2), activations=("keep", "smooth-gelu:2.0"), seed=4)
    options = ConvertOptions(stochastic_rounding=True, where=("input", "weights", "layer-outputs"))
    builder = _CellModels(model, options, grid)
    for cell in grid.cells():
        built, settings = builder.build(cell)
        expected = seeded(convert(model, options, bits=cell.bits, ep=cell.ep, activation=cell.variant.activation,
                                  **dict(cell.variant.parameters)).model, settings["seed"])
        if cell.ep:
            assert built.SerializeToString() == expected.SerializeToString(), cell.key
            continue
        # without noise the chains are the same but their intermediate tensors keep other names
        assert [(n.op_type, n.attribute) for n in built.graph.node] == \
            [(n.op_type, n.attribute) for n in expected.graph.node], cell.key
        np.testing.assert_array_equal(session(built).run(None, {"input": digits.x})[0],
                                      session(expected).run(None, {"input": digits.x})[0])


def test_same_seed_same_numbers_other_seed_other_noise(model, digits):
    grid = Grid(bits=(4,), ep=(0.5,), repeats=3, seed=1)
    first, second = evaluate(model, digits, grid), evaluate(model, digits, grid)
    assert first == second
    other = evaluate(model, digits, Grid(bits=(4,), ep=(0.5,), repeats=3, seed=2))
    assert other["cells"][0]["per_repeat"]["snr_db"] != first["cells"][0]["per_repeat"]["snr_db"]
    # a cell's numbers do not depend on which other cells share the sweep
    wider = evaluate(model, digits, Grid(bits=(6, 4), ep=(0.1, 0.5), repeats=3, seed=1))
    assert [c for c in wider["cells"] if (c["bits"], c["ep"]) == (4, 0.5)][0] == {**first["cells"][0], "cell": 3}


def test_workers_and_shards_reproduce_the_single_process_sweep(model, digits):
    grid = Grid(bits=(4, 6), ep=(0.2, 0.5), activations=("keep", "gelu"), repeats=2)
    whole = evaluate(model, digits, grid)
    assert evaluate(model, digits, grid, workers=2) == whole
    assert evaluate(model, digits, grid, threads=1) == whole
    parts = [evaluate(model, digits, grid, shard=(k, 3)) for k in (2, 0, 1)]
    assert sum(len(p["cells"]) for p in parts) == 8
    assert merge_results(parts) == whole
    with pytest.raises(AnalogizeError, match="missing 1/3"):
        merge_results(parts[:2])
    with pytest.raises(AnalogizeError, match="given twice"):
        merge_results([parts[0], parts[0], parts[1]])
    other = evaluate(model, digits, Grid(bits=(4, 6), ep=(0.2, 0.5), repeats=2), shard=(1, 3))
    with pytest.raises(AnalogizeError, match="not shards of the same sweep"):
        merge_results([parts[1], other])


def test_a_converted_model_has_its_settings_varied(model, digits):
    converted = convert(model, bits=6, ep=0.3, activation="interp-gelu", factor=0.5, seed=0).model
    as_is = evaluate(converted, digits, Grid(repeats=2))
    cell = as_is["cells"][0]
    assert as_is["converted_input"] and cell["precision"] == 64 and cell["ep"] == pytest.approx(0.3)
    # the digital baseline of a converted model is its activations without chains
    swapped_only = evaluate(model, digits, Grid(bits=(6,), ep=(0.0,), activations=("interp-gelu:0.5",), repeats=1))
    assert as_is["clean"]["accuracy_mean"] == swapped_only["baselines"][0]["accuracy_mean"]
    # noise off and 4 bits: deterministic, so equal to evaluating the clean model converted that way
    varied = evaluate(converted, digits, Grid(bits=(4,), ep=(0.0,), activations=("keep", "gelu"), repeats=1))
    fresh = evaluate(model, digits, Grid(bits=(4,), ep=(0.0,), activations=("interp-gelu:0.5", "gelu"), repeats=1))
    for ours, theirs in zip(varied["cells"], fresh["cells"]):
        assert ours["accuracy_mean"] == theirs["accuracy_mean"] and ours["precision"] == 16
    noiseless = convert(model, bits=6, noise=False, activation="gelu").model
    with pytest.raises(AnalogizeError, match="no AnalogNoise"):
        evaluate(noiseless, digits, Grid(ep=(0.3,), repeats=1))
    with pytest.raises(AnalogizeError, match="no ReLU and no ReluSiluInterpolation"):
        evaluate(noiseless, digits, Grid(activations=("silu",), repeats=1))


def test_label_free_mode_scores_agreement_and_snr_only(model, digits):
    unlabelled = load_dataset("digits")
    unlabelled.y = None
    result = evaluate(model, unlabelled, Grid(bits=(8,), ep=(0.1,), repeats=2))
    cell = result["cells"][0]
    assert result["fidelity"] and "accuracy_mean" not in cell and "accuracy_mean" not in result["clean"]
    assert cell["agreement_mean"] > 0.9 and cell["snr_db_mean"] > 20
    forced = evaluate(model, digits, Grid(bits=(8,), ep=(0.1,), repeats=2), fidelity=True)
    assert forced["cells"][0]["agreement_mean"] == cell["agreement_mean"]
    exact = evaluate(model, digits, Grid(bits=(24,), ep=(0.0,), repeats=1), fidelity=True, options=ConvertOptions(
        clamp=False))
    assert exact["cells"][0]["agreement_mean"] == 1.0 and "snr_db_mean" not in exact["cells"][0]


def test_activation_variants_parse_their_parameters():
    assert ActivationVariant.parse("interp-gelu:0.5").parameters == (("factor", 0.5),)
    assert ActivationVariant.parse("interp-silu:0.3:scale=2").parameters == (("factor", 0.3), ("scale", 2.0))
    assert ActivationVariant.parse("leaky:0.1").parameters == (("alpha", 0.1),)
    assert ActivationVariant.parse("smooth-mish:temperature=2").parameters == (("temperature", 2.0),)
    for bad, message in (("keep:1", "takes no parameters"), ("gelu:factor=2", "no parameter 'factor'"),
                         ("interp-gelu:x", "not a number"), ("relu6", "unknown activation")):
        with pytest.raises(AnalogizeError, match=message):
            ActivationVariant.parse(bad)


@pytest.mark.parametrize("grid, message", [
    (Grid(bits=(0,)), "bits"), (Grid(ep=(1.0,)), r"\[0, 1\)"), (Grid(repeats=0), "repeats"),
    (Grid(bits=(4, 4)), "twice"), (Grid(seed=-1), "seed"), (Grid(activations=()), "at least one"),
])
def test_bad_grids_are_refused(model, digits, grid, message):
    with pytest.raises(AnalogizeError, match=message):
        evaluate(model, digits, grid)


def test_bad_settings_are_refused(model, digits):
    with pytest.raises(AnalogizeError, match="--no-noise"):
        evaluate(model, digits, Grid(ep=(0.3,)), ConvertOptions(noise=False))
    with pytest.raises(AnalogizeError, match="not both"):
        evaluate(model, digits, Grid(bits=(4,)), ConvertOptions(precision=10.0))
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(AnalogizeError, match="I/N"):
            parse_shard(bad)
    assert parse_shard("2/4") == (2, 4)
    with pytest.raises(AnalogizeError, match="batch size"):
        evaluate(model, digits, Grid(repeats=1), batch_size=0)
    with pytest.raises(AnalogizeError, match="threads must be a whole number >= 1"):
        evaluate(model, digits, Grid(repeats=1), threads=0)
    wrong = load_dataset("digits")
    wrong.y = wrong.y + 5
    with pytest.raises(AnalogizeError, match="labels go up to 14 but the model has 10 outputs"):
        evaluate(model, wrong, Grid(repeats=1))


def test_chain_removal_restores_the_clean_model_outputs(model, digits, rng):
    converted = convert(model, bits=4, ep=0.5, activation="keep", seed=0).model
    graph = import_model(converted)
    remove_analog_chains(graph)
    converted = export_model(graph, converted)
    sync_analog_functions(converted)
    assert not any(e.domain == DOMAIN for e in converted.opset_import) and not converted.functions
    assert not [t for t in converted.graph.initializer if t.name.startswith("analogize/")]
    onnx.checker.check_model(converted, full_check=True)
    x = digits.x[:64]
    np.testing.assert_array_equal(session(converted).run(None, {"input": x})[0],
                                  session(model).run(None, {"input": x})[0])
    with pytest.raises(AnalogizeError, match="unknown chain element"):
        remove_analog_chains(import_model(converted), ("noise", "gain"))


def test_node_seeds_are_exact_in_float32_and_shared_by_no_two_cells():
    cells = Grid(bits=tuple(range(1, 25)), ep=(0.0, 0.1, 0.3, 0.5, 0.9)).cells()
    per_cell = [set(node_seeds(c.seed(0), 50)) for c in cells]
    seeds = [s for cell in per_cell for s in cell]
    assert len(set(seeds)) >= len(seeds) - 6  # 6000 draws from 2^24 values: about one coincidence expected
    assert max(len(a & b) for k, a in enumerate(per_cell) for b in per_cell[k + 1:]) <= 1  # no shared runs
    assert all(float(np.float32(s)) == s < 2**24 for s in seeds)
    assert Cell(0, ActivationVariant.parse("keep"), 4, 0.5).seed(0) == cells[3 * 5 + 3].seed(0)
    assert Cell(0, ActivationVariant.parse("keep"), 4, 0.5).seed(1) != cells[3 * 5 + 3].seed(0)


def test_models_with_a_fixed_batch_size_get_padded_batches(rng):
    from analogize.data import Dataset
    from onnx import TensorProto, helper, numpy_helper

    weight = rng.normal(size=(6, 4)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "fixed",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    x = rng.uniform(-1, 1, (10, 6)).astype(np.float32)
    y = (x @ weight).argmax(1)
    result = evaluate(model, Dataset("ten", x, y, "flat"), Grid(bits=(12,), ep=(0.0,), repeats=1),
                      ConvertOptions(clamp=False), batch_size=3)
    assert result["batch_size"] == 4 and "fed in batches of 4" in result["data"]["adaptations"][-1]
    assert result["clean"]["accuracy_mean"] == 1.0 and result["cells"][0]["agreement_mean"] == 1.0


def test_a_light_model_nobody_here_wrote_is_evaluated(rng):
    from conftest import LIGHT_DIR
    from analogize.data import Dataset

    model = onnx.load(LIGHT_DIR / "light_squeezenet.onnx")
    images = rng.uniform(0, 1, (2, 3, 16, 16)).astype(np.float32)
    result = evaluate(model, Dataset("noise", images, None, "nchw"), Grid(bits=(8,), ep=(0.0,), repeats=1))
    assert "resized 16x16 -> 224x224 (bilinear)" in result["data"]["adaptations"]
    assert result["data"]["classes"] == 1000 and result["cells"][0]["agreement_mean"] == 1.0


def test_converted_models_refuse_what_cannot_be_varied_and_apply_what_can(model, digits):
    inlined = convert(model, bits=6, ep=0.3, seed=1, inline=True).model
    with pytest.raises(AnalogizeError, match="--inline"):
        evaluate(inlined, digits, Grid(repeats=1))
    converted = convert(model, bits=6, ep=0.3, seed=1).model
    for options, flag in ((ConvertOptions(noise=False), "--no-noise"), (ConvertOptions(clamp=False), "--no-clamp"),
                          (ConvertOptions(where=("input",)), "--where")):
        with pytest.raises(AnalogizeError, match=f"{flag}.*keeps the chains"):
            evaluate(converted, digits, Grid(repeats=1), options)
    finer = evaluate(converted, digits, Grid(ep=(0.0,), repeats=1), ConvertOptions(bits=None, precision=1000.0))
    assert finer["cells"][0]["precision"] == 1000.0
    unquantized = convert(model, bits=6, ep=0.3, quantize=False, seed=1).model
    assert evaluate(unquantized, digits, Grid(repeats=1))["cells"][0]["ep"] == pytest.approx(0.3)
    leaky = convert(model, bits=6, ep=0.3, activation="leaky", alpha=0.05).model
    varied = _CellModels(leaky, ConvertOptions(), Grid(activations=("leaky:0.2",))).skeleton(
        ActivationVariant.parse("leaky:0.2"))
    alphas = [a.f for n in varied.graph.node if n.op_type == "LeakyRelu" for a in n.attribute]
    assert len(alphas) == 4 and alphas == pytest.approx([0.2] * 4)


def test_the_snr_reference_rounds_deterministically(model):
    grid = Grid(bits=(4,), ep=(0.5,), repeats=1)
    builder = _CellModels(model, ConvertOptions(stochastic_rounding=True), grid)
    built, settings = builder.build(grid.cells()[0])
    assert analog_nodes(import_model(built), {"StochasticReducePrecision"})
    reference = onnx.load_from_string(builder.noise_free(built, settings))
    assert {n.op for n in analog_nodes(import_model(reference))} == {"ReducePrecision"}
    assert {f.name for f in reference.functions} == {"ReducePrecision"}
    onnx.checker.check_model(reference, full_check=True)


def test_outputs_are_chosen_and_checked(rng):
    from analogize.data import Dataset
    from onnx import TensorProto, helper, numpy_helper

    weight = rng.normal(size=(6, 3)).astype(np.float32)
    x = rng.uniform(-1, 1, (9, 6)).astype(np.float32)
    data = Dataset("nine", x, (x @ weight).argmax(1), "flat")

    def model_with(nodes, outputs, batch="n"):
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 6])],
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                                  [numpy_helper.from_array(weight, "w"),
                                   numpy_helper.from_array(np.array([-1], np.int64), "flat")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)

    two = model_with([helper.make_node("Relu", ["x"], ["features"]), helper.make_node("MatMul", ["x", "w"], ["y"])],
                     ["features", "y"])
    grid = Grid(bits=(12,), ep=(0.0,), repeats=1)
    first = evaluate(two, data, grid, ConvertOptions(clamp=False))
    assert "first of 2" in first["data"]["adaptations"][-1] and first["data"]["classes"] == 6
    chosen = evaluate(two, data, grid, ConvertOptions(clamp=False), output="y")
    assert chosen["clean"]["accuracy_mean"] == 1.0 and chosen["output"] == "y"
    with pytest.raises(AnalogizeError, match="no output 'z'"):
        evaluate(two, data, grid, output="z")
    unbatched = model_with([helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Reshape", ["m", "flat"],
                                                                                           ["y"])], ["y"], batch=1)
    with pytest.raises(AnalogizeError, match=r"shape \[3\] for a batch of 1"):
        evaluate(unbatched, data, grid)
    two_inputs = model_with([helper.make_node("Add", ["x", "b"], ["y"])], ["y"])
    two_inputs.graph.input.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 6]))
    with pytest.raises(AnalogizeError, match="2 inputs"):
        evaluate(two_inputs, data, grid)


def test_shards_of_different_models_do_not_merge(model, digits):
    grid = Grid(bits=(4,), ep=(0.1, 0.3), repeats=1)
    one = evaluate(convert(model, bits=6, ep=0.3).model, digits, grid, shard=(0, 2))
    other = evaluate(convert(model, bits=4, ep=0.5).model, digits, grid, shard=(1, 2))
    with pytest.raises(AnalogizeError, match="model_sha256"):
        merge_results([one, other])


def test_shards_computed_with_other_kernels_do_not_merge(model, digits, monkeypatch):
    grid = Grid(bits=(4,), ep=(0.1, 0.3), repeats=1)
    native = evaluate(model, digits, grid, shard=(0, 2))
    monkeypatch.setenv("ANALOGIZE_NATIVE", "0")
    bodies = evaluate(model, digits, grid, shard=(1, 2))
    assert (native["kernels"], bodies["kernels"]) == ("native", "function-bodies")
    with pytest.raises(AnalogizeError, match="'kernels'"):
        merge_results([native, bodies])
