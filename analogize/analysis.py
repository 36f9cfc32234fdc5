"""The paper's analyses, computed from the op set's own formulas (``analogize analyze``).

Every activation is evaluated through :func:`analogize.ops.torch_ops.apply_op` in float64 and differentiated by
autograd, so the analyses describe exactly the functions that converted models run. Each analysis returns a
JSON-ready dict with ``rows`` (the printed table); ``plot_*`` functions draw its figure.

- :func:`ep_std_table`: noise std for each bits x EP under both bit conventions (and EP back from a std).
- :func:`step_discontinuity`: the gradient step discontinuity ``GSD_f(x0) = |f'(x0-) - f'(x0+)|``.
- :func:`gradient_error_map`: the paper's Fig. 4, the error in the activation's gradient when a product of
  noisy quantised inputs and weights feeds it.
- :func:`minibatch_bias`: eq. 12-13, the mean of ``f'(x + eps)`` over a mini-batch near ``x = 0``.
- :func:`effective_bits`: the effective bit precision of the scaled GELU derivative near zero (Fig. 2c).
- :func:`critical_initialisation`: the fixed point ``K*`` and the critical ``C_W*``, ``C_b*`` of a
  network with this activation (seed 002, Lemma 1), found numerically.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import noise_model
from .errors import AnalogizeError
from .evaluate.results import figure_maker
from .ops.spec import OPS
from .ops.torch_ops import apply_op

_RECTIFIER = "ReluGeluInterpolation"  # factor 0 of any interpolation is the (leaky) rectifier itself
_ONNX_LEAKY_RELU_ALPHA = 0.01  # what convert's ``leaky`` inserts when no alpha is given: ONNX's default
_SMOOTH_INTERPOLATIONS = {"gelu": "ReluGeluInterpolation", "silu": "ReluSiluInterpolation"}


class Activation:
    """One activation of the op set with its attributes, as a float64 torch function. ``parse`` reads the
    settings the CLI takes (``relu``, ``leaky:0.1``, ``interp-gelu:0.5``, ``gelu:scale=2``,
    ``smooth-swish:temperature=0.5`` ...)."""

    def __init__(self, label: str, op_name: str, **attributes):
        self.label, self.op_name = label, op_name
        self.attributes = OPS[op_name].resolve(**attributes)

    @classmethod
    def parse(cls, text: str) -> "Activation":
        from .evaluate.engine import ActivationVariant
        from .passes.activations import ACTIVATIONS

        if text == "relu":
            return cls(text, _RECTIFIER, factor=0.0, alpha=0.0)
        if text.partition(":")[0] == "keep":
            raise AnalogizeError("'keep' names no activation here: write 'relu' for the plain rectifier")
        variant = ActivationVariant.parse(text)
        choice = ACTIVATIONS[variant.activation]
        values = {**dict(choice.fixed), **dict(variant.parameters)}
        if choice.op_type == "LeakyRelu":
            return cls(text, _RECTIFIER, factor=0.0, alpha=values.get("alpha", _ONNX_LEAKY_RELU_ALPHA))
        return cls(text, choice.op_type, **values)

    @classmethod
    def interpolation(cls, smooth: str, factor: float, **attributes) -> "Activation":
        """The ReLU-``smooth`` interpolation (gelu or silu) with factor i."""
        if smooth not in _SMOOTH_INTERPOLATIONS:
            raise AnalogizeError(f"smooth activation must be gelu or silu, got {smooth!r}")
        return cls(f"interp-{smooth}:{float(factor):g}", _SMOOTH_INTERPOLATIONS[smooth], factor=float(factor),
                   **attributes)

    @property
    def interpolation_factor(self) -> float | None:
        return self.attributes.get("factor") if self.op_name in _SMOOTH_INTERPOLATIONS.values() else None

    @property
    def identity(self) -> tuple:
        """Equal for settings that compute the same function (``gelu`` and ``interp-gelu:1``; ``relu``,
        ``leaky:0`` and ``interp-silu:0``)."""
        if self.interpolation_factor == 0.0:
            return _RECTIFIER, (("alpha", self.attributes["alpha"]),)
        return self.op_name, tuple(sorted(self.attributes.items()))

    @property
    def family(self) -> str:
        """``rectifier`` (i = 0: ReLU and LeakyReLU), ``interp-gelu``/``interp-silu`` (0 < i <= 1), or the
        setting's own name."""
        if self.interpolation_factor == 0.0:
            return "rectifier"
        for smooth, op_name in _SMOOTH_INTERPOLATIONS.items():
            if self.op_name == op_name:
                return f"interp-{smooth}"
        return self.label.partition(":")[0]

    @property
    def temperature(self) -> float:
        """T of ``z * a(z / T)``: every activation of the set has this form (``scale`` is 1/T), so
        ``s_T(z) = T s_1(z / T)``."""
        if "temperature" in self.attributes:
            return self.attributes["temperature"]
        return 1.0 / self.attributes.get("scale", 1.0)

    def at_unit_temperature(self) -> "Activation":
        unit = {k: 1.0 for k in ("temperature", "scale") if k in self.attributes}
        return Activation(self.label, self.op_name, **{**self.attributes, **unit})

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return apply_op(self.op_name, x, **self.attributes)

    def derivatives(self, x: np.ndarray, order: int = 1) -> list[np.ndarray]:
        """``[f, f', ...]`` up to ``order`` at the points ``x``, by autograd of the op's formula."""
        point = torch.as_tensor(np.asarray(x, dtype=np.float64)).requires_grad_(True)
        values = [self(point)]
        for _ in range(order):
            (gradient,) = torch.autograd.grad(values[-1].sum(), point, create_graph=True)
            values.append(gradient)
        return [v.detach().numpy() for v in values]

    def gradient(self, x: np.ndarray) -> np.ndarray:
        return self.derivatives(x, 1)[1]


