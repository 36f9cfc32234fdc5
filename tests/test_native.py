"""Native kernels against the ONNX function bodies (bit for bit where deterministic), numpy/scipy statistics
for the noise, and bad input."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from scipy import stats

import reference as ref
from analogize import convert, native_library_path
from analogize.convert import PAPER_RANGES
from analogize.native.build import generated_header
from analogize.native.fusion import fuse_model_chains
from analogize.ops.spec import DOMAIN, OPS
from analogize.passes.model import sync_analog_functions
from conftest import DEFAULT_MODEL

DETERMINISTIC = {
    "ReducePrecision": {"precision": 16.0}, "ReluGeluInterpolation": {"factor": 0.5, "scale": 1.5, "alpha": 0.1},
    "ReluSiluInterpolation": {"factor": 0.7, "scale": 0.8}, "ReGluGeGluInterpolation": {"factor": 0.5},
    **{f"Smooth{gate}": {"temperature": 0.7} for gate in ("Swish", "Gelu", "Gumbel", "Algebraic", "Guderman", "Mish")},
}


def op_model(op, shape=None, elem_type=TensorProto.FLOAT, opset=17, **attributes):
    node = helper.make_node(op, ["x"], ["y"], domain=DOMAIN, **attributes)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", elem_type, shape)],
                              [helper.make_tensor_value_info("y", elem_type, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)
    sync_analog_functions(model)
    return model


def fuse_in_place(model):
    """The fusion pipeline with its result written back into ``model``; how many chains it fused."""
    fused, count = fuse_model_chains(model)
    if fused is not model:
        model.CopyFrom(fused)
    return count


def run(model, x, native=True, runs=1):
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if native:
        options.register_custom_ops_library(str(native_library_path()))
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    results = [session.run(None, {"x": x})[0] for _ in range(runs)]
    return results[0] if runs == 1 else results


@pytest.fixture(scope="module")
def values():
    rng = np.random.default_rng(7)
    x = rng.normal(0, 2, 200_003).astype(np.float32)
    x[:6] = [0.0, -0.0, 0.5 / 16, -1.5 / 16, 3.0, -3.0]  # zeros and exact rounding ties
    return x


def test_every_op_is_generated_from_the_op_set():
    header = generated_header()
    for name, spec in OPS.items():
        assert f"// {name}: Y = {spec.equation}" in header
    assert header.count("case ") == 2 * len(OPS)  # the CPU loops and the per-element dispatch


def uses_transcendentals(op):
    """Whether the op's generated code calls erf/exp/atan (ONNX Runtime's own approximations differ)."""
    header = generated_header()
    body = header[header.index(f"// {op}:"):]
    body = body[:body.index("}")]
    return any(f"analogize_{f}" in body for f in ("erf", "exp", "atan", "sigmoid"))


@pytest.mark.parametrize("op", sorted(DETERMINISTIC))
def test_deterministic_ops_equal_the_function_bodies(op, values):
    model = op_model(op, **DETERMINISTIC[op])
    x = values[:200_000].reshape(2, -1) if op.startswith("ReGlu") else values
    native, body = run(model, x), run(model, x, native=False)
    assert native.shape == body.shape
    if uses_transcendentals(op):
        # analogize_math.h's erf/exp/atan against ONNX Runtime's vectorised approximations of them
        np.testing.assert_allclose(native, body, rtol=4e-6, atol=4e-6)
    else:
        np.testing.assert_array_equal(native, body)


FLOAT64_REFERENCES = {
    "ReluGeluInterpolation": lambda x: ref.gelu_interp(x, 0.5, 1.5, 0.1),
    "ReluSiluInterpolation": lambda x: ref.silu_interp(x, 0.7, 0.8),
    **{f"Smooth{gate}": (lambda gate: lambda x: ref.smooth(gate, x, 0.7))(gate)
       for gate in ("Swish", "Gelu", "Gumbel", "Guderman", "Mish")},  # Algebraic: arithmetic only, bit-exact above
}


@pytest.mark.parametrize("op", sorted(FLOAT64_REFERENCES))
def test_activation_kernels_are_within_a_few_ulps_of_float64_references(op, values):
    """exp/erf/atan are analogize_math.h's own vectorisable versions: held to the true functions."""
    x = np.concatenate([values, np.linspace(-40, 40, 100_001, dtype=np.float32),
                        np.float32([1e-30, -1e-30, 5e-5, 0.3, -0.3, 1.0, -1.0, 3.92, -3.92, 88.0, -88.0])])
    native = run(op_model(op, **DETERMINISTIC[op]), x).astype(np.float64)
    exact = FLOAT64_REFERENCES[op](x.astype(np.float64))
    assert np.max(np.abs(native - exact) / np.maximum(1.0, np.abs(exact))) < 1e-6


