"""The result formats a report renders, each declared once in :data:`FORMATS` with the version it reads and the
function that turns a result into a :class:`Section` (settings, tables, plots, notes, warnings); and reading
result files, which are untrusted: parsed as JSON only, and refused in one line when they are not a result of a
known format and version, not of the schema its format declares, or when a field a section needs is missing or
of the wrong type."""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import AnalogizeError
from ..untrusted import check, read_json
from ..evaluate.engine import RESULT_FORMAT, RESULT_VERSION
from ..evaluate.results import RESULT_SCHEMA
from ..training import REPORT_FORMAT as TRAINING_FORMAT, REPORT_SCHEMA as TRAINING_SCHEMA, \
    REPORT_VERSION as TRAINING_VERSION
from ..planning.metrics import LOWER_IS_BETTER
from ..planning.outputs import plot_plan, plot_sensitivity
from ..planning.search import PLAN_SEARCH_FORMAT, PLAN_SEARCH_SCHEMA, PLAN_SEARCH_VERSION
from ..planning.sensitivity import SENSITIVITY_FORMAT, SENSITIVITY_SCHEMA, SENSITIVITY_VERSION


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[str]]
    folded: bool = False  # reference tables too long to read first start folded


@dataclass
class Plot:
    caption: str
    png: bytes


@dataclass
class Section:
    """One result as the report shows it: what it is and of which model, its settings as (name, value) pairs, its
    tables, plots, notes and warnings, and the results it holds (a plan search's verification)."""

    kind: str
    model: str
    settings: list[tuple[str, str]]
    tables: list[Table] = field(default_factory=list)
    plots: list[Plot] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    parts: list["Section"] = field(default_factory=list)


def file_name(path) -> str:
    """A model's file name without its folders, or a placeholder for a model that was in memory."""
    return Path(path).name if path else "model in memory"


def model_name(result: dict) -> str:
    return file_name(result.get("model"))


def _png(plot: Callable, result: dict) -> bytes:
    buffer = io.BytesIO()
    plot(result, buffer)
    return buffer.getvalue()