def _activations(texts) -> list[Activation]:
    if not texts:
        raise AnalogizeError("give at least one activation (e.g. relu, interp-gelu:0.5, gelu)")
    return [Activation.parse(t) for t in texts]


def ep_std_table(bits=(), eps=(), stds=(), precisions=()) -> dict:
    """For each bit width under both conventions, and for each precision given directly: the noise std of
    each EP and the EP of each std. The two conventions differ by one step in p, which matters at low bit
    widths."""
    if not eps and not stds:
        raise AnalogizeError("give EP values (--ep) or noise stds (--std) to convert")
    if not bits and not precisions:
        raise AnalogizeError("give bit widths (--bits) or precisions (--precision)")
    grids = [(width, convention, noise_model.bits_to_precision(width, convention))
             for width in bits for convention in noise_model.BIT_CONVENTIONS]
    grids += [(None, "given", noise_model.check_precision(p)) for p in precisions]
    rows = []
    for width, convention, precision in grids:
        rows += [{"bits": width, "convention": convention, "precision": precision, "ep": ep,
                  "std": noise_model.ep_to_std(ep, precision), "given": "ep"} for ep in eps]
        rows += [{"bits": width, "convention": convention, "precision": precision, "std": std,
                  "ep": noise_model.std_to_ep(std, precision), "given": "std"} for std in stds]
    return {"analysis": "ep-std", "formula": "EP = 1 - erf(1 / (2 sqrt(2) std p))", "rows": rows}


def step_discontinuity(activations, at: float = 0.0, offset: float = 1e-12) -> dict:
    """``|f'(x0 - h) - f'(x0 + h)|`` with a tiny ``h``: the one-sided limits of the derivative, read off
    the op's formula (for the interpolations the closed form is ``(1 - i)(1 - alpha)``)."""
    if not math.isfinite(at):
        raise AnalogizeError(f"the point x0 must be a finite number, got {at}")
    rows = []
    for activation in _activations(activations):
        left, right = activation.gradient(np.array([at - offset, at + offset]))
        rows.append({"activation": activation.label, "x0": at, "left_derivative": float(left),
                     "right_derivative": float(right), "gsd": float(abs(left - right))})
    return {"analysis": "gsd", "rows": rows}


def _analog_signal(x: torch.Tensor, precision: float, std: float, generator: torch.Generator) -> torch.Tensor:
    """Noise, then clamp to [-1, 1], then reduce precision: one analog hop as the paper's Fig. 4 has it."""
    noisy = apply_op("AnalogNoise", x, generator, std=std) if std > 0 else x
    return apply_op("ReducePrecision", noisy.clamp(-1.0, 1.0), precision=precision)