def test_arithmetic_ops_are_the_bit_exact_ones():
    assert not uses_transcendentals("ReducePrecision") and not uses_transcendentals("SmoothAlgebraic")
    assert uses_transcendentals("ReluGeluInterpolation")


def test_reduce_precision_matches_the_reference_formula(values):
    native = run(op_model("ReducePrecision", precision=16.0, divide=0.5), values)
    np.testing.assert_array_equal(native, ref.reduce_precision(values, 16.0).astype(np.float32))


def test_noise_has_the_declared_distribution_fresh_per_run_and_reproducible_per_seed():
    x = np.zeros(400_000, np.float32)
    first, second = run(op_model("AnalogNoise", std=0.05, seed=3.0), x, runs=2)
    assert abs(first.mean()) < 0.05 * 5 / np.sqrt(x.size)
    assert first.std() == pytest.approx(0.05, rel=0.01)
    assert stats.normaltest(first[:100_000]).pvalue > 1e-3
    assert stats.kstest(first[:100_000] / 0.05, "norm").pvalue > 1e-3
    assert abs(np.corrcoef(first, second)[0, 1]) < 0.01  # a fresh draw on every run
    again = run(op_model("AnalogNoise", std=0.05, seed=3.0), x, runs=2)
    np.testing.assert_array_equal(again[0], first)  # the same seed, the same stream
    np.testing.assert_array_equal(again[1], second)
    other = run(op_model("AnalogNoise", std=0.05, seed=4.0), x)
    assert abs(np.corrcoef(first, other)[0, 1]) < 0.01
    unseeded = [run(op_model("AnalogNoise", std=0.05), x) for _ in range(2)]
    assert abs(np.corrcoef(*unseeded)[0, 1]) < 0.01  # unlike ORT's RandomNormalLike: fresh per session


def test_noise_of_two_nodes_is_uncorrelated_and_the_fused_chain_gives_the_same_numbers(rng):
    model = convert(onnx.load(DEFAULT_MODEL), bits=4, ep=0.5, seed=11).model
    x = rng.uniform(0, 1, (64, 1, 8, 8)).astype(np.float32)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.register_custom_ops_library(str(native_library_path()))
    fused = onnx.ModelProto()
    fused.CopyFrom(model)
    assert fuse_in_place(fused) >= 10
    assert not [n for n in fused.graph.node if n.domain == DOMAIN]  # every chain became one node
    outputs = []
    for candidate in (model, fused):
        session = ort.InferenceSession(candidate.SerializeToString(), options, providers=["CPUExecutionProvider"])
        outputs.append([session.run(None, {"input": x})[0] for _ in range(2)])
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    np.testing.assert_array_equal(outputs[0][1], outputs[1][1])
    pair = op_model("AnalogNoise", std=1.0, seed=1.0)
    second = helper.make_node("AnalogNoise", ["x"], ["z"], domain=DOMAIN, std=1.0, seed=2.0)
    pair.graph.node.append(second)
    pair.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    options_session = ort.InferenceSession(pair.SerializeToString(), options, providers=["CPUExecutionProvider"])
    y, z = options_session.run(None, {"x": np.zeros(200_000, np.float32)})
    assert abs(np.corrcoef(y, z)[0, 1]) < 0.01


def test_stochastic_rounding_is_unbiased_and_on_the_grid():
    x = np.full(200_000, 0.3, np.float32)  # 0.3 * 4 = 1.2: 1/4 with probability 0.8, 2/4 with 0.2
    y = run(op_model("StochasticReducePrecision", precision=4.0, seed=5.0), x)
    assert set(np.unique(y).tolist()) == {0.25, 0.5}
    assert y.mean() == pytest.approx(0.3, abs=0.002)


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,), (2, 3, 4, 5, 6), (70_000,)])
def test_any_rank_and_empty_tensors(shape, rng):
    x = rng.normal(size=shape).astype(np.float32)
    model = op_model("ReducePrecision", precision=8.0)
    np.testing.assert_array_equal(run(model, x), run(model, x, native=False))
    assert run(model, x).shape == shape


