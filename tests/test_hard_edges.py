"""Hard edges (issue 17): numbers that float32 cannot hold are refused where the op set declares them, EPs at the
ends of [0, 1) give a std or one line, and checkpoints are read as data, so a crafted one runs no code."""
import math
import os
import warnings

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest
import torch

from analogize.convert import ConvertOptions, convert
from analogize.errors import AnalogizeError
from analogize.noise_model import ep_to_std, std_to_ep
from analogize.ops.spec import OPS
from conftest import DEFAULT_MODEL
from test_cli import analogize


@pytest.mark.parametrize("flags", [
    ["--std", "1e-46"], ["--precision", "1e300"], ["--precision", "1e39"], ["--std", "1e39"],
    ["--activation", "gelu", "--scale", "1e39"], ["--activation", "smooth-gelu", "--temperature", "1e-46"],
    ["--ep", "0.9999999999999999"],
])
def test_flags_that_float32_cannot_hold_are_one_line_errors_and_write_nothing(flags, tmp_path, capsys):
    code, _, err = analogize(capsys, "convert", DEFAULT_MODEL, "-o", tmp_path / "x.onnx", *flags)
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "x.onnx").exists()


def test_every_declared_attribute_is_checked_as_float32_stores_it():
    for spec in OPS.values():
        for attribute in spec.attributes:
            with pytest.raises(AnalogizeError, match="float32 holds"):
                attribute.check(spec.name, 1e39)
            with pytest.raises(AnalogizeError):
                attribute.check(spec.name, math.nan)
    assert OPS["AnalogNoise"].attribute("std").check("AnalogNoise", 1e-30) == 1e-30  # small but a float32


def test_eps_near_the_ends_give_a_finite_std_that_round_trips():
    for ep in (1e-20, 1e-300, 0.5, 0.999999):
        std = ep_to_std(ep, 64.0)
        assert math.isfinite(std) and std > 0
        assert std_to_ep(std, 64.0) == pytest.approx(ep, rel=1e-6, abs=1e-300)
    converted = convert(onnx.load(DEFAULT_MODEL), ConvertOptions(bits=6, ep=1e-20)).model
    assert any(n.op_type == "AnalogNoise" for n in converted.graph.node)


class _RunsCode:
    def __reduce__(self):
        return os.system, ("touch pwned-by-checkpoint",)


def test_a_crafted_finetune_checkpoint_is_refused_without_running_code(tmp_path, monkeypatch):
    from analogize.training.finetune import CHECKPOINT_NAME, FinetuneOptions, finetune
    from analogize.data import load_dataset

    monkeypatch.chdir(tmp_path)
    torch.save({"options": {}, "model": {}, "module": _RunsCode()}, tmp_path / CHECKPOINT_NAME)
    digits = load_dataset("digits", limit=32)
    converted = convert(onnx.load(DEFAULT_MODEL), bits=6, ep=0.3).model
    with pytest.raises(AnalogizeError, match="not a finetune checkpoint analogize can read as data"):
        finetune(converted, digits, digits, FinetuneOptions(epochs=1, repeats=1), checkpoint_dir=tmp_path,
                 resume=True)
    assert not (tmp_path / "pwned-by-checkpoint").exists()


def test_the_native_cache_is_verified_and_must_be_private(tmp_path, monkeypatch):
    """A truncated or altered library is built again instead of loaded (it crashed every session with SIGBUS);
    a cache someone else can write is refused, and sessions fall back to the function bodies."""
    import shutil

    from analogize.native import build as native

    real = native.native_library_path()
    monkeypatch.setenv("ANALOGIZE_CACHE", str(tmp_path / "cache"))
    target = tmp_path / "cache" / real.parent.name / real.name
    target.parent.mkdir(parents=True, mode=0o700)
    shutil.copy(real, target)
    target.with_name(f"{target.name}.sha256").write_text(native._file_hash(real) + "\n")
    compiled = []
    monkeypatch.setattr(native, "_compile", lambda target, *args: compiled.append(target) or target)
    assert native.build(verbose=False) == target and not compiled  # intact: loaded as it is
    target.write_bytes(real.read_bytes()[:1000])  # truncated, as a full disk or a killed copy leaves it
    assert native.build(verbose=False) == target and compiled == [target]
    target.parent.chmod(0o777)
    with pytest.raises(AnalogizeError, match="writable by others"):
        native.build(verbose=False)


