"""Sensitivity and plan-search results as a terminal table, CSV and figures (JSON goes through
:func:`analogize.evaluate.results.write_json`)."""
from __future__ import annotations

from ..evaluate.results import (chain_text, figure_maker, model_name, percent_axis, pyplot, save_figure, set_title,
                                write_rows)
from .metrics import LOWER_IS_BETTER

SENSITIVITY_CSV_COLUMNS = ("rank", "unit", "kind", "op_type", "cost", "loss", "loss_std", "recovery", "recovery_std",
                           "worst_clipped_fraction", "worst_zero_fraction", "worst_noise_to_signal")


def _worst(unit: dict, key: str):
    values = [site[key] for site in unit["sites"] if site.get(key) is not None]
    return max(values) if values else None


def sensitivity_rows(result: dict) -> list[dict]:
    return [{"rank": unit["rank"], "unit": unit["unit"], "kind": unit["kind"], "op_type": unit["op_type"],
             "cost": unit["cost"], "loss": unit["loss"], "loss_std": unit["loss_std"], "recovery": unit["recovery"],
             "recovery_std": unit["recovery_std"], "worst_clipped_fraction": _worst(unit, "clipped_fraction"),
             "worst_zero_fraction": _worst(unit, "zero_fraction"),
             "worst_noise_to_signal": _worst(unit, "noise_to_signal")} for unit in result["units"]]


def write_sensitivity_csv(result: dict, path) -> None:
    write_rows(sensitivity_rows(result), SENSITIVITY_CSV_COLUMNS, path)


def _points(value, scale: float = 100.0) -> str:
    return "-" if value is None else f"{scale * value:+.1f}"


