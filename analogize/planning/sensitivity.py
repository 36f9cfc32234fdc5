"""``sensitivity``: where a model loses accuracy on analog hardware, unit by unit (an analog layer, or a graph
input's DAC).

For each unit it measures the **loss** when only that unit is analog (the clean model's metric minus that cell's)
and the **recovery** when only that unit is kept digital (that cell's metric minus the all-analog one's); units
are ranked by their mean (``cost``), so a unit that costs accuracy alone and in company comes first, and where
that ties (a metric that saturates: robust models, few samples) by the same mean of the primary output's relative
error (``error_cost``). The metric is accuracy when the data has labels, else top-1 agreement with the clean
model, else (an output without classes) the relative error, where loss and recovery are rises and drops in error.

It is one evaluate sweep: the graph is converted once, and each of the 1 + 2 L cells takes chains out of that one
graph by a per-cell plan (:func:`analogize.evaluate.engine.apply_plan`), with evaluate's noise draws, error bars,
workers and shards. Per site it also reports what the clean signal does inside its range, measured on the
noise-free converted model (at most :data:`STATISTICS_SAMPLES` samples): the fraction clipped at the full scale,
the fraction of non-zero values that round to zero (drowned below half a step), the RMS in units of the range,
and the noise std against that RMS.
"""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import onnx

from ..convert import SETTINGS_SCHEMA, ConvertOptions, convert
from ..data import Dataset, Feeds, Preprocessing, fixed_batch_size
from ..data.feeds import as_feeds
from .. import untrusted
from ..untrusted import Integer, Number
from ..errors import AnalogizeError
from ..evaluate.engine import Grid, evaluate, on_model_file
from ..passes.deterministic import noise_free
from ..passes.model import is_converted
from ..ranges.calibration import site_values
from .metrics import CLEAN_VALUE, LOWER_IS_BETTER, METRICS, scored_metric
from ..passes.chains import INPUT_UNIT_PREFIX
from ..plans import Plan

SENSITIVITY_FORMAT, SENSITIVITY_VERSION = "analogize.sensitivity", 1
STATISTICS_SAMPLES = 256
ALL_ANALOG = "all analog"
#: the keys of the evaluate result a sensitivity result carries over as they are
_CARRIED = ("model_sha256", "output", "kernels", "data", "grid", "options", "fidelity", "batch_size", "cell_count")


def analog_units(model: onnx.ModelProto, options: ConvertOptions) -> tuple[list[dict], list[dict]]:
    """The units convert makes analog, those that own a chain (layers, then graph inputs with a DAC: ``--where``
    may leave a layer without any), and its chain sites."""
    report = convert(model, replace(options, seed=None)).report
    owning = {owner for site in report["inserted"] for owner in site["owners"]}
    units = [{"unit": name, "kind": "layer", "op_type": report["layer_op_types"][name]} for name in report["layers"]
             if name in owning]
    units += [{"unit": INPUT_UNIT_PREFIX + site["tensor"], "kind": "input", "op_type": None}
              for site in report["inserted"] if site["site"] == "input"]
    if not units:
        raise AnalogizeError("sensitivity: convert inserts no chain in this model (convert --json says why)")
    return units, report["inserted"]


def unit_plans(units: list[dict], base: Plan | None) -> tuple:
    """The grid's plans: all analog, then per unit only it analog, then per unit only it digital; each over the
    user's plan ``base`` (whose digital layers are no units)."""
    names = [unit["unit"] for unit in units]
    base_units = dict(base.units) if base else {}
    base_sites = dict(base.sites) if base else {}

    def plan(digital) -> Plan:
        return Plan({**base_units, **{name: {"digital": True} for name in digital}}, base_sites)

    return ((ALL_ANALOG, plan(())),
            *((f"only {name} analog", plan([other for other in names if other != name])) for name in names),
            *((f"only {name} digital", plan([name])) for name in names))


