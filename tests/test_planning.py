"""Per-layer plans in convert, sensitivity and plan search (issue 20), against independent references: the
noise-model formulas of tests/reference.py, numpy statistics of the weights, ONNX Runtime runs of the converted
files, and an exhaustive enumeration of plans on a small model."""
import json

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from analogize.cli import main
from analogize.convert import ConvertOptions, convert
from analogize.data import model_feeds
from analogize.errors import AnalogizeError
from analogize.evaluate.engine import Evaluation, Grid, evaluate
from analogize.plans import PLAN_FORMAT, Plan, markdown_reference, model_fingerprint, read_plan
from analogize.planning.search import SearchBounds, enumerated_optimum, search_plan
from analogize.progress import progress_bar
from analogize.planning.sensitivity import analog_units, sensitivity

from conftest import DEFAULT_MODEL, ROOT, session
from reference import ep_to_std, fragile_digits

FRAGILE = "/2/Conv"
LIMIT = 240


@pytest.fixture(scope="module")
def fragile():
    return fragile_digits()


@pytest.fixture(scope="module")
def fragile_feeds(fragile):
    return model_feeds("digits", fragile, limit=LIMIT)


def plan_document(layers, **extra):
    return {"format": PLAN_FORMAT, "version": 1, "layers": layers, **extra}


def analog_attributes(model) -> dict:
    graph = gs.import_onnx(model)
    return {node.name: dict(node.attrs) for node in graph.nodes if node.domain == "ai.analogize"}


# --- the plan file ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("document, message", [
    ([], "not an analogize.plan file"),
    ({"format": "other", "layers": {}}, "not an analogize.plan file"),
    ({"format": PLAN_FORMAT, "version": 2, "layers": {}}, "version 2 is not supported"),
    (plan_document({}, extra=1), "unknown top-level key"),
    (plan_document([]), "'layers' must be an object"),
    (plan_document({"a": {"bitz": 4}}), "unknown setting 'bitz'"),
    (plan_document({"a": {"bits": 0}}), "bits must be a whole number from 1 to 24"),
    (plan_document({"a": {"bits": 4.5}}), "bits must be a whole number"),
    (plan_document({"a": {"ep": 1.0}}), r"ep must be a number in \[0, 1\)"),
    (plan_document({"a": {"std": float("nan")}}), "std must be a number >= 0"),
    (plan_document({"a": {"digital": "yes"}}), "digital must be true or false"),
    (plan_document({"a": {"bits": 4, "precision": 9}}), "give bits or precision, not both"),
    (plan_document({"a": {"weight_range": "dynamic"}}), "weight_range must be one of unit, tensor, channel"),
    (plan_document({"a": {"sites": {"kernel": {}}}}), "unknown site 'kernel'"),
    (plan_document({"input:x": {"sites": {"weight": {}}}}), "a graph input has no sites"),
    (plan_document({"a": 3}), "its settings must be an object"),
    (plan_document({}, model_sha256="abc"), "64 hex digits"),
    (plan_document({}, model_sha256="z" * 64), "64 hex digits"),
    ({"format": PLAN_FORMAT, "version": 1.0, "layers": {}}, "version 1.0 is not supported"),
    ({"format": PLAN_FORMAT, "version": True, "layers": {}}, "version True is not supported"),
    (plan_document({"a": {"bits": [4]}}), "bits must be a whole number"),
    (plan_document({"a": {"weight_range": ["unit"]}}), "weight_range must be one of"),
    (plan_document({"a": {"sites": {"weight": {"activation_range": "unit"}}}}), "sets the input, layer-input"),
    (plan_document({"input:x": {"weight_range": "unit"}}), "sets the weight, bias sites only"),
])
def test_plan_files_are_checked_with_one_line_saying_what_is_wrong(document, message):
    with pytest.raises(AnalogizeError, match=message):
        Plan.parse(document)


