"""Lost files (issue 17): a disk that fills up and a process killed while writing. A command that fails leaves
none of its outputs (not the first few) and no staging file, says so in one line, and leaves its inputs as they
were; a killed one leaves nothing under an output's name, and the next write of that output removes its staging
directory."""
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from analogize import model_io
from analogize.errors import AnalogizeError
from analogize.model_io import atomic_output, outputs_together, save_model
from conftest import DEFAULT_MODEL, ROOT
from test_cli import analogize

LIMITED = """import resource, sys
from analogize.cli import main
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
sys.exit(main(sys.argv[2:]))
"""
SHORT_TRAINING = ("--data", "digits", "--limit", "50", "--epochs", "1", "--repeats", "1", "--quiet")


def analogize_process(folder, *argv, file_size_limit=None, **options):
    """analogize in a process of its own in ``folder``; with ``file_size_limit`` no file it writes may grow past
    that many bytes (RLIMIT_FSIZE: a write beyond it fails as on a full disk)."""
    command = ([sys.executable, "-c", LIMITED, str(file_size_limit)] if file_size_limit is not None
               else [sys.executable, "-m", "analogize"])
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([*command, *map(str, argv)], cwd=folder, env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **options)


def contents(folder: Path) -> dict:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
            for path in folder.iterdir()}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    shutil.copy(DEFAULT_MODEL, folder / "model.onnx")
    assert analogize_process(folder, "convert", "model.onnx", "-o", "converted.onnx", "--bits", "6", "--ep",
                             "0.3").wait(timeout=300) == 0
    return folder


@pytest.mark.parametrize("argv, limit, failing", [
    (["convert", "model.onnx", "-o", "out.onnx"], 1000, "out.onnx"),
    # the JSON and the CSV fit, the plot written after them does not: they must go too
    (["evaluate", "model.onnx", "--data", "digits", "--limit", "20", "--repeats", "1", "--quiet", "--json", "r.json",
      "--csv", "r.csv", "--plot", "r.png"], 20_000, "r.png"),
    (["export", "converted.onnx", "-o", "e.onnx", "--spec", "e.spec.json"], 1000, "e.onnx"),
    # torch wrote checkpoints itself, and a full disk was its RuntimeError: a traceback
    (["finetune", "converted.onnx", *SHORT_TRAINING, "-o", "t.onnx", "--json", "t.json", "--checkpoint-dir", "."],
     1000, "finetune-checkpoint.pt"),
], ids=lambda value: value[0] if isinstance(value, list) else None)
def test_a_full_disk_leaves_one_line_and_no_file(argv, limit, failing, inputs, tmp_path):
    for name in ("model.onnx", "converted.onnx"):
        shutil.copy(inputs / name, tmp_path / name)
    before = contents(tmp_path)
    process = analogize_process(tmp_path, *argv, file_size_limit=limit)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 2 and err == f"analogize: error: cannot write {failing}: File too large\n", err
    assert contents(tmp_path) == before  # inputs as they were; no output, no staging directory


def test_a_later_output_that_cannot_be_written_takes_the_earlier_ones_with_it(inputs, tmp_path, capsys,
                                                                              monkeypatch):
    """export writes the model and then its spec, finetune the tuned model and then its report: a spec or report
    that fails to write left the model behind."""
    def full_disk(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    before = contents(inputs)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(Path, "write_text", full_disk)  # what the JSON outputs are written with
    for argv, failing in ((["export", inputs / "converted.onnx", "-o", "e.onnx", "--spec", "e.spec.json"],
                           "e.spec.json"),
                          (["finetune", inputs / "converted.onnx", *SHORT_TRAINING, "-o", "t.onnx", "--json", "t.json"],
                           "t.json")):
        code, _, err = analogize(capsys, *argv)
        assert code == 2 and err == f"analogize: error: cannot write {failing}: No space left on device\n"
        assert not list(tmp_path.iterdir())
    assert contents(inputs) == before


def big_model(path: Path, megabytes: int) -> None:
    weights = np.ones((1024, megabytes * 256), np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1024])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", megabytes * 256])],
                              [numpy_helper.from_array(weights, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_a_process_killed_while_writing_leaves_nothing_under_the_output_name(tmp_path):
    big_model(tmp_path / "big.onnx", 128)
    process = analogize_process(tmp_path, "convert", "big.onnx", "-o", "out.onnx", "--bits", "6",
                                start_new_session=True)
    deadline = time.monotonic() + 300
    while not [p for p in tmp_path.iterdir() if p.name.startswith(".out.onnx.staging-")]:
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.002)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert not (tmp_path / "out.onnx").exists()
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert left and all(name.startswith(".out.onnx.staging-") for name in left)
    again = analogize_process(tmp_path, "convert", DEFAULT_MODEL, "-o", "out.onnx")
    assert again.wait(timeout=300) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "out.onnx"]  # the killed run's staging went