def sensitivity(model: onnx.ModelProto, data: Dataset | Feeds, options: ConvertOptions | None = None, *,
                repeats: int = 5, seed: int = 0, preprocessing: Preprocessing = Preprocessing(),
                statistics: bool = True, metric: str | None = None, **settings) -> dict:
    """Rank the analog units of ``model`` by what they cost (see the module's docstring). ``metric`` (one of
    :data:`METRICS`; default: :func:`scored_metric`'s choice) is what loss and recovery are measured in. ``settings``
    are evaluate's (batch_size, fidelity, workers, shard, output, class_axis, outputs, device, progress); with a
    shard, the result is evaluate's partial result carrying what :func:`finish` needs after ``merge``."""
    options = options or ConvertOptions()
    if metric is not None and metric not in METRICS:
        raise AnalogizeError(f"sensitivity: unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if metric == "accuracy" and (settings.get("fidelity") or getattr(data, "labels", True) is None):
        raise AnalogizeError("sensitivity: --metric accuracy needs labelled data (and no --fidelity)")
    if is_converted(model):
        raise AnalogizeError("sensitivity takes the original (unconverted) model and convert's flags; it converts "
                             "it once itself")
    feeds = as_feeds(data, model, preprocessing)
    units, sites = analog_units(model, options)
    grid = Grid(repeats=repeats, seed=seed, plans=unit_plans(units, options.resolved_plan()))
    result = evaluate(model, feeds, grid, options, **settings)
    result["sensitivity"] = {"units": units, "metric": metric, "sites": site_statistics(model, options, feeds)
                             if statistics else _without_statistics(sites)}
    return result if result.get("shard") else finish(result)


UNMEASURED = {"max_abs": None, "rms": None, "clipped_fraction": None, "zero_fraction": None, "noise_to_signal": None}


def _without_statistics(sites: list[dict]) -> list[dict]:
    return [{**_site_entry(site), **UNMEASURED} for site in sites]


def _site_entry(site: dict) -> dict:
    return {"site": site["site"], "tensor": site["tensor"], "owners": site["owners"],
            "range_mode": site["range"].get("mode", "unit"), "range": site["range"], "precision": site["precision"],
            "std": site["std"]}


def site_statistics(model: onnx.ModelProto, options: ConvertOptions, feeds: Feeds) -> list[dict]:
    """Each chain site's clean signal in units of its range, on the noise-free converted model: its largest and
    RMS magnitude, the fraction clipped (above 1) and the fraction of non-zero values below half a step."""
    converted = convert(model, replace(options, seed=None))
    sites = converted.report["inserted"]
    probe = noise_free(converted.model)
    nodes = {node.name: node for node in probe.graph.node}
    tapped = {}  # chain -> the tensor its first clamp or rounding reads: the value over its range
    for site in sites:
        for element in ("clamp", "quantize"):
            node = nodes.get(f"{site['chain']}/{element}")
            if node is not None:
                tapped[site["chain"]] = node.input[0]
                break
    fixed = fixed_batch_size(model)
    batch = 1 if feeds.whole else fixed or min(len(feeds), 64)
    used = min(len(feeds), max(STATISTICS_SAMPLES, batch))
    batches = [feeds.batch(start, batch) for start in range(0, used - (used % batch if fixed else 0), batch)]
    seen = site_values(probe, list(tapped.values()), batches) if tapped else {}
    entries = []
    for site in sites:
        values = seen.get(tapped.get(site["chain"]))
        entry = _site_entry(site)
        magnitudes = values.magnitudes().astype(np.float64) if values is not None else None
        if magnitudes is None or not magnitudes.size:
            entries.append({**entry, **UNMEASURED})
            continue
        rms = math.sqrt(float(np.mean(magnitudes**2)))
        nonzero = magnitudes[magnitudes > 0]
        step = 0.5 / site["precision"] if site["precision"] else None
        entries.append({**entry, "max_abs": values.largest, "rms": rms,
                        "clipped_fraction": float(np.mean(magnitudes > 1.0)),
                        "zero_fraction": float(np.mean(nonzero < step)) if step and nonzero.size else None,
                        "noise_to_signal": site["std"] / rms if rms > 0 else None})
    return entries


#: what a shard carries for :func:`finish` (checked as a file from outside is: merge reads it from shard parts)
CARRIED_SCHEMA = {"units": [{"unit": str, "kind": str, "op_type": (str, None)}], "metric": (str, None),
                  "sites": [{"site": str, "owners": [str]}]}


_MEASURES = {str: (Number, None)}  # <metric>_mean and <metric>_std
_SITE = {"site": str, "tensor?": (str, None), "range_mode?": (str, None), "max_abs?": (Number, None),
         "rms?": (Number, None), "clipped_fraction?": (Number, None), "zero_fraction?": (Number, None),
         "range?": ({"mode?": str, "value?": Number, "min?": Number, "max?": Number, "channels?": Integer}, None)}
#: what the report's section and the figure read of a sensitivity result, as :mod:`analogize.untrusted` checks it
SENSITIVITY_SCHEMA = {
    "model?": (str, None), "model_sha256?": (str, None), "settings": SETTINGS_SCHEMA,
    "data": {"name": str, "samples": Integer, "labels?": bool}, "metric": str, "repeats": Integer, "seed": Integer,
    "cells?": Integer, "reference": {"analog?": _MEASURES, "digital?": _MEASURES},
    "units": [{"rank": Integer, "unit": str, "kind": str, "op_type?": (str, None), "loss": (Number, None),
               "loss_std?": (Number, None), "recovery": (Number, None), "recovery_std?": (Number, None),
               "only_analog?": _MEASURES, "only_digital?": _MEASURES, "sites?": [_SITE]}],
    "warnings": [str]}


def finish(result: dict) -> dict:
    """The sensitivity result of a whole evaluate result (one run, or merged shards) carrying ``sensitivity``."""
    hint = "write the shards again with analogize sensitivity --shard"
    carried = untrusted.check(result["sensitivity"], CARRIED_SCHEMA, "the shards' sensitivity record", hint)
    if carried["metric"] not in (None, *METRICS):
        raise AnalogizeError(f"the shards' sensitivity record names an unknown metric; {hint}")
    by_plan = {cell.get("plan"): cell for cell in result["cells"]}
    expected = [ALL_ANALOG, *(f"only {unit['unit']} {state}" for state in ("analog", "digital")
                              for unit in carried["units"])]
    if sorted(expected) != sorted(label for label in by_plan if isinstance(label, str)):
        raise AnalogizeError(f"the shards' cells are not the cells of their sensitivity record; {hint}")
    analog = by_plan[ALL_ANALOG]
    metric = carried.get("metric") or scored_metric(result["data"]["labels"] and not result["fidelity"], analog)
    digital = {"accuracy_mean": result["clean"]["accuracy_mean"], "accuracy_std": 0.0} if metric == "accuracy" \
        else {f"{metric}_mean": CLEAN_VALUE[metric], f"{metric}_std": 0.0}
    units = []
    for unit in carried["units"]:
        alone, without = by_plan[f"only {unit['unit']} analog"], by_plan[f"only {unit['unit']} digital"]
        loss = _difference(digital, alone, metric)
        recovery = _difference(without, analog, metric)
        error_loss, error_recovery = alone.get("rel_error_mean"), _difference(without, analog, "rel_error")[0]
        units.append({**unit, "loss": loss[0], "loss_std": loss[1], "recovery": recovery[0],
                      "recovery_std": recovery[1], "cost": None if None in (loss[0], recovery[0])
                      else (loss[0] + recovery[0]) / 2,
                      "error_cost": None if None in (error_loss, error_recovery) else (error_loss + error_recovery) / 2,
                      "only_analog": _metrics(alone),
                      "only_digital": _metrics(without),
                      "sites": [site for site in carried["sites"] if unit["unit"] in site["owners"]]})
    ranked = sorted(units, key=lambda unit: tuple(-math.inf if unit[key] is None else unit[key]
                                                  for key in ("cost", "error_cost")), reverse=True)
    for rank, unit in enumerate(ranked, start=1):
        unit["rank"] = rank
    return {"format": SENSITIVITY_FORMAT, "version": SENSITIVITY_VERSION, "model": result.get("model"),
            **{key: result[key] for key in _CARRIED}, "settings": ConvertOptions.from_dict(result["options"]).summary(),
            "metric": metric, "repeats": result["grid"]["repeats"], "seed": result["grid"]["seed"],
            "reference": {"analog": _metrics(analog), "digital": digital},
            "units": ranked, "cells": len(result["cells"]), "warnings": result["warnings"]}


def _difference(better: dict, worse: dict, metric: str) -> tuple:
    """How much better ``better`` is in ``metric`` (an error metric is better lower) and the spread: the two cells'
    std over noise draws, added in quadrature."""
    high, low = better.get(f"{metric}_mean"), worse.get(f"{metric}_mean")
    if high is None or low is None:
        return None, None
    gain = low - high if metric in LOWER_IS_BETTER else high - low
    return gain, math.hypot(better.get(f"{metric}_std") or 0.0, worse.get(f"{metric}_std") or 0.0)


def _metrics(cell: dict) -> dict:
    return {key: value for key, value in cell.items() if key.endswith(("_mean", "_std"))}




def sensitivity_file(model_path, data: str, options: ConvertOptions | None = None, **settings) -> dict:
    """:func:`sensitivity` on a model file and a data spec (see :func:`~analogize.evaluate.engine.on_model_file`)."""
    return on_model_file(sensitivity, model_path, data, options, labels=not settings.get("fidelity"), **settings)