def _text(value) -> str:
    """A setting's value as text: lists joined, dicts as ``key value`` pairs, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_text(item) for item in value) or "-"
    if isinstance(value, dict):
        return "; ".join(f"{key} {_text(item)}" for key, item in value.items()) or "-"
    return str(value)


def _plus_minus(mean, spread, scale: float = 100.0, digits: int = 1) -> str:
    if mean is None:
        return "-"
    return f"{scale * mean:.{digits}f} ± {scale * (spread or 0.0):.{digits}f}"


def _mean_std(record: dict, metric: str, scale: float = 100.0, digits: int = 1) -> str:
    """``<metric>_mean ± <metric>_std`` of ``record`` (percent by default), '-' where it has none."""
    return _plus_minus(record.get(f"{metric}_mean"), record.get(f"{metric}_std"), scale, digits)


def _relative_error(record: dict) -> str:
    mean = record.get("rel_error_mean")
    return "-" if mean is None else f"{mean:.3g} ± {record.get('rel_error_std') or 0.0:.2g}"


def _snr(record: dict) -> str:
    # the note says why there is no value (no noise reaches the output, a zero reference): never a bare "inf"
    return record.get("snr_note") or _mean_std(record, "snr_db", scale=1.0)


def _percent(fraction) -> str:
    return "-" if fraction is None else f"{100 * fraction:.1f} %"


def _option_table(options: dict, caption: str = "all convert options") -> Table:
    return Table(caption, ["option", "value"], [[name, _text(value)] for name, value in options.items()],
                 folded=True)


def evaluate_section(result: dict) -> Section:
    """An ``analogize evaluate`` result: the clean model and baselines, one row per cell, the outputs of models
    with several, and evaluate's own plot."""
    data, grid, options = result["data"], result["grid"], result["options"]
    labelled = data["labels"]
    classes = f", {data['classes']} classes" if data.get("classes") else ""
    given = "converted: its own chains, with precision, noise and activations set per cell" \
        if result["converted_input"] else "clean: converted for each cell with the convert options"
    settings = [("model", result.get("model") or "in memory"), ("model SHA-256", result["model_sha256"]),
                ("model as given", given), ("primary output", result["output"]),
                ("data", f"{data['name']}: {data['samples']} samples{classes}"
                 + ("" if labelled else "; no labels: fidelity to the clean model")),
                ("bits", _text(["the model's own or default" if b is None else b for b in grid["bits"]])),
                ("error probabilities (EP)", _text(["the model's own or default" if e is None else e
                                                    for e in grid["ep"]])),
                ("activations", _text(grid["activation"])), ("noise draws per cell", _text(grid["repeats"])),
                ("seed", _text(grid["seed"]))]
    if not result["converted_input"]:
        settings += [("weight range", _text(options["weight_range"])),
                     ("activation range", _text(options["activation_range"] or "default")),
                     ("calibration data", _text(options["calibrate"]))]
    clean_name = "digital model (analog chains removed)" if result["converted_input"] else "clean model"
    references = [[clean_name, _mean_std(result["clean"], "accuracy"), "-", "-"]]
    references += [[f"{b['activation']} without noise or quantisation", _mean_std(b, "accuracy"),
                    _mean_std(b, "agreement"), _relative_error(b)] for b in result["baselines"]]
    cells = [[cell["activation"], _text(cell["bits"]), _text(cell["precision"]), f"{cell['ep']:.3g}",
              f"{cell['std']:.4g}"] + ([_mean_std(cell, "accuracy")] if labelled else [])
             + [_mean_std(cell, "agreement"), _relative_error(cell), _snr(cell), _text(cell["repeats"])]
             for cell in result["cells"]]
    tables = [Table("reference: the model without analog noise", ["model", "top-1 accuracy %",
                                                                   "agreement with clean %", "relative error"],
                    references),
              Table(f"output {result['output']!r}: mean ± std over the noise draws of each cell",
                    ["activation", "bits", "precision p", "EP", "noise std"]
                    + (["top-1 accuracy %"] if labelled else []) + ["agreement with clean %", "relative error",
                                                                     "SNR dB", "draws"], cells)]
    if any(len(cell.get("outputs", {})) > 1 for cell in result["cells"]):
        tables.append(Table("every output", ["activation", "bits", "EP", "output", "agreement with clean %",
                                             "relative error", "SNR dB"],
                            [[cell["activation"], _text(cell["bits"]), f"{cell['ep']:.3g}", name,
                              _mean_std(metrics, "agreement"), _relative_error(metrics), _snr(metrics)]
                             for cell in result["cells"] for name, metrics in cell["outputs"].items()]))
    if not result["converted_input"]:
        tables.append(_option_table(options))
    notes = [f"data adapted to the model: {line}" for line in data.get("adaptations") or []]
    plots = []
    if result["cells"]:
        from ..evaluate.results import plot

        plots.append(Plot(f"{result['output']!r} against the error probability, per bit width and activation",
                          _png(plot, result)))
    else:
        notes.append("no cells in this result: nothing to plot")
    if result.get("shard"):
        notes.append(f"shard {result['shard']['index']}/{result['shard']['count']}: {len(result['cells'])} of "
                     f"{result['cell_count']} cells (merge the shards for the whole grid)")
    return Section("evaluation", model_name(result), settings, tables, plots, notes, list(result["warnings"]))


_TRAINING_SETTINGS = {"lr": "learning rate", "batch_size": "batch size", "optimizer": "optimizer",
                      "schedule": "learning-rate schedule", "weight_decay": "weight decay",
                      "patience": "patience (epochs)", "seed": "seed", "device": "device"}


