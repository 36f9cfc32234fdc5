"""Lost files (issue 17): a disk that fills up and a process killed while writing. A command that fails leaves
none of its outputs (not the first few) and no staging file, says so in one line, and leaves its inputs as they
were; a killed one leaves nothing under an output's name, and the next write of that output removes its staging
directory."""
import errno
import hashlib
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

from analogize.errors import AnalogizeError
from analogize.model_io import atomic_output, outputs_together
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


def test_outputs_that_fail_to_move_in_put_back_the_files_they_replaced(tmp_path, monkeypatch):
    """Outputs written together replace files already there; if a later one cannot be moved into place, the
    earlier ones are taken back and the files they replaced are restored as they were, with no staging left."""
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text("old first")
    second.write_text("old second")
    real_replace = os.replace

    def replace_failing_onto_second(source, target):
        if Path(target) == second and Path(source).name == second.name:  # the new file, not the old one back
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        return real_replace(source, target)

    def write_both():
        with outputs_together():
            for path in (first, second):
                with atomic_output(path) as staged:
                    staged.write_text("new")

    monkeypatch.setattr(os, "replace", replace_failing_onto_second)
    with pytest.raises(AnalogizeError, match="cannot write .*second.json: Permission denied"):
        write_both()
    assert (first.read_text(), second.read_text()) == ("old first", "old second")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.json", "second.json"]
    monkeypatch.setattr(os, "replace", real_replace)
    write_both()
    assert (first.read_text(), second.read_text()) == ("new", "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.json", "second.json"]
