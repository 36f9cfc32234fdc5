"""`analogize analyze`: each analysis against closed forms, the reference semantics in numpy, and the
published tables (paper eq. 6-13, seed 002 Table 1)."""
import json
import math

import numpy as np
import pytest

import reference as ref
from conftest import error_bars_on_top, series_positions, suptitle
from analogize import analysis
from analogize.cli import main
from analogize.errors import AnalogizeError


def analogize(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("precision, ep, std", [(64, 0.5, 0.01158), (64, 0.8, 0.03084), (4, 0.5, 0.1853),
                                                (256, 0.5, 0.002896)])
def test_ep_std_worked_values_and_inverse(precision, ep, std):
    bits = int(math.log2(precision))
    rows = analysis.ep_std_table([bits], [ep], [std])["rows"]
    forward = next(r for r in rows if r["convention"] == "pow2" and r["given"] == "ep")
    assert forward["precision"] == precision and forward["std"] == pytest.approx(std, rel=5e-4)
    backward = next(r for r in rows if r["convention"] == "pow2" and r["given"] == "std")
    assert backward["ep"] == pytest.approx(ep, abs=2e-4)
    other = next(r for r in rows if r["convention"] == "pow2-minus-1" and r["given"] == "ep")
    assert other["precision"] == precision - 1 and other["std"] == pytest.approx(ref.ep_to_std(ep, precision - 1))


@pytest.mark.parametrize("setting, expected", [
    ("relu", 1.0), ("leaky:0.1", 0.9), ("leaky:alpha=0.3", 0.7), ("interp-gelu:0.25", 0.75),
    ("interp-silu:0.6", 0.4), ("interp-gelu:0.5:alpha=0.2", 0.5 * 0.8), ("gelu", 0.0), ("silu", 0.0),
    ("gelu:scale=3", 0.0), ("smooth-mish", 0.0), ("smooth-gumbel:temperature=0.1", 0.0)])
def test_gsd_matches_closed_form(setting, expected):
    row = analysis.step_discontinuity([setting])["rows"][0]
    assert row["gsd"] == pytest.approx(expected, abs=1e-9)


def test_gsd_is_zero_away_from_the_kink_and_derivatives_match_reference():
    row = analysis.step_discontinuity(["interp-gelu:0.3"], at=0.5)["rows"][0]
    assert row["gsd"] == pytest.approx(0.0, abs=1e-9)
    assert row["right_derivative"] == pytest.approx(float(ref.gelu_interp_derivative(np.array(0.5), 0.3)), abs=1e-9)


def test_gradient_error_without_noise_equals_numpy_reference():
    """EP 0: the analog product is deterministic, so the whole map can be recomputed in numpy."""
    result = analysis.gradient_error_map(factors=(0.0, 0.5, 1.0), precision=16, ep=0.0, points=33, repeats=1)
    grid = np.linspace(-1.0, 1.0, 33)
    exact = np.outer(grid, grid)
    analog = ref.clamp_then_reduce(np.outer(ref.clamp_then_reduce(grid, 16), ref.clamp_then_reduce(grid, 16)), 16)
    for factor in (0.0, 0.5, 1.0):
        expected = np.abs(ref.gelu_interp_derivative(analog, factor) - ref.gelu_interp_derivative(exact, factor))
        np.testing.assert_allclose(result["maps"][factor], expected, atol=1e-12)


def test_gradient_error_reproduces_the_papers_hundredfold_claim():
    """Fig. 4 settings (p = 256, EP 0.5): ReLU's gradient error within one step of zero is ~100x GELU's, and
    the error shrinks steadily as the interpolation factor grows."""
    result = analysis.gradient_error_map(points=257, repeats=4)
    near = [r["mean_error_near_zero"] for r in result["rows"]]
    assert all(a > b for a, b in zip(near, near[1:]))
    assert 50 < result["summary"]["near_zero_ratio"] < 400
    assert result["summary"]["max_ratio"] > 50 and result["rows"][0]["max_error"] == 1.0
    assert result["std"] == pytest.approx(0.002896, rel=1e-3)


def test_minibatch_bias_matches_eq_13():
    result = analysis.minibatch_bias(["relu", "gelu"], std=0.003, batch_sizes=(10000,), repeats=20)
    rows = {(r["activation"], r["x"]): r for r in result["rows"]}
    assert rows["relu", "0+"]["true_derivative"] == 1.0 and rows["relu", "0-"]["true_derivative"] == 0.0
    for side in ("0-", "0+"):
        assert rows["relu", side]["batch_mean"] == pytest.approx(0.5, abs=0.01)
        assert abs(rows["relu", side]["bias"]) == pytest.approx(0.5, abs=0.01)
        assert rows["gelu", side]["true_derivative"] == pytest.approx(0.5, abs=1e-9)
        assert abs(rows["gelu", side]["bias"]) < 1e-3


def test_minibatch_bias_figure_draws_the_true_derivatives_beside_the_estimates():
    result = analysis.minibatch_bias(["relu", "gelu"], std=0.01, batch_sizes=(1, 10, 100), repeats=5, seed=3)
    figure = analysis.analysis_figure(result)
    title = suptitle(figure)
    for words in ("relu, gelu at x = 0- and 0+", "noise std 0.01", "batch sizes 1, 10, 100", "5 batches per size",
                  "seed 3"):
        assert words in title
    (axis,) = figure.axes
    truths = {line.get_label(): line.get_ydata()[0] for line in axis.lines if "true" in line.get_label()}
    assert truths == {"relu: true f'(0-) = 0": 0.0, "relu: true f'(0+) = 1": 1.0,
                      "gelu: true f'(0-) = 0.5": pytest.approx(0.5), "gelu: true f'(0+) = 0.5": pytest.approx(0.5)}
    assert error_bars_on_top(axis)
    positions = series_positions(axis)  # four estimates at each batch size: side by side, not on top
    assert len(set(positions)) == len(positions) == 12


def test_figures_of_the_analyses_name_their_settings_and_keep_a_fair_scale():
    errors = analysis.analysis_figure(analysis.gradient_error_map(factors=(0, 1), points=9, repeats=1, seed=2))
    assert "p = 256, EP 0.5 (noise std 0.0029), 9 x 9 grid, 1 noise draw, seed 2" in suptitle(errors)
    relu_map, gelu_map = (image for axis in errors.axes for image in axis.images)
    assert relu_map.get_clim() == gelu_map.get_clim() and relu_map.get_clim()[0] == 0  # one colour scale for both
    bits = analysis.analysis_figure(analysis.effective_bits([1.0, 2.0], precision=64))
    assert "input precision p = 64, scales 1, 2" in suptitle(bits)
    (axis,) = bits.axes
    assert axis.get_ylim()[0] == 0 and [line.get_ydata()[0] for line in axis.lines
                                        if line.get_label().startswith("input precision")] == [6.0]
    steps = analysis.analysis_figure(analysis.step_discontinuity(["relu", "gelu"], at=0.0))
    assert "at x0 = 0" in suptitle(steps)
    assert [text.get_text() for text in steps.axes[0].texts] == ["1.000", "0.000"]  # a zero bar shows its number


def test_effective_bits_matches_closed_form():
    scales = [0.5, 1.0, 2.5, 5.0]
    rows = analysis.effective_bits(scales, precision=64)["rows"]
    for scale, row in zip(scales, rows):
        rise = float(ref.gelu_interp_derivative(np.array(1 / 64), 1.0, scale)) - 0.5
        assert row["effective_bits"] == pytest.approx(math.log2(1 / rise), abs=1e-9)
    assert [r["effective_bits"] for r in rows] == sorted((r["effective_bits"] for r in rows), reverse=True)


# seed 002, Table 1: (K*, C_b*, C_W*) at T = 1
TABLE_1 = {"smooth-swish": (14.320, 0.555, 1.988), "smooth-gelu": ((3 + math.sqrt(17)) / 2, 0.173, 1.983),
           "smooth-gumbel": (21.123, 0.606, 1.988), "smooth-algebraic": (20.210, 0.334, 2.005),
           "smooth-guderman": (3.154, 0.103, 1.990), "smooth-mish": (1.670, 0.094, 2.013)}


def test_critical_initialisation_reproduces_table_1():
    rows = {r["activation"]: r for r in analysis.critical_initialisation(list(TABLE_1))["rows"]}
    for name, (k_star, c_b, c_w) in TABLE_1.items():
        assert rows[name]["k_star"] == pytest.approx(k_star, rel=1e-3), name
        assert rows[name]["c_b"] == pytest.approx(c_b, abs=1e-3), name
        assert rows[name]["c_w"] == pytest.approx(c_w, abs=1e-3), name


def test_critical_initialisation_temperature_law_and_rectifiers():
    """Lemma 3: at temperature T, K* and C_b* scale by T^2 and C_W* is unchanged; gelu with scale s is the
    smooth GELU at T = 1/s; ReLU is He (2, 0) at every K, LeakyReLU 2 / (1 + alpha^2)."""
    rows = analysis.critical_initialisation(["smooth-swish", "smooth-swish:temperature=0.5", "gelu:scale=2",
                                             "smooth-gelu:temperature=0.5", "relu", "leaky:0.2"])["rows"]
    cold, warm = rows[1], rows[0]
    assert cold["k_star"] == pytest.approx(warm["k_star"] / 4, rel=1e-4)
    assert cold["c_b"] == pytest.approx(warm["c_b"] / 4, rel=1e-4)
    assert cold["c_w"] == pytest.approx(warm["c_w"], rel=1e-6)
    assert rows[2]["k_star"] == pytest.approx(rows[3]["k_star"], rel=1e-9)
    assert (rows[4]["c_w"], rows[4]["c_b"], rows[4]["k_star"]) == (pytest.approx(2.0, rel=1e-9), 0.0, None)
    assert rows[5]["c_w"] == pytest.approx(2 / 1.04, rel=1e-9)
    assert analysis.critical_variances("relu") == (pytest.approx(2.0), 0.0)


@pytest.mark.parametrize("temperature", [0.005, 0.01, 8.0, 1000.0])
def test_critical_initialisation_at_extreme_temperatures_follows_lemma_3(temperature):
    """Far from T = 1 a fixed quadrature grid cannot resolve the gate; the result must still be Table 1's
    row scaled by T^2, with no spurious extra roots."""
    rows = analysis.critical_initialisation([f"smooth-swish:temperature={temperature}"])["rows"]
    k_star, c_b, c_w = TABLE_1["smooth-swish"]
    assert len(rows) == 1 and rows[0]["temperature"] == temperature
    assert rows[0]["k_star"] == pytest.approx(k_star * temperature**2, rel=1e-3)
    assert rows[0]["c_b"] == pytest.approx(c_b * temperature**2, rel=2e-3)
    assert rows[0]["c_w"] == pytest.approx(c_w, abs=1e-3)


def test_critical_initialisation_reports_when_there_is_none():
    row = analysis.critical_initialisation(["smooth-swish"], k_range=(0.01, 1.0))["rows"][0]
    assert row["k_star"] is None and "no critical point" in row["stability"]
    # nearly ReLU: the fixed point moves beyond any practical variance
    with pytest.raises(AnalogizeError, match="no critical initialisation"):
        analysis.critical_variances("interp-gelu:0.001")


def test_stability_of_table_1_fixed_points():
    """At K* the variance map has slope 1, so a nonzero curvature makes every fixed point attract from one
    side only: semi-stable, as Table 1 says for SWISH, GeLU, GumbelLU and GudermanLU (it says unstable for
    AlgebraicLU and Mish; docs/results.md discusses the difference)."""
    rows = analysis.critical_initialisation(list(TABLE_1))["rows"]
    assert all(r["stability"].startswith("semi-stable") for r in rows)


@pytest.mark.parametrize("bad, message", [("keep", "write 'relu'"), ("tanh", "unknown activation"),
                                          ("interp-gelu:2", "factor must be"), ("gelu:slope=2", "no parameter")])
def test_bad_activation_settings(bad, message):
    with pytest.raises(AnalogizeError, match=message):
        analysis.step_discontinuity([bad])


@pytest.mark.parametrize("command", [
    ["gsd", "--activation", "relu,gelu"],
    ["gradient-error", "--points", "33", "--repeats", "1", "--factors", "0,1"],
    ["minibatch-bias", "--batch-sizes", "1,100", "--repeats", "5"],
    ["effective-bits", "--scales", "1,2"],
])
def test_cli_writes_table_json_and_figure(tmp_path, capsys, command):
    code, out, err = analogize(capsys, "analyze", *command, "--json", tmp_path / "a.json", "--plot", tmp_path / "a.png")
    assert code == 0, err
    document = json.loads((tmp_path / "a.json").read_text())
    assert document["rows"] and "maps" not in document
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert document["rows"][0][next(iter(document["rows"][0]))] is not None and "wrote" in out


def test_python_api_takes_numpy_values_and_empty_windows_give_none():
    result = analysis.gradient_error_map(factors=np.linspace(1, 0, 3), points=4, repeats=1)
    assert [r["factor"] for r in result["rows"]] == [0.0, 0.5, 1.0]
    assert result["rows"][0]["mean_error_near_zero"] is None and result["summary"] == {}
    assert len(analysis.effective_bits(np.array([1.0, 2.0]))["rows"]) == 2
    with pytest.raises(AnalogizeError, match="whole numbers"):
        analysis.minibatch_bias(["relu"], 0.01, batch_sizes=(2.5,))
    rows = analysis.ep_std_table(eps=[0.5], precisions=[100.0])["rows"]
    assert rows == [{"bits": None, "convention": "given", "precision": 100.0, "ep": 0.5,
                     "std": pytest.approx(ref.ep_to_std(0.5, 100.0)), "given": "ep"}]


def test_cli_json_to_stdout_and_tables_without_figures(capsys, tmp_path):
    code, out, _ = analogize(capsys, "analyze", "ep-std", "--bits", "8", "--ep", "0.5", "--json", "-")
    assert code == 0 and json.loads(out)["rows"][0]["std"] == pytest.approx(0.002896, rel=1e-3)
    for table in ("critical-init", "ep-std"):  # tables: --plot is not offered, so never refused after the work
        code, out, _ = analogize(capsys, "analyze", table, "--help")
        assert code == 0 and "--plot" not in out and "--json" in out
        code, _, err = analogize(capsys, "analyze", table, "--plot", tmp_path / "c.png")
        assert code == 2 and "--plot" in err and not (tmp_path / "c.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["ep-std", "--bits", "4"], "give EP values"),
    (["gradient-error", "--factors", "0,1.5"], "must be in [0, 1]"),
    (["gsd", "--activation", "relu,swish"], "unknown activation"),
    (["effective-bits", "--scales", "0,1"], "must be > 0"),
    (["minibatch-bias", "--std", "-1"], "-1.0 is not in the range"),
    (["minibatch-bias", "--std", "0.1", "--ep", "0.5"], "not both"),
    (["gsd", "--at", "nan"], "finite"),
])
def test_cli_bad_input_is_one_line(capsys, argv, message):
    code, out, err = analogize(capsys, "analyze", *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
