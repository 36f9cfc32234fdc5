"""--device: the device names, ONNX Runtime's providers as sessions ask for them (a CPU session stands in for the
GPU where the tests have none), and the one-line refusals when CUDA is asked for and absent."""
import json
import os
import subprocess
import sys

import click
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from analogize import convert
from analogize.cli import main
from analogize.devices import device_kind, gpu_index
from analogize.errors import AnalogizeError
from analogize.evaluate import engine
from analogize.evaluate.engine import Grid, evaluate
from analogize.runtime import sessions
from analogize.training.finetune import FinetuneOptions
from conftest import DEFAULT_MODEL, ROOT

CUDA_FIRST = [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]


def cuda_usable() -> bool:
    try:
        sessions.check_cuda_usable("cuda")
        return True
    except AnalogizeError:
        return False


@pytest.mark.parametrize("name, index", [("cpu", None), ("cuda", 0), ("cuda:0", 0), ("cuda:3", 3)])
def test_device_names(name, index):
    assert gpu_index(name) == index
    assert device_kind(name) == ("cpu" if index is None else "cuda")


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:-1", "cuda:x", "mps", "", None])
def test_other_device_names_are_refused_in_one_line(name):
    with pytest.raises(AnalogizeError, match="unknown device .*: give cpu, cuda or cuda:N"):
        gpu_index(name)


class PretendCuda:
    """A CPU session that reports the providers it was asked for as started, as a GPU machine would: what the
    package asks ONNX Runtime for, checked without a GPU. ``started`` empties the list a session reports."""

    asked: list = []
    started = True

    def __init__(self, model, options=None, providers=None):
        PretendCuda.asked.append(providers)
        PretendCuda.model = model
        self.providers = [p if isinstance(p, str) else p[0] for p in providers] if self.started else [
            "CPUExecutionProvider"]
        self.session = REAL_SESSION(model, options, providers=["CPUExecutionProvider"])

    def get_providers(self):
        return self.providers

    def __getattr__(self, name):
        return getattr(self.session, name)


REAL_SESSION = ort.InferenceSession


@pytest.fixture
def pretend_cuda(monkeypatch):
    monkeypatch.setattr(ort, "InferenceSession", PretendCuda)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(sessions, "_USABLE_GPUS", set())
    monkeypatch.setattr(PretendCuda, "asked", [])
    monkeypatch.setattr(PretendCuda, "started", True)
    libraries = []
    real_options = sessions.session_options
    monkeypatch.setattr(sessions, "session_options", lambda threads, library, *rest: (
        libraries.append(library), real_options(threads, library, *rest))[1])
    return libraries


@pytest.fixture(scope="module")
def noisy():
    return convert(onnx.load(DEFAULT_MODEL), bits=6, ep=0.3, seed=5).model


def test_cuda_sessions_ask_for_the_cuda_provider_first_with_the_cuda_kernels(pretend_cuda, noisy, monkeypatch):
    asked_for, real = [], sessions.native_library_path
    monkeypatch.setattr(sessions, "native_library_path", lambda cuda=False: asked_for.append(cuda) or real(cuda=cuda))
    monkeypatch.setattr(sessions, "blocked_layout_model", lambda *a: pytest.fail("the blocked layout is the CPU's"))
    session = sessions.create_session(noisy, device="cuda:1")
    assert PretendCuda.asked[-1] == CUDA_FIRST and session.get_providers()[0] == "CUDAExecutionProvider"
    assert asked_for[0] is True and pretend_cuda[-1] == sessions.available_native_library(cuda=True)
    assert any(node.op_type == "FusedChain" for node in onnx.load_from_string(PretendCuda.model).graph.node)


def test_cpu_sessions_ask_for_the_cpu_provider_alone(pretend_cuda, noisy):
    sessions.create_session(noisy)
    assert PretendCuda.asked and all(providers == ["CPUExecutionProvider"] for providers in PretendCuda.asked)