def test_pipes_directories_and_forged_shards_get_one_line(tmp_path, capsys):
    import json

    os.mkfifo(tmp_path / "pipe.onnx")
    code, _, err = analogize(capsys, "convert", tmp_path / "pipe.onnx", "-o", tmp_path / "x.onnx")
    assert code == 2 and "not a regular file" in err  # it hung reading the pipe
    code, _, err = analogize(capsys, "convert", DEFAULT_MODEL, "-o", f"{tmp_path / 'newdir'}/")
    assert code == 2 and "is a directory" in err and not (tmp_path / "newdir").exists()
    from analogize.evaluate.engine import Grid, evaluate
    from analogize.evaluate.results import merge_results
    from analogize.data import load_dataset

    digits = load_dataset("digits", limit=20)
    parts = [evaluate(onnx.load(DEFAULT_MODEL), digits, Grid(bits=(4,), ep=(0.1, 0.3), repeats=1), shard=(k, 2))
             for k in range(2)]
    forged = [json.loads(json.dumps(part)) for part in parts]
    for part in forged:
        part["cell_count"] = 10**12  # was a list of that length: the OOM killer
    with pytest.raises(AnalogizeError, match="every cell of the grid exactly once"):
        merge_results(forged)


def test_flags_with_nothing_to_act_on_are_said_or_refused():
    model = onnx.load(DEFAULT_MODEL)
    report = convert(model, activation="keep", factor=0.3, exclude=("NoSuchNode",)).report
    assert any("--factor does not apply to --activation keep" in line for line in report["warnings"])
    assert any("--exclude NoSuchNode: no node or op type" in line for line in report["warnings"])
    assert not [line for line in convert(model, activation="interp-gelu", factor=0.3, exclude=("Gemm",)).report[
        "warnings"] if "--factor" in line or "--exclude" in line]
    with pytest.raises(AnalogizeError, match="--ep sets the noise that --no-noise leaves out"):
        convert(model, noise=False, ep=0.3)


def test_seeds_float32_cannot_tell_apart_are_refused():
    model = onnx.load(DEFAULT_MODEL)
    with pytest.raises(AnalogizeError, match=r"seeds are stored as float32.*choose one below 16777197"):
        convert(model, bits=6, ep=0.3, seed=2**24 - 10)
    converted = convert(model, bits=6, ep=0.3, seed=2**24 - 20).model  # the 20 nodes' seeds all fit
    seeds = [a.f for n in converted.graph.node for a in n.attribute if a.name == "seed"]
    assert len(set(seeds)) == len(seeds) == 20