def gradient_error_map(factors=(0.0, 0.25, 0.5, 0.75, 1.0), smooth: str = "gelu", precision: float = 256.0,
                       ep: float = noise_model.DEFAULT_EP, points: int = 513, repeats: int = 10,
                       near_zero: float | None = None, seed: int = 0) -> dict:
    """The error in the activation's gradient behind a bias-free analog product (the paper's Fig. 4).

    Inputs and weights span ``linspace(-1, 1, points)``; the exact pre-activation is their outer product.
    The analog one passes inputs and weights each through noise, clamp and reduce-precision, and their
    product through the same again. The error is ``|I'(analog) - I'(exact)|`` for the ReLU-``smooth``
    interpolation with each factor, averaged over ``repeats`` noise draws; the summary averages it over the
    map and over the cells whose exact product is within ``near_zero`` (default: one step, 1/p) of 0."""
    factors = sorted({float(f) for f in factors})
    if not factors or not 0.0 <= factors[0] <= factors[-1] <= 1.0:
        raise AnalogizeError(f"give interpolation factors in [0, 1], got {factors}")
    activations = [Activation.interpolation(smooth, factor) for factor in factors]
    if points < 3 or repeats < 1:
        raise AnalogizeError("points must be >= 3 and repeats >= 1")
    std = noise_model.ep_to_std(ep, noise_model.check_precision(precision))
    near_zero = 1.0 / precision if near_zero is None else near_zero
    grid = torch.linspace(-1.0, 1.0, points, dtype=torch.float64)
    exact = torch.outer(grid, grid)
    generator = torch.Generator().manual_seed(seed)
    analog = []
    for _ in range(repeats):
        inputs, weights = (_analog_signal(grid, precision, std, generator) for _ in range(2))
        analog.append(_analog_signal(torch.outer(inputs, weights), precision, std, generator).numpy())
    close = np.abs(exact.numpy()) < near_zero
    rows, maps = [], {}
    for factor, activation in zip(factors, activations):
        true_gradient = activation.gradient(exact.numpy())
        error = np.mean([np.abs(activation.gradient(a) - true_gradient) for a in analog], axis=0)
        maps[factor] = error
        rows.append({"factor": factor, "mean_error": float(error.mean()),
                     "mean_error_near_zero": float(error[close].mean()) if close.any() else None,
                     "max_error": float(error.max())})
    relu, smoothest = rows[0], rows[-1]
    summary = {}
    if len(rows) > 1 and close.any() and smoothest["mean_error_near_zero"] > 0:
        summary = {"near_zero_ratio": relu["mean_error_near_zero"] / smoothest["mean_error_near_zero"],
                   "overall_ratio": relu["mean_error"] / smoothest["mean_error"],
                   "max_ratio": relu["max_error"] / smoothest["max_error"],
                   "between": [relu["factor"], smoothest["factor"]]}
    return {"analysis": "gradient-error", "smooth": smooth, "precision": precision, "ep": ep, "std": std,
            "points": points, "repeats": repeats, "near_zero": near_zero, "seed": seed, "rows": rows,
            "summary": summary, "maps": maps}


def minibatch_bias(activations, std: float, batch_sizes=(1, 10, 100, 1000, 10000), repeats: int = 200,
                   side: float = 1e-9, seed: int = 0) -> dict:
    """Eq. 12-13: ``E_f'(x, n) = mean_i f'(x + eps_i)`` with ``eps ~ N(0, std^2)``, at ``x = 0-`` and
    ``0+``, for each batch size; its mean and spread over ``repeats`` batches beside the true ``f'(x)``."""
    noise_model.check_std(std)
    if repeats < 2 or not batch_sizes or any(int(n) != n or n < 1 for n in batch_sizes):
        raise AnalogizeError(f"batch sizes must be whole numbers >= 1 and repeats >= 2, got {list(batch_sizes)} "
                             f"and {repeats}")
    rng = np.random.default_rng(seed)
    rows = []
    for activation in _activations(activations):
        for label, x in (("0-", -side), ("0+", side)):
            true = float(activation.gradient(np.array([x]))[0])
            for size in map(int, batch_sizes):
                estimates = activation.gradient(x + rng.normal(0.0, std, (repeats, size))).mean(axis=1)
                rows.append({"activation": activation.label, "x": label, "batch_size": int(size),
                             "true_derivative": true, "batch_mean": float(estimates.mean()),
                             "batch_spread": float(estimates.std(ddof=1)), "bias": float(estimates.mean() - true)})
    return {"analysis": "minibatch-bias", "std": std, "repeats": repeats, "seed": seed, "rows": rows}


