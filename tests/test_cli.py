"""The analogize command as a user runs it: exit codes, one-line errors, no partial output files."""
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from analogize.cli import main
from conftest import DEFAULT_MODEL, LIGHT_MODELS, error_bars_on_top, run, series_positions, suptitle


def analogize(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_convert_writes_model_and_json_report(tmp_path, capsys):
    output = tmp_path / "out.onnx"
    code, out, err = analogize(capsys, "convert", DEFAULT_MODEL, "-o", output, "--bits", "6", "--ep", "0.3",
                               "--activation", "interp-gelu", "--factor", "0.5", "--seed", "1", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["settings"]["precision"] == 64 and report["settings"]["ep"] == pytest.approx(0.3)
    assert report["output"] == str(output) and len(report["layers"]) == 5
    assert {s["site"] for s in report["inserted"]} == {"input", "layer-input", "weight", "bias", "layer-output"}
    assert report["activations"]["to"] == "ReluGeluInterpolation"
    onnx.checker.check_model(str(output), full_check=True)
    assert run(output, np.zeros((2, 1, 8, 8), np.float32)).shape == (2, 10)


def test_default_output_name_and_human_summary(tmp_path, capsys):
    source = tmp_path / "digits.onnx"
    shutil.copy(DEFAULT_MODEL, source)
    code, out, _ = analogize(capsys, "convert", source)
    assert code == 0 and (tmp_path / "digits.analog.onnx").exists()
    assert "5 analog layers" in out and "precision p=256" in out


def test_help_shows_every_choice_and_default(capsys):
    assert main(["convert", "--help"]) == 0
    text = capsys.readouterr().out
    for word in ("layer-inputs", "interp-silu", "smooth-mish", "pow2-minus-1", "default: 8", "--inline", "--exclude"):
        assert word in text


def not_onnx(tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("these are not the weights you are looking for")
    return path


def truncated(tmp_path):
    path = tmp_path / "truncated.onnx"
    path.write_bytes(DEFAULT_MODEL.read_bytes()[:3000])
    return path


@pytest.mark.parametrize("make_input,extra,message", [
    (not_onnx, [], "not a readable ONNX model"),
    (truncated, [], "not a readable ONNX model"),
    (lambda d: d / "missing.onnx", [], "no such file"),
    (lambda d: DEFAULT_MODEL, ["--bits", "0"], "--bits"),
    (lambda d: DEFAULT_MODEL, ["--ep", "1.5"], "--ep"),
    (lambda d: DEFAULT_MODEL, ["--ep", "0.2", "--std", "0.1"], "either --ep or --std"),
    (lambda d: DEFAULT_MODEL, ["--where", "everywhere"], "--where"),
    (lambda d: DEFAULT_MODEL, ["--activation", "interp-gelu", "--factor", "3"], "factor"),
    (lambda d: DEFAULT_MODEL, ["--temperature", "0", "--activation", "smooth-gelu"], "temperature"),
])
def test_bad_input_gives_one_line_error_and_no_output(tmp_path, capsys, make_input, extra, message):
    output = tmp_path / "out" / "converted.onnx"
    output.parent.mkdir()
    code, out, err = analogize(capsys, "convert", make_input(tmp_path), "-o", output, *extra)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(output.parent.iterdir()) == []


def test_already_converted_and_unwritable_output(tmp_path, capsys):
    converted = tmp_path / "converted.onnx"
    assert analogize(capsys, "convert", DEFAULT_MODEL, "-o", converted)[0] == 0
    code, _, err = analogize(capsys, "convert", converted, "-o", tmp_path / "again.onnx")
    assert code == 2 and "already converted" in err and not (tmp_path / "again.onnx").exists()
    code, _, err = analogize(capsys, "convert", DEFAULT_MODEL, "-o", tmp_path / "no" / "dir" / "x.onnx")
    assert code == 2 and "does not exist" in err
    code, _, err = analogize(capsys, "convert", DEFAULT_MODEL, "-o", "/proc/analogize-test.onnx")
    assert code == 2 and "cannot write" in err and len(err.strip().splitlines()) == 1


def test_input_is_never_overwritten_unless_asked(tmp_path, capsys):
    source = tmp_path / "model.onnx"
    shutil.copy(DEFAULT_MODEL, source)
    before = source.read_bytes()
    code, _, err = analogize(capsys, "convert", source, "-o", source)
    assert code == 2 and "would replace the model; choose another path (or pass --overwrite)" in err
    assert source.read_bytes() == before
    assert analogize(capsys, "convert", source, "-o", source, "--overwrite")[0] == 0
    assert source.read_bytes() != before


def test_nothing_to_convert(tmp_path, capsys):
    code, _, err = analogize(capsys, "convert", LIGHT_MODELS[0], "-o", tmp_path / "x.onnx", "--exclude",
                             "Conv,Gemm,Relu", "--where", "weights")
    assert code == 2 and "nothing to convert" in err and not (tmp_path / "x.onnx").exists()


def test_debug_shows_the_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "analogize", "--debug", "convert", str(not_onnx(tmp_path))],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_ops_listing(capsys):
    code, out, _ = analogize(capsys, "ops", "--json")
    assert code == 0 and json.loads(out)["ReducePrecision"]["attributes"]["divide"]["default"] == 0.5


def test_zoo_export_then_convert(tmp_path, capsys):
    exported = tmp_path / "vgg.onnx"
    code, out, err = analogize(capsys, "zoo", "export", "vgg_a", "-o", exported, "--option", "width=0.0625",
                               "--option", "classifier_width=16", "--option", "pool_size=1")
    assert code == 0, err
    assert analogize(capsys, "convert", exported, "-o", tmp_path / "vgg.analog.onnx")[0] == 0
    assert run(tmp_path / "vgg.analog.onnx", np.zeros((2, 3, 32, 32), np.float32)).shape == (2, 10)
    code, _, err = analogize(capsys, "zoo", "export", "vgg_a", "-o", tmp_path / "x.onnx", "--option", "depth=3")
    assert code == 2 and "takes no option" in err and not (tmp_path / "x.onnx").exists()


def test_missing_external_data_is_a_clean_error(tmp_path, capsys):
    model = onnx.load(DEFAULT_MODEL)
    source = tmp_path / "external.onnx"
    onnx.save_model(model, str(source), save_as_external_data=True, location="weights.bin", size_threshold=0)
    (tmp_path / "weights.bin").unlink()
    code, _, err = analogize(capsys, "convert", source, "-o", tmp_path / "out.onnx")
    assert code == 2 and "external weight data" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("flags", [
    ["--no-quantize", "--std", "0.05"], ["--no-noise", "--no-quantize", "--no-clamp", "--activation", "smooth-mish"],
    ["--precision", "10", "--stochastic-rounding", "--seed", "3"], ["--where", "input", "--activation", "leaky"],
    ["--bit-convention", "pow2-minus-1", "--bits", "4", "--inline"],
])
def test_flag_combinations_convert_and_run(tmp_path, capsys, flags):
    code, out, err = analogize(capsys, "convert", DEFAULT_MODEL, "-o", tmp_path / "o.onnx", *flags)
    assert code == 0, err
    assert out.startswith("wrote ") and run(tmp_path / "o.onnx", np.ones((3, 1, 8, 8), np.float32)).shape == (3, 10)


EVALUATE = ("evaluate", DEFAULT_MODEL, "--data", "digits", "--bits", "4,6", "--ep", "0.2,0.5", "--repeats", "2",
            "--activation", "keep,interp-gelu:0.5", "--quiet", "--no-baseline")


def test_evaluate_writes_table_json_csv_and_plot(tmp_path, capsys):
    paths = {kind: tmp_path / f"result.{kind}" for kind in ("json", "csv", "png")}
    code, out, err = analogize(capsys, *EVALUATE, "--json", paths["json"], "--csv", paths["csv"],
                               "--plot", paths["png"])
    assert code == 0, err
    shipped_accuracy = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())["test_accuracy"]
    assert f"clean model: top-1  {100 * shipped_accuracy:.1f}" in out and "interp-gelu:0.5  6" in out
    result = json.loads(paths["json"].read_text())
    assert result["data"]["spec"] == "digits" and result["model"] == str(DEFAULT_MODEL)
    assert len(result["cells"]) == 8
    for cell in result["cells"]:
        assert {"bits", "ep", "activation", "accuracy_mean", "accuracy_std", "repeats"} <= set(cell)
        assert cell["repeats"] == 2 and len(cell["per_repeat"]["accuracy"]) == 2
    rows = paths["csv"].read_text().splitlines()
    assert rows[0].startswith("kind,activation,bits,precision,ep,std") and len(rows) == 1 + 1 + 1 + 8
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_evaluate_figure_names_model_and_settings_on_an_unzoomed_axis_with_every_bar_visible():
    from analogize.evaluate.engine import Grid, evaluate_file
    from analogize.evaluate.results import evaluation_figure

    result = evaluate_file(DEFAULT_MODEL, "digits", Grid(bits=(4, 6), ep=(0.0, 0.5), activations=(
        "keep", "interp-gelu:0.5"), repeats=2), limit=200)
    figure = evaluation_figure(result)
    title = suptitle(figure)
    for words in ("digits_convnet", "output 'logits' on digits", "4 bits, 6 bits", "EP 0, 0.5",
                  "ranges: weights channel, activations dynamic", "2 noise draws per", "seed 0"):
        assert words in title
    for axis in figure.axes:
        low, high = axis.get_ylim()
        assert low == 0 and high >= 100  # whole percent scale, the clean model's line included
        assert low <= 100 * result["clean"]["accuracy_mean"] <= high and "clean" in [
            line.get_label() for line in axis.lines]
        assert error_bars_on_top(axis)
        positions = series_positions(axis)  # 4 and 6 bits share each EP: drawn side by side, not on top
        assert len(set(positions)) == len(positions) and all(min(abs(x), abs(x - 0.5)) < 0.05 for x in positions)
    assert "without noise or quantisation" in [line.get_label() for line in figure.axes[1].lines][-1]


def test_evaluate_json_to_stdout_is_the_only_output(capsys):
    code, out, _ = analogize(capsys, *EVALUATE[:4], "--ep", "0.5", "--repeats", "1", "--quiet", "--json", "-")
    assert code == 0
    cells = json.loads(out)["cells"]  # the baseline first: ranges and rounding without noise
    assert [cell["ep"] for cell in cells] == [0.0, 0.5] and cells[0]["std"] == 0.0
    assert cells[0]["agreement_mean"] >= cells[1]["agreement_mean"]


def test_evaluate_shards_merge_into_the_whole_sweep(tmp_path, capsys):
    code, _, err = analogize(capsys, *EVALUATE, "--json", tmp_path / "whole.json")
    assert code == 0, err
    for k in range(3):
        code, out, err = analogize(capsys, *EVALUATE, "--shard", f"{k}/3", "--json", tmp_path / f"part{k}.json")
        assert code == 0 and f"shard {k}/3" in out, err
    code, out, err = analogize(capsys, "merge", *(tmp_path / f"part{k}.json" for k in range(3)),
                               "-o", tmp_path / "merged.json", "--csv", tmp_path / "merged.csv")
    assert code == 0, err
    whole, merged = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("whole", "merged"))
    assert merged == whole
    code, _, err = analogize(capsys, "merge", tmp_path / "part0.json", "-o", tmp_path / "bad.json")
    assert code == 2 and "missing 1/3, 2/3" in err and not (tmp_path / "bad.json").exists()
    (tmp_path / "junk.json").write_text("{not json")
    code, _, err = analogize(capsys, "merge", tmp_path / "junk.json", "-o", tmp_path / "bad.json")
    assert code == 2 and "is not JSON" in err


