"""The fast form in a file: fused chains that keep their function bodies give the plain file's numbers in a user's
own ONNX Runtime session (with the native library or without, from Python or from the C API); export, rebuild
and evaluate read it as the plain file; ONNX Runtime's optimised graph of it for this machine runs as the
package's own sessions do, and is refused wherever more than ONNX Runtime would have to read it."""
import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from analogize import convert, native_library_path
from analogize.convert import PAPER_RANGES
from analogize.data import digits
from analogize.errors import AnalogizeError
from analogize.export import export, rebuild
from analogize.native.build import FUSED_DOMAIN, StepKind
from analogize.native.fusion import unfuse_model_chains
from analogize.ops.spec import DOMAIN
from analogize.passes.graph import export_model, import_model
from analogize.passes.model import machine_form_record
from analogize.runtime.blocked_layout import NCHWC_DOMAIN
from analogize.runtime.fast_form import fast_form, machine_form
from analogize.runtime.sessions import create_session
from conftest import DEFAULT_MODEL
from test_blocked_layout import conv_model
from test_cli import analogize

HAS_AVX2 = Path("/proc/cpuinfo").exists() and "avx2" in Path("/proc/cpuinfo").read_text(errors="ignore")


@pytest.fixture(scope="module")
def plain():
    """Every placement, default ranges and an activation swapped in, so chains hold activation steps too."""
    return convert(onnx.load(DEFAULT_MODEL), bits=6, ep=0.3, seed=4, activation="interp-gelu", factor=0.5).model


@pytest.fixture(scope="module")
def fast(plain):
    return fast_form(plain)[0]


@pytest.fixture(scope="module")
def images():
    return digits("test")[0][:64]


