"""How each analog tensor's full scale r is set, declared once: the flags, the Python API, the report and
``docs/ranges.md`` read these declarations.

Every chain acts relative to its tensor's full scale, as DACs, ADCs and conductance mappings do:
``y = r * chain(x / r)``. Clamp, precision steps and noise are fractions of r, so EP keeps its meaning (the
chance that noise moves a value past half a step) whatever r is. Weight sites (weights and biases) take a
weight mode, activation sites (the graph input, layer inputs and layer outputs) an activation mode.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RangeMode:
    name: str
    doc: str
    needs_data: bool = False


WEIGHT_RANGE_MODES = {mode.name: mode for mode in (
    RangeMode("unit", "fixed [-1, 1]: the paper's semantics, for networks trained inside that range"),
    RangeMode("tensor", "r = max abs(W) over the whole weight tensor: one conductance scale per layer"),
    RangeMode("channel", "r = max abs(W) per output channel (crossbar column); biases take one r per tensor"),
)}
ACTIVATION_RANGE_MODES = {mode.name: mode for mode in (
    RangeMode("unit", "fixed [-1, 1]: the paper's semantics, for networks trained inside that range"),
    RangeMode("dynamic", "r = max abs(x) of each input vector at run time (per pixel across channels for "
                         "convolutions, per row for Gemm and MatMul, per sample for the graph input): the DAC and "
                         "ADC gain set per input vector, as aihwkit's default noise management does; needs no "
                         "data"),
    RangeMode("calibrated", "one static r per tensor, chosen on calibration data (--calibrate) by the "
                            "calibration method", needs_data=True),
)}
CALIBRATION_METHODS = {
    "max": "the largest abs(x) seen: nothing clips on the calibration data",
    "percentile": "the given percentile of abs(x) (--percentile): the rare outliers above it clip",
    "mse": "the r that minimises the mean squared error of clamp, rounding at the chain's precision and noise "
           "(std times r) on the values seen, over a geometric grid from the largest abs(x) down to 2^-16 of it",
}

DEFAULT_WEIGHT_RANGE = "channel"
DEFAULT_ACTIVATION_RANGE = "dynamic"  # "calibrated" when calibration data is given
DEFAULT_CALIBRATION_METHOD = "mse"
DEFAULT_PERCENTILE = 99.99
DEFAULT_CALIBRATION_SAMPLES = 256
#: the smallest r a range takes: an all-zero weight channel or input vector maps to 0 instead of 0 / 0
MIN_RANGE = float(np.finfo(np.float32).tiny)
#: the r a calibrated site takes when the calibration data never made it non-zero
UNSEEN_RANGE = 1.0
#: sites clipping more than this fraction of the values seen get a warning
CLIP_WARNING_FRACTION = 0.01
WEIGHT_SITES = ("weight", "bias")


def markdown_reference() -> str:
    """The range-mode reference page (``docs/ranges.md`` is this text; a test keeps them equal)."""
    lines = ["# Range modes", "",
             "Generated from `analogize/ranges/modes.py` by `analogize ops --ranges-markdown`; do not edit by hand.",
             "", (__doc__ or "").split("\n\n", 1)[1].strip().replace("\n", " "), "",
             f"Defaults: weights `{DEFAULT_WEIGHT_RANGE}`, activations `{DEFAULT_ACTIVATION_RANGE}` "
             f"(`calibrated` when `--calibrate DATA` is given), calibration method `{DEFAULT_CALIBRATION_METHOD}` "
             f"on {DEFAULT_CALIBRATION_SAMPLES} samples. The paper's fixed range: "
             "`--weight-range unit --activation-range unit`.", "",
             "| site | mode | how r is set |", "|---|---|---|"]
    lines += [f"| weights, biases | `{mode.name}` | {mode.doc} |" for mode in WEIGHT_RANGE_MODES.values()]
    lines += [f"| input, layer inputs, layer outputs | `{mode.name}` | {mode.doc} |"
              for mode in ACTIVATION_RANGE_MODES.values()]
    lines += ["", "| calibration method | r |", "|---|---|"]
    lines += [f"| `{name}` | {doc} |" for name, doc in CALIBRATION_METHODS.items()]
    lines += ["", f"A range never falls below {MIN_RANGE:.3g} (the smallest normal float32), so an all-zero "
              f"channel or vector maps to 0, never to NaN; a calibrated site that the data never made non-zero "
              f"gets r = {UNSEEN_RANGE:g}. Sites that clip more than {CLIP_WARNING_FRACTION:.0%} of the values seen "
              "are warned about.", ""]
    return "\n".join(lines)