def test_a_plan_file_reads_as_data_and_round_trips(tmp_path):
    document = plan_document({"/0/Conv": {"digital": True}, "/6/Gemm": {"bits": 8, "sites": {"weight": {"bits": 4}}}})
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(document))
    assert read_plan(path).to_document() == document
    (tmp_path / "broken.json").write_text("{\"format\": ")
    with pytest.raises(AnalogizeError, match="is not JSON"):
        read_plan(tmp_path / "broken.json")
    (tmp_path / "deep.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(AnalogizeError, match="is not JSON"):
        read_plan(tmp_path / "deep.json")


def test_the_plan_reference_page_is_generated_from_the_declarations():
    assert (ROOT / "docs" / "plan.md").read_text() == markdown_reference()


# --- convert with a plan -----------------------------------------------------------------------------------------

def test_convert_applies_per_layer_and_per_site_settings_with_the_ep_kept_at_each_sites_precision():
    model = onnx.load(DEFAULT_MODEL)
    plan = plan_document({"/0/Conv": {"digital": True},
                          "/6/Gemm": {"bits": 8, "sites": {"weight": {"bits": 4}, "bias": {"std": 0.02},
                                                           "layer-output": {"digital": True}}},
                          "/12/Gemm": {"ep": 0.05}})
    result = convert(model, ConvertOptions(bits=6, ep=0.3, plan=plan))
    report = result.report
    assert "/0/Conv" not in report["layers"]
    assert {"node": "/0/Conv", "op_type": "Conv", "reason": "kept digital by the plan"} in report["skipped_layers"]
    # the input's DAC is a unit of its own: analog unless the plan names input:input digital
    assert [site["owners"] for site in report["inserted"] if site["site"] == "input"] == [["input:input"]]
    by_site = {(site["layer"], site["site"]): site for site in report["inserted"]}
    assert ("/6/Gemm", "layer-output") not in by_site
    attributes = analog_attributes(result.model)

    def values(layer, site):
        chain = by_site[(layer, site)]["chain"]
        return (attributes[f"{chain}/quantize"]["precision"], attributes[f"{chain}/noise"]["std"])

    assert values("/6/Gemm", "layer-input") == (256.0, pytest.approx(ep_to_std(0.3, 256)))
    assert values("/6/Gemm", "weight") == (16.0, pytest.approx(ep_to_std(0.3, 16)))
    assert values("/6/Gemm", "bias") == (256.0, pytest.approx(0.02))
    assert values("/12/Gemm", "weight") == (64.0, pytest.approx(ep_to_std(0.05, 64)))
    assert values("/9/Gemm", "weight") == (64.0, pytest.approx(ep_to_std(0.3, 64)))
    assert result.report["settings"]["options"]["plan"] == plan  # stored: export and rebuild carry it


def test_convert_refuses_a_plan_for_another_model_unknown_layers_and_non_analog_ones():
    model = onnx.load(DEFAULT_MODEL)
    with pytest.raises(AnalogizeError, match="made for another model"):
        convert(model, ConvertOptions(plan=plan_document({}, model_sha256="0" * 64)))
    convert(model, ConvertOptions(plan=plan_document({}, model_sha256=model_fingerprint(model))))
    with pytest.raises(AnalogizeError, match=r"no analog layer or chained input named 'conv9'.*/0/Conv"):
        convert(model, ConvertOptions(plan=plan_document({"conv9": {"bits": 4}})))
    with pytest.raises(AnalogizeError, match=r"layer '/0/Conv' is not analog \(excluded by --exclude\)"):
        convert(model, ConvertOptions(exclude=("/0/Conv",), plan=plan_document({"/0/Conv": {"bits": 4}})))
    with pytest.raises(AnalogizeError, match="--no-quantize leaves no reduce-precision"):
        convert(model, ConvertOptions(quantize=False, std=0.01, plan=plan_document({"/0/Conv": {"bits": 4}})))
    with pytest.raises(AnalogizeError, match="add --calibrate DATA"):
        convert(model, ConvertOptions(plan=plan_document({"/0/Conv": {"activation_range": "calibrated"}})))


def test_evaluate_of_a_planned_model_at_another_ep_is_convert_at_that_ep():
    """A converted planned model evaluated at --ep X: each site keeps what the plan sets and takes X at its own
    precision otherwise, as converting the original with --ep X and the plan gives."""
    from analogize.evaluate.engine import ActivationVariant, Cell, _CellModels

    model = onnx.load(DEFAULT_MODEL)
    plan = plan_document({"input:input": {"bits": 2}, "/6/Gemm": {"std": 0.02}})
    converted = convert(model, ConvertOptions(bits=8, ep=0.1, plan=plan)).model
    built, settings = _CellModels(converted, ConvertOptions(), Grid(ep=(0.3,))).build(
        Cell(0, ActivationVariant.parse("keep"), None, 0.3))
    reference = convert(model, ConvertOptions(bits=8, ep=0.3, plan=plan)).model
    stds = {name: values.get("std") for name, values in analog_attributes(built).items() if name.endswith("/noise")}
    assert stds == {name: values.get("std") for name, values in analog_attributes(reference).items()
                    if name.endswith("/noise")}
    assert settings["precision"] == 256.0 and settings["ep"] == 0.3


def test_plan_input_units_must_be_chained_inputs():
    model = onnx.load(DEFAULT_MODEL)
    with pytest.raises(AnalogizeError, match="no analog layer or chained input named 'input:input'"):
        convert(model, ConvertOptions(where=("weights",), plan=plan_document({"input:input": {"bits": 2}})))
    report = convert(model, ConvertOptions(plan=plan_document({"input:input": {"digital": True}}))).report
    assert not any(site["site"] == "input" for site in report["inserted"])
    # /0/Conv reads the digital input directly: no layer-input DAC there either
    assert not any(site["site"] == "layer-input" and "/0/Conv" in site["owners"] for site in report["inserted"])


def test_the_cli_refuses_a_bad_plan_in_one_line_and_writes_nothing(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    output = tmp_path / "out.onnx"
    for document, message in ((plan_document({"nope": {"bits": 3}}), "no analog layer or chained input named"),
                              (plan_document({"/0/Conv": {"bitz": 3}}), "unknown setting 'bitz'")):
        plan.write_text(json.dumps(document))
        assert main(["convert", str(DEFAULT_MODEL), "-o", str(output), "--plan", str(plan)]) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and len(error.splitlines()) == 1 and "Traceback" not in error
        assert not output.exists()


def test_a_planned_model_keeps_its_per_site_values_under_evaluate_export_and_rebuild():
    """evaluate must not flatten a mixed model to one precision, and a qonnx export and its rebuild keep the
    per-site precisions (checked against ONNX Runtime runs of the files themselves)."""
    from analogize.export.pipeline import export
    from analogize.export.rebuild import rebuild

    model = onnx.load(DEFAULT_MODEL)
    plan = plan_document({"/2/Conv": {"bits": 3}, "/12/Gemm": {"digital": True}}, model_sha256=model_fingerprint(model))
    converted = convert(model, ConvertOptions(bits=8, noise=False, plan=plan)).model
    feeds = model_feeds("digits", model, limit=120)
    x = feeds.arrays["input"]
    clean = session(model).run(None, {"input": x})[0].argmax(1)
    direct = session(converted).run(None, {"input": x})[0]
    result = evaluate(converted, feeds, Grid(repeats=1), fidelity=True)
    assert result["cells"][0]["agreement_mean"] == pytest.approx(np.mean(direct.argmax(1) == clean))

    exported, spec = export(converted, "qonnx")
    precisions = {entry["tensor"]: entry["precision"] for entry in spec["tensors"]}
    assert precisions["2.weight"] == 8.0 and precisions["6.weight"] == 256.0
    assert not any(entry["tensor"] == "12.weight" for entry in spec["tensors"])
    rebuilt = rebuild(exported, json.loads(json.dumps(spec)))
    np.testing.assert_array_equal(session(rebuilt).run(None, {"input": x})[0], direct)


# --- sensitivity ------------------------------------------------------------------------------------------------

def test_sensitivity_ranks_the_fragile_layer_first_and_its_statistics_say_why(fragile, fragile_feeds):
    result = sensitivity(fragile, fragile_feeds, ConvertOptions(bits=6, ep=0.1), repeats=2)
    units = result["units"]
    assert units[0]["unit"] == FRAGILE and units[0]["rank"] == 1
    assert units[0]["loss"] > 0.5 and units[0]["recovery"] > 0.5
    assert all(unit["cost"] < 0.1 for unit in units[1:])
    assert result["cells"] == 1 + 2 * len(units) == 13  # one sweep: all analog, then two cells per unit
    assert result["reference"]["digital"]["accuracy_mean"] > 0.9 > result["reference"]["analog"]["accuracy_mean"]

    # the fragile weight's rounding to zero, from the weights themselves: r per output channel, p = 64
    weight = numpy_helper.to_array({t.name: t for t in fragile.graph.initializer}["2.weight"]).astype(np.float64)
    normalised = np.abs(weight / np.abs(weight).max(axis=(1, 2, 3), keepdims=True))
    nonzero = normalised[normalised > 0]
    site = next(site for site in units[0]["sites"] if site["site"] == "weight")
    assert site["zero_fraction"] == pytest.approx(np.mean(nonzero < 0.5 / 64))
    assert site["clipped_fraction"] == 0.0 and site["max_abs"] == pytest.approx(1.0)
    assert site["rms"] == pytest.approx(np.sqrt(np.mean(normalised**2)), rel=1e-5)
    assert site["zero_fraction"] > 0.9


def test_sensitivity_measures_in_the_metric_asked_for(fragile, fragile_feeds):
    """Relative error (for outputs without classes, e.g. embeddings): loss and recovery are rises and drops in
    error, so the fragile layer still comes first with positive numbers; accuracy needs labels."""
    result = sensitivity(fragile, fragile_feeds, ConvertOptions(bits=6, ep=0.1), repeats=1, statistics=False,
                         metric="rel_error")
    assert result["metric"] == "rel_error" and result["reference"]["digital"]["rel_error_mean"] == 0.0
    first = result["units"][0]
    assert first["unit"] == FRAGILE and first["loss"] == pytest.approx(first["only_analog"]["rel_error_mean"])
    assert all(unit["error_cost"] == pytest.approx(unit["cost"]) for unit in result["units"])
    assert first["recovery"] == pytest.approx(result["reference"]["analog"]["rel_error_mean"]
                                              - first["only_digital"]["rel_error_mean"]) and first["recovery"] > 0
    with pytest.raises(AnalogizeError, match="--metric accuracy needs labelled data"):
        sensitivity(fragile, fragile_feeds, metric="accuracy", fidelity=True)
    with pytest.raises(AnalogizeError, match="unknown metric 'cosine'"):
        sensitivity(fragile, fragile_feeds, metric="cosine")


def test_sensitivity_cells_run_at_the_noise_asked_for_and_units_are_those_with_chains(fragile, fragile_feeds):
    """The cells take --ep / --std from the options (a grid EP of None keeps them); --where leaves layers
    without chains, which are no units."""
    for options, std in ((ConvertOptions(bits=6, ep=0.1), ep_to_std(0.1, 64)),
                         (ConvertOptions(bits=6, std=0.02), 0.02)):
        partial = sensitivity(fragile, fragile_feeds, options, repeats=1, statistics=False, shard=(0, 4))
        assert [cell["std"] for cell in partial["cells"]] == pytest.approx([std] * len(partial["cells"]))
    units, _ = analog_units(fragile, ConvertOptions(where=("input",)))
    assert [unit["unit"] for unit in units] == ["input:input"]


def test_sensitivity_in_shards_merges_to_the_unsharded_result(fragile, tmp_path, capsys):
    model = tmp_path / "fragile.onnx"
    onnx.save(fragile, model)
    common = ["sensitivity", str(model), "--data", "digits", "--limit", "96", "--repeats", "1", "--bits", "4", "-q",
              "--no-statistics"]
    assert main([*common, "--json", str(tmp_path / "whole.json")]) == 0
    for index in range(2):
        assert main([*common, "--shard", f"{index}/2", "--json", str(tmp_path / f"part{index}.json")]) == 0
    assert main([*common, "--shard", "0/2"]) == 2  # refused before the work: a shard needs --json
    assert "give --json" in capsys.readouterr().err
    assert main(["merge", str(tmp_path / "part0.json"), str(tmp_path / "part1.json"), "-o",
                 str(tmp_path / "merged.json"), "--csv", str(tmp_path / "merged.csv"), "--report",
                 str(tmp_path / "merged.html")]) == 0
    assert "units ranked" in (tmp_path / "merged.html").read_text()
    capsys.readouterr()
    for forge in (lambda record: record.update(units=5), lambda record: record["units"].append(
            {"unit": "ghost", "kind": "layer", "op_type": None})):  # shard parts are files from outside
        for index in range(2):
            part = json.loads((tmp_path / f"part{index}.json").read_text())
            forge(part["sensitivity"])
            (tmp_path / f"forged{index}.json").write_text(json.dumps(part))
        assert main(["merge", str(tmp_path / "forged0.json"), str(tmp_path / "forged1.json"), "-o",
                     str(tmp_path / "forged.json")]) == 2
        error = capsys.readouterr().err.strip()
        assert "sensitivity record" in error and len(error.splitlines()) == 1
        assert not (tmp_path / "forged.json").exists()
    whole, merged = (json.loads((tmp_path / name).read_text()) for name in ("whole.json", "merged.json"))
    assert merged["format"] == "analogize.sensitivity"
    for key in ("units", "reference", "cells"):
        assert merged[key] == whole[key]
    assert (tmp_path / "merged.csv").read_text().splitlines()[1].startswith(f"1,{FRAGILE},layer,Conv")


# --- plan search -------------------------------------------------------------------------------------------------

def test_plan_keeps_the_fragile_layer_digital_meets_the_target_and_its_verification_is_a_plain_evaluate(
        fragile, tmp_path, capsys):
    model = tmp_path / "fragile.onnx"
    onnx.save(fragile, model)
    plan_path, result_path = tmp_path / "plan.json", tmp_path / "search.json"
    report = tmp_path / "search.html"
    assert main(["plan", str(model), "--data", "digits", "--limit", str(LIMIT), "--ep", "0.1", "--bits-choices", "4,8",
                 "--target-agreement", "0.97", "-o", str(plan_path), "--json", str(result_path), "-q",
                 "--report", str(report)]) == 0
    page = report.read_text()  # the report renders this command's own result (schema shared with the renderer)
    assert "the plan found" in page and page.count('<img src="data:image/png;base64,') == 2
    result = json.loads(result_path.read_text())
    plan = json.loads(plan_path.read_text())
    assert result["met"] and plan == result["plan"]
    assert plan["layers"][FRAGILE] == {"digital": True}
    assert result["cost"]["digital_layers"] == 1
    assert plan["model_sha256"] == model_fingerprint(fragile)

    converted = tmp_path / "planned.onnx"
    assert main(["convert", str(model), "-o", str(converted), "--ep", "0.1", "--plan", str(plan_path)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(converted), "--data", "digits", "--limit", str(LIMIT), "--fidelity", "--repeats",
                 "5", "--no-baseline", "-q", "--json", "-"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["cells"][0]["per_repeat"] == result["verification"]["cells"][0]["per_repeat"]


def test_plan_says_the_best_reached_and_the_limiting_layers_when_the_target_is_out_of_reach(fragile, fragile_feeds):
    with pytest.raises(AnalogizeError, match=rf"no plan within the bounds meets agreement >= 0.99: the best reached "
                                             rf"is 0\.\d+ .*limit it, most costly first: {FRAGILE}"):
        search_plan(fragile, fragile_feeds, ConvertOptions(ep=0.1), target=0.99,
                    bounds=SearchBounds(bits=(4, 8), digital=False), repeats=1)
    with pytest.raises(AnalogizeError, match="drop --plan"):
        search_plan(fragile, fragile_feeds, ConvertOptions(plan=plan_document({})), target=0.9)
    with pytest.raises(AnalogizeError, match="fraction in"):
        search_plan(fragile, fragile_feeds, ConvertOptions(), target=99)
    with pytest.raises(AnalogizeError, match="only keeping every analog unit digital meets"):
        search_plan(fragile, fragile_feeds, ConvertOptions(ep=0.5), target=1.0, bounds=SearchBounds(bits=(1,)),
                    repeats=1)


def tiny_mlp(seed: int = 3) -> onnx.ModelProto:
    """Three units (the input DAC and two Gemm layers) of a random MLP: small enough to enumerate every plan."""
    rng = np.random.default_rng(seed)
    w1, w2 = rng.normal(size=(16, 12)).astype(np.float32), rng.normal(size=(12, 10)).astype(np.float32) / 3
    w2[:, 0] *= 40  # one output channel dominates the second layer's per-tensor range
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "w2"], ["y"], name="fc2")], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_greedy_plan_costs_what_the_enumerated_optimum_costs_on_a_small_model(tmp_path):
    """Every plan of 3 units x {digital, 2 bits, 5 bits} measured on the same sweep (same cells, same seeds as the
    search's): the greedy plan meets the target and costs no more than the cheapest plan that meets it."""
    model = tiny_mlp()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "x.npz", x=rng.normal(size=(200, 16)).astype(np.float32))
    feeds = model_feeds(f"npz:{tmp_path / 'x.npz'}", model, labels=False)
    options = ConvertOptions(ep=0.05, weight_range="tensor")
    bounds, target = SearchBounds(bits=(2, 5)), 0.9
    result = search_plan(model, feeds, options, target=target, bounds=bounds, repeats=2, verify_repeats=2)

    sweep = Evaluation(model, feeds, Grid(repeats=2, seed=0), options, fidelity=True)
    sweep.clean_pass(progress_bar(1, "", False))
    optimum, _, measured = enumerated_optimum(sweep, ["fc1", "fc2", "input:x"], bounds, "agreement", target)
    assert measured == 27
    found = (result["cost"]["digital_layers"], result["cost"]["total_bits"])
    assert found == optimum