def test_only_data_inputs_get_input_chains():
    """The input placement chains float inputs that reach a layer's data operand: a Resize's scales and an
    additive attention mask (0 / -1e4, which clamping made -1) stay digital and are listed; --data-inputs
    overrides."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["big"], mode="nearest"),
             helper.make_node("Flatten", ["big"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["scores"]),
             helper.make_node("Add", ["scores", "mask"], ["y"])]
    model = helper.make_model(helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 2, 2]),
                     helper.make_tensor_value_info("scales", TensorProto.FLOAT, [4]),
                     helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [numpy_helper.from_array(np.ones((16, 3), np.float32), "w")]), opset_imports=[helper.make_opsetid("", 17)])
    report = convert(model, bits=6, ep=0.3).report
    assert {s["tensor"] for s in report["inserted"] if s["site"] == "input"} == {"x"}
    assert {entry["input"] for entry in report["digital_inputs"]} == {"scales", "mask"}
    forced = convert(model, bits=6, ep=0.3, data_inputs=("x", "mask")).report
    assert {s["tensor"] for s in forced["inserted"] if s["site"] == "input"} == {"x", "mask"}
    with pytest.raises(AnalogizeError, match="--data-inputs nope: not a float32 graph input"):
        convert(model, data_inputs=("nope",))


def test_single_op_backend_models_are_refused_in_one_line():
    """A quick form of the single-op fuzz (every 12th of ONNX's backend node models). Their weights are graph
    inputs and their float inputs reach no layer, so each is refused in one line, where the input placement
    used to clamp Resize scales, thresholds and masks (23 of the 1765 then failed in ONNX Runtime, 13 changed
    their output shapes)."""
    import glob

    import onnxruntime as ort

    folder = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node")
    examined = 0
    for case in sorted(glob.glob(os.path.join(folder, "*")))[::12]:
        try:
            model = onnx.load(os.path.join(case, "model.onnx"))
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        except Exception:  # ONNX Runtime cannot load it either
            continue
        examined += 1
        with pytest.raises(AnalogizeError, match="^(nothing to convert|the model uses opset)[^\n]*$"):
            convert(model, bits=8, ep=0.1, seed=1)
    assert examined >= 100


def test_a_model_carrying_its_own_analog_function_bodies_gets_the_op_sets_own():
    """A model that brings an ai.analogize ReducePrecision body of its own (an identity) ran that body in stock
    ONNX Runtime after conversion: no quantisation at all."""
    import numpy as np
    import onnxruntime as ort
    from onnx import helper

    from analogize.ops.spec import DOMAIN

    model = onnx.load(DEFAULT_MODEL)
    model.functions.append(helper.make_function(DOMAIN, "ReducePrecision", ["X"], ["Y"],
                                                [helper.make_node("Identity", ["X"], ["Y"])],
                                                [helper.make_opsetid("", 17)], ["precision", "divide"]))
    converted = convert(model, bits=2, noise=False, weight_range="unit", activation_range="unit").model
    assert [f for f in converted.functions if f.name == "ReducePrecision"][0].node[0].op_type != "Identity"
    x = np.random.default_rng(0).uniform(0, 1, (4, 1, 8, 8)).astype(np.float32)
    session = ort.InferenceSession(converted.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x})[0]
    assert np.all(np.isin(np.round(logits * 4, 4), np.round(np.arange(-4, 5), 4)))  # on the 2-bit grid: quantised


def test_rebuild_takes_only_the_spec_written_with_the_export():
    from analogize.export import export, rebuild

    six, spec_six = export(convert(onnx.load(DEFAULT_MODEL), bits=6, ep=0.3, seed=1).model, "qdq")
    _, spec_three = export(convert(onnx.load(DEFAULT_MODEL), bits=3, ep=0.3, seed=1).model, "qdq")
    with pytest.raises(AnalogizeError, match="the spec does not belong to this export"):
        rebuild(six, spec_three)  # was rebuilt as a 3-bit simulation
    with pytest.raises(AnalogizeError, match="not an analogize export"):
        rebuild(onnx.load(DEFAULT_MODEL), spec_six)
    assert rebuild(six, spec_six).graph.node


def test_an_initializer_that_does_not_fill_its_shape_is_a_damaged_file(tmp_path, capsys):
    """A bit flip in a shape made numpy raise deep inside a pass (found by the 200-copy fuzz)."""
    model = onnx.load(DEFAULT_MODEL)
    model.graph.initializer[0].dims[0] = 10**12
    onnx.save(model, tmp_path / "damaged.onnx")
    code, _, err = analogize(capsys, "convert", tmp_path / "damaged.onnx", "-o", tmp_path / "x.onnx")
    assert code == 2 and "declares" in err and "the file is damaged" in err and len(err.strip().splitlines()) == 1


def test_finetune_refuses_convert_flags_on_a_converted_model(tmp_path, capsys):
    """They shaped chains the model already has, and were ignored without a word; the refusal is evaluate's."""
    converted = tmp_path / "converted.onnx"
    assert analogize(capsys, "convert", DEFAULT_MODEL, "-o", converted, "--bits", "6", "--ep", "0.3")[0] == 0
    for flags, named in ((["--bits", "4", "--ep", "0.1"], "--bits, --ep"), (["--activation", "gelu"], "--activation"),
                         (["--no-clamp", "--weight-range", "unit"], "--no-clamp, --weight-range")):
        code, _, err = analogize(capsys, "finetune", converted, "--data", "digits", "--limit", "50", "--epochs", "1",
                                 "-o", tmp_path / "tuned.onnx", *flags)
        assert code == 2 and err.startswith(f"analogize: error: {named}: a converted model keeps the chains")
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "tuned.onnx").exists()