def user_runs(model, x, library: bool, runs: int = 1, optimise: bool = True) -> list:
    """Outputs of ``runs`` runs of one session as a user makes it: the library registered where asked."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if library:
        options.register_custom_ops_library(str(native_library_path()))
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [session.run(None, {name: x})[0] for _ in range(runs)]


def clip_chain(overload: str | None) -> onnx.ModelProto:
    """A FusedChain that clips to [-0.5, 0.5], whose local function body doubles instead: which one ran shows."""
    body = [helper.make_node("Constant", [], ["two"], value_float=2.0), helper.make_node("Mul", ["X", "two"], ["Y"])]
    function = helper.make_function(FUSED_DOMAIN, "FusedChain", ["X"], ["Y"], body, [helper.make_opsetid("", 17)],
                                    attributes=["kinds", "ops", "parameters", "seeds"])
    node = helper.make_node("FusedChain", ["x"], ["y"], domain=FUSED_DOMAIN, kinds=[1], ops=[-1],
                            parameters=[-0.5, 0.5, 0.0, 0.0], seeds=[-1.0])
    if overload is not None:
        function.overload = node.overload = overload
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(FUSED_DOMAIN, 1)],
                             functions=[function], ir_version=10)


@pytest.mark.parametrize("overload", [None, "chain"])
@pytest.mark.parametrize("optimise", [True, False])
def test_onnx_runtime_runs_a_registered_custom_op_rather_than_a_local_function_of_its_name(overload, optimise):
    model = clip_chain(overload)
    x = np.array([-2.0, -0.25, 0.25, 2.0], np.float32)
    np.testing.assert_array_equal(user_runs(model, x, library=True, optimise=optimise)[0], [-0.5, -0.25, 0.25, 0.5])
    np.testing.assert_array_equal(user_runs(model, x, library=False, optimise=optimise)[0], [-4.0, -0.5, 0.5, 4.0])


def node_list(model):
    return [(n.name, n.op_type, n.domain, list(n.input), list(n.output), [a.SerializeToString() for a in n.attribute])
            for n in model.graph.node]


def test_each_fused_chain_keeps_the_nodes_it_replaced_as_its_own_function_body(plain, fast):
    fused = [n for n in fast.graph.node if n.domain == FUSED_DOMAIN]
    assert len(fused) == fast_form(plain)[1] >= 10
    bodies = {f.overload: f for f in fast.functions if f.domain == FUSED_DOMAIN}
    assert sorted(bodies) == sorted(n.overload for n in fused), "one overload of FusedChain per node"
    measured = 0
    for node in fused:
        body = bodies[node.overload]
        steps = [n for n in body.node if n.op_type != "Constant"]
        kinds = helper.get_attribute_value(node.attribute[0])
        if kinds[0] == StepKind.RANGE:  # one step for the Abs, ReduceMax and Max that measure a range
            measured += 1
            assert [n.op_type for n in steps[:4]] == ["Abs", "ReduceMax", "Max", "Div"]
            assert steps[kinds.index(StepKind.RESCALE) + 2].op_type == "Mul"
        assert len(steps) == len(kinds) + 2 * kinds.count(StepKind.RANGE)
        assert {n.name for n in steps} <= {n.name for n in plain.graph.node}, "the chain's own nodes, names and all"
    assert measured >= 10, "the default ranges are fused with their chains"
    analog_bodies = {f.name: f.SerializeToString() for f in plain.functions}
    assert {f.name: f.SerializeToString() for f in fast.functions if f.domain == DOMAIN} == analog_bodies
    onnx.checker.check_model(fast, full_check=True)
    restored = unfuse_model_chains(fast)
    assert node_list(restored) == node_list(plain)
    assert restored.opset_import == plain.opset_import and restored.functions == plain.functions


def test_overloads_and_chain_bodies_survive_the_graph_ir_crossing(fast):
    assert export_model(import_model(fast), fast) == fast


@pytest.mark.parametrize("noise", [False, True])
def test_the_fast_file_gives_the_plain_file_s_numbers_with_the_library_and_without(noise, images):
    noise_settings = {"ep": 0.3} if noise else {"noise": False}
    plain = convert(onnx.load(DEFAULT_MODEL), bits=6, seed=4, activation="interp-gelu", factor=0.5,
                    **noise_settings).model
    fast = fast_form(plain)[0]
    native = user_runs(fast, images, library=True, runs=2)
    for ours, theirs in zip(native, user_runs(plain, images, library=True, runs=2)):
        np.testing.assert_array_equal(ours, theirs)  # the same streams, run after run
    session = create_session(plain, blocked_layout=False)  # the package's own session: the same streams again
    for ours in native:
        np.testing.assert_array_equal(ours, session.run(None, {"input": images})[0])
    assert noise != np.array_equal(*native), "noise is fresh per run"
    for ours, theirs in zip(user_runs(fast, images, library=False, runs=2),
                            user_runs(plain, images, library=False, runs=2)):
        np.testing.assert_array_equal(ours, theirs)  # the function bodies, exact as they were


def canonical(model):
    """``model`` with its initializers in name order (export writes a chain's Clip bounds after the others)."""
    ordered = onnx.ModelProto()
    ordered.CopyFrom(model)
    initializers = sorted(ordered.graph.initializer, key=lambda tensor: tensor.name)
    ordered.graph.ClearField("initializer")
    ordered.graph.initializer.extend(initializers)
    return ordered


@pytest.mark.parametrize("format", ["qdq", "qonnx", "plain"])
def test_export_and_rebuild_read_a_fast_file_as_the_plain_file(plain, fast, format):
    ours, our_spec = export(fast, format)
    theirs, their_spec = export(plain, format)
    assert canonical(ours) == canonical(theirs) and our_spec == their_spec
    assert FUSED_DOMAIN not in {entry.domain for entry in ours.opset_import}
    if format != "plain":
        assert rebuild(ours, our_spec) == rebuild(theirs, their_spec)


def test_evaluate_reads_a_fast_file_as_the_plain_file(plain, fast, tmp_path, capsys):
    results = []
    for name, model in (("plain", plain), ("fast", fast)):
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, path)
        code, out, err = analogize(capsys, "evaluate", path, "--data", "digits", "--limit", "60", "--bits", "4",
                                   "--ep", "0.2", "--repeats", "2", "--json", "-", "--quiet")
        assert code == 0, err
        results.append(json.loads(out)["cells"])
    assert results[0] == results[1]


@pytest.mark.parametrize("blocked_layout", [True, False])
def test_the_package_s_own_sessions_run_a_fast_file_natively_with_the_plain_file_s_numbers(plain, fast, images,
                                                                                          blocked_layout):
    """A fast file has no node of the op set's own domain, only fused chains: it still takes the library (it
    used to run its function bodies, slowly, with other noise)."""
    feed = {plain.graph.input[0].name: images}
    outputs = [create_session(model, blocked_layout=blocked_layout).run(None, feed)[0] for model in (plain, fast)]
    np.testing.assert_array_equal(outputs[0], outputs[1])


