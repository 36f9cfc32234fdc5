"""Calibration: static ranges from data, and how much each site clips on the data seen.

The clean model runs once over the calibration samples with the chain sites' tensors as extra outputs. Per
site it keeps the largest |x| exactly and an evenly strided subsample of |x| (at most :data:`KEPT_VALUES`
values over all batches), from which the percentile and MSE methods choose r and the clip fractions are
counted; both are therefore estimates on large tensors, exact on small ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx

from ..errors import AnalogizeError
from ..passes.graph import graph_tensors
from .modes import (CALIBRATION_METHODS, CLIP_WARNING_FRACTION, DEFAULT_CALIBRATION_METHOD,
                    DEFAULT_CALIBRATION_SAMPLES, DEFAULT_PERCENTILE, MIN_RANGE, UNSEEN_RANGE)

KEPT_VALUES = 1 << 18  # per site, over all batches
MSE_VALUES = 1 << 16  # of those, what the MSE search scores each candidate on
MSE_CANDIDATES = 129  # 2^0 .. 2^-16 of the largest value, eight per octave
MIN_CALIBRATION_SAMPLES = 8
BATCH_SIZE = 32
ACTIVATION_SITES = ("input", "layer-input", "layer-output")


@dataclass(frozen=True)
class CalibrationOptions:
    """Where the calibration data comes from and how r is chosen from it."""

    data: str
    samples: int = DEFAULT_CALIBRATION_SAMPLES
    method: str = DEFAULT_CALIBRATION_METHOD
    percentile: float = DEFAULT_PERCENTILE

    def __post_init__(self):
        if self.method not in CALIBRATION_METHODS:
            raise AnalogizeError(f"unknown calibration method {self.method!r}: choose from "
                                 f"{', '.join(CALIBRATION_METHODS)}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or \
                self.samples < MIN_CALIBRATION_SAMPLES:
            raise AnalogizeError(f"--calibration-samples must be a whole number >= {MIN_CALIBRATION_SAMPLES}, "
                                 f"got {self.samples!r}")
        if not (isinstance(self.percentile, (int, float)) and 0 < self.percentile <= 100):
            raise AnalogizeError(f"--percentile must be in (0, 100], got {self.percentile!r}")


@dataclass
class SiteValues:
    """What the calibration data did at one tensor."""

    largest: float = 0.0
    count: int = 0
    kept: list = field(default_factory=list)

    def add(self, values: np.ndarray, budget: int) -> None:
        flat = np.abs(values.reshape(-1))
        if flat.size == 0:
            return
        self.largest = max(self.largest, float(flat.max()))
        self.count += flat.size
        stride = max(1, math.ceil(flat.size / budget))
        self.kept.append(flat[stride // 2::stride].copy())

    def magnitudes(self) -> np.ndarray:
        return np.concatenate(self.kept) if self.kept else np.zeros(0, np.float32)


def calibration_feeds(data: str, model: onnx.ModelProto, samples: int) -> list[dict]:
    """Batches of inputs for ``model`` from the data spec ``data``, read as evaluate reads it
    (:func:`analogize.data.model_feeds`): at most ``samples`` of them, in whole batches when the model fixes
    its batch size."""
    from ..data import fixed_batch_size, model_feeds

    feeds = model_feeds(data, model, limit=samples, what="calibration data")
    available = len(feeds)
    if available < MIN_CALIBRATION_SAMPLES:
        raise AnalogizeError(f"calibration data {data!r} has {available} samples; calibration needs at least "
                             f"{MIN_CALIBRATION_SAMPLES} (more give steadier ranges)")
    fixed = None if feeds.whole else fixed_batch_size(model)
    batch, used = 1 if feeds.whole else fixed or BATCH_SIZE, min(samples, available)
    if fixed:  # a model built for one batch size takes whole batches only
        used -= used % batch
        if used < max(batch, MIN_CALIBRATION_SAMPLES):
            raise AnalogizeError(f"calibration data {data!r}: the model takes batches of exactly {batch}; give at "
                                 f"least {max(batch, MIN_CALIBRATION_SAMPLES)} samples (--calibration-samples)")
    return [feeds.batch(start, batch) for start in range(0, used, batch)]


def site_values(model: onnx.ModelProto, names: list[str], feeds: list[dict]) -> dict[str, SiteValues]:
    """Run the clean ``model`` over ``feeds`` and gather the values of the tensors ``names``."""
    from ..runtime.sessions import create_session, run_session

    wanted = list(dict.fromkeys(names))
    fed = set(feeds[0]) if feeds else set()
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    present = {value.name for value in probe.graph.output}
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name) for name in wanted
                              if name not in fed and name not in present)
    # on the CPU even for --device cuda: the ranges, and so the converted model, do not depend on the device
    session = create_session(probe, native=False)
    outputs = [name for name in wanted if name not in fed]
    budget = max(1, KEPT_VALUES // max(1, len(feeds)))
    values = {name: SiteValues() for name in wanted}
    for batch in feeds:
        results = dict(zip(outputs, run_session(session, outputs, batch)))
        for name in wanted:
            array = batch[name] if name in fed else results[name]
            if not np.isfinite(array).all():
                raise AnalogizeError(f"calibration: the clean model computes NaN or infinite values at tensor "
                                     f"{name!r} on the calibration data; check the data and its preprocessing")
            values[name].add(np.asarray(array, np.float32), budget)
    return values


def choose_range(values: SiteValues, options: CalibrationOptions, precision: float | None, std: float) -> float:
    """r for one site by ``options.method``; :data:`UNSEEN_RANGE` when the data never made it non-zero."""
    if values.largest <= 0.0:
        return UNSEEN_RANGE
    if options.method == "max":
        return max(values.largest, MIN_RANGE)
    magnitudes = values.magnitudes()
    if options.method == "percentile":
        return max(float(np.percentile(magnitudes, options.percentile)), MIN_RANGE)
    return _least_squared_error(magnitudes, values.largest, precision, std)


def _least_squared_error(magnitudes: np.ndarray, largest: float, precision: float | None, std: float) -> float:
    """The candidate r with the least mean squared error of clamp, rounding at ``precision`` and noise of std
    ``std * r`` on the values seen. Candidates: a geometric grid from the largest |x| down to 2^-16 of it,
    eight per octave, so that one huge outlier cannot hide the range the other values need."""
    stride = max(1, math.ceil(magnitudes.size / MSE_VALUES))
    sample = magnitudes[::stride].astype(np.float64)
    best, best_error = largest, math.inf
    for r in largest * 2.0 ** (-np.arange(MSE_CANDIDATES) / 8.0):
        mapped = np.minimum(sample / r, 1.0)
        if precision is not None:
            mapped = np.round(mapped * precision) / precision
        error = float(np.mean((mapped * r - sample) ** 2)) + (std * r) ** 2
        if error < best_error:
            best, best_error = float(r), error
    return max(best, MIN_RANGE)


def clipped_fraction(values: SiteValues, r: float) -> float:
    magnitudes = values.magnitudes()
    return float(np.count_nonzero(magnitudes > r)) / magnitudes.size if magnitudes.size else 0.0


def clipping_warning(sites: list[dict]) -> str | None:
    """One line naming the sites that clipped more than :data:`CLIP_WARNING_FRACTION` of the values seen."""
    heavy = sorted((site for site in sites if site.get("range", {}).get("clipped", 0) > CLIP_WARNING_FRACTION),
                   key=lambda site: -site["range"]["clipped"])
    if not heavy:
        return None
    shown = ", ".join(f"{site['tensor']} ({site['range']['clipped']:.1%})" for site in heavy[:3])
    more = f" and {len(heavy) - 3} more" if len(heavy) > 3 else ""
    return (f"warning: {len(heavy)} site(s) clip more than {CLIP_WARNING_FRACTION:.0%} of the calibration values: "
            f"{shown}{more}; a wider range (--activation-range dynamic, or --calibration-method max) clips less")


def calibrate_sites(graph, sites: list[dict], model: onnx.ModelProto, options: CalibrationOptions,
                    precision: float | None, std: float) -> tuple[dict, dict]:
    """A graph pass: give each calibrated site its r from the data, and record on every activation site's
    ``range`` what the data did there (largest |x|, fraction clipped). ``model`` is the clean model the sites'
    tensors belong to. Returns the calibration's own record, and the values seen per tensor (from which
    :func:`choose_calibrated_ranges` chooses again for another precision or noise)."""
    top_level = {name for node in model.graph.node for name in node.output} | {value.name for value in model.graph.input}
    # a body's tensors are not the model's to read: those sites are dynamic or unit (chains refuses calibrated there)
    activation = [site for site in sites if site["site"] in ACTIVATION_SITES and site["tensor"] in top_level]
    feeds = calibration_feeds(options.data, model, options.samples)
    seen = site_values(model, [site["tensor"] for site in activation], feeds)
    choose_calibrated_ranges(graph, activation, seen, options, precision, std)  # records their clipping
    for site in activation:
        record, values = site["range"], seen[site["tensor"]]
        record["largest_seen"] = values.largest
        if record["mode"] == "unit":
            record["clipped"] = clipped_fraction(values, 1.0)
        elif record["mode"] == "dynamic":  # each vector's own largest value: nothing clips
            record["clipped"] = 0.0
    return {"data": options.data, "samples": sum(len(next(iter(batch.values()))) for batch in feeds),
            "method": options.method, **({"percentile": options.percentile} if options.method == "percentile"
                                         else {})}, seen


def choose_calibrated_ranges(graph, sites: list[dict], seen: dict, options: CalibrationOptions,
                             precision: float | None, std: float) -> None:
    """A graph pass: set each calibrated site's r (its ``range_tensor``) from the values seen at its tensor, for
    the chains' ``precision`` and noise ``std`` (the ``mse`` choice depends on both), and record it."""
    tensors = graph_tensors(graph)
    for site in sites:
        record = site["range"]
        if record["mode"] != "calibrated" or site["tensor"] not in seen:
            continue
        # a planned site's own precision and noise where it has them
        r = np.float32(choose_range(seen[site["tensor"]], options, site.get("precision", precision),
                                    site.get("std", std)))
        tensors[record["range_tensor"]].values = np.array(r, np.float32)
        record.update(value=float(r), method=options.method,  # the value the model holds
                      clipped=clipped_fraction(seen[site["tensor"]], float(r)))