def test_an_opset_move_that_changes_the_interface_is_refused(tmp_path, capsys):
    """ONNX's converter moves Scan-8 to 9 by dropping the batch axis from the graph's inputs and outputs: the
    converted model took and gave other shapes than the original, exit 0."""
    case = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node", "test_scan_sum")
    code, _, err = analogize(capsys, "convert", os.path.join(case, "model.onnx"), "-o", tmp_path / "x.onnx")
    assert code == 2 and len(err.strip().splitlines()) == 1 and not (tmp_path / "x.onnx").exists()
    assert "changes its interface moving it to 13 (input 'initial' changes its type or shape: FLOAT, 1x2 becomes " \
           "FLOAT, 2)" in err


def _matmul_model(nodes, outputs, opset=17, initializers=None):
    """x (1x4) and the 4x4 weights w, ``nodes`` and the graph outputs ``outputs``."""
    weights = [onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")] if initializers is None \
        else initializers
    data = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])
    graph = onnx.helper.make_graph(nodes, "g", [data], [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                                           None) for name in outputs],
                                   weights)
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])


_MATMUL = onnx.helper.make_node("MatMul", ["x", "w"], ["y"])


@pytest.mark.parametrize("nodes, outputs, problem", [
    ([_MATMUL], ["nothing"], "graph output 'nothing' is produced by no node"),
    ([_MATMUL, onnx.helper.make_node("Relu", ["q"], ["z"])], ["z"], "node Relu reads 'q', which no node"),
    ([_MATMUL, onnx.helper.make_node("Relu", ["x"], ["y"])], ["y"], "tensor 'y' is produced twice"),
    ([onnx.helper.make_node("Add", ["x", "b"], ["a"]), onnx.helper.make_node("MatMul", ["a", "w"], ["b"])], ["b"],
     "the nodes form a cycle"),
])
def test_a_broken_graph_is_refused_before_any_pass(nodes, outputs, problem, tmp_path, capsys):
    path = tmp_path / "broken.onnx"
    onnx.save(_matmul_model(nodes, outputs), path)
    code, _, err = analogize(capsys, "convert", path, "-o", tmp_path / "x.onnx")
    assert code == 2 and problem in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_an_opset_11_graph_with_a_dangling_output_does_not_crash_the_version_converter(tmp_path):
    """ONNX's version converter segfaulted on it (exit 139, no message): run apart so that a crash fails one test."""
    import subprocess
    import sys

    path = tmp_path / "dangling.onnx"
    onnx.save(_matmul_model([_MATMUL], ["nothing"], opset=11), path)
    script = ("import onnx, sys; from analogize.convert import convert; from analogize.errors import AnalogizeError\n"
              "try: convert(onnx.load(sys.argv[1]))\nexcept AnalogizeError as error: print(error)")
    finished = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert finished.returncode == 0 and "graph output 'nothing' is produced by no node" in finished.stdout


def test_a_body_may_read_names_of_the_graph_around_it(tmp_path, capsys):
    """An If branch reads y from the main graph: no problem; a body reading a name nowhere in scope is one."""
    def branch(name, reads):
        return onnx.helper.make_graph([onnx.helper.make_node("Relu", [reads], [name])], name, [],
                                      [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)])

    condition = onnx.helper.make_node("Constant", [], ["c"], value=onnx.helper.make_tensor("", 9, [], [True]))
    for reads, code_expected in (("y", 0), ("nowhere", 2)):
        choose = onnx.helper.make_node("If", ["c"], ["z"], then_branch=branch("t", reads),
                                       else_branch=branch("e", "y"))
        path = tmp_path / f"if_{reads}.onnx"
        onnx.save(_matmul_model([_MATMUL, condition, choose], ["z"]), path)
        code, _, err = analogize(capsys, "convert", path, "-o", tmp_path / f"x_{reads}.onnx")
        assert code == code_expected, err
        assert code == 0 or "node Relu reads 'nowhere'" in err


def _branch(nodes, outputs):
    return onnx.helper.make_graph(nodes, "branch", [], [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT,
                                                                                          [1, 4]) for name in outputs])


@pytest.mark.parametrize("case", ["branch output named as the If's", "branch output listed twice",
                                  "graph output listed twice"])