@pytest.fixture(scope="module", params=["unit", "default"])
def blocked_pair(request):
    """A converted model whose convolutions ONNX Runtime blocks (with the paper's ranges, and with the default
    ranges, measured in the chains), and its form for this machine."""
    ranges = PAPER_RANGES if request.param == "unit" else {}
    plain = convert(conv_model(np.random.default_rng(3)), bits=6, ep=0.3, seed=1, **ranges).model
    return plain, machine_form(fast_form(plain)[0])


@pytest.mark.skipif(not HAS_AVX2, reason="ONNX Runtime blocks convolutions on x86 CPUs with AVX2 or AVX-512 only")
def test_the_form_for_this_machine_is_onnx_runtime_s_blocked_graph_with_the_session_s_numbers(blocked_pair):
    plain, machine = blocked_pair
    assert any(n.domain == NCHWC_DOMAIN and n.op_type == "Conv" for n in machine.graph.node)
    assert not machine.functions, "ONNX Runtime writes no function bodies: the file needs the library"
    record = machine_form_record(machine)
    assert record["onnxruntime"] == ort.__version__ and record["blocked_layout"] and "avx2" in record["cpu"]
    x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 8, 8)).astype(np.float32)
    session = create_session(plain)
    for ours, theirs in zip(user_runs(machine, x, library=True, runs=2, optimise=False),
                            [session.run(None, {"x": x})[0] for _ in range(2)]):
        np.testing.assert_array_equal(ours, theirs)


def test_the_form_for_this_machine_is_refused_where_more_than_onnx_runtime_would_read_it(blocked_pair):
    _, machine = blocked_pair
    for read in (lambda m: export(m, "qdq"), fast_form, unfuse_model_chains):
        with pytest.raises(AnalogizeError, match=r"optimised graph for one machine .*converted file it was made from"):
            read(machine)


def test_cli_fast_writes_both_forms_and_refuses_a_clean_model(plain, tmp_path, capsys):
    source = tmp_path / "plain.onnx"
    onnx.save(plain, source)
    code, out, err = analogize(capsys, "fast", source, "-o", tmp_path / "fast.onnx", "--json")
    assert code == 0, err
    assert json.loads(out)["fused_chains"] >= 10 and json.loads(out)["form"] == "fast"
    code, out, err = analogize(capsys, "fast", source, "-o", tmp_path / "machine.onnx", "--for-this-machine")
    assert code == 0, err
    assert f"ONNX Runtime {ort.__version__}" in out and "graph optimisations off" in out
    code, out, err = analogize(capsys, "fast", DEFAULT_MODEL, "-o", tmp_path / "clean.onnx")
    assert code == 2 and err.count("\n") == 1 and "convert it first" in err
    assert not (tmp_path / "clean.onnx").exists()


C_COMPILER = shutil.which("cc") or shutil.which("gcc")
ONNX_RUNTIME = sorted(glob.glob(os.path.join(os.path.dirname(ort.__file__), "capi", "libonnxruntime.so*")))


@pytest.mark.skipif(not C_COMPILER, reason="no C compiler (cc or gcc) to build docs/examples/run_fast.c")
@pytest.mark.skipif(not ONNX_RUNTIME, reason="the onnxruntime package ships no libonnxruntime.so here")
def test_the_c_api_example_runs_the_fast_file_with_python_s_numbers(fast, blocked_pair, images, tmp_path):
    program = tmp_path / "run_fast"
    source = Path(__file__).resolve().parents[1] / "docs" / "examples" / "run_fast.c"
    subprocess.run([C_COMPILER, "-O2", "-Wall", "-Werror", "-std=c99", "-o", str(program), str(source), "-ldl"],
                   check=True, capture_output=True)
    cases = [(fast, images, "input", "logits", []),
             (blocked_pair[1], np.random.default_rng(0).uniform(-1, 1, (2, 16, 8, 8)).astype(np.float32), "x", "y",
              ["--no-optimisation"])]
    for model, x, input_name, output_name, flags in cases:
        onnx.save(model, tmp_path / "model.onnx")
        x.tofile(tmp_path / "in.f32")
        finished = subprocess.run([str(program), *flags, ONNX_RUNTIME[0], str(tmp_path / "model.onnx"),
                                   str(native_library_path()), input_name, output_name, str(tmp_path / "in.f32"),
                                   str(tmp_path / "out.f32"), *map(str, x.shape)], capture_output=True, text=True)
        assert finished.returncode == 0, finished.stderr
        expected = user_runs(model, x, library=True, optimise=not flags)[0]  # a fresh session's first run
        np.testing.assert_array_equal(np.fromfile(tmp_path / "out.f32", np.float32), expected.ravel())
