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
import json
from pathlib import Path

from ..errors import AnalogizeError
from .engine import RESULT_FORMAT, RESULT_VERSION
from ..model_io import atomic_output

PLOT_FORMATS = ("png", "pdf", "svg")
METRICS = ("accuracy", "top5", "agreement", "rel_error", "cosine", "snr_db")
CSV_COLUMNS = ("kind", "activation", "bits", "precision", "ep", "std", "repeats", "seed",
               *(f"{m}_{s}" for m in METRICS for s in ("mean", "std")), "snr_note", "output")
_SETTING_COLUMNS = ("activation", "bits", "precision", "ep", "std", "repeats", "seed")
# Everything but the cells and the shard position must agree between shards of one sweep.
_SWEEP_KEYS = ("format", "version", "model_sha256", "output", "kernels", "device", "data", "grid", "options",
               "converted_input", "fidelity", "batch_size", "clean", "baselines", "cell_count")


def load_result(path) -> dict:
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise AnalogizeError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise AnalogizeError(f"{path} is not a JSON evaluation result ({error})") from None
    if not isinstance(result, dict) or result.get("format") != RESULT_FORMAT:
        raise AnalogizeError(f"{path} is not an 'analogize evaluate' result (no format {RESULT_FORMAT!r})")
    if result.get("version") != RESULT_VERSION:
        raise AnalogizeError(f"{path} has result version {result.get('version')}; this analogize reads "
                             f"version {RESULT_VERSION}")
    return result


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
    if indices != list(range(count)):
        missing = sorted(set(range(count)) - set(indices))
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
    with atomic_output(path) as temporary:
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
            writer.writeheader()
            writer.writerows(csv_rows(result))


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
    return "-" if mean is None else f"{mean:5.1f} ± {record['snr_db_std']:3.1f}"


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


def save_figure(figure, path) -> None:
    """Write ``figure`` atomically, in the format its suffix names (PNG by default), and release it."""
    with atomic_output(path) as temporary:
        figure.savefig(temporary, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    pyplot().close(figure)


def plot(result: dict, path) -> None:
    """Accuracy (or agreement, or for outputs without classes the relative error) of the primary output against
    EP, one line per bit width, one panel per activation; the clean model dashed, as in the paper's
    accuracy-vs-EP figures. With one EP value, bits go on the x axis. The title names the model, the output, the
    data and the settings."""
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
    figure, axes = pyplot().subplots(1, len(activations), figsize=(4.2 * len(activations), 3.9), sharey=True,
                                     squeeze=False)
    for axis, activation in zip(axes[0], activations):
        cells = [c for c in result["cells"] if c["activation"] == activation]
        groups = sorted({c["bits"] if along_ep else c["ep"] for c in cells}, key=lambda v: (v is None, v))
        for group in groups:
            members = sorted((c for c in cells if (c["bits"] if along_ep else c["ep"]) == group
                              and c.get(f"{metric}_mean") is not None),
                             key=lambda c: c["ep"] if along_ep else (c["bits"] or 0))
            xs = [c["ep"] if along_ep else c["bits"] for c in members]
            axis.errorbar(xs, [scale * c[f"{metric}_mean"] for c in members],
                          yerr=[scale * c[f"{metric}_std"] for c in members], marker="o", capsize=3,
                          label=(f"{group} bits" if group is not None else "as converted") if along_ep
                          else f"EP {group:g}")
        if metric == "accuracy":
            axis.axhline(100 * result["clean"]["accuracy_mean"], color="grey", linestyle="--", label="clean")
        axis.set_title(activation)
        axis.set_xlabel("error probability (EP)" if along_ep else "bits")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    axes[0][0].set_ylabel(label)
    options = result.get("options", {})
    model = Path(result["model"]).name if result.get("model") else "model"
    ranges = f"ranges: weights {options.get('weight_range')}, " \
             f"activations {options.get('activation_range') or 'default'}" \
        if options and not result["converted_input"] else "as converted"
    figure.suptitle(f"{model}, output {result['output']!r} on {result['data']['name']}; {ranges}; "
                    f"{result['grid']['repeats']} noise draws per point (mean ± std)", fontsize=9)
    figure.tight_layout()
    save_figure(figure, path)