def test_valid_graphs_that_reuse_names_are_taken(case, tmp_path, capsys):
    """ONNX's checker and ONNX Runtime take these (the review of the structure check found them refused): a branch
    whose own output has the name of the If's output (no cycle), a branch or a graph listing an output twice."""
    # a condition computed from x: ONNX Runtime folds an If on a constant one, and then loses a branch output listed
    # twice (its bug)
    condition = [onnx.helper.make_node("ReduceSum", ["x"], ["sum"], keepdims=0),
                 onnx.helper.make_node("IsNaN", ["sum"], ["nan"]), onnx.helper.make_node("Not", ["nan"], ["c"])]
    if case == "graph output listed twice":
        nodes, outputs = [_MATMUL], ["y", "y"]
    elif case == "branch output named as the If's":
        nodes = [_MATMUL, *condition, onnx.helper.make_node(
            "If", ["c"], ["z"], then_branch=_branch([onnx.helper.make_node("Relu", ["y"], ["z"])], ["z"]),
            else_branch=_branch([onnx.helper.make_node("Neg", ["y"], ["z"])], ["z"]))]
        outputs = ["z"]
    else:
        nodes = [_MATMUL, *condition, onnx.helper.make_node(
            "If", ["c"], ["z1", "z2"], then_branch=_branch([onnx.helper.make_node("Relu", ["y"], ["r"])], ["r", "r"]),
            else_branch=_branch([onnx.helper.make_node("Neg", ["y"], ["n"]), onnx.helper.make_node("Abs", ["y"], ["a"])],
                                ["n", "a"])), onnx.helper.make_node("Add", ["z1", "z2"], ["z"])]
        outputs = ["z"]
    model = _matmul_model(nodes, outputs)
    for output in model.graph.output:
        output.type.tensor_type.shape.dim.add().dim_value = 1
        output.type.tensor_type.shape.dim.add().dim_value = 4
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "valid.onnx"
    onnx.save(model, path)
    code, _, err = analogize(capsys, "convert", path, "-o", tmp_path / "x.onnx", "--no-noise", "--no-quantize",
                             "--no-clamp")
    assert code == 0, err
    onnx.checker.check_model(onnx.load(tmp_path / "x.onnx"), full_check=True)
    if case == "branch output listed twice":  # ONNX Runtime computes it wrongly (garbage in the clean model's z)
        return
    x = np.arange(4, dtype=np.float32).reshape(1, 4) - 1.5
    clean, converted = (ort.InferenceSession(str(file), providers=["CPUExecutionProvider"]).run(None, {"x": x})
                        for file in (path, tmp_path / "x.onnx"))
    assert len(clean) == len(converted) and all(np.array_equal(a, b) for a, b in zip(clean, converted))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("weight_range", ["tensor", "channel"])
def test_weights_without_a_finite_range_are_refused_naming_the_weight(bad, weight_range, tmp_path, capsys):
    """They gave the settings record "max": NaN, which later commands refused as not JSON."""
    weights = np.eye(4, dtype=np.float32)
    weights[2, 1] = bad
    path = tmp_path / "bad_weights.onnx"
    onnx.save(_matmul_model([_MATMUL], ["y"], initializers=[onnx.numpy_helper.from_array(weights, "w")]), path)
    code, _, err = analogize(capsys, "convert", path, "-o", tmp_path / "x.onnx", "--weight-range", weight_range)
    assert code == 2 and "weight 'w' holds NaN or infinite values" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_settings_records_are_strict_json():
    from analogize.passes.model import store_settings

    with pytest.raises(ValueError, match="not JSON compliant"):
        store_settings(onnx.ModelProto(), {"max": math.nan})


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_an_image_folder_file_goes_to_raster_decoders_only(tmp_path, monkeypatch):
    """EPS content under a .png name went to PIL's EPS plugin, which runs Ghostscript on it."""
    from PIL import EpsImagePlugin

    from analogize.data import load_dataset

    consulted = []
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda image: consulted.append(image) or 1 / 0)
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "photo.png").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 4 4\nshowpage\n")
    with pytest.raises(AnalogizeError, match="cannot read image .*photo.png: cannot identify"):
        load_dataset(f"imagefolder:{tmp_path}")
    assert not consulted