def test_without_the_cuda_library_the_cpu_kernels_serve_a_gpu_session_said_once(pretend_cuda, noisy, monkeypatch,
                                                                                  capsys):
    real = sessions.native_library_path

    def cpu_only(cuda=False):
        if cuda:
            raise AnalogizeError("no CUDA compiler (nvcc) found to build the CUDA kernels")
        return real()

    monkeypatch.setattr(sessions, "native_library_path", cpu_only)
    monkeypatch.setattr(sessions, "_NATIVE_UNAVAILABLE", {})
    x = np.random.default_rng(0).uniform(0, 1, (4, 1, 8, 8)).astype(np.float32)
    for _ in range(2):
        session = sessions.create_session(noisy, device="cuda")
        assert session.run(None, {"input": x})[0].shape == (4, 10)
    assert pretend_cuda[-1] == real()
    assert capsys.readouterr().err.count("native CUDA kernels unavailable") == 1
    assert sessions.kernels_in_use() == "native"  # the CPU kernels draw the CUDA kernels' streams


def test_a_silent_fallback_to_the_cpu_is_refused(pretend_cuda, noisy, monkeypatch):
    monkeypatch.setattr(PretendCuda, "started", False)
    with pytest.raises(AnalogizeError, match="^--device cuda: ONNX Runtime's CUDA provider does not start here"):
        sessions.create_session(noisy, device="cuda")
    sessions._USABLE_GPUS.add(0)  # the probe passed, the model's own session fell back
    with pytest.raises(AnalogizeError, match="the session started without it.*or use --device cpu"):
        sessions.create_session(noisy, device="cuda")


def test_an_onnxruntime_without_cuda_is_refused_in_one_line(monkeypatch, noisy):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(sessions, "_USABLE_GPUS", set())
    with pytest.raises(AnalogizeError, match="has no CUDA execution provider; pip install onnxruntime-gpu"):
        sessions.create_session(noisy, device="cuda")


def test_onnxruntime_s_reason_is_read_off_its_log():
    logged = ["\x1b[0;93m2026-01-01 [W:onnxruntime:Default, x.cc:1 f] No registered plugin EP device found\x1b[m",
              "\x1b[1;31m2026-01-01 [E:onnxruntime:Default, y.cc:2 g] /src/y.cc:3 Get() [ONNXRuntimeError] : 1 : "
              "FAIL : Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: "
              "cannot open shared object file: No such file or directory\x1b[m"]
    assert sessions._first_cause(logged) == "libcublasLt.so.13: cannot open shared object file: No such file or " \
                                            "directory"
    assert sessions._first_cause(logged[:1]) == "No registered plugin EP device found"
    assert sessions._first_cause([]) == "ONNX Runtime gave no reason"
    # with ONNX Runtime's log at errors only (the CLI on --device cuda), its Python layer's notice is what is left
    fallback = ["*************** EP Error ***************",
                "EP Error [ONNXRuntimeError] : 1 : FAIL : CUDA failure 101: invalid device ordinal when using "
                "[('CUDAExecutionProvider', {'device_id': 3}), 'CPUExecutionProvider']",
                "Falling back to ['CPUExecutionProvider'] and retrying.", "****************************************"]
    assert sessions._first_cause(fallback) == "CUDA failure 101: invalid device ordinal"
    assert sessions._first_cause(logged[:1] + fallback) == "CUDA failure 101: invalid device ordinal"


def test_cuda_here_is_used_or_refused_in_one_line_never_a_cpu_session(noisy):
    """On this machine as it is: a GPU session, or one line saying why there is none."""
    try:
        session = sessions.create_session(noisy, device="cuda")
    except AnalogizeError as error:
        assert "\n" not in str(error) and str(error).endswith("or use --device cpu")
    else:
        assert session.get_providers()[0] == "CUDAExecutionProvider"


def test_evaluate_runs_every_session_on_the_device_its_workers_too(pretend_cuda, noisy, monkeypatch):
    class InProcessPool:
        """The worker pool run in this process, so that its sessions are seen here."""

        def __init__(self, workers, mp_context, initializer, initargs):
            initializer(*initargs)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def submit(self, function, *args):
            from concurrent.futures import Future

            future = Future()
            future.set_result(function(*args))
            return future

    monkeypatch.setattr(engine, "ProcessPoolExecutor", InProcessPool)
    digits = engine.model_feeds("digits", noisy, limit=40)
    result = evaluate(noisy, digits, Grid(bits=(4, 6), repeats=1), workers=2, device="cuda:1")
    assert result["device"] == "cuda" and len(result["cells"]) == 2
    assert PretendCuda.asked and all(providers == CUDA_FIRST for providers in PretendCuda.asked)


