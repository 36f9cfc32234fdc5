"""`analogize train` and `analogize sweep`: zoo models trained from scratch under noise, the paper's
qualitative result on digits, and the sweep's resume / shard / bad-input behaviour."""
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from analogize.cli import main
from analogize.convert import PAPER_RANGES, ConvertOptions
from analogize.data import load_dataset
from analogize.errors import AnalogizeError
from analogize.evaluate.engine import Grid, evaluate
from analogize.training.finetune import FinetuneOptions
from analogize.training.sweep import SweepGrid, summarise, sweep, sweep_figure
from analogize.training.train import TrainSetup, activation_setting, initialise_critically, train
from analogize.zoo import create_model
from conftest import error_bars_on_top, run, series_positions, suptitle

MLP = {"stages": 0, "dropout": False}


def analogize(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def digits_split():
    return load_dataset("digits", split="train"), load_dataset("digits", split="test")


def test_critical_initialisation_draws_the_stated_variances():
    module = create_model("convnet", in_channels=1, image_size=8, stages=0, hidden=(2000,), dropout=False)
    layers = initialise_critically(module, 1.983, 0.173, torch.Generator().manual_seed(0))
    first = module[1]
    assert layers == 2
    assert first.weight.std().item() == pytest.approx(math.sqrt(1.983 / 64), rel=0.02)
    assert first.bias.std().item() == pytest.approx(math.sqrt(0.173), rel=0.05)


@pytest.mark.parametrize("options, expected", [
    (ConvertOptions(), "relu"), (ConvertOptions(activation="interp-silu", factor=0.5), "interp-silu:factor=0.5"),
    (ConvertOptions(activation="gelu", scale=2.0, factor=0.3), "gelu:scale=2.0"),
    (ConvertOptions(activation="leaky", alpha=0.1), "leaky:alpha=0.1")])
def test_activation_setting_names_what_convert_inserts(options, expected):
    assert activation_setting(options) == expected


def test_train_sizes_the_model_to_the_data_and_reports_the_written_models_accuracy(digits_split, tmp_path):
    train_data, validation = digits_split
    model, report = train(TrainSetup("convnet", {**MLP, "hidden": (32,)}, "critical"), train_data, validation,
                          FinetuneOptions(epochs=4, lr=3e-3, repeats=3), ConvertOptions(bits=6, ep=0.3,
                                                                                          activation="gelu"))
    assert report["built"]["config"]["in_channels"] == 1 and report["built"]["config"]["num_classes"] == 10
    assert report["built"]["critical"]["c_w"] == pytest.approx(1.983, abs=1e-3)
    assert report["accuracy_before"] < 0.25 < 0.7 < report["accuracy_after"]
    # the report's number is the written model's own, in ONNX Runtime
    again = evaluate(model, validation, Grid(repeats=3, seed=0))["cells"][0]["accuracy_mean"]
    assert again == pytest.approx(report["accuracy_after"], abs=1e-12)
    assert run(model, validation.x[:4]).shape == (4, 10)


def test_relu_trains_clearly_below_gelu_under_heavy_noise(digits_split):
    """The paper's qualitative result on digits: 4 hidden layers, 4 bits, EP 0.7 everywhere (inputs,
    layers, weights, biases). Over seeds 0-2, ReLU (i = 0) reached 33 ± 10 % and GELU (i = 1) 68 ± 1 %
    (docs/results.md has the full grid); the margin asserted is far outside that spread."""
    train_data, validation = digits_split
    accuracy = {}
    for factor in (0.0, 1.0):
        accuracy[factor] = np.mean([train(TrainSetup("convnet", {**MLP, "hidden": (64,) * 4}), train_data, validation,
                                          FinetuneOptions(epochs=15, lr=3e-3, repeats=2, seed=seed),
                                          ConvertOptions(bits=4, ep=0.7, activation="interp-gelu", factor=factor,
                                                         seed=seed, **PAPER_RANGES))[1]["accuracy_after"]
                                    for seed in (0, 1)])
    assert accuracy[1.0] > 0.55
    assert accuracy[1.0] - accuracy[0.0] > 0.15


def test_sweep_resumes_and_shards_give_the_unsharded_result(digits_split, tmp_path):
    grid = SweepGrid(activations=("relu", "interp-gelu:1.0"), depths=(1,), width=16, bits=(4,), eps=(0.3,), seeds=2)
    options = FinetuneOptions(epochs=1, repeats=1)
    whole = sweep(tmp_path / "whole", "digits", grid, TrainSetup("convnet", MLP), options, limit=300)
    assert whole["complete"] and whole["cells_done"] == 4 and len(whole["points"]) == 2
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "whole" / "cells").iterdir()}
    again = sweep(tmp_path / "whole", "digits", grid, TrainSetup("convnet", MLP), options, limit=300)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "whole" / "cells").iterdir()} == stamps  # nothing re-run
    assert again["points"] == whole["points"]

    first = sweep(tmp_path / "sharded", "digits", grid, TrainSetup("convnet", MLP), options, limit=300, shard=(0, 2))
    assert not first["complete"] and first["cells_done"] == 2
    second = sweep(tmp_path / "sharded", "digits", grid, TrainSetup("convnet", MLP), options, limit=300, shard=(1, 2))
    assert second["complete"] and second["points"] == whole["points"]
    assert summarise(tmp_path / "sharded")["points"] == whole["points"]

    with pytest.raises(AnalogizeError, match="other settings.*options"):
        sweep(tmp_path / "whole", "digits", grid, TrainSetup("convnet", MLP), FinetuneOptions(epochs=2), limit=300)