TRAINING_ONCE = ("--epochs", "1", "--repeats", "1", "--limit", "20", "--quiet")


@pytest.fixture
def files_read(tmp_path, monkeypatch):
    """A folder of what commands read, as the working directory: a model, one that keeps its weights in
    b.onnx.data, npz data, a plan, and an export with its spec."""
    shutil.copy(DEFAULT_MODEL, tmp_path / "m.onnx")
    shutil.copy(DEFAULT_MODEL, tmp_path / "e.onnx")
    onnx.save(onnx.load(DEFAULT_MODEL), tmp_path / "ext.onnx", save_as_external_data=True, location="b.onnx.data",
              size_threshold=0)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((20, 1, 8, 8), np.float32), y=np.arange(20) % 10)
    (tmp_path / "plan.json").write_text('{"format": "analogize.plan", "version": 1, "layers": {}}')
    (tmp_path / "e.json").write_text("{}")
    os.link(tmp_path / "m.onnx", tmp_path / "hard-link.onnx")
    os.link(tmp_path / "ext.onnx", tmp_path / "ext-link.onnx")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("argv, replaced", [
    (["evaluate", "m.onnx", "--data", "npz:d.npz", "--json", "d.npz"], "--data"),
    (["evaluate", "m.onnx", "--data", "digits", "--calibrate", "npz:d.npz", "--csv", "d.npz"], "--calibrate"),
    (["evaluate", "m.onnx", "--data", "digits", "--plan", "plan.json", "--json", "plan.json"], "--plan"),
    (["evaluate", "m.onnx", "--data", "digits", "--json", "hard-link.onnx"], "the model"),
    (["convert", "m.onnx", "--calibrate", "npz:d.npz", "-o", "d.npz"], "--calibrate"),
    (["convert", "m.onnx", "--plan", "plan.json", "-o", "plan.json"], "--plan"),
    (["sensitivity", "m.onnx", "--data", "npz:d.npz", "--csv", "d.npz"], "--data"),
    (["plan", "m.onnx", "--data", "npz:d.npz", "--target-agreement", "0.5", "-o", "d.npz"], "--data"),
    (["finetune", "m.onnx", "--data", "digits", "--eval-data", "npz:d.npz", *TRAINING_ONCE, "-o", "t.onnx",
      "--json", "d.npz"], "--eval-data"),
    (["finetune", "m.onnx", "--data", "digits", *TRAINING_ONCE, "-o", "hard-link.onnx"], "the model"),
    (["train", "convnet", "--data", "npz:d.npz", *TRAINING_ONCE, "-o", "d.npz"], "--data"),
    (["sweep", "cells", "--data", "npz:d.npz", "--activation", "relu", "--seeds", "1", *TRAINING_ONCE, "--json",
      "d.npz"], "--data"),
    (["export", "m.onnx", "--verify-data", "npz:d.npz", "--limit", "5", "-o", "d.npz"], "--verify-data"),
    (["rebuild", "e.onnx", "--spec", "e.json", "-o", "e.json"], "--spec"),
    (["analyze", "effective-bits", "--json", "f.svg", "--plot", "f.svg"], "--json"),
    # the model keeps its weights in b.onnx.data, which writing b.onnx (and its weights) would replace
    (["convert", "ext.onnx", "-o", "b.onnx"], "the model's weight file b.onnx.data"),
    (["fast", "ext.onnx", "-o", "b.onnx"], "the model's weight file b.onnx.data"),
    (["export", "ext.onnx", "-o", "b.onnx"], "the model's weight file b.onnx.data"),
    (["finetune", "ext.onnx", "--data", "digits", *TRAINING_ONCE, "-o", "b.onnx"], "the model's weight file"),
    (["evaluate", "ext.onnx", "--data", "digits", "--json", "b.onnx.data"], "the model's weight file"),
    # the weight file written beside a model is an output too
    (["finetune", "m.onnx", "--data", "digits", *TRAINING_ONCE, "-o", "t.onnx", "--json", "t.onnx.data"],
     "-o's weight file"),
    # --overwrite lets -o replace the model, never its weight files (nor its weight file the model)
    (["convert", "ext.onnx", "--overwrite", "-o", "b.onnx.data"], "the model's weight file"),
    (["fast", "ext.onnx", "--overwrite", "-o", "b.onnx.data"], "the model's weight file"),
    (["export", "ext.onnx", "--overwrite", "-o", "b.onnx.data"], "the model's weight file"),
    (["convert", "ext.onnx", "--overwrite", "-o", "b.onnx"], "the model's weight file b.onnx.data"),
    # a hard link to the model is not the model: renamed over, it leaves the model reading a replaced weight file
    (["fast", "ext.onnx", "--overwrite", "-o", "ext-link.onnx"], "the model"),
], ids=lambda value: " ".join(value[:1] + value[-2:]) if isinstance(value, list) else None)
def test_an_output_never_replaces_a_file_the_command_reads(argv, replaced, files_read, capsys):
    """Issue 17's guard knew only MODEL: data, calibration and verification npz files, plans, specs, a model's
    external weights and hard links to inputs were written over. Refused in one line before any work."""
    before = contents(files_read)
    code, _, err = analogize(capsys, *argv)
    assert code == 2 and f"would replace {replaced}" in err and len(err.splitlines()) == 1, err
    assert contents(files_read) == before


