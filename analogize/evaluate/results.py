"""Evaluation results: merging shards, and writing them as a terminal table, JSON, CSV and a plot.

A result is the dict :func:`analogize.evaluate.evaluate` returns (schema ``analogize.evaluate`` version 2):
``clean`` (the unconverted model), ``baselines`` (each swapped activation without noise or quantisation),
and ``cells``, one record per grid cell with ``bits``, ``precision``, ``ep``, ``std``, ``activation``,
``repeats``, ``seed`` and ``<metric>_mean`` / ``<metric>_std`` for the primary output's accuracy, top5, agreement,
rel_error, cosine and snr_db (with ``snr_note`` where SNR has no value, ``invalid_batches`` and a ``note`` where
the output could not be compared), and, for models with several outputs, ``outputs``: the same metrics for
each output by name.
"""
from __future__ import annotations

import csv
import functools
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import AnalogizeError
from .engine import RESULT_FORMAT, RESULT_VERSION
from ..convert import OPTIONS_SCHEMA
from ..model_io import atomic_output
from ..noise_model import DEFAULT_BIT_CONVENTION
from ..untrusted import Integer, Number, check, read_json

PLOT_FORMATS = ("png", "pdf", "svg")
METRICS = ("accuracy", "top5", "agreement", "rel_error", "cosine", "snr_db")
CSV_COLUMNS = ("kind", "activation", "bits", "precision", "ep", "std", "repeats", "seed",
               *(f"{m}_{s}" for m in METRICS for s in ("mean", "std")), "snr_note", "output")
_SETTING_COLUMNS = ("activation", "bits", "precision", "ep", "std", "repeats", "seed")
# Everything but the cells and the shard position must agree between shards of one sweep.
_SWEEP_KEYS = ("format", "version", "model_sha256", "output", "kernels", "device", "data", "grid", "options",
               "converted_input", "fidelity", "batch_size", "clean", "baselines", "cell_count")


_MEASURED = {**{f"{metric}_{statistic}?": (Number, None) for metric in (*METRICS, "invalid_batches")
                for statistic in ("mean", "std")}, "snr_note?": str, "note?": str}
_BASELINE = {**_MEASURED, "activation": str, "outputs?": {str: _MEASURED}}
_CELL = {**_BASELINE, "bits": (Integer, None), "precision": (Number, None), "ep": Number, "std": Number,
         "repeats": Integer, "seed?": Integer, "cell": Integer}
#: what merge, the report and the result's table, CSV and plot read of a result, as analogize.untrusted checks it
RESULT_SCHEMA = {
    "format": str, "version": Integer, "model?": str, "model_sha256": str, "output": str, "converted_input": bool,
    "data": {"name": str, "samples": Integer, "classes?": (Integer, None), "labels": bool, "adaptations?": [str]},
    "grid": {"bits": [(Integer, None)], "ep": [(Number, None)], "activation": [str], "repeats": Integer,
             "seed": Integer}, "options": OPTIONS_SCHEMA, "clean": _MEASURED,
    "baselines": [_BASELINE], "cells": [_CELL], "cell_count": Integer, "warnings?": [str],
    "shard?": ({"index": Integer, "count": Integer}, None)}


def load_result(path) -> dict:
    hint = "give the --json result of 'analogize evaluate --shard'"
    result = read_json(path, "the result", hint)
    if not isinstance(result, dict) or result.get("format") != RESULT_FORMAT:
        raise AnalogizeError(f"{path} is not an 'analogize evaluate' result (no format {RESULT_FORMAT!r})")
    if result.get("version") != RESULT_VERSION:
        raise AnalogizeError(f"{path} has result version {result.get('version')}; this analogize reads "
                             f"version {RESULT_VERSION}")
    return check(result, RESULT_SCHEMA, f"the result {path}", hint)