def test_sweep_cli_writes_summary_and_figure(tmp_path, capsys):
    code, out, err = analogize(capsys, "sweep", tmp_path / "run", "--data", "digits", "--limit", "200",
                               "--option", "dropout=False", "--factors", "0,1",
                               "--depths", "1,2", "--width", "8", "--seeds", "1", "--epochs", "1", "--repeats", "1",
                               "--ep", "0.3", "--json", tmp_path / "s.json", "--plot", tmp_path / "s.png", "-q")
    assert code == 0, err
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["complete"] and {(p["factor"], p["depth"]) for p in summary["points"]} == {
        (0.0, 1), (0.0, 2), (1.0, 1), (1.0, 2)}
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG" and "4 of 4 cells done" in out

    figure = sweep_figure(summary)
    title = suptitle(figure)
    for words in ("convnet trained under noise on digits (limit 200): 1 epoch,", "bits 4; EP 0.3",
                  "ranges: weights unit, activations unit", "over 1 seed, each over 1 noise draw"):
        assert words in title
    factor_panels, depth_panel = figure.axes[:2], figure.axes[2]
    assert [axis.get_xlabel() for axis in factor_panels] == ["interpolation factor i"] * 2
    for axis in figure.axes[:3]:
        assert axis.get_ylim()[0] == 0 and axis.get_ylim()[1] >= 100
    assert all(float(t).is_integer() for t in depth_panel.get_xticks())
    positions = series_positions(depth_panel)  # both factors at each depth: side by side, not on top
    assert len(set(positions)) == len(positions) == 4 and all(min(abs(x - 1), abs(x - 2)) < 0.1 for x in positions)
    assert error_bars_on_top(depth_panel)


def test_train_cli_writes_model_and_report(tmp_path, capsys):
    code, out, err = analogize(capsys, "train", "convnet", "--data", "digits", "--limit", "300", "--option",
                               "stages=0", "--option", "hidden=(16,)", "--epochs", "2", "--repeats", "1",
                               "--activation", "silu", "--init", "critical", "-o", tmp_path / "m.onnx",
                               "--json", tmp_path / "r.json", "-q")
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["built"]["init"] == "critical" and report["output"] == str(tmp_path / "m.onnx")
    assert "wrote" in out and (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "nosuchnet", "--data", "digits", "-o", "{tmp}/m.onnx"], "unknown zoo model"),
    (["train", "convnet", "--data", "digits", "--option", "stages=2", "-o", "{tmp}/m.onnx"], "too small"),
    (["train", "convnet", "--data", "npz:{tmp}/flat.npz", "-o", "{tmp}/m.onnx"], "zoo models take images"),
    (["train", "convnet", "--data", "digits", "--activation", "interp-gelu", "--factor", "0.5", "--init",
      "critical", "--option", "stages=0", "--limit", "50", "--epochs", "1", "-o", "{tmp}/m.onnx"], None),
    (["sweep", "{tmp}/s", "--data", "digits"], "give activations"),
    (["sweep", "{tmp}/s", "--data", "digits", "--activation", "relu,swish"], "unknown activation"),
    (["sweep", "{tmp}/s", "--data", "digits", "--activation", "smooth-swish,gelu", "--plot", "{tmp}/p.png"],
     "none of them varies"),
    (["sweep", "{tmp}/s", "--data", "digits", "--activation", "gelu", "--width", "8"], "give --depths too"),
    (["sweep", "{tmp}/s", "--data", "digits", "--depths", "2", "--activation", "gelu", "--option",
      "hidden=(4,)"], "leave them out of --option"),
    (["sweep", "{tmp}/s", "--data", "digits", "--activation", "gelu", "--smooth", "silu"], "give --factors"),
    (["train", "convnet", "--data", "npz:{tmp}/missing.npz", "-o", "{tmp}/m.onnx"], "missing.npz"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "flat.npz", x=rng.random((20, 7), dtype=np.float32), y=np.arange(20) % 3)
    code, _, err = analogize(capsys, *[a.replace("{tmp}", str(tmp_path)) for a in argv])
    if message is None:  # interp-gelu at i = 0.5 has a critical point: it trains
        assert code == 0, err
        return
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists() and not (tmp_path / "s").exists()