def training_section(report: dict) -> Section:
    """The report of ``analogize finetune`` (or ``train``): accuracy before and after, the epochs, the curves."""
    options, converted = report["options"], report["settings"]
    built = report.get("built")
    source = report.get("input") or f"zoo model {built['model']} ({_text(built['config'])})"
    stopped = " (stopped early)" if report["stopped_early"] else ""
    settings = [("model", source), ("tuned model written to", report.get("output")),
                ("training data", report.get("data")), ("validation data", report.get("eval_data") or "default"),
                ("samples", f"{report['samples']['train']} for training, {report['samples']['validation']} "
                            f"for validation"),
                ("epochs", f"{report['epochs_run']} of {options['epochs']}{stopped}"),
                *((label, _text(options[name])) for name, label in _TRAINING_SETTINGS.items()),
                ("processes", _text(report.get("processes", 1))),
                ("bits", _text(converted["options"].get("bits"))), ("precision p", _text(converted["precision"])),
                ("noise std", _text(converted["std"])),
                ("error probability (EP)", _text(converted["ep"])),
                ("ranges", _text(converted.get("range_modes")))]
    before, after = report["before"], report["after"]
    change = 100 * (after["noisy_mean"] - before["noisy_mean"]), 100 * (after["digital"] - before["digital"])
    tables = [Table("validation accuracy %, measured in ONNX Runtime on the model files",
                    ["accuracy", "before", "after", "change (points)"],
                    [[f"noisy, mean ± std over {after['repeats']} draws",
                      _plus_minus(before["noisy_mean"], before["noisy_std"]),
                      _plus_minus(after["noisy_mean"], after["noisy_std"]), f"{change[0]:+.1f}"],
                     ["digital (analog chains removed)", f"{100 * before['digital']:.1f}",
                      f"{100 * after['digital']:.1f}", f"{change[1]:+.1f}"]]),
              Table("each epoch", ["epoch", "training loss (under noise)", "noisy accuracy %, one draw (torch)",
                                   "learning rate"],
                    [[_text(h["epoch"]), f"{h['train_loss']:.4g}", f"{100 * h['noisy_accuracy']:.1f}",
                      f"{h['lr']:.3g}"] for h in report["history"]])]
    if converted.get("ranges"):
        tables.append(Table("the range of each analog site", ["site", "tensor", "layer", "range"],
                            [[r["site"], r["tensor"], _text(r.get("layer")), _text(r["range"])]
                             for r in converted["ranges"]], folded=True))
    tables.append(_option_table(converted["options"]))
    try:
        from ..training.finetune import plot_curves
    except ImportError:
        raise AnalogizeError("the curves of a finetune report are drawn by analogize's training code, which "
                             "needs torch: pip install 'analogize[torch]'") from None
    plots = [Plot("training loss and noisy validation accuracy per epoch", _png(plot_curves, report))]
    return Section("training" if built else "fine-tuning", f"zoo {built['model']}" if built else
                   file_name(report.get("input")), settings, tables, plots, warnings=list(report.get("warnings", [])))


def _range(description) -> str:
    """A site's range record: one value, per-channel extremes, or a mode computed at run time."""
    if not isinstance(description, dict):
        return _text(description)
    if "value" in description:
        return f"{description['value']:.4g}"
    if {"min", "max"} <= set(description):
        channels = f" over {description['channels']} channels" if description.get("channels") else ""
        return f"{description['min']:.4g} to {description['max']:.4g}{channels}"
    return _text(description.get("mode") or description)


def _worst(sites: list[dict], key: str) -> str:
    known = [site[key] for site in sites if site.get(key) is not None]
    return _percent(max(known)) if known else "-"