def site_keys(sites: list[dict]) -> list[tuple]:
    """What names each chain site across an export and a rebuild: its layer's name (layer outputs are renamed on
    the way), or its place among the sites of its kind where the layer has no name (and for graph inputs)."""
    seen: dict[str, int] = {}
    keys = []
    for site in sites:
        count = seen.get(site["site"], 0)
        seen[site["site"]] = count + 1
        keys.append((site["site"], site.get("layer") or f"#{count}"))
    return keys


def apply_recorded_ranges(graph, sites: list[dict], recorded: list[dict]) -> None:
    """A graph pass: give each calibrated site the range ``recorded`` for it (stored settings or a spec)."""
    try:
        known = dict(zip(site_keys(recorded), (dict(site["range"]) for site in recorded)))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise AnalogizeError("the recorded ranges (the spec's settings.ranges) are not a list of sites with "
                             "'site' and 'range' entries as convert writes them") from None
    tensors = graph_tensors(graph)
    for site, key in zip(sites, site_keys(sites)):
        record = site["range"]
        if record["mode"] != "calibrated":
            continue
        value = known.get(key, {}).get("value")
        where = f"the calibrated {site['site']} site of {site.get('layer') or site['tensor']}"
        if value is None:
            raise AnalogizeError(f"no recorded range for {where}; the spec does not belong to this model")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise AnalogizeError(f"the recorded range of {where} is {value!r}; a range is a number > 0")
        tensors[record["range_tensor"]].values = np.array(value, np.float32)
        record.update({name: entry for name, entry in known[key].items() if name != "range_tensor"})