def effective_bits(scales, precision: float = 64.0) -> dict:
    """Fig. 2c: ``log2(1 / (G_s'(1/p) - G_s'(0)))``, the bits needed to resolve the change of the scaled GELU's
    derivative over the first quantisation step; larger scales make it steeper and need fewer bits."""
    precision = noise_model.check_precision(precision)
    rows = []
    for scale in map(float, scales):
        gradient = Activation.interpolation("gelu", 1.0, scale=scale).gradient(np.array([0.0, 1.0 / precision]))
        rise = float(gradient[1] - gradient[0])
        rows.append({"scale": scale, "derivative_rise": rise, "effective_bits": math.log2(1.0 / rise)})
    return {"analysis": "effective-bits", "precision": precision, "rows": rows}


# <f(z)>_K = sum_j w_j f(sqrt(K) u_j) for z ~ N(0, K): the trapezoid rule on a fine uniform grid of the
# standard normal u. Gauss-Hermite needs far more nodes for gates as sharp as exp(-exp(-u)) at large K, and
# the grid's even node count keeps the kink of a rectifier off the nodes.
_NODES = np.linspace(-12.0, 12.0, 12_000)
_WEIGHTS = np.exp(-_NODES**2 / 2) * (_NODES[1] - _NODES[0]) / math.sqrt(2 * math.pi)


def _gaussian_moments(activation: Activation, variances) -> np.ndarray:
    """Rows ``<s s''>_K``, ``<s'^2>_K``, ``<s^2>_K`` of the activation ``s`` for ``z ~ N(0, K)``, one column
    per variance ``K``."""
    variances = np.atleast_1d(np.asarray(variances, dtype=np.float64))
    value, first, second = activation.derivatives(np.sqrt(variances)[:, None] * _NODES, 2)
    return np.stack([(value * second) @ _WEIGHTS, (first * first) @ _WEIGHTS, (value * value) @ _WEIGHTS])


def _variance_update(activation: Activation, variance: float, weight_variance: float, bias_variance: float) -> float:
    """``K_{l+1} - K_l`` for one layer of an infinitely wide network initialised with ``(C_W, C_b)``."""
    return float(weight_variance * _gaussian_moments(activation, variance)[2, 0] + bias_variance - variance)