@pytest.mark.parametrize("argv", [
    ["evaluate", "m.onnx", "--data", "imagefolder:images", "--json", "images/cat/0.png"],
    ["evaluate", "m.onnx", "--data", "imagefolder:images", "--csv", "images/results.csv"],
    ["convert", "m.onnx", "--calibrate", "imagefolder:images", "-o", "images/cat/m.onnx"],
    ["export", "e.onnx", "--verify-data", "imagefolder:./images/../images", "-o", "images/e.onnx"],
])
def test_an_output_is_never_written_inside_a_folder_the_command_reads(argv, files_read, capsys):
    """Image folders were left out of the guard: -o inside one replaced an image, or left a file among them."""
    from PIL import Image

    (files_read / "images" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(files_read / "images" / "cat" / "0.png")
    def everything():
        return {str(path.relative_to(files_read)): path.read_bytes() if path.is_file() else None
                for path in files_read.rglob("*")}

    before = everything()
    code, _, err = analogize(capsys, *argv)
    assert code == 2 and "would be written inside" in err and "choose a path outside it" in err, err
    assert len(err.splitlines()) == 1 and everything() == before


def test_overwrite_replaces_a_model_with_its_weight_file(files_read, capsys):
    """convert --overwrite -o MODEL, where MODEL keeps its weights in MODEL.data: the model and its weight file are
    replaced together by the converted model and the weights written beside it."""
    onnx.save(onnx.load(DEFAULT_MODEL), "own.onnx", save_as_external_data=True, location="own.onnx.data",
              size_threshold=0)
    code, _, err = analogize(capsys, "convert", "own.onnx", "--overwrite", "-o", "own.onnx", "--no-noise",
                             "--no-quantize", "--no-clamp")
    assert code == 0, err
    written = onnx.load("own.onnx")
    assert any(entry.key == "analogize.settings" for entry in written.metadata_props)
    expected = {t.name: numpy_helper.to_array(t) for t in onnx.load(DEFAULT_MODEL).graph.initializer}
    assert all(np.array_equal(numpy_helper.to_array(t), expected[t.name]) for t in written.graph.initializer
               if t.name in expected)


def test_a_model_with_external_weights_is_written_again_where_it_lies(files_read, capsys):
    """onnx refused to write external weights whose file name existed in the working directory (not the model's):
    the second convert into the directory it runs in failed."""
    weights = {t.name: numpy_helper.to_array(t) for t in onnx.load(DEFAULT_MODEL).graph.initializer}
    for _ in range(2):
        code, _, err = analogize(capsys, "convert", "ext.onnx", "-o", "o.onnx", "--no-noise", "--no-quantize",
                                 "--no-clamp")
        assert code == 0, err
    written = onnx.load("o.onnx")
    assert {t.name: numpy_helper.to_array(t) for t in written.graph.initializer if t.name in weights}.keys() \
        == weights.keys()
    assert all(np.array_equal(numpy_helper.to_array(t), weights[t.name]) for t in written.graph.initializer
               if t.name in weights)
    assert onnx.load("ext.onnx") and (files_read / "o.onnx.data").is_file()


@pytest.mark.parametrize("flag_and_command", [
    ("-o", ["convert", "m.onnx"]),
    ("--json", ["evaluate", "m.onnx", "--data", "digits"]),
    ("-o", ["report", "e.json"]),
], ids=lambda value: value[1][0])
def test_an_output_onto_a_pipe_a_device_or_a_link_is_refused(flag_and_command, files_read, capsys):
    """The atomic rename replaced whatever was at the output's name: a FIFO, a device (as root, -o /dev/null
    destroyed /dev/null) or a symbolic link became a regular file. A link to a regular file is refused too: the
    user says which of the two is meant."""
    flag, command = flag_and_command
    os.mkfifo("fifo")
    os.symlink("fifo", "link-to-fifo")
    Path("target.html").write_text("kept")
    os.symlink("target.html", "link-to-file.html")
    for target, problem in (("fifo", "not a regular file"), ("link-to-fifo", "symbolic link"),
                            ("link-to-file.html", "symbolic link")):
        code, _, err = analogize(capsys, *command, flag, target)
        assert code == 2 and problem in err and len(err.splitlines()) == 1, err
    assert Path("fifo").is_fifo() and Path("link-to-fifo").is_symlink() and Path("link-to-file.html").is_symlink()
    assert Path("target.html").read_text() == "kept"


def test_the_library_refuses_to_write_over_a_pipe(files_read):
    os.mkfifo("fifo")
    with pytest.raises(AnalogizeError, match="not a regular file"):
        save_model(onnx.load(DEFAULT_MODEL), "fifo")
    assert Path("fifo").is_fifo()


@pytest.mark.parametrize("argv", [
    ["convert", "m.onnx", "-o", "-"],
    ["export", "m.onnx", "-o", "x.onnx", "--spec", "-"],
    ["evaluate", "m.onnx", "--data", "digits", "--csv", "-"],
    ["finetune", "m.onnx", "--data", "digits", *TRAINING_ONCE, "-o", "-"],
    ["merge", "e.json", "-o", "m.json", "--csv", "-"],
], ids=lambda argv: f"{argv[0]} {argv[-2]} -")
def test_dash_is_stdout_for_json_outputs_only(argv, files_read, capsys):
    """-o - wrote a file named '-'; '-' is stdout for the JSON outputs (--json, merge's and plan's -o), and refused
    for every other output, which is no text to print."""
    code, _, err = analogize(capsys, *argv)
    assert code == 2 and "'-' (stdout) is taken only by the JSON outputs" in err and len(err.splitlines()) == 1, err
    assert not Path("-").exists()


def test_two_outputs_to_stdout_are_refused(files_read, capsys):
    code, out, err = analogize(capsys, "plan", "m.onnx", "--data", "digits", "--target-agreement", "0.5", "-o", "-",
                               "--json", "-")
    assert code == 2 and not out and err == ("analogize: error: -o and --json would both write to stdout ('-'); "
                                             "send one to a file\n")


def test_plan_writes_the_plan_alone_to_stdout(files_read, capsys):
    """plan -o - printed the plan and then its table into the same stream: no longer JSON."""
    code, out, err = analogize(capsys, "plan", "m.onnx", "--data", "digits", "--limit", "20", "--target-agreement",
                               "0.5", "--repeats", "1", "--verify-repeats", "1", "-q", "-o", "-")
    assert code == 0, err
    plan = json.loads(out)
    assert plan["format"] == "analogize.plan" and plan["layers"] and not Path("-").exists()


@pytest.mark.parametrize("mechanism", ["exchange", "rename"])
@pytest.mark.parametrize("failure, raised", [(OSError(errno.EACCES, os.strerror(errno.EACCES)), AnalogizeError),
                                             (KeyboardInterrupt(), KeyboardInterrupt)])
def test_outputs_that_fail_to_move_in_take_the_moved_ones_with_them(failure, raised, mechanism, tmp_path,
                                                                    monkeypatch):
    """Outputs written together: if a later one cannot be moved into place (or the user interrupts), the earlier
    ones go again (all or nothing), the later one's old file stays as it was, and no staging is left. Where names
    can be swapped (Linux), a file an earlier output had replaced comes back; where outputs go in by rename, it is
    gone."""
    if mechanism == "exchange" and model_io._renameat2 is None:
        pytest.skip("this system cannot swap two names (renameat2)")
    first, fresh, second = tmp_path / "first.json", tmp_path / "fresh.json", tmp_path / "second.json"
    first.write_text("old first")
    second.write_text("old second")
    real_exchange, real_replace = model_io._exchange, os.replace

    def failing_onto_second(real):
        def move(source, target):
            if Path(target) == second:
                raise failure
            return real(source, target)
        return move

    def write_all():
        with outputs_together():
            for path in (first, fresh, second):
                with atomic_output(path) as staged:
                    staged.write_text("new")

    if mechanism == "exchange":
        monkeypatch.setattr(model_io, "_exchange", failing_onto_second(real_exchange))
    else:
        monkeypatch.setattr(model_io, "_renameat2", None)
        monkeypatch.setattr(os, "replace", failing_onto_second(real_replace))
    with pytest.raises(raised, match="cannot write .*second.json: Permission denied" if raised is AnalogizeError
                       else None):
        write_all()
    left = {path.name: path.read_text() for path in tmp_path.iterdir()}
    assert left == ({"first.json": "old first", "second.json": "old second"} if mechanism == "exchange"
                    else {"second.json": "old second"})
    monkeypatch.undo()
    write_all()
    assert {path.name: path.read_text() for path in tmp_path.iterdir()} == \
        {"first.json": "new", "fresh.json": "new", "second.json": "new"}


def test_an_output_that_became_a_directory_is_refused_and_kept(tmp_path, monkeypatch):
    """The final path is checked before the write; one that is a directory by the time the output goes in (the
    swap of names would take any kind of file) is swapped back and refused, and nothing inside it is removed."""
    if model_io._renameat2 is None:
        pytest.skip("this system cannot swap two names (renameat2)")
    target = tmp_path / "out.json"
    monkeypatch.setattr(model_io, "check_output_target", lambda path: None)  # it changes after the check
    target.mkdir()
    (target / "kept.txt").write_text("mine")
    with pytest.raises(AnalogizeError, match="out.json: it is no longer a regular file"):
        with atomic_output(target) as staged:
            staged.write_text("new")
    assert (target / "kept.txt").read_text() == "mine" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_an_output_name_too_long_is_one_line_from_the_library(tmp_path):
    """save_model's check of the output read the name with is_symlink, which raised ENAMETOOLONG as a traceback."""
    with pytest.raises(AnalogizeError, match="cannot write .*: File name too long"):
        save_model(onnx.load(DEFAULT_MODEL), tmp_path / ("a" * 300 + ".onnx"))
    assert not list(tmp_path.iterdir())


def test_weight_files_are_read_off_the_wire_format_as_onnx_finds_them(tmp_path):
    """The guard reads where a model keeps its weights without parsing it (analogize.weight_files): the same files
    onnx's own walk finds, for weights in a subfolder, in an If branch and in a Constant node; none for a file that
    is no model (cut short, empty, random bytes)."""
    from analogize.weight_files import external_weight_files

    def tensor(name, shape):
        return numpy_helper.from_array(np.arange(np.prod(shape), dtype=np.float32).reshape(shape), name)

    branch = helper.make_graph([helper.make_node("Add", ["y", "b"], ["z"])], "then", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4])], [tensor("b", [4])])
    nodes = [helper.make_node("Constant", [], ["k"], value=tensor("k", [4, 4])),
             helper.make_node("MatMul", ["x", "k"], ["m"]), helper.make_node("MatMul", ["m", "w"], ["y"]),
             helper.make_node("Constant", [], ["c"], value=helper.make_tensor("c", TensorProto.BOOL, [], [True])),
             helper.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=branch)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])], [tensor("w", [4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    tensors = [item for item in onnx.external_data_helper._get_all_tensors(model) if item.name != "c"]
    assert len(tensors) == 4  # w, k, and b in each branch
    (tmp_path / "weights").mkdir()
    for index, item in enumerate(tensors):
        onnx.external_data_helper.set_external_data(item, f"weights/part{index % 3}.bin")
    onnx.external_data_helper.write_external_data_tensors(model, str(tmp_path))
    onnx.save(model, tmp_path / "m.onnx")
    expected = sorted({tmp_path / entry.value for item in onnx.external_data_helper._get_all_tensors(onnx.load(
        tmp_path / "m.onnx", load_external_data=False)) for entry in item.external_data if entry.key == "location"})
    assert len(expected) == 3 and external_weight_files(tmp_path / "m.onnx") == expected
    data = (tmp_path / "m.onnx").read_bytes()
    for name, content in (("cut.onnx", data[:len(data) // 2]), ("empty.onnx", b""),
                          ("random.onnx", np.random.default_rng(0).bytes(4096))):
        (tmp_path / name).write_bytes(content)
        assert external_weight_files(tmp_path / name) == []


def test_a_failed_swap_back_keeps_what_it_took_and_puts_back_a_replaced_file(tmp_path, monkeypatch):
    """Where the final path is gone when a failing command puts back the file it replaced, the file is renamed
    in; and a directory a swap took from a final path (a race) is never removed with the staging directory."""
    if model_io._renameat2 is None:
        pytest.skip("this system cannot swap two names (renameat2)")
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text("old first")
    real_exchange = model_io._exchange

    def failing_onto_second(source, target):
        if Path(target) == second:
            first.unlink()  # someone removed the final path meanwhile: swapping back fails
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return real_exchange(source, target)

    monkeypatch.setattr(model_io, "_exchange", failing_onto_second)
    with pytest.raises(AnalogizeError, match="cannot write .*second.json"):
        with outputs_together():
            for path in (first, second):
                with atomic_output(path) as staged:
                    staged.write_text("new")
    assert {path.name: path.read_text() for path in tmp_path.iterdir()} == {"first.json": "old first"}

    staging = tmp_path / ".staging"
    (staging / "taken").mkdir(parents=True)
    (staging / "taken" / "kept.txt").write_text("mine")
    (staging / "stray.tmp").write_text("a writer's")
    model_io._clear_staging(staging, [(staging / "taken", tmp_path / "out")])
    assert (staging / "taken" / "kept.txt").read_text() == "mine" and not (staging / "stray.tmp").exists()


def test_undoing_a_commit_goes_on_past_a_final_path_that_became_a_directory(tmp_path, monkeypatch):
    """Where a final path became a directory while a failing commit ran, putting its file back fails: the undo
    must still put back the files replaced before it (they were deleted with the staging directories, their new
    versions left in place) and end in the one-line error, not an IsADirectoryError."""
    if model_io._renameat2 is None:
        pytest.skip("this system cannot swap two names (renameat2)")
    a, b, c = (tmp_path / f"{name}.json" for name in "abc")
    for path in (a, b, c):
        path.write_text(f"old {path.name}")
    real_exchange = model_io._exchange

    def racing(source, target):
        if Path(target) == c and Path(source).parent.name.startswith(".c.json"):
            b.unlink()
            b.mkdir()  # someone's folder at b.json now
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_exchange(source, target)

    monkeypatch.setattr(model_io, "_exchange", racing)
    with pytest.raises(AnalogizeError, match="cannot write .*c.json"):
        with outputs_together():
            for path in (a, b, c):
                with atomic_output(path) as staged:
                    staged.write_text("new")
    assert a.read_text() == "old a.json" and c.read_text() == "old c.json" and b.is_dir()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a.json", "b.json", "c.json"]


def test_abandoned_staging_is_removed_but_for_folders_in_it(tmp_path):
    """A killed process's staging directory goes with the next write of the same output, its files with it; a
    folder in it (one a swap of names took from a final path, which the error named) stays."""
    import socket

    abandoned = tmp_path / f".out.json.staging-{socket.gethostname()}-999999999-abc"
    (abandoned / "folder").mkdir(parents=True)
    (abandoned / "folder" / "kept.txt").write_text("mine")
    (abandoned / "out.json").write_text("half")
    left = tmp_path / f".out.json.staging-{socket.gethostname()}-999999998-def"
    left.mkdir()
    (left / "out.json").write_text("half")
    with atomic_output(tmp_path / "out.json") as staged:
        staged.write_text("new")
    assert (abandoned / "folder" / "kept.txt").read_text() == "mine" and not (abandoned / "out.json").exists()
    assert not left.exists() and (tmp_path / "out.json").read_text() == "new"