@pytest.mark.parametrize("shape", [(1000, 2), (130, 6), (5, 3, 600), (4, 0), (0, 8)])
def test_gated_op_splits_every_row_where_rows_straddle_the_kernel_tiles(shape, rng):
    x = rng.normal(size=shape).astype(np.float32)
    native = run(op_model("ReGluGeGluInterpolation", factor=0.5), x)
    assert native.shape == shape[:-1] + (shape[-1] // 2,)
    np.testing.assert_allclose(native, ref.glu_interp(x.astype(np.float64), 0.5, 1.0, 0.0), rtol=1e-5, atol=1e-6)


def test_wrong_dtype_and_odd_gated_axis_are_clear_errors_not_crashes():
    with pytest.raises(Exception, match=r"tensor\(double\)"):  # refused when the session is made
        run(op_model("ReducePrecision", elem_type=TensorProto.DOUBLE, precision=8.0), np.zeros(4))
    declared_float_output = op_model("ReducePrecision", elem_type=TensorProto.DOUBLE, precision=8.0)
    declared_float_output.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    with pytest.raises(Exception, match="the native kernels take float32"):
        run(declared_float_output, np.zeros(4))
    with pytest.raises(Exception, match="even size"):
        run(op_model("ReGluGeGluInterpolation"), np.zeros((2, 3), np.float32))
    missing = op_model("ReducePrecision")
    with pytest.raises(Exception, match="needs attribute precision"):
        run(missing, np.zeros(4, np.float32))


def test_models_still_run_without_the_library(rng):
    model = convert(onnx.load(DEFAULT_MODEL), bits=6, noise=False, **PAPER_RANGES).model
    x = rng.uniform(0, 1, (8, 1, 8, 8)).astype(np.float32)
    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    options = ort.SessionOptions()
    options.register_custom_ops_library(str(native_library_path()))
    native = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(plain.run(None, {"input": x})[0], native.run(None, {"input": x})[0])


def test_a_missing_compiler_is_a_clear_error_and_sessions_fall_back(tmp_path, monkeypatch, capsys, rng):
    from analogize.native import build as native
    from analogize.runtime import sessions as runtime
    from analogize.errors import AnalogizeError

    monkeypatch.setenv("ANALOGIZE_CACHE", str(tmp_path))
    monkeypatch.setenv("CXX", "/no/such/compiler")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(AnalogizeError, match="no C\\+\\+ compiler"):
        native.build()
    monkeypatch.setattr(native, "_LIBRARIES", {})
    monkeypatch.setattr(runtime, "_NATIVE_UNAVAILABLE", {})
    model = convert(onnx.load(DEFAULT_MODEL), bits=6, noise=False).model
    session = runtime.create_session(model)
    assert session.run(None, {"input": rng.uniform(0, 1, (2, 1, 8, 8)).astype(np.float32)})[0].shape == (2, 10)
    runtime.create_session(model)
    assert capsys.readouterr().err.count("native kernels unavailable") == 1


def test_fusion_keeps_graph_outputs_and_unfusable_nodes():
    model = op_model("ReducePrecision", precision=8.0)
    model.graph.node.append(helper.make_node("Relu", ["y"], ["z"]))
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    assert fuse_in_place(model) == 0  # y is a graph output: it must stay
    chain = op_model("ReducePrecision", precision=8.0)
    chain.graph.node[0].output[0] = "r"
    chain.graph.node.extend([helper.make_node("Clip", ["r", "", "high"], ["c"]),
                             helper.make_node("LeakyRelu", ["c"], ["y"], alpha=0.2)])
    chain.graph.initializer.append(helper.make_tensor("high", TensorProto.FLOAT, [], [0.5]))
    x = np.linspace(-2, 2, 1001, dtype=np.float32)
    expected = run(chain, x, native=False)
    assert fuse_in_place(chain) == 1 and [n.op_type for n in chain.graph.node] == ["FusedChain"]
    np.testing.assert_array_equal(run(chain, x), expected)


needs_nvcc = pytest.mark.skipif(__import__("shutil").which("nvcc") is None, reason="nvcc not installed")


@needs_nvcc
def test_the_cuda_library_builds_and_its_cpu_kernels_equal_the_cpu_library(rng):
    """CI compiles the CUDA kernels wherever nvcc exists; without a GPU, the same library serves CPU sessions
    (CPU and CUDA kernels are registered under the same names)."""
    cuda_library = native_library_path(cuda=True)
    assert cuda_library != native_library_path()
    model = convert(onnx.load(DEFAULT_MODEL), bits=4, ep=0.5, seed=3).model
    x = rng.uniform(0, 1, (16, 1, 8, 8)).astype(np.float32)
    outputs = []
    for library in (native_library_path(), cuda_library):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.register_custom_ops_library(str(library))
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {"input": x})[0])
    np.testing.assert_array_equal(*outputs)