@pytest.mark.parametrize("extra, message", [
    (("--data", "mnist"), "unknown data spec"),
    (("--data", "npz:/no/such/file.npz"), "does not exist"),
    (("--data", "digits", "--ep", "1.2"), "outside [0.0, 1.0)"),
    (("--data", "digits", "--bits", "4,x"), "'x' is not a whole number"),
    (("--data", "digits", "--shard", "2/2"), "I/N"),
    (("--data", "digits", "--activation", "relu9"), "unknown activation"),
    (("--data", "digits", "--resize", "8by8"), "HxW"),
    (("--data", "digits", "--json", "/no/such/dir/out.json"), "does not exist"),
    (("--data", "digits", "--no-noise", "--ep", "0.3"), "--no-noise"),
    (("--data", "digits", "--input-mean", "a,b"), "list of numbers"),
])
def test_evaluate_bad_input_is_one_line_and_exit_2(capsys, extra, message):
    code, out, err = analogize(capsys, "evaluate", DEFAULT_MODEL, "--quiet", *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_evaluate_rejects_a_file_that_is_not_a_model(tmp_path, capsys):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage")
    code, _, err = analogize(capsys, "evaluate", junk, "--data", "digits")
    assert code == 2 and "not a readable ONNX model" in err


def test_evaluate_checks_plot_names_first_and_skips_the_plot_of_an_empty_shard(tmp_path, capsys):
    code, _, err = analogize(capsys, *EVALUATE, "--json", tmp_path / "r.json", "--plot", tmp_path / "r.txt")
    assert code == 2 and "plots are written as" in err and not (tmp_path / "r.json").exists()
    code, _, err = analogize(capsys, *EVALUATE, "--json", tmp_path)
    assert code == 2 and "is a directory" in err
    code, out, err = analogize(capsys, *EVALUATE, "--shard", "9/10", "--json", tmp_path / "s.json",
                               "--plot", tmp_path / "s.png")
    assert code == 0 and "not written" in err and (tmp_path / "s.json").exists() and not (tmp_path / "s.png").exists()


def test_native_prints_the_library_path(capsys):
    from analogize import native_library_path

    code, out, err = analogize(capsys, "native")
    assert code == 0 and out.strip() == str(native_library_path())
    code, out, _ = analogize(capsys, "native", "--json")
    assert json.loads(out) == {"library": str(native_library_path()), "cuda": False}


def test_newcomer_stumbles_bare_command_strict_json_version_and_limit_help(capsys):
    """Issue 18's first-hour stumbles: a bare `analogize` (or command group) prints its help, not an error;
    `ops --json` is strict JSON (no Infinity); the package has a version; --limit's help says how it picks."""
    from analogize import __version__

    for argv in ([], ["analyze"]):
        code, out, err = analogize(capsys, *argv)
        assert code == 0 and out.startswith("Usage:") and not err
    code, out, _ = analogize(capsys, "ops", "--json")
    ops = json.loads(out, parse_constant=lambda constant: pytest.fail(f"{constant} is not JSON"))
    assert code == 0 and ops["AnalogNoise"]["attributes"]["std"]["max"] is None
    assert __version__ and __version__ != "unknown"
    code, out, _ = analogize(capsys, "evaluate", "--help")
    assert "evenly spaced" in " ".join(out.split()) and "first N" not in out


def test_outputs_never_replace_the_inputs_or_each_other(tmp_path, capsys):
    """Issue 17's lost files: refused in one line before any work, and the input stays byte for byte."""
    model = tmp_path / "m.onnx"
    shutil.copy(DEFAULT_MODEL, model)
    converted = tmp_path / "c.onnx"
    assert main(["convert", str(model), "-o", str(converted), "--seed", "1"]) == 0
    original, original_converted = model.read_bytes(), converted.read_bytes()
    part = tmp_path / "part.json"
    part.write_text("{}")
    cases = [
        (["evaluate", model, "--data", "digits", "--json", model], "--json"),
        (["evaluate", model, "--data", "digits", "--csv", model], "--csv"),
        (["finetune", model, "--data", "digits", "-o", tmp_path / "t.onnx", "--json", model], "--json"),
        (["finetune", model, "--data", "digits", "-o", tmp_path / "t.onnx", "--json", tmp_path / "t.onnx"], "--json"),
        (["export", converted, "-o", tmp_path / "x.onnx", "--spec", converted], "--spec"),
        (["export", converted, "-o", tmp_path / "x.onnx", "--spec", tmp_path / "x.onnx"], "--spec"),
        (["merge", part, "-o", part], "-o"),
    ]
    for argv, flag in cases:
        code, _, err = analogize(capsys, *argv)
        assert code == 2 and flag in err and "would replace" in err and len(err.strip().splitlines()) == 1, argv
    assert model.read_bytes() == original and converted.read_bytes() == original_converted
    assert part.read_text() == "{}" and not (tmp_path / "x.onnx").exists() and not (tmp_path / "t.onnx").exists()


@pytest.mark.parametrize("argv", [
    ["finetune", DEFAULT_MODEL, "--data", "digits", "-o", "/no/such/dir/t.onnx"],
    ["convert", DEFAULT_MODEL, "-o", "/no/such/dir/c.onnx"],
    ["zoo", "export", "convnet", "-o", "/no/such/dir/z.onnx"],
])
def test_an_unwritable_output_is_found_before_any_work(argv, capsys):
    """Issue 17: finetune found a bad -o only after training; every -o is now checked as the flags are read."""
    code, _, err = analogize(capsys, *argv)
    assert code == 2 and "Invalid value for '-o'" in err and "does not exist" in err