def sensitivity_section(result: dict) -> Section:
    """An ``analogize sensitivity`` result: the units ranked by what they cost, their sites' ranges and clipping,
    and the loss/recovery bars."""
    settings, data, metric = result["settings"], result["data"], result["metric"]
    ranges = settings.get("range_modes") or {}
    rows = [("model", result.get("model") or "in memory"), ("model SHA-256", result.get("model_sha256")),
            ("data", f"{data['name']}: {data['samples']} samples"
             + ("" if data.get("labels") else "; no labels: fidelity to the clean model")),
            ("metric", metric + (" (top-1 agreement with the clean model)" if metric == "agreement" else "")),
            ("precision p", _text(settings["precision"])), ("noise std", _text(settings["std"])),
            ("error probability (EP)", _text(settings["ep"])),
            ("weight range", _text(ranges.get("weights"))), ("activation range", _text(ranges.get("activations"))),
            ("noise draws", _text(result["repeats"])), ("seed", _text(result["seed"])),
            ("cells evaluated", _text(result.get("cells")))]
    reference = result["reference"]
    references = [[name, _mean_std(reference[key], "accuracy"), _mean_std(reference[key], "agreement"),
                   _mean_std(reference[key], "rel_error"), _mean_std(reference[key], "snr_db", scale=1.0)]
                  for key, name in (("digital", "every unit digital"), ("analog", "every unit analog"))
                  if key in reference]
    units = sorted(result["units"], key=lambda unit: unit["rank"])
    ranked = [[_text(u["rank"]), u["unit"], u["kind"], _text(u.get("op_type")),
               _plus_minus(u["loss"], u.get("loss_std")), _plus_minus(u["recovery"], u.get("recovery_std")),
               _mean_std(u.get("only_analog") or {}, metric), _mean_std(u.get("only_digital") or {}, metric),
               _worst(u.get("sites") or [], "clipped_fraction"), _worst(u.get("sites") or [], "zero_fraction")]
              for u in units]
    sites = [[u["unit"], s["site"], _text(s.get("tensor")), _text(s.get("range_mode")), _range(s.get("range")),
              _text(s.get("max_abs")), _text(s.get("rms")), _percent(s.get("clipped_fraction")),
              _percent(s.get("zero_fraction"))] for u in units for s in u.get("sites") or []]
    tables = [Table(f"reference {metric}: mean ± std over the noise draws, %",
                    ["model", "accuracy %", "agreement with clean %", "relative error %", "SNR dB"], references),
              Table(f"units ranked by the mean of their loss (the {metric} lost when only that unit is analog) and "
                    f"recovery (regained when only it is digital); percentage points, mean ± std over the draws",
                    ["rank", "unit", "kind", "op type", "loss", "recovery", f"{metric} % only this analog",
                     f"{metric} % only this digital", "worst clipped", "worst zero"], ranked),
              Table("the analog sites of each unit", ["unit", "site", "tensor", "range mode", "range", "max |x|",
                                                      "rms", "clipped", "zero"], sites)]
    if settings.get("options"):
        tables.append(_option_table(settings["options"]))
    plots = [Plot(f"{metric} lost and regained per unit", _png(plot_sensitivity, result))] if units else []
    return Section("sensitivity", model_name(result), rows, tables, plots, warnings=list(result["warnings"]))