def merge_results(parts: list[dict]) -> dict:
    """Join the shards of one sweep into the result an unsharded run gives; refuse mixed or missing shards."""
    if not parts:
        raise AnalogizeError("nothing to merge: give the shard result files")
    first = parts[0]
    for number, part in enumerate(parts[1:], start=2):
        for key in _SWEEP_KEYS:
            if part.get(key) != first.get(key):
                raise AnalogizeError(f"result {number} differs from result 1 in {key!r}: these files are not "
                                     f"shards of the same sweep")
    counts = {None if p.get("shard") is None else p["shard"]["count"] for p in parts}
    if None in counts or len(counts) != 1:
        raise AnalogizeError("merge takes shard results (written with --shard I/N) of one N")
    count = counts.pop()
    indices = sorted(p["shard"]["index"] for p in parts)
    if count != len(parts) or indices != list(range(count)):
        present = set(indices)  # the first few missing only: the count is the file's to choose
        missing = list(itertools.islice((i for i in range(count) if i not in present), 8))
        repeated = sorted({i for i in indices if indices.count(i) > 1})
        raise AnalogizeError(f"shards of {count}: " + "; ".join(filter(None, [
            f"missing {', '.join(f'{i}/{count}' for i in missing)}" if missing else "",
            f"given twice {', '.join(f'{i}/{count}' for i in repeated)}" if repeated else ""])))
    cells = sorted((c for p in parts for c in p["cells"]), key=lambda c: c["cell"])
    if len(cells) != first["cell_count"] or [c["cell"] for c in cells] != list(range(len(cells))):
        raise AnalogizeError("the shards do not hold every cell of the grid exactly once")
    return {**first, "cells": cells, "shard": None}


def write_json(result: dict, path) -> None:
    text = json.dumps(result, indent=2, allow_nan=False)
    if str(path) == "-":
        print(text)
        return
    with atomic_output(path) as temporary:
        temporary.write_text(text + "\n")


def csv_rows(result: dict) -> list[dict]:
    """One row for the clean model, and per baseline and cell one row for each output, the primary first."""
    primary = result["output"]
    rows = [{"kind": "clean", "output": primary, "activation": "clean", **_metric_columns(result["clean"])}]
    for kind, records in (("baseline", result["baselines"]), ("cell", result["cells"])):
        for record in records:
            settings = {k: record.get(k) for k in _SETTING_COLUMNS if k in record}
            rows.append({**settings, "kind": kind, "output": primary, **_metric_columns(record)})
            rows += [{**settings, "kind": kind, "output": name, **_metric_columns(metrics)}
                     for name, metrics in record.get("outputs", {}).items() if name != primary]
    return [{column: row.get(column) for column in CSV_COLUMNS} for row in rows]


def _metric_columns(record: dict) -> dict:
    columns = {f"{m}_{s}": record[f"{m}_{s}"] for m in METRICS for s in ("mean", "std") if f"{m}_{s}" in record}
    return {**columns, "snr_note": record.get("snr_note")}


def write_csv(result: dict, path) -> None:
    write_rows(csv_rows(result), CSV_COLUMNS, path)


def write_rows(rows: list[dict], columns, path) -> None:
    """``rows`` as a CSV file with a header of ``columns``, written atomically."""
    with atomic_output(path) as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


def _percent(record: dict, metric: str) -> str:
    mean = record.get(f"{metric}_mean")
    if mean is None:
        return "-"
    spread = record.get(f"{metric}_std") or 0.0
    return f"{100 * mean:5.1f} ± {100 * spread:3.1f}"


def _number(record: dict, metric: str) -> str:
    mean = record.get(f"{metric}_mean")
    if mean is None:
        return "-"
    shown = f"{mean:.5f}" if metric == "cosine" else f"{mean:.3g}"  # cosines that matter lie close to 1
    return f"{shown} ± {record.get(f'{metric}_std') or 0.0:.2g}"


_SNR_NOTES = {"identical to the noise-free output": "identical", "the noise-free output is all zero": "zero ref"}


def _decibels(record: dict) -> str:
    if record.get("snr_note"):
        return _SNR_NOTES.get(record["snr_note"], "see JSON")
    mean = record.get("snr_db_mean")
    return "-" if mean is None else f"{mean:5.1f} ± {record.get('snr_db_std') or 0.0:3.1f}"