def _mix(z):
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def reference_normals(seed: int, run: int, count: int) -> np.ndarray:
    """The kernels' noise written again in numpy from the algorithm in custom_ops/counter_rng.h: SplitMix64
    hashes of counters, then Box-Muller in float32 with the same polynomials, operation by operation; in each
    group of 256 elements, the first 128 take the first normal of words 128 g .. 128 g + 127, the others the
    second."""
    f32 = np.float32
    groups = (count + 255) // 256
    with np.errstate(over="ignore"):
        start = _mix(_mix(np.uint64(seed)) ^ (np.uint64(run) * np.uint64(0xD1B54A32D192ED03)))
        words = _mix(start + np.arange(128 * groups, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
    low, high = (words & np.uint64(0xFFFFFFFF)).astype(np.uint32), (words >> np.uint64(32)).astype(np.uint32)
    out = np.empty((groups, 2, 128), np.float32)
    u = ((low >> np.uint32(8)) + np.uint32(1)).astype(f32) * f32(2.0**-24)
    bits = u.view(np.uint32)
    exponent = ((bits >> np.uint32(23)) & np.uint32(0xFF)).astype(np.int32) - 127
    mantissa = ((bits & np.uint32(0x007FFFFF)) | np.uint32(0x3F800000)).view(f32)
    upper = mantissa > f32(1.41421356)
    mantissa = np.where(upper, mantissa * f32(0.5), mantissa)
    exponent = exponent + upper
    t = (mantissa - f32(1)) / (mantissa + f32(1))
    t2 = t * t
    series = t * (f32(2) + t2 * (f32(0.666666667) + t2 * (f32(0.4) + t2 * f32(0.285714286))))
    log_u = exponent.astype(f32) * f32(0.693147181) + series
    radius = np.sqrt(f32(-2) * log_u)
    quarter = (high >> np.uint32(8)).astype(f32) * f32(2.0**-24) * f32(4)
    k = quarter.astype(np.int32)
    phi = (quarter - k.astype(f32) - f32(0.5)) * f32(1.57079633)
    p2 = phi * phi
    one = f32(1)
    s = phi * (one - p2 * (one / f32(6) - p2 * (one / f32(120) - p2 * (one / f32(5040)))))
    c = one - p2 * (f32(0.5) - p2 * (one / f32(24) - p2 * (one / f32(720) - p2 * (one / f32(40320)))))
    h = f32(0.707106781)
    cos_a = np.where((k == 0) | (k == 3), h, -h)
    sin_a = np.where(k < 2, h, -h)
    out[:, 0] = (radius * (cos_a * c - sin_a * s)).reshape(groups, 128)
    out[:, 1] = (radius * (sin_a * c + cos_a * s)).reshape(groups, 128)
    return out.reshape(-1)[:count]


@pytest.mark.parametrize("count", [1, 7, 1001, 65_537, 300_001])
def test_noise_equals_an_ieee_reference_of_the_generator_bit_for_bit(count):
    """What the CUDA kernels must also produce: the same integers and IEEE-rounded float operations."""
    x = np.zeros(count, np.float32)
    runs = run(op_model("AnalogNoise", std=1.0, seed=12.0), x, runs=2)
    for index, drawn in enumerate(runs):
        np.testing.assert_array_equal(drawn, reference_normals(12, index, count) * np.float32(1.0) + x)


def test_fusion_leaves_values_read_by_subgraphs_other_dtypes_and_overridable_bounds_alone(rng):
    from analogize.runtime.sessions import create_session

    def branch(name, source):
        return helper.make_graph([helper.make_node("Identity", [source], [f"{name}_out"])], name, [],
                                 [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)])

    model = op_model("ReducePrecision", precision=2.0)
    model.graph.node[0].output[0] = "r"
    model.graph.node.extend([helper.make_node("Relu", ["r"], ["c"]),
                             helper.make_node("If", ["condition"], ["y"], then_branch=branch("then", "r"),
                                              else_branch=branch("else", "c"))])
    model.graph.input.append(helper.make_tensor_value_info("condition", TensorProto.BOOL, []))
    x = np.array([-1, -0.4, 0, 0.3, 1], np.float32)
    feed = {"x": x, "condition": np.array(True)}
    expected = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)
    np.testing.assert_array_equal(create_session(model).run(None, feed)[0], expected[0])

    doubles = op_model("ReducePrecision", precision=2.0)
    doubles.graph.input.append(helper.make_tensor_value_info("d", TensorProto.DOUBLE, None))
    doubles.graph.node.extend([helper.make_node("Relu", ["d"], ["d1"]),
                               helper.make_node("LeakyRelu", ["d1"], ["d2"])])
    doubles.graph.output.append(helper.make_tensor_value_info("d2", TensorProto.DOUBLE, None))
    d = np.array([-1.0, 2.0])
    assert create_session(doubles).run(["d2"], {"x": x, "d": d})[0].tolist() == [-0.0, 2.0]

    bounded = op_model("ReducePrecision", precision=64.0)
    bounded.graph.node[0].output[0] = "r"
    bounded.graph.node.append(helper.make_node("Clip", ["r", "", "high"], ["y"]))
    bounded.graph.initializer.append(helper.make_tensor("high", TensorProto.FLOAT, [], [0.5]))
    bounded.graph.input.append(helper.make_tensor_value_info("high", TensorProto.FLOAT, []))
    feed = {"x": np.array([0.2, 0.4, 0.9], np.float32), "high": np.array(0.3, np.float32)}
    np.testing.assert_array_equal(create_session(bounded).run(None, feed)[0], np.float32([0.203125, 0.3, 0.3]))