def test_an_image_whose_text_chunk_inflates_too_far_is_one_line(tmp_path, capsys):
    import struct
    import zlib

    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0))
    pixels = _png_chunk(b"IDAT", zlib.compress(b"".join(b"\0" + b"\x80" * 4 for _ in range(4))))
    text = _png_chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"a" * 2**24))  # PIL's limit is 1 MB
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + text + pixels +
                                                  _png_chunk(b"IEND", b""))
    code, _, err = analogize(capsys, "evaluate", DEFAULT_MODEL, "--data", f"imagefolder:{tmp_path}")
    assert code == 2 and "cannot read image" in err and "MAX_TEXT_CHUNK" in err and len(err.strip().splitlines()) == 1


def _npy(header: bytes, version: int = 3) -> bytes:
    """A .npy file of format ``version`` with the header text ``header`` (padded as numpy pads it) and no data."""
    padded = header + b" " * (-(12 + len(header) + 1) % 64) + b"\n"
    return b"\x93NUMPY" + bytes([version, 0]) + len(padded).to_bytes(4, "little") + padded


@pytest.mark.parametrize("members, problem", [
    ({"x.npy": _npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), '''")}, "array's header is damaged"),
    ({"x.npy": _npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), '''", version=2)},
     "array's header is damaged"),
    ({"x": b"not an array"}, "its member 'x' is not a .npy array"),  # numpy served it as bytes
    ({"x": _npy(b"{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 100000), }")},
     "claims shape (1000000, 100000)"),  # numpy allocated the 400 GB it claims
])
def test_every_npz_member_is_checked_as_a_npy_array(members, problem, tmp_path, capsys):
    import zipfile

    path = tmp_path / "data.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    code, _, err = analogize(capsys, "evaluate", DEFAULT_MODEL, "--data", f"npz:{path}")
    assert code == 2 and "is not a readable .npz archive" in err and problem in err
    assert len(err.strip().splitlines()) == 1



def _sparse_weights(indices) -> onnx.SparseTensorProto:
    values = onnx.numpy_helper.from_array(np.ones(len(indices), np.float32), "w")
    return onnx.helper.make_sparse_tensor(values, onnx.numpy_helper.from_array(np.array(indices, np.int64), "at"),
                                          [4, 4])


def _short_tensor(name: str) -> onnx.TensorProto:
    """A 4x4 float tensor that stores 4 values."""
    tensor = onnx.numpy_helper.from_array(np.ones(4, np.float32), name)
    tensor.dims[:] = [4, 4]
    return tensor


def _segment() -> onnx.TensorProto:
    tensor = onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    tensor.segment.begin, tensor.segment.end = 0, 8
    return tensor


@pytest.mark.parametrize("make, problem", [
    (lambda: _matmul_model([onnx.helper.make_node("Constant", [], ["w"], value=_short_tensor("cw")), _MATMUL], ["y"],
                           initializers=[]), "tensor 'cw' declares 16 values but holds 4"),
    (lambda: _matmul_model([onnx.helper.make_node("Constant", [], ["w"], sparse_value=_sparse_weights([0, 5, 16])),
                            _MATMUL], ["y"], initializers=[]), "sparse tensor 'w' has an index outside its shape"),
    (lambda: _matmul_model([_MATMUL], ["y"], initializers=[_segment()]), "tensor 'w' is one segment of a tensor"),
    (lambda: _matmul_model([_MATMUL], ["y"], initializers=[
        onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "w"),
        onnx.numpy_helper.from_array(np.eye(4, dtype=np.float32), "")]), "graph 'g' has an initializer without a name"),
])
def test_every_tensor_of_a_model_is_checked_on_load(make, problem, tmp_path, capsys):
    """Constant values, sparse tensors, segments and unnamed initializers went to the passes unchecked (numpy's
    reshape or onnx's 'not supporting loading segments' as a traceback)."""
    path = tmp_path / "model.onnx"
    onnx.save(make(), path)
    code, _, err = analogize(capsys, "convert", path, "-o", tmp_path / "x.onnx")
    assert code == 2 and problem in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_a_sparse_initializer_with_indices_outside_its_shape_is_refused(tmp_path, capsys):
    model = _matmul_model([_MATMUL], ["y"], initializers=[])
    model.graph.sparse_initializer.append(_sparse_weights([[0, 1], [3, 4]]))
    onnx.save(model, tmp_path / "model.onnx")
    code, _, err = analogize(capsys, "evaluate", tmp_path / "model.onnx", "--data", "digits")
    assert code == 2 and "sparse tensor 'w' has an index outside its shape [4, 4]" in err