def _columns(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(header[k]), *(len(r[k]) for r in rows)) if rows else len(header[k]) for k in range(len(header))]
    return ["  ".join(h.ljust(w) for h, w in zip(header, widths)),
            *("  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows)]


def _cell_settings(cell: dict) -> list[str]:
    return [cell["activation"], "-" if cell["bits"] is None else str(cell["bits"]),
            "-" if cell["precision"] is None else f"{cell['precision']:g}", f"{cell['ep']:.3g}", f"{cell['std']:.4g}"]


def table(result: dict) -> str:
    """The terminal table: the primary output's numbers as mean ± std over the repeats, clean model first; then,
    for models with several outputs, each output's."""
    labelled = result["data"]["labels"]
    top5 = labelled and any("top5_mean" in c for c in [result["clean"], *result["cells"]])
    data = result["data"]
    classes = f", {data['classes']} classes" if data.get("classes") else ""
    lines = [f"{data['name']}: {data['samples']} samples{classes}, output {result['output']!r}"
             + ("" if labelled else " (no labels: fidelity to the clean model)")]
    if data.get("adaptations"):
        lines.append(f"data adapted to the model: {'; '.join(data['adaptations'])}")
    lines += result.get("warnings", [])
    clean_name = "digital model (analog chains removed)" if result["converted_input"] else "clean model"
    if labelled:
        lines.append(f"{clean_name}: top-1 {_percent(result['clean'], 'accuracy')} %"
                     + (f", top-5 {_percent(result['clean'], 'top5')} %" if top5 else ""))
    for baseline in result["baselines"]:
        lines.append(f"{baseline['activation']} without noise or quantisation: "
                     + (f"top-1 {_percent(baseline, 'accuracy')} %, " if labelled else "")
                     + f"agreement {_percent(baseline, 'agreement')} %, "
                     f"relative error {_number(baseline, 'rel_error')}")
    header = ["activation", "bits", "precision", "EP", "noise std"] + (["top-1 %"] if labelled else []) \
        + (["top-5 %"] if top5 else []) + ["agreement %", "rel. error", "SNR dB", "repeats"]
    rows = [_cell_settings(cell) + ([_percent(cell, "accuracy")] if labelled else [])
            + ([_percent(cell, "top5")] if top5 else [])
            + [_percent(cell, "agreement"), _number(cell, "rel_error"), _decibels(cell), str(cell["repeats"])]
            for cell in result["cells"]]
    lines += _columns(header, rows)
    if any(len(cell.get("outputs", {})) > 1 for cell in result["cells"]):
        lines.append("each output:")
        rows = [_cell_settings(cell) + [name, _percent(metrics, "agreement"), _number(metrics, "rel_error"),
                                        _number(metrics, "cosine"), _decibels(metrics)]
                for cell in result["cells"] for name, metrics in cell["outputs"].items()]
        lines += _columns(["activation", "bits", "precision", "EP", "noise std", "output", "agreement %",
                           "rel. error", "cosine", "SNR dB"], rows)
    if result.get("shard"):
        lines.append(f"shard {result['shard']['index']}/{result['shard']['count']}: "
                     f"{len(result['cells'])} of {result['cell_count']} cells")
    return "\n".join(lines)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display is needed or used)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as module

    return module


def figure_maker(draw):
    """Decorator of every function that draws a figure and returns it: pyplot keeps each figure it opened until
    it is closed, so when drawing fails halfway (a field of a forged result), the figures the call opened are
    closed before the error goes on."""
    @functools.wraps(draw)
    def drawn(*args, **kwargs):
        plt = pyplot()
        before = set(plt.get_fignums())
        try:
            return draw(*args, **kwargs)
        except BaseException:
            for number in set(plt.get_fignums()) - before:
                plt.close(number)
            raise
    return drawn


def save_figure(figure, path) -> None:
    """Write ``figure`` atomically, in the format its suffix names (PNG by default), and release it, written or
    not. ``path`` may also be a binary file object, which gets a PNG: so every plot function can draw into memory
    for a report."""
    try:
        if hasattr(path, "write"):
            figure.savefig(path, dpi=120, format="png")
        else:
            with atomic_output(path) as temporary:
                figure.savefig(temporary, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        pyplot().close(figure)


# Reference lines (the clean model, accuracy before and after training, true derivatives) lie under the
# measured series, and the series draw their error bars over their own and every other series' lines, so no
# bar is hidden.
REFERENCE_ZORDER = 1.8
SERIES_ZORDER = 2.5
# Series that share x values are spread sideways over this share of the smallest gap between x values (of
# the decades on a log axis): drawn at the same x, the last series would cover the others' error bars.
_DODGE_SHARE = 0.08


@dataclass(frozen=True)
class Series:
    """One line of a figure: its means with their spread (one std) as error bars."""

    label: str
    x: list
    y: list
    spread: list
    marker: str = "o"


def draw_series(axis, series: list[Series], *, log_x: bool = False) -> list:
    """Draw each series as markers and error bars joined by a line, nudged apart sideways; return their
    containers."""
    places = np.unique(np.concatenate([np.asarray(s.x, dtype=float) for s in series]))
    places = np.log10(places) if log_x else places
    gap = float(np.diff(places).min()) if len(places) > 1 else 1.0
    step = _DODGE_SHARE * gap / max(len(series) - 1, 1)
    containers = []
    for index, line in enumerate(series):
        shift = step * (index - (len(series) - 1) / 2)
        x = np.asarray(line.x, dtype=float)
        containers.append(axis.errorbar(x * 10**shift if log_x else x + shift, line.y, yerr=line.spread,
                                        marker=line.marker, capsize=3, barsabove=True, zorder=SERIES_ZORDER,
                                        label=line.label))
    return containers


def reference_line(axis, value: float, label: str, **style) -> None:
    axis.axhline(value, zorder=REFERENCE_ZORDER, label=label, **{"color": "grey", "linestyle": "--", **style})


def percent_axis(axis) -> None:
    """Accuracy and agreement on their whole scale, 0 to 100 %: zoomed to the data, a spread of a fraction of
    a point fills the panel and looks like a collapse (the tables carry the exact numbers). The top leaves
    room for the error bars of points at 100 %."""
    axis.set_ylim(0, 103)


def integer_ticks(axis) -> None:
    """Whole-number ticks on the x axis (epochs, bits, depths have no values between)."""
    from matplotlib.ticker import MaxNLocator

    axis.xaxis.set_major_locator(MaxNLocator(integer=True))


_CONVENTION_TEXT = {"pow2": "p = 2^bits", "pow2-minus-1": "p = 2^bits - 1"}
_CHAIN_PARTS = {"noise": "noise", "quantize": "quantisation", "clamp": "clamping"}


def chain_text(options: dict) -> str:
    """Convert's options (as ``asdict(ConvertOptions)`` records them) in the words a figure title has room
    for: the range modes (resolved, so a default is named), the bit convention where bits set the precision,
    and parts of the chain turned off."""
    from ..convert import ConvertOptions

    ranges = ConvertOptions.from_dict(options).range_settings()
    words = [f"ranges: weights {ranges.weights}, activations {ranges.activations}"]
    if options.get("quantize", True) and options.get("precision") is None:
        words.append(_CONVENTION_TEXT[options.get("bit_convention", DEFAULT_BIT_CONVENTION)])
    off = [name for part, name in _CHAIN_PARTS.items() if options.get(part) is False]
    return "; ".join(words + ([f"without {', '.join(off)}"] if off else []))


def set_title(figure, *lines: str) -> None:
    """``lines`` as the figure's title, each wrapped to the figure's width (a title cut at the edge loses the
    settings at its end)."""
    import textwrap

    width = int(13 * figure.get_figwidth())  # characters of the 9-point title per inch
    figure.suptitle("\n".join(textwrap.fill(line, width) for line in lines), fontsize=9)


def listed(values) -> str:
    """Distinct numbers in order, as a title lists them."""
    return ", ".join(f"{v:g}" for v in sorted(set(values)))


def counted(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def model_name(result: dict) -> str:
    """The model's file stem, or for a result of the Python API (no path) its hash's start; a ``$`` in a file name
    is escaped, since matplotlib would read it as the start of mathtext."""
    name = Path(result["model"]).stem if result.get("model") else f"model sha256 {result['model_sha256'][:12]}"
    return name.replace("$", r"\$")


def _bits_label(cell: dict) -> str:
    if cell["bits"] is not None:
        return f"{cell['bits']} bits"
    return "unquantised" if cell["precision"] is None else f"p = {cell['precision']:g}"


@figure_maker
def evaluation_figure(result: dict):
    """Accuracy (or agreement, or for outputs without classes the relative error) of the primary output against
    EP, one line per bit width, one panel per activation; the clean model and the activation's noise-free
    baseline as references, as in the paper's accuracy-vs-EP figures. With one EP value, bits go on the x axis.
    The title names the model, the output, the data and the settings."""
    activations = list(dict.fromkeys(c["activation"] for c in result["cells"]))
    if not activations:
        raise AnalogizeError("the result has no cells to plot")
    if result["data"]["labels"]:
        metric, scale, label = "accuracy", 100, "top-1 accuracy (%)"
    elif any(c.get("agreement_mean") is not None for c in result["cells"]):
        metric, scale, label = "agreement", 100, "top-1 agreement with clean (%)"
    else:
        metric, scale, label = "rel_error", 1, "relative error against clean"
    eps = sorted({c["ep"] for c in result["cells"]})
    along_ep = len(eps) > 1 or any(c["bits"] is None for c in result["cells"])
    figure, axes = pyplot().subplots(1, len(activations), figsize=(4.2 * len(activations), 4.2), sharey=True,
                                     squeeze=False)
    for axis, activation in zip(axes[0], activations):
        cells = [c for c in result["cells"] if c["activation"] == activation]
        groups = sorted({c["bits"] if along_ep else c["ep"] for c in cells}, key=lambda v: (v is None, v))
        series = []
        for group in groups:
            members = sorted((c for c in cells if (c["bits"] if along_ep else c["ep"]) == group
                              and c.get(f"{metric}_mean") is not None),
                             key=lambda c: c["ep"] if along_ep else c["bits"])
            if members:
                series.append(Series(_bits_label(members[0]) if along_ep else f"EP {group:g}",
                                     [c["ep"] if along_ep else c["bits"] for c in members],
                                     [scale * c[f"{metric}_mean"] for c in members],
                                     [scale * c[f"{metric}_std"] for c in members]))
        if series:
            draw_series(axis, series)
        if metric == "accuracy":
            reference_line(axis, 100 * result["clean"]["accuracy_mean"], "clean")
        baseline = next((b for b in result["baselines"] if b["activation"] == activation), None)
        if baseline is not None and baseline.get(f"{metric}_mean") is not None:
            reference_line(axis, scale * baseline[f"{metric}_mean"], f"{activation} without noise or quantisation",
                           linestyle=":")
        if metric == "rel_error":
            axis.set_ylim(bottom=0)  # an error's natural base: zoomed, a small change would look large
        else:
            percent_axis(axis)
        if not along_ep:
            integer_ticks(axis)
        axis.set_title(activation)
        axis.set_xlabel("error probability (EP)" if along_ep else "bits")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    axes[0][0].set_ylabel(label)
    data = result["data"]
    bits = ", ".join(dict.fromkeys(_bits_label(c) for c in sorted(
        result["cells"], key=lambda c: (c["bits"] is None, c["bits"] or 0, c["precision"] or 0))))
    chain = "settings as converted" if result["converted_input"] else chain_text(result["options"])
    set_title(figure,
              f"{model_name(result)}: output {result['output']!r} on {data['name']} ({data['samples']} samples)",
              f"{bits}; EP {listed(eps)}; {chain}; {counted(result['grid']['repeats'], 'noise draw')} per point "
              f"(mean ± std), seed {result['grid']['seed']}")
    figure.tight_layout()
    return figure


def plot(result: dict, path) -> None:
    """Write :func:`evaluation_figure` to ``path``."""
    save_figure(evaluation_figure(result), path)