def _share(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _tail(name: str, width: int) -> str:
    """Long layer names share their start (an exporter's scope path): their end tells them apart."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


def sensitivity_table(result: dict) -> str:
    metric = result["metric"]
    reference = result["reference"]
    lines = [f"{metric}: clean {_share(reference['digital'].get(f'{metric}_mean'))} %, all analog "
             f"{_share(reference['analog'].get(f'{metric}_mean'))} % ({result['repeats']} draws; loss: clean minus "
             f"only this unit analog; recovery: only this unit digital minus all analog; points of {metric})",
             f"{'rank':>4}  {'unit':<32} {'op':<8} {'loss':>12} {'recovery':>12} {'clip %':>7} {'zero %':>7} "
             f"{'noise/rms':>9}"]
    for row in sensitivity_rows(result):
        loss = f"{_points(row['loss'])} ± {100 * (row['loss_std'] or 0):.1f}"
        recovery = f"{_points(row['recovery'])} ± {100 * (row['recovery_std'] or 0):.1f}"
        ratio = "-" if row["worst_noise_to_signal"] is None else f"{row['worst_noise_to_signal']:.3f}"
        lines.append(f"{row['rank']:>4}  {_tail(row['unit'], 32):<32} {(row['op_type'] or 'input')[:8]:<8} {loss:>12} "
                     f"{recovery:>12} {_share(row['worst_clipped_fraction']):>7} "
                     f"{_share(row['worst_zero_fraction']):>7} {ratio:>9}")
    return "\n".join(lines)


def settings_line(settings: dict) -> str:
    """Bits, EP, ranges and the chain's parts, as every figure's title gives them."""
    options = settings["options"]
    bits = f"{options['bits']} bits" if options.get("bits") is not None else f"p = {settings['precision']:g}"
    ep = f"EP {settings['ep']:.3g}" if settings.get("ep") is not None else f"noise std {settings['std']:.3g}"
    return f"{bits}, {ep}; {chain_text(options)}"


def plot_sensitivity(result: dict, path) -> None:
    save_figure(sensitivity_figure(result), path)


@figure_maker
def sensitivity_figure(result: dict):
    """Loss and recovery per unit, ranked, with their spread over noise draws as error bars."""
    plt = pyplot()
    units = result["units"]
    metric = result["metric"]
    figure, axis = plt.subplots(figsize=(8, 1.2 + 0.45 * len(units)))
    rows = list(range(len(units)))[::-1]
    for offset, key, colour in ((0.2, "loss", "tab:red"), (-0.2, "recovery", "tab:blue")):
        values = [100 * (unit[key] or 0.0) for unit in units]
        spreads = [100 * (unit[f"{key}_std"] or 0.0) for unit in units]
        axis.barh([row + offset for row in rows], values, height=0.4, xerr=spreads, color=colour, zorder=3,
                  capsize=3, label=f"{key} (points of {metric})")
    axis.set_yticks(rows, [unit["unit"] for unit in units])
    axis.axvline(0, color="black", linewidth=0.8, zorder=2)
    axis.grid(axis="x", alpha=0.3, zorder=0)
    axis.set_xlabel(f"points of {metric}")
    axis.legend(loc="lower right")
    set_title(figure, f"{model_name(result)}: per-unit sensitivity ({result['data']['name']}, "
              f"{result['data']['samples']} samples, {result['repeats']} draws)", settings_line(result["settings"]))
    figure.tight_layout()
    return figure


def plan_table(result: dict) -> str:
    target, cost = result["target"], result["cost"]
    lines = [f"{'step':>4}  {'change':<44} {target['metric']:>16} {'digital':>7} {'bits':>5}  met"]
    for step in result["steps"]:
        value = "-" if step["metric_mean"] is None else \
            f"{100 * step['metric_mean']:.2f} ± {100 * (step['metric_std'] or 0):.2f}"
        lines.append(f"{step['step']:>4}  {step['change'][:44]:<44} {value:>16} {step['digital_layers']:>7} "
                     f"{step['total_bits']:>5}  {'yes' if step['met'] else 'no'}")
    verified = result["verification"]["cells"][0].get(f"{target['metric']}_mean")
    lines.append(f"plan: {cost['digital_layers']} digital units, {cost['total_bits']} bits over the analog units; "
                 f"verified {target['metric']} {_share(verified)} % ({result['verify_repeats']} draws) against the "
                 f"target {100 * target['value']:g} %: {'met' if result['met'] else 'NOT met'}")
    for unit, entry in result["plan"]["layers"].items():
        lines.append(f"  {unit}: {'digital' if entry.get('digital') else str(entry['bits']) + ' bits'}")
    return "\n".join(lines)


def plot_plan(result: dict, path) -> None:
    save_figure(plan_figure(result), path)


@figure_maker
def plan_figure(result: dict):
    """The metric of each search step with its spread, and the target."""
    plt = pyplot()
    target = result["target"]
    steps = result["steps"]
    figure, axis = plt.subplots(figsize=(8, 4))
    values = [100 * (step["metric_mean"] or 0.0) for step in steps]
    axis.errorbar(range(len(steps)), values, yerr=[100 * (step["metric_std"] or 0.0) for step in steps], fmt="o-",
                  capsize=3, zorder=3, label=target["metric"])
    axis.axhline(100 * target["value"], color="tab:red", linestyle="--", zorder=2, label="target")
    percent_axis(axis)
    axis.set_xticks(range(len(steps)), [str(step["step"]) for step in steps])
    axis.set_xlabel("search step")
    axis.set_ylabel(f"{target['metric']} %")
    axis.grid(alpha=0.3, zorder=0)
    axis.legend(loc="lower right")
    comparison = "<=" if target["metric"] in LOWER_IS_BETTER else ">="
    set_title(figure, f"{model_name(result)}: plan search for {target['metric']} {comparison} "
              f"{100 * target['value']:g} % ({result['repeats']} draws per step)",
              f"{settings_line(result['settings'])}; bits per unit among "
              f"{', '.join(map(str, result['bounds']['bits']))}")
    figure.tight_layout()
    return figure