def test_external_weights_must_fill_their_shape_once_read(tmp_path, capsys):
    """The model's own record of the data's length is the file's to choose: 40 bytes for 16 floats."""
    path = tmp_path / "model.onnx"
    onnx.save(_matmul_model([_MATMUL], ["y"]), path, save_as_external_data=True, location="model.onnx.data",
              size_threshold=0)
    model = onnx.load(path, load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        entry.value = "40" if entry.key == "length" else entry.value
    onnx.save(model, path)
    code, _, err = analogize(capsys, "convert", path, "-o", tmp_path / "x.onnx")
    assert code == 2 and "tensor 'w' declares 16 values but holds 10" in err and len(err.strip().splitlines()) == 1


def test_a_string_bias_keeps_its_layer_digital(tmp_path, capsys):
    """Its range was taken as for a float bias: numpy's 'bad operand type for unary -' as a traceback."""
    data = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4, 4])
    weights = onnx.numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    bias = onnx.helper.make_tensor("b", onnx.TensorProto.STRING, [2], [b"a", b"b"])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Conv", ["x", "w", "b"], ["y"])], "g", [data],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                                   [weights, bias])
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), tmp_path / "m.onnx")
    code, _, err = analogize(capsys, "convert", tmp_path / "m.onnx", "-o", tmp_path / "x.onnx")
    assert code == 2 and "bias is not float32" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("record, problem", [("{bad", "is not JSON"), ("[1]", "must be an object"),
                                             ('{"onnxruntime": 1.2}', "onnxruntime must be a string")])
def test_a_forged_machine_form_record_is_one_line(record, problem, tmp_path, capsys):
    """json.loads read it bare: a traceback, or a KeyError further on."""
    model = convert(onnx.load(DEFAULT_MODEL), bits=6, ep=0.3).model
    model.metadata_props.add(key="analogize.form", value=record)
    onnx.save(model, tmp_path / "m.onnx")
    code, _, err = analogize(capsys, "export", tmp_path / "m.onnx", "--format", "qdq", "-o", tmp_path / "x.onnx")
    assert code == 2 and "the model's analogize.form metadata" in err and problem in err
    assert len(err.strip().splitlines()) == 1


def test_a_sparse_tensor_with_external_indices_is_one_line(tmp_path, monkeypatch):
    """Its indices' bound check read the external file relative to the working directory (or died in a traceback),
    and neither onnx nor ONNX Runtime reads a sparse tensor's external parts: refused in one line."""
    from analogize.model_io import load_model

    indices = onnx.numpy_helper.from_array(np.array([0, 5], np.int64), "S_indices")
    (tmp_path / "indices.bin").write_bytes(indices.raw_data)
    indices.ClearField("raw_data")
    indices.data_location = onnx.TensorProto.EXTERNAL
    indices.external_data.add(key="location", value="indices.bin")
    sparse = onnx.helper.make_sparse_tensor(onnx.numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "S"),
                                            indices, [16])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["S"], ["y"])], "g", [],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [16])],
                                   sparse_initializer=[sparse])
    path = tmp_path / "sparse.onnx"
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    monkeypatch.chdir(tmp_path.parent)
    with pytest.raises(AnalogizeError, match="sparse tensor 'S' keeps its values or indices in an external file"):
        load_model(path)


def test_export_of_a_graph_out_of_order_is_one_line(tmp_path, capsys):
    """ONNX wants nodes in topological order; convert takes such a graph as it is, and export's check of its result
    was a ValidationError traceback."""
    path = tmp_path / "unsorted.onnx"
    onnx.save(_matmul_model([onnx.helper.make_node("Relu", ["y"], ["z"]), _MATMUL], ["z"]), path)
    code, _, err = analogize(capsys, "convert", path, "-o", tmp_path / "c.onnx")
    assert code == 0, err
    code, _, err = analogize(capsys, "export", tmp_path / "c.onnx", "-o", tmp_path / "e.onnx")
    assert code == 2 and "the exported model is not valid ONNX" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "e.onnx").exists()