def critical_initialisation(activations, k_range: tuple[float, float] = (1e-3, 1e3), scan: int = 120,
                            relative_step: float = 1e-3) -> dict:
    """Critical initialisation of a deep fully connected network with each activation ``s``.

    Criticality (seed 002, Lemma 1) asks for a fixed point ``K*`` of the variance map
    ``K -> C_W <s^2>_K + C_b`` whose two susceptibilities are 1: ``chi_perp = C_W <s'^2>_K* = 1`` and
    ``chi_par = C_W (<s'^2>_K* + <s s''>_K*) = 1``. So ``K*`` is a root of ``<s s''>_K`` (bracketed on a
    log grid over ``k_range`` and refined by bisection), ``C_W* = 1 / <s'^2>_K*`` and
    ``C_b* = K* - C_W* <s^2>_K*``. Roots with ``C_b* < 0`` are not realisable and are dropped. Stability
    is read off the sign of the variance update at ``K* (1 -/+ relative_step)``: since the map's slope is 1
    at ``K*``, its curvature decides, and a fixed point with nonzero curvature attracts from one side only.
    Piecewise-linear activations (ReLU, leaky) have ``<s s''> = 0`` everywhere: every ``K`` is a fixed point
    with ``C_b* = 0``, as for He initialisation.

    Every activation of the set is ``z a(z / T)``, so the search runs at T = 1 (``k_range`` is read there)
    and Lemma 3 carries the result to the activation's T: ``K*`` and ``C_b*`` times T^2, ``C_W*`` unchanged.
    A fixed grid of quadrature nodes could not resolve the gate at very low or high T directly."""
    low, high = k_range
    if not 0 < low < high:
        raise AnalogizeError(f"the K range must satisfy 0 < low < high, got {k_range}")
    grid = np.geomspace(low, high, scan)
    rows = []
    for given in _activations(activations):
        activation, squared_temperature = given.at_unit_temperature(), given.temperature ** 2
        curvature = _gaussian_moments(activation, grid)[0]
        if np.all(np.abs(curvature) < 1e-12):
            weight_variance = float(1.0 / _gaussian_moments(activation, 1.0)[1, 0])
            rows.append({"activation": given.label, "temperature": given.temperature, "k_star": None,
                         "c_w": weight_variance, "c_b": 0.0, "stability": "every K is a fixed point"})
            continue
        found = []
        for index in np.flatnonzero(np.sign(curvature[:-1]) * np.sign(curvature[1:]) < 0):
            left, right = grid[index], grid[index + 1]
            left_sign = np.sign(curvature[index])
            for _ in range(40):
                middle = math.sqrt(left * right)
                if np.sign(_gaussian_moments(activation, middle)[0, 0]) == left_sign:
                    left = middle
                else:
                    right = middle
            k_star = math.sqrt(left * right)
            _, slope_moment, square_moment = _gaussian_moments(activation, k_star)[:, 0]
            weight_variance = float(1.0 / slope_moment)
            bias_variance = float(k_star - weight_variance * square_moment)
            if bias_variance < 0:
                continue
            below, above = (_variance_update(activation, k_star * (1 + s * relative_step), weight_variance,
                                             bias_variance) for s in (-1, 1))
            stability = ("stable" if below > 0 > above else "unstable" if below < 0 < above else
                         f"semi-stable (attracts from {'below' if below > 0 else 'above'})")
            found.append({"activation": given.label, "temperature": given.temperature,
                          "k_star": k_star * squared_temperature, "c_w": weight_variance,
                          "c_b": bias_variance * squared_temperature, "stability": stability})
        rows += found or [{"activation": given.label, "temperature": given.temperature, "k_star": None,
                           "c_w": None, "c_b": None,
                           "stability": f"no critical point with K* / T^2 in [{low:g}, {high:g}]"}]
    return {"analysis": "critical-init", "k_range": list(k_range), "rows": rows}


def critical_variances(activation: str) -> tuple[float, float]:
    """``(C_W*, C_b*)`` for initialising a network with ``activation``: the first realisable critical point
    (He's ``(2, 0)`` for ReLU)."""
    for row in critical_initialisation([activation])["rows"]:
        if row["c_w"] is not None:
            return row["c_w"], row["c_b"]
    raise AnalogizeError(f"{activation} has no critical initialisation; use the default initialisation")


def table(result: dict) -> str:
    """The analysis's rows as an aligned text table (floats to 6 significant digits)."""
    rows = result["rows"]
    if not rows:
        return "(no rows)"
    columns = list(rows[0])
    text = [[c for c in columns]] + [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[k]) for line in text) for k in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in text]
    summary = result.get("summary")
    if summary:
        lines.append("summary: " + ", ".join(f"{k} {_cell(v)}" for k, v in summary.items()))
    return "\n".join(lines)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "..".join(_cell(v) for v in value)
    return str(value)


def to_json(result: dict) -> dict:
    """``result`` without its arrays (the gradient-error maps), ready for ``json.dumps``."""
    return {k: v for k, v in result.items() if k != "maps"}


