"""The figures of the sensitivity and plan-search results, drawn as :mod:`analogize.evaluate.results` draws
evaluate's: ``plot_*(result, path)`` writes a file atomically, or a PNG into a binary file object."""
from __future__ import annotations

from pathlib import Path

from ..evaluate.results import pyplot, save_figure

MIN_PLAN_SPAN = 25.0  # percentage points: the narrowest y axis of the plan-search plot


def file_name(path) -> str:
    """A model's file name without its folders, or a placeholder for a model that was in memory."""
    return Path(path).name if path else "model in memory"


def model_name(result: dict) -> str:
    return file_name(result.get("model"))


def plain_text(text: str) -> str:
    """``text`` as matplotlib shows it literally: a ``$`` in a model's name must not start mathtext."""
    return str(text).replace("$", r"\$")


def _percentage_points(value) -> float:
    return 100 * (value or 0.0)


def plot_sensitivity(result: dict, path) -> None:
    """Per unit, most sensitive at the top: the metric lost when only that unit is analog and the metric regained
    when only that unit is kept digital, mean ± std over the noise draws, in percentage points. The title names
    the model, the precision, noise, ranges, data and draws."""
    units = sorted(result["units"], key=lambda unit: unit["rank"])
    metric = result["metric"]
    settings = result["settings"]
    figure, axis = pyplot().subplots(figsize=(8.4, 1.8 + 0.5 * len(units)), layout="constrained")
    rows = range(len(units))
    height = 0.38
    for offset, key, label, colour in ((-height / 2, "loss", "lost when only this unit is analog", "C3"),
                                       (height / 2, "recovery", "regained when only this unit is digital", "C0")):
        values = [_percentage_points(unit[key]) for unit in units]
        spreads = [_percentage_points(unit.get(f"{key}_std")) for unit in units]
        axis.barh([row + offset for row in rows], values, height, xerr=spreads, color=colour, label=label,
                  capsize=3, error_kw={"zorder": 4}, zorder=3)
    axis.set_yticks(list(rows), [f"{unit['rank']}. {plain_text(unit['unit'])} "
                                 f"({plain_text(unit.get('op_type') or unit['kind'])})" for unit in units])
    axis.invert_yaxis()
    # negative values (a unit that helps by chance) stay visible; otherwise the axis starts at 0, not at the
    # smallest bar, so that small differences do not look large
    lowest = min((_percentage_points(unit[key]) - _percentage_points(unit.get(f"{key}_std"))
                  for unit in units for key in ("loss", "recovery")), default=0.0)
    axis.set_xlim(left=min(0.0, lowest * 1.1))
    axis.axvline(0, color="black", linewidth=0.8, zorder=2)
    axis.set_axisbelow(True)
    axis.grid(axis="x", alpha=0.3)
    axis.set_xlabel(f"{metric} (percentage points)")
    figure.legend(fontsize=8, loc="outside lower center", ncol=2)
    ranges = settings.get("range_modes") or {}
    data = result["data"]
    axis.set_title(f"{plain_text(model_name(result))}: {metric} per unit; precision p={settings['precision']:g}, "
                   f"noise std {settings['std']:g} (EP {settings['ep']:g}),\nranges: weights "
                   f"{plain_text(ranges.get('weights'))}, activations {plain_text(ranges.get('activations'))}; "
                   f"{plain_text(data['name'])}, {data['samples']} samples; {result['repeats']} noise draws "
                   f"(mean ± std)", fontsize=9)
    save_figure(figure, path)


def plot_plan_search(result: dict, path) -> None:
    """The metric (mean ± std over the noise draws) after each step of the search, the steps that meet the target
    marked, and the target as a horizontal line. The y axis shows the target and every point and spans at least
    :data:`MIN_PLAN_SPAN` points, so that differences of a fraction of a point do not look large. The title names
    the model, the target, the bounds and the outcome."""
    from matplotlib.ticker import MaxNLocator

    steps = result["steps"]
    target = result["target"]
    metric = target["metric"]
    figure, axis = pyplot().subplots(figsize=(8.4, 4.2))
    xs = [step["step"] for step in steps]
    means = [_percentage_points(step["metric_mean"]) for step in steps]
    spreads = [_percentage_points(step.get("metric_std")) for step in steps]
    axis.errorbar(xs, means, yerr=spreads, marker="o", capsize=3, zorder=3, label=f"{metric} (mean ± std)")
    met = [(x, mean) for x, mean, step in zip(xs, means, steps) if step.get("met")]
    if met:
        axis.scatter(*zip(*met), marker="*", s=160, color="C2", zorder=4, label="meets the target")
    axis.axhline(100 * target["value"], color="C3", linestyle="--", zorder=2,
                 label=f"target {100 * target['value']:g} %")
    highest = max([100.0, *(mean + spread for mean, spread in zip(means, spreads))])
    lowest = min([100 * target["value"], *(mean - spread for mean, spread in zip(means, spreads))])
    bottom = max(0.0, min(lowest - 0.1 * (highest - lowest), highest - MIN_PLAN_SPAN))
    axis.set_ylim(bottom, highest + 0.04 * (highest - bottom))
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_axisbelow(True)
    axis.grid(alpha=0.3)
    axis.set(xlabel="search step", ylabel=f"{metric} (%)")
    axis.legend(fontsize=8, loc="best")
    bounds = result["bounds"]
    digital = "no layer digital" if not bounds.get("digital") else \
        "layers may be digital" if bounds.get("max_digital") is None else f"at most {bounds['max_digital']} digital"
    outcome = "target met" if result.get("met") else "target not met"
    axis.set_title(f"{plain_text(model_name(result))}: plan search for {metric} ≥ {100 * target['value']:g} %\n"
                   f"bits {', '.join(str(b) for b in bounds.get('bits') or [])}, {digital}; {outcome}", fontsize=9)
    figure.tight_layout()
    save_figure(figure, path)