def test_the_python_api_refuses_unknown_devices(noisy):
    digits = engine.model_feeds("digits", noisy, limit=16)
    with pytest.raises(AnalogizeError, match="unknown device 'gpu'"):
        evaluate(noisy, digits, device="gpu")
    with pytest.raises(AnalogizeError, match="unknown device 'gpu'"):
        FinetuneOptions(device="gpu").check()


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a CUDA GPU here")
def test_torch_without_cuda_is_one_line():
    with pytest.raises(AnalogizeError, match=r"^--device cuda:1: torch .* sees no CUDA GPU.*or --device cpu$"):
        FinetuneOptions(device="cuda:1").check()


def analogize(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [["evaluate", DEFAULT_MODEL, "--data", "digits"],
                                     ["finetune", DEFAULT_MODEL, "--data", "digits", "-o", "tuned.onnx"],
                                     ["train", "convnet", "--data", "digits", "-o", "trained.onnx"],
                                     ["sweep", "grid", "--data", "digits", "--activation", "relu"]])
def test_every_device_flag_refuses_unknown_names_in_one_line(capsys, command, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = analogize(capsys, *command, "--device", "gpu")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "Invalid value for '--device': unknown device 'gpu': give cpu, cuda or cuda:N" in err
    assert not list(tmp_path.iterdir())


def test_evaluate_without_a_usable_cuda_provider_is_one_line_and_no_traceback(tmp_path):
    if cuda_usable():
        pytest.skip("ONNX Runtime runs sessions on a GPU here")
    done = subprocess.run([sys.executable, "-m", "analogize", "evaluate", str(DEFAULT_MODEL), "--data", "digits",
                           "--limit", "32", "--device", "cuda", "--json", str(tmp_path / "result.json")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("analogize: error: --device cuda: ") and done.stderr.count("\n") == 1
    assert done.stderr.rstrip().endswith("or use --device cpu") and "Traceback" not in done.stderr
    assert not (tmp_path / "result.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a CUDA GPU here")
def test_training_on_cuda_without_it_is_one_line(capsys, tmp_path):
    code, out, err = analogize(capsys, "train", "convnet", "--data", "digits", "-o", tmp_path / "trained.onnx",
                               "--device", "cuda", "--epochs", "1")
    assert code == 2 and out == "" and err.count("\n") == 1 and "sees no CUDA GPU" in err
    assert not list(tmp_path.iterdir())


def test_device_cpu_gives_the_numbers_of_a_run_without_the_flag(capsys, tmp_path):
    results = []
    for extra in ([], ["--device", "cpu"]):
        path = tmp_path / f"result{len(results)}.json"
        code, _, err = analogize(capsys, "evaluate", DEFAULT_MODEL, "--data", "digits", "--limit", "100",
                                 "--bits", "4", "--repeats", "2", "--seed", "3", "--json", path, *extra)
        assert code == 0, err
        results.append(json.loads(path.read_text()))
    assert results[0]["device"] == results[1]["device"] == "cpu"
    assert results[0]["cells"] == results[1]["cells"] and results[0]["clean"] == results[1]["clean"]


def test_shards_computed_on_other_devices_do_not_merge(noisy):
    from analogize.evaluate.results import merge_results

    digits = engine.model_feeds("digits", noisy, limit=16)
    parts = [evaluate(noisy, digits, Grid(bits=(4, 6), repeats=1), shard=(k, 2)) for k in range(2)]
    assert merge_results(parts)["device"] == "cpu"
    parts[1]["device"] = "cuda"
    with pytest.raises(AnalogizeError, match="differs from result 1 in 'device'"):
        merge_results(parts)


def test_the_gpu_check_refuses_in_one_line_without_a_gpu():
    if cuda_usable():
        pytest.skip("ONNX Runtime runs sessions on a GPU here")
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("gpu_check: no usable GPU: ") and done.stderr.count("\n") == 1


def test_the_command_line_on_a_gpu_keeps_onnxruntime_s_log_to_errors(monkeypatch):
    """onnxruntime-gpu 1.31 warns at every session given the CUDA provider by name, though it runs on it."""
    from analogize.cli.options import _device, _session_device

    levels = []
    monkeypatch.setattr(ort, "set_default_logger_severity", levels.append)
    assert _session_device(None, None, "cpu") == "cpu" and levels == []
    assert _session_device(None, None, "cuda:1") == "cuda:1" and levels == [3]
    assert _device(None, None, "cuda") == "cuda" and levels == [3]  # torch's device (finetune): ONNX Runtime's log kept
    with pytest.raises(click.BadParameter, match="cuda:x"):
        _session_device(None, None, "cuda:x")