def test_nested_bodies_are_walked_once_each(monkeypatch):
    """Finding what a body reads from outside walked a body nested n deep n times over (a 100 k-node body under
    30 If levels took 25 s): each graph's names are now taken twice at most, once to check it and once bottom up."""
    from analogize import model_checks

    def value(name):
        return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [4])

    body = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["leaf"])], "leaf", [], [value("leaf")])
    depth = 12
    for level in range(depth):
        other = onnx.helper.make_graph([onnx.helper.make_node("Neg", ["x"], [f"n{level}"])], "other", [],
                                       [value(f"n{level}")])
        body = onnx.helper.make_graph([onnx.helper.make_node("If", ["c"], [f"d{level}"], then_branch=body,
                                                             else_branch=other)], f"d{level}", [], [value(f"d{level}")])
    graph = onnx.helper.make_graph(list(body.node), "g", [value("x"), onnx.helper.make_tensor_value_info(
        "c", onnx.TensorProto.BOOL, [])], [value(f"d{depth - 1}")])
    calls = []
    real = model_checks._names_defined
    monkeypatch.setattr(model_checks, "_names_defined", lambda g: calls.append(g.name) or real(g))
    model_checks.check_graph_structure(graph, "nested")
    graphs = 1 + 2 * depth  # the main graph, and two branches per If
    assert len(calls) <= 2 * graphs  # 181 before


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (numbers and lengths below 128 here: one byte each)."""
    assert number < 16 and len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_initializer_sizes_are_read_off_the_wire_format_as_protobuf_merges_them(tmp_path):
    """The load check reads how many bytes each initializer stores off the file (protobuf copies them out to tell):
    the same names and sizes as protobuf's own parse where the file gives a second graph (merged: its initializers
    follow), a tensor's raw_data twice (the last counts), an initializer of the wrong wire type (an unknown field,
    no initializer); and a tensor whose last raw_data is short is refused by the load, as onnx would read it."""
    from analogize.model_io import load_model
    from analogize.weight_files import initializer_data_sizes

    model = _matmul_model([_MATMUL], ["y"])
    second = onnx.numpy_helper.from_array(np.ones((2, 2), np.float32), "v")
    twice = second.SerializeToString() + _field(9, b"\0" * 12)  # 3 floats of the 4 that [2, 2] declares
    wrong_wire_type = bytes([5 << 3 | 0, 1])  # field 5 (initializer) as a varint
    data = model.SerializeToString() + _field(7, _field(5, twice) + wrong_wire_type)
    parsed = onnx.ModelProto.FromString(data)
    assert [t.name for t in parsed.graph.initializer] == ["w", "v"]
    assert initializer_data_sizes(data) == [(t.name.encode(), len(t.raw_data)) for t in parsed.graph.initializer] \
        == [(b"w", 64), (b"v", 12)]
    (tmp_path / "m.onnx").write_bytes(data)
    with pytest.raises(AnalogizeError, match="tensor 'v' declares 4 values but holds 3"):
        load_model(tmp_path / "m.onnx")
    for cut in (b"", data[:len(data) - 3], b"\xff" * 8):
        assert initializer_data_sizes(cut) in ([], None)


@pytest.mark.parametrize("suffix", [".onnxtxt", ".textproto", ".json"])
def test_a_model_in_a_text_format_loads_as_onnx_load_reads_it(suffix, tmp_path, capsys):
    """onnx.load takes the format from the file's name; reading the bytes for the size check parsed every file as
    binary protobuf, and a model in one of onnx's text formats was refused as unreadable. A damaged one is one
    line, not a parser's traceback."""
    from analogize.model_io import load_model

    model, path = _matmul_model([_MATMUL], ["y"]), tmp_path / f"m{suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # onnxtxt: "experimental"
        onnx.save(model, path)
        loaded, external = load_model(path)
        assert [node.op_type for node in loaded.graph.node] == ["MatMul"] and not external
        assert np.array_equal(*(onnx.numpy_helper.to_array(m.graph.initializer[0]) for m in (loaded, model)))
        code, _, err = analogize(capsys, "convert", path, "-o", tmp_path / "out.onnx")
        assert code == 0, err
        path.write_text(path.read_text()[:-12])
        with pytest.raises(AnalogizeError, match="is not a readable ONNX model") as refused:
            load_model(path)
    assert len(str(refused.value).splitlines()) == 1
