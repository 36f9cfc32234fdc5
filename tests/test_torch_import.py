"""Trained torch models in: the shipped digits network saved as a torch.export program, as TorchScript, and as
factory + state dict converts and evaluates to the same numbers as its own ONNX export; files that would run
code, or that hold no network, are refused in one line."""
import json
import pickle
import warnings

import numpy as np
import onnx
import pytest
import torch

from analogize import zoo
from analogize.convert import ConvertOptions, convert, convert_file
from analogize.errors import AnalogizeError
from analogize.evaluate.engine import Grid, evaluate_file
from analogize.torch_import import TorchImport, _tensors_only, is_torch_source, load_any_model, torch_to_onnx
from conftest import DEFAULT_MODEL, ROOT, run
from test_cli import analogize

CONFIG = json.loads((ROOT / "models" / "digits_convnet.json").read_text())
FACTORY = '''import json
from analogize import zoo

def digits_network():
    config = json.loads({config!r})
    return zoo.create_model(config["model"], **{{k: tuple(v) if isinstance(v, list) else v
                                                 for k, v in config["config"].items()}})
'''


def trained_network():
    network = zoo.create_model(CONFIG["model"], **{k: tuple(v) if isinstance(v, list) else v
                                                   for k, v in CONFIG["config"].items()}).eval()
    weights = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy())
               for t in onnx.load(DEFAULT_MODEL).graph.initializer}
    network.load_state_dict(weights)
    return network


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The trained digits network as each torch format, and its ONNX exports by both exporters."""
    folder = tmp_path_factory.mktemp("torch")
    network, example = trained_network(), torch.zeros(2, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(network, example), folder / "digits.ts.pt")
        program = torch.export.export(network, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        torch.export.save(program, folder / "digits.pt2")
        torch.save(network.state_dict(), folder / "digits.state.pt")
        torch.save(network, folder / "digits.whole.pt")
        for exporter in ("legacy", "dynamo"):
            zoo.export_onnx(network, folder / f"digits.{exporter}.onnx", (1, 8, 8), exporter=exporter)
    (folder / "digits_factory.py").write_text(FACTORY.format(config=json.dumps(CONFIG)))
    return folder


def same_cells(first: dict, second: dict) -> None:
    for ours, theirs in zip(first["cells"], second["cells"], strict=True):
        assert ours["per_repeat"] == theirs["per_repeat"] and ours["seed"] == theirs["seed"]


@pytest.mark.parametrize("form", ["torchscript", "factory", "program"])
def test_each_torch_form_converts_and_evaluates_as_its_onnx_export(saved, form, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(saved))
    shape = TorchImport(input_shape=(1, 8, 8))
    source, options, reference = {
        "torchscript": (saved / "digits.ts.pt", shape, "legacy"),
        "factory": ("digits_factory:digits_network", TorchImport(input_shape=(1, 8, 8),
                                                                 state_dict=str(saved / "digits.state.pt")), "legacy"),
        "program": (saved / "digits.pt2", TorchImport(), "dynamo"),
    }[form]
    assert is_torch_source(source)
    onnx_path = saved / f"digits.{reference}.onnx"
    grid = Grid(bits=(6,), ep=(0.0, 0.3), repeats=2, seed=3)
    ours = evaluate_file(source, "digits", grid, torch_import=options, limit=200)
    theirs = evaluate_file(onnx_path, "digits", grid, limit=200)
    assert ours["exported"]["kind"] == form and ours["clean"]["accuracy_mean"] > 0.9
    same_cells(ours, theirs)
    report = convert_file(source, tmp_path / "ours.onnx", ConvertOptions(bits=6, ep=0.3, seed=5), torch_import=options)
    assert report["exported"]["exporter"] == reference and len(report["layers"]) == 5
    reference_model = convert(onnx.load(onnx_path), bits=6, ep=0.3, seed=5).model
    x = np.random.default_rng(0).uniform(0, 1, (16, 1, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(run(onnx.load(tmp_path / "ours.onnx"), x), run(reference_model, x))


def test_files_that_hold_no_network_or_would_run_code_are_refused(saved, monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(saved))
    for name in ("digits.state.pt", "digits.whole.pt"):
        with pytest.raises(AnalogizeError, match="torch.save checkpoint .* give module.path:factory"):
            torch_to_onnx(saved / name)
    with pytest.raises(AnalogizeError, match="needs the trained weights: give --state-dict"):
        torch_to_onnx("digits_factory:digits_network", TorchImport(input_shape=(1, 8, 8)))
    with pytest.raises(AnalogizeError, match="is not a checkpoint of tensors"):  # a pickled module: not unpickled
        torch_to_onnx("digits_factory:digits_network",
                      TorchImport(input_shape=(1, 8, 8), state_dict=str(saved / "digits.whole.pt")))
    with pytest.raises(AnalogizeError, match="give --input-shape"):
        torch_to_onnx(saved / "digits.ts.pt")
    with pytest.raises(AnalogizeError, match="cannot import no_such_module"):
        torch_to_onnx("no_such_module:make", TorchImport(input_shape=(1,), state_dict=str(saved / "digits.state.pt")))
    with pytest.raises(AnalogizeError, match="does not fit digits_factory:digits_network"):
        torch.save({"nope": torch.zeros(1)}, tmp_path / "other.pt")
        torch_to_onnx("digits_factory:digits_network", TorchImport(input_shape=(1, 8, 8),
                                                                   state_dict=str(tmp_path / "other.pt")))
    with pytest.raises(AnalogizeError, match="apply to torch models only"):
        load_any_model(DEFAULT_MODEL, TorchImport(input_shape=(1, 8, 8)))
    # while a program or TorchScript file loads, no pickle may build Python objects
    with _tensors_only(torch):
        with pytest.raises(pickle.UnpicklingError):
            pickle.loads(pickle.dumps(object()))
        with pytest.raises(pickle.UnpicklingError):
            torch.load(saved / "digits.whole.pt")
    assert pickle.loads(pickle.dumps(3)) == 3  # and everything is as it was afterwards


def test_the_cli_takes_torch_models_and_says_what_to_do_with_others(saved, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(saved)  # the factory's module is found where the command runs, as with python -m
    code, out, err = analogize(capsys, "convert", "digits_factory:digits_network", "--state-dict", "digits.state.pt",
                               "--input-shape", "1,8,8", "-o", tmp_path / "f.onnx", "--json")
    assert code == 0, err
    assert json.loads(out)["exported"]["state_dict"] == "digits.state.pt"
    code, _, err = analogize(capsys, "convert", "digits_factory:digits_network", "--state-dict", "digits.state.pt",
                             "--input-shape", "1,8,8")
    assert code == 2 and "give -o" in err
    code, _, err = analogize(capsys, "convert", "digits.whole.pt", "-o", tmp_path / "w.onnx")
    assert code == 2 and "torch.save checkpoint" in err and len(err.strip().splitlines()) == 1
    code, _, err = analogize(capsys, "convert", "digits.ts.pt", "--input-shape", "1,x", "-o", tmp_path / "s.onnx")
    assert code == 2 and "not a shape" in err
    assert not (tmp_path / "w.onnx").exists() and not (tmp_path / "s.onnx").exists()


def test_a_program_whose_shape_expressions_would_run_python_is_refused_before_torch_reads_it(saved, tmp_path):
    import zipfile

    payload = "__import__('os').system('touch pwned-by-program') or Symbol('s77', integer=True, positive=True)"
    forged = tmp_path / "forged.pt2"
    with zipfile.ZipFile(saved / "digits.pt2") as source, zipfile.ZipFile(forged, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename.endswith("models/model.json"):
                text = data.decode()
                start = text.index('"expr_str": "') + len('"expr_str": "')
                data = (text[:start] + json.dumps(payload)[1:-1] + text[text.index('"', start):]).encode()
            target.writestr(item, data)
    with pytest.raises(AnalogizeError, match="shape expression .* would evaluate as Python"):
        torch_to_onnx(forged)
    assert not (tmp_path / "pwned-by-program").exists() and not (ROOT / "pwned-by-program").exists()


def test_each_form_refuses_the_flags_it_cannot_use_and_factories_fail_in_one_line(saved, tmp_path, monkeypatch):
    import sys

    monkeypatch.syspath_prepend(str(saved))
    for source, options, message in (
            (saved / "digits.ts.pt", TorchImport(input_shape=(1, 8, 8), state_dict="x.pt"), "goes with a module"),
            (saved / "digits.ts.pt", TorchImport(input_shape=(1, 8, 8), exporter="dynamo"), "legacy exporter only"),
            (saved / "digits.pt2", TorchImport(input_shape=(1, 8, 8)), "drop --input-shape"),
            (saved / "digits.pt2", TorchImport(dynamic_batch=False), "drop --input-shape, --static-batch")):
        with pytest.raises(AnalogizeError, match=message):
            torch_to_onnx(source, options)
    (tmp_path / "broken_factory.py").write_text("raise RuntimeError('no GPU here\\nsecond line')\n")
    monkeypatch.chdir(tmp_path)
    before = list(sys.path)
    with pytest.raises(AnalogizeError, match=r"broken_factory:make failed: RuntimeError: no GPU here$"):
        torch_to_onnx("broken_factory:make", TorchImport(input_shape=(1,), state_dict=str(saved / "digits.state.pt")))
    assert sys.path == before  # the working directory was put on the path for the import only
    wrapped = {f"model.{key}": value for key, value in trained_network().state_dict().items()}
    torch.save({"state_dict": wrapped}, tmp_path / "lightning.ckpt")
    model, record = torch_to_onnx("digits_factory:digits_network", TorchImport(
        input_shape=(1, 8, 8), state_dict=str(tmp_path / "lightning.ckpt"), dynamic_batch=False))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [1, 1, 8, 8]
    x = np.random.default_rng(1).uniform(0, 1, (1, 1, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(run(model, x), run(onnx.load(DEFAULT_MODEL), x), rtol=1e-5, atol=1e-5)