@figure_maker
def analysis_figure(result: dict):
    """The analysis's figure: error vs factor with the ReLU and smoothest maps (gradient-error); derivative
    estimate vs batch size beside the true derivatives (minibatch-bias); effective bits vs scale beside the
    input's own bits; GSD per activation. The title names the settings."""
    from .evaluate.results import Series, counted, draw_series, listed, pyplot, reference_line, set_title

    kind, rows = result["analysis"], result["rows"]
    if kind == "gradient-error":
        figure, axes = pyplot().subplots(1, 3, figsize=(13, 4.2))
        factors = [r["factor"] for r in rows]
        axes[0].semilogy(factors, [r["mean_error_near_zero"] for r in rows], marker="o",
                         label=f"|product| < {result['near_zero']:g}")
        axes[0].semilogy(factors, [r["mean_error"] for r in rows], marker="s", label="whole map")
        axes[0].set(xlabel="interpolation factor i", ylabel="mean gradient error", title="a) error vs i")
        axes[0].legend(fontsize=8)
        # one colour scale for both maps: each on its own, the smooth map's far smaller errors would fill the
        # scale as brightly as ReLU's
        largest = max(float(result["maps"][f].max()) for f in (factors[0], factors[-1]))
        for axis, factor, title in ((axes[1], factors[0], "b)"), (axes[2], factors[-1], "c)")):
            image = axis.imshow(result["maps"][factor], extent=(-1, 1, -1, 1), origin="lower", cmap="viridis",
                                vmin=0.0, vmax=largest)
            axis.set(xlabel="weight", ylabel="input", title=f"{title} i = {factor:g}")
            figure.colorbar(image, ax=axis, label="gradient error")
        set_title(figure, f"gradient error of the ReLU-{result['smooth'].upper()} interpolation behind a noisy "
                          f"analog product: p = {result['precision']:g}, EP {result['ep']:g} (noise std "
                          f"{result['std']:.3g}), {result['points']} x {result['points']} grid, "
                          f"{counted(result['repeats'], 'noise draw')}, seed {result['seed']}")
    elif kind == "minibatch-bias":
        figure, axis = pyplot().subplots(figsize=(9.5, 4.6))
        activations = list(dict.fromkeys(r["activation"] for r in rows))
        sides = (("0-", "v", "--"), ("0+", "^", ":"))
        series = [Series(f"{label} at {side}", [r["batch_size"] for r in mine], [r["batch_mean"] for r in mine],
                         [r["batch_spread"] for r in mine], marker)
                  for label in activations for side, marker, _ in sides
                  for mine in [[r for r in rows if r["activation"] == label and r["x"] == side]]]
        containers = draw_series(axis, series, log_x=True)
        # the true derivative does not depend on the batch size: a line each, in its estimate's colour
        references = [(label, side, style) for label in activations for side, _, style in sides]
        for (label, side, style), container in zip(references, containers):
            true = next(r["true_derivative"] for r in rows if r["activation"] == label and r["x"] == side)
            reference_line(axis, true, f"{label}: true f'({side}) = {true:.3g}", linestyle=style,
                           color=container.lines[0].get_color())
        axis.set(xscale="log", xlabel="mini-batch size n", ylabel="mean of f'(x + eps) over the batch",
                 title="eq. 12-13: batch estimates (mean ± std) and true derivatives")
        axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))  # beside: inside, it hides lines
        set_title(figure, f"{', '.join(activations)} at x = 0- and 0+: noise std {result['std']:.3g}, "
                          f"batch sizes {listed(r['batch_size'] for r in rows)}, "
                          f"{result['repeats']} batches per size, seed {result['seed']}")
    elif kind == "effective-bits":
        figure, axis = pyplot().subplots(figsize=(6, 4.4))
        axis.plot([r["scale"] for r in rows], [r["effective_bits"] for r in rows], marker="o")
        reference_line(axis, math.log2(result["precision"]),
                       f"input precision: log2 p = {math.log2(result['precision']):.3g} bits")
        # from 0 bits, so that the fall with the scale reads at its true size
        axis.set_ylim(bottom=min(0.0, *(r["effective_bits"] for r in rows)))
        axis.set(xlabel="GELU scale s", ylabel="effective bits of G_s' near 0")
        axis.legend(fontsize=8)
        set_title(figure, f"effective bits of the scaled GELU's derivative over the first step (Fig. 2c): "
                          f"input precision p = {result['precision']:g}, scales {listed(r['scale'] for r in rows)}")
    elif kind == "gsd":
        figure, axis = pyplot().subplots(figsize=(max(5, 0.8 * len(rows)), 4.4))
        bars = axis.bar(range(len(rows)), [r["gsd"] for r in rows])
        axis.bar_label(bars, fmt="%.3f", fontsize=8)  # a bar of height 0 shows as its number
        axis.set_xticks(range(len(rows)), [r["activation"] for r in rows], rotation=45, ha="right", fontsize=8)
        axis.set(ylabel=f"GSD at x0 = {rows[0]['x0']:g}")
        set_title(figure, f"gradient step discontinuity |f'(x0-) - f'(x0+)| at x0 = {rows[0]['x0']:g}")
    else:
        raise AnalogizeError(f"the {kind} analysis has no figure; use --json")
    figure.tight_layout()
    return figure


def plot(result: dict, path) -> None:
    """Write :func:`analysis_figure` to ``path``."""
    from .evaluate.results import save_figure

    save_figure(analysis_figure(result), path)