@pytest.mark.slow
def test_accuracy_rises_with_the_interpolation_factor(tmp_path):
    """Fig. 3e on digits (4 hidden layers, 4 bits, EP 0.7, 3 seeds): docs/results.md measured 37.9, 49.6,
    57.0, 65.7 and 69.9 % for i = 0, 0.25, 0.5, 0.75, 1."""
    grid = SweepGrid(activations=("interp-gelu:0", "interp-gelu:0.25", "interp-gelu:0.5", "interp-gelu:0.75",
                                  "interp-gelu:1"), depths=(4,), bits=(4,), eps=(0.7,), seeds=3)
    result = sweep(tmp_path, "digits", grid, TrainSetup("convnet", MLP), FinetuneOptions(epochs=15, lr=3e-3,
                                                                                         repeats=3))
    means = [p["accuracy_mean"] for p in sorted(result["points"], key=lambda p: p["factor"])]
    assert means[-1] - means[0] > 0.2
    assert sum(b > a for a, b in zip(means, means[1:])) >= 3


def test_sweep_checks_everything_before_claiming_the_directory(tmp_path):
    grid = SweepGrid(activations=("relu",), bits=(4,), eps=(0.3,), seeds=1)
    for data, setup, options, message in [
            ("npz:/nonexistent.npz", TrainSetup("convnet", MLP), ConvertOptions(), "nonexistent"),
            ("digits", TrainSetup("convnet", {"stages": 3}), ConvertOptions(), "too small"),
            ("digits", TrainSetup("convnet", MLP), ConvertOptions(precision=16), "leave out --precision"),
            ("digits", TrainSetup("convnet", MLP), ConvertOptions(noise=False), "no noise")]:
        with pytest.raises(AnalogizeError, match=message):
            sweep(tmp_path / "s", data, grid, setup, FinetuneOptions(epochs=1), options)
        assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("grid, message", [
    (SweepGrid(activations=("relu",), eps=(0.5, 0.5)), "EPs repeat"),
    (SweepGrid(activations=("relu", "interp-gelu:0.0")), "activations repeat"),
    (SweepGrid(activations=("gelu", "interp-gelu:1")), "activations repeat"),
    (SweepGrid(activations=("relu",), depths=(2, 2)), "depths repeat")])
def test_sweep_refuses_repeated_grid_values(grid, message):
    with pytest.raises(AnalogizeError, match=message):
        grid.check()


def test_figure_axes_follow_the_grid():
    assert SweepGrid(activations=("relu", "interp-silu:0.5", "silu")).figure_axes() == ["factor"]
    assert SweepGrid(activations=("relu", "leaky:0.1", "gelu")).figure_axes() == ["factor", "alpha"]
    assert SweepGrid(activations=("gelu",), depths=(1, 2)).figure_axes() == ["depth"]
    assert SweepGrid(activations=("smooth-swish", "smooth-gelu")).figure_axes() == []


def test_resume_refuses_a_checkpoint_of_other_settings(digits_split, tmp_path):
    train_data, validation = digits_split
    setup, options = TrainSetup("convnet", {**MLP, "hidden": (8,)}), FinetuneOptions(epochs=1, repeats=1)
    train(setup, train_data, validation, options, ConvertOptions(bits=4, ep=0.3), checkpoint_dir=tmp_path)
    with pytest.raises(AnalogizeError, match="another model or other convert settings"):
        train(setup, train_data, validation, replace(options, epochs=2), ConvertOptions(bits=4, ep=0.3,
              activation="gelu"), checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(AnalogizeError, match="another model"):
        train(TrainSetup("convnet", {**MLP, "hidden": (16,)}), train_data, validation, replace(options, epochs=2),
              ConvertOptions(bits=4, ep=0.3), checkpoint_dir=tmp_path, resume=True)


def test_models_without_size_options_take_the_datas_image_size(digits_split):
    from analogize.data import InputSpec
    from analogize.training.train import build

    model, built = build(TrainSetup("resnet18", {"width": 0.125, "imagenet_stem": False}), digits_split[0],
                         ConvertOptions(), seed=0)
    assert InputSpec.of(model).shape[1:] == (1, 8, 8) and built["config"]["num_classes"] == 10


def test_convnet_takes_as_many_stages_as_the_images_leave_room_for(tmp_path, capsys):
    """`analogize train convnet --data digits` with the defaults (issue 18: it failed with "image_size 8 is too
    small for 3 stages" although the model is sized to the data); a size given explicitly still rules."""
    from analogize.training.train import sized_config

    digits_data = load_dataset("digits", limit=40)
    assert sized_config(TrainSetup("convnet"), digits_data)["stages"] == 1
    assert sized_config(TrainSetup("convnet", {"image_size": 32}), digits_data)["stages"] == 3
    assert main(["train", "convnet", "--data", "digits", "--limit", "60", "--epochs", "1", "--repeats", "1",
                 "-o", str(tmp_path / "c.onnx"), "--quiet"]) == 0
    assert (tmp_path / "c.onnx").exists()