def test_fused_standard_steps_keep_onnx_semantics_for_nan_negative_zero_and_crossed_bounds():
    chain = op_model("ReducePrecision", precision=1e6)
    chain.graph.node[0].output[0] = "r"
    chain.graph.node.extend([helper.make_node("Relu", ["r"], ["a"]), helper.make_node("LeakyRelu", ["a"], ["b"]),
                             helper.make_node("Clip", ["b", "low", "high"], ["y"])])
    chain.graph.initializer.extend([helper.make_tensor("low", TensorProto.FLOAT, [], [0.5]),
                                    helper.make_tensor("high", TensorProto.FLOAT, [], [-0.5])])
    x = np.array([np.nan, -0.0, -3.0, 0.25, 4.0], np.float32)
    expected = run(chain, x, native=False)
    assert fuse_in_place(chain) == 1
    np.testing.assert_array_equal(run(chain, x), expected)


def test_integer_attributes_are_refused_like_the_function_bodies_do():
    model = op_model("AnalogNoise", std=0.1)
    model.graph.node[0].attribute.append(helper.make_attribute("seed", 3))
    with pytest.raises(Exception, match="must be a float, not an integer"):
        run(model, np.zeros(4, np.float32))


def test_an_unwritable_cache_is_a_clear_error(tmp_path, monkeypatch):
    from analogize.native import build as native
    from analogize.errors import AnalogizeError

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("ANALOGIZE_CACHE", str(blocker / "cache"))
    with pytest.raises(AnalogizeError, match="set ANALOGIZE_CACHE"):
        native.build(verbose=False)


def test_output_shapes_are_inferred_at_session_creation():
    """ORT learns each kernel's output shape from its input before any run (the graph output below declares
    none, so what the session reports is inferred through the kernel); the gated op halves its last axis and
    is left to run time."""
    def inferred_shape(op, **attributes):
        model = op_model(op, ["batch", 3, 8], **attributes)
        model.graph.node.append(helper.make_node("Relu", ["y"], ["z"]))
        model.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.register_custom_ops_library(str(native_library_path()))
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.get_outputs()[0].shape

    assert inferred_shape("AnalogNoise", std=0.1) == ["batch", 3, 8]
    assert inferred_shape("ReducePrecision", precision=4.0) == ["batch", 3, 8]
    assert inferred_shape("ReGluGeGluInterpolation") == []


def test_a_dimension_without_size_or_name_stays_unknown(rng):
    """Passing such a shape on would declare a size of -1: Shape would fold to it, Add would refuse c."""
    model = op_model("AnalogNoise", [None, 4, 8], std=0.1)
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.ones((3, 4, 8), np.float32), "c"))
    model.graph.node.extend([helper.make_node("Shape", ["y"], ["shape"]), helper.make_node("Add", ["y", "c"], ["z"])])
    model.graph.output.extend([helper.make_tensor_value_info("shape", TensorProto.INT64, None),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.register_custom_ops_library(str(native_library_path()))
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    _, shape, z = session.run(None, {"x": rng.normal(0, 1, (3, 4, 8)).astype(np.float32)})
    assert shape.tolist() == [3, 4, 8] and z.shape == (3, 4, 8)