def plan_search_section(result: dict) -> Section:
    """An ``analogize plan`` search: the target, the plan found, each step of the search, and the full evaluate
    that verified the plan."""
    target, bounds, cost = result["target"], result["bounds"], result["cost"]
    settings = [("model", result.get("model") or "in memory"), ("model SHA-256", result.get("model_sha256")),
                ("target", f"{target['metric']} {'≤' if target['metric'] in LOWER_IS_BETTER else '≥'} "
                           f"{100 * target['value']:g} %"),
                ("bit widths allowed", _text(bounds.get("bits"))),
                ("layers may be digital", _text(bounds.get("digital"))),
                ("at most digital layers", _text(bounds.get("max_digital"))),
                ("cost", cost.get("definition")), ("target met", _text(result["met"])),
                ("digital layers", _text(cost.get("digital_layers"))), ("total bits", _text(cost.get("total_bits")))]
    layers = result["plan"]["layers"]
    plan = [[name, "digital" if setting.get("digital") else "analog", _text(setting.get("bits")),
             _text({k: v for k, v in setting.items() if k not in ("digital", "bits")})]
            for name, setting in layers.items()]
    steps = [[_text(step["step"]), step["change"], _plus_minus(step["metric_mean"], step.get("metric_std")),
              _text(step.get("digital_layers")), _text(step.get("total_bits")), _text(step.get("met"))]
             for step in result["steps"]]
    tables = [Table("the plan found (the plan file convert takes)", ["layer", "analog or digital", "bits",
                                                                     "other settings"], plan),
              Table(f"each step of the search: {target['metric']} %, mean ± std over the noise draws",
                    ["step", "change", f"{target['metric']} %", "digital layers", "total bits", "target met"],
                    steps)]
    plots = [Plot(f"{target['metric']} after each step, and the target", _png(plot_plan, result))] \
        if result["steps"] else []
    parts = []
    if result.get("verification") is not None:
        verification = section(result["verification"], "its verification")
        verification.kind = "verification of the plan (a full evaluate)"
        parts.append(verification)
    return Section("plan search", model_name(result), settings, tables, plots, [], list(result["warnings"]), parts)


@dataclass(frozen=True)
class Format:
    version: int  # the one version of the format this analogize reads
    section: Callable[[dict], Section]
    schema: dict  # what the section and its figure read, as analogize.untrusted checks it


FORMATS = {
    RESULT_FORMAT: Format(RESULT_VERSION, evaluate_section, RESULT_SCHEMA),
    TRAINING_FORMAT: Format(TRAINING_VERSION, training_section, TRAINING_SCHEMA),
    SENSITIVITY_FORMAT: Format(SENSITIVITY_VERSION, sensitivity_section, SENSITIVITY_SCHEMA),
    PLAN_SEARCH_FORMAT: Format(PLAN_SEARCH_VERSION, plan_search_section, PLAN_SEARCH_SCHEMA),
}


def _shown(value, limit: int = 60) -> str:
    """An untrusted value for a one-line message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def check_format(result, name: str = "the result") -> Format:
    """The known format of ``result``, or a one-line refusal that says what is wrong and what to give instead."""
    known = ", ".join(FORMATS)
    if not isinstance(result, dict) or not isinstance(result.get("format"), str):
        raise AnalogizeError(f"{name} is not an analogize result (no 'format' field); give the --json output of "
                             f"an analogize command (formats: {known})")
    kind = FORMATS.get(result["format"])
    if kind is None:
        raise AnalogizeError(f"{name} has format {_shown(result['format'])}, which the report does not know; "
                             f"known formats: {known}")
    if result.get("version") != kind.version:
        raise AnalogizeError(f"{name} is {result['format']} version {_shown(result.get('version'))}, but this "
                             f"analogize reads version {kind.version}; write it again with this analogize")
    return kind


def _what_is_wrong(error: Exception) -> str:
    if isinstance(error, KeyError):
        return f"no field {_shown(error.args[0])}"
    return str(error).splitlines()[0][:100] if str(error) else type(error).__name__


def section(result, name: str = "the result") -> Section:
    """The report section of one result, or a one-line refusal when it is of no known format or malformed."""
    kind = check_format(result, name)
    try:
        return kind.section(result)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError) as error:
        # an untrusted file with a field missing or of the wrong type: say which, not where in our code
        raise AnalogizeError(f"{name} is a malformed {result['format']} result ({_what_is_wrong(error)}); write it "
                             f"again with the analogize command that made it") from error


def read_result(path) -> dict:
    """The result in the JSON file ``path``, checked to be of a known format and version and of that format's
    schema, which names the field a forged or damaged file has wrong. The file is parsed as JSON and nothing else,
    so that a crafted file cannot run code."""
    result = read_json(path, "the result", "give the --json output of an analogize command")
    kind = check_format(result, str(path))
    return check(result, kind.schema, f"{path} ({result['format']})",
                 "write it again with the analogize command that made it")
