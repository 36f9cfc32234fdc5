"""Per-layer settings (schema ``analogize.plan`` version 1), declared once: convert's ``--plan``, the Python API,
the plan command's output and ``docs/plan.md`` read these declarations.

A plan sets, per analog layer (by the name convert's report gives it) or per graph input (``input:NAME``),
what differs from the global flags: kept digital, or other bits, EP, range modes. Inside a layer's entry,
``sites`` sets them per site (``layer-input``, ``weight``, ``bias``, ``layer-output``). A site's value comes
from its site entry, else its layer's entry, else the global flag. An EP is turned into a noise std at the
site's own precision, so a layer given more bits keeps the global EP (the chance of moving a value past half a
step) with a smaller std.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass

import onnx

from .errors import AnalogizeError
from .noise_model import MAX_BITS
from .passes.chains import INPUT_UNIT_PREFIX, LAYER_SITES
from .ranges.modes import ACTIVATION_RANGE_MODES, WEIGHT_RANGE_MODES, WEIGHT_SITES
from .untrusted import read_json

PLAN_FORMAT, PLAN_VERSION = "analogize.plan", 1


@dataclass(frozen=True)
class PlanField:
    name: str
    kind: str  # what the value is, for the docs and the one-line errors
    doc: str
    sites: tuple | None = None  # the sites it applies to (None: all)

    def check(self, value, where: str):
        if not _VALID[self.kind](value):
            raise AnalogizeError(f"plan: {where}: {self.name} must be {_KIND_TEXT[self.kind]}, got {value!r}")
        return float(value) if self.kind in ("precision", "probability", "std") else value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


_VALID = {  # each reads its value only after the type test, so a list or an object is refused, not hashed
    "boolean": lambda value: isinstance(value, bool),
    "bits": lambda value: isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_BITS,
    "precision": lambda value: _is_number(value) and value >= 1,
    "probability": lambda value: _is_number(value) and 0 <= value < 1,
    "std": lambda value: _is_number(value) and value >= 0,
    "weight range": lambda value: isinstance(value, str) and value in WEIGHT_RANGE_MODES,
    "activation range": lambda value: isinstance(value, str) and value in ACTIVATION_RANGE_MODES,
}
ACTIVATION_SITES = ("input", "layer-input", "layer-output")


_KIND_TEXT = {"boolean": "true or false", "bits": f"a whole number from 1 to {MAX_BITS}",
              "precision": "a number >= 1", "probability": "a number in [0, 1)", "std": "a number >= 0",
              "weight range": f"one of {', '.join(WEIGHT_RANGE_MODES)}",
              "activation range": f"one of {', '.join(ACTIVATION_RANGE_MODES)}"}

FIELDS = {field.name: field for field in (
    PlanField("digital", "boolean", "true: no chain at all (the layer, or the site, stays digital)"),
    PlanField("bits", "bits", "bit width (precision from it by convert's --bit-convention)"),
    PlanField("precision", "precision", "precision p directly (instead of bits)"),
    PlanField("ep", "probability", "error probability, turned into a std at the site's precision"),
    PlanField("std", "std", "noise std in units of the range (instead of ep)"),
    PlanField("weight_range", "weight range", "range mode of the weight and bias sites", WEIGHT_SITES),
    PlanField("activation_range", "activation range",
              "range mode of the input, layer-input and layer-output sites (calibrated needs --calibrate)",
              ACTIVATION_SITES),
)}
EXCLUSIVE = (("bits", "precision"), ("ep", "std"))


@dataclass(frozen=True)
class Plan:
    """A checked plan: per unit (layer name or ``input:NAME``) its entry, and per unit and site the site's."""

    units: dict  # unit -> {field: value}
    sites: dict  # (unit, site) -> {field: value}
    model_sha256: str | None = None

    @classmethod
    def parse(cls, document) -> "Plan":
        if not isinstance(document, dict) or document.get("format") != PLAN_FORMAT:
            raise AnalogizeError(f"not an {PLAN_FORMAT} file (its 'format' must be {PLAN_FORMAT!r}); write one as "
                                 f"docs/plan.md describes, or let 'analogize plan' write it")
        version = document.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version != PLAN_VERSION:
            raise AnalogizeError(f"{PLAN_FORMAT} version {document.get('version')!r} is not supported; this "
                                 f"analogize reads version {PLAN_VERSION}")
        unknown = set(document) - {"format", "version", "model_sha256", "layers", "note"}
        if unknown:
            raise AnalogizeError(f"plan: unknown top-level key(s) {', '.join(sorted(map(str, unknown)))}; a plan "
                                 f"has format, version, layers and optionally model_sha256 and note")
        sha = document.get("model_sha256")
        if sha is not None and not (isinstance(sha, str) and re.fullmatch("[0-9a-f]{64}", sha)):
            raise AnalogizeError("plan: model_sha256 must be the 64 hex digits of the model's SHA-256")
        layers = document.get("layers")
        if not isinstance(layers, dict):
            raise AnalogizeError("plan: 'layers' must be an object of layer names (or input:NAME) to settings")
        units, sites = {}, {}
        for unit, entry in layers.items():
            sites_entry = entry.get("sites", {}) if isinstance(entry, dict) else {}
            is_input = unit.startswith(INPUT_UNIT_PREFIX)
            units[unit] = _checked_entry(entry, f"layer {unit!r}", ("input",) if is_input else None)
            if not isinstance(sites_entry, dict):
                raise AnalogizeError(f"plan: layer {unit!r}: 'sites' must be an object of site names to settings")
            for site, site_entry in sites_entry.items():
                if site not in LAYER_SITES or is_input:
                    raise AnalogizeError(f"plan: layer {unit!r}: unknown site {site!r}; a layer's sites are "
                                         f"{', '.join(LAYER_SITES)} (a graph input has no sites)")
                sites[(unit, site)] = _checked_entry(site_entry, f"layer {unit!r} site {site!r}", (site,))
        return cls(units, sites, sha)

    def to_document(self) -> dict:
        layers = {}
        for unit, entry in self.units.items():
            layers[unit] = dict(entry)
            own = {site: dict(values) for (name, site), values in self.sites.items() if name == unit}
            if own:
                layers[unit]["sites"] = own
        document = {"format": PLAN_FORMAT, "version": PLAN_VERSION, "layers": layers}
        if self.model_sha256:
            document["model_sha256"] = self.model_sha256
        return document

    def adds_noise(self) -> bool:
        """Whether some entry asks for noise (convert then needs an opset with random ops)."""
        return any(entry.get("ep") or entry.get("std") for entry in (*self.units.values(), *self.sites.values()))

    def digital_units(self) -> set[str]:
        return {unit for unit, entry in self.units.items() if entry.get("digital")}

    def entry(self, unit: str | None, site: str) -> dict | None:
        """The settings of one chain site of ``unit`` (a layer input several layers share is the first's): its site
        entry over its layer entry; None where the plan keeps the site digital."""
        own = self.sites.get((unit, site), {})
        values = dict(self.units.get(unit, {}))
        for pair in EXCLUSIVE:  # a site's own bits replace its layer's precision, its own ep the layer's std
            if any(name in own for name in pair):
                for name in pair:
                    values.pop(name, None)
        values.update(own)
        if values.pop("digital", False):
            return None
        return values

    def check_model(self, model: onnx.ModelProto) -> None:
        """A plan that records its model is refused for another one."""
        if self.model_sha256 and self.model_sha256 != model_fingerprint(model):
            raise AnalogizeError("the plan was made for another model (its model_sha256 differs from this model's); "
                                 "use the plan written for this model, or drop model_sha256 from it to apply it "
                                 "anyway")

    def check_units(self, layers: list[str], inputs: list[str], skipped: dict) -> None:
        """Every unit the plan names must be one of the model's analog layers or the graph inputs the ``input``
        placement chains (``input:NAME``; chained, or kept digital by the plan)."""
        known = set(layers) | set(inputs)
        for unit in self.units:
            if unit in known:
                continue
            if unit in skipped:
                raise AnalogizeError(f"plan: layer {unit!r} is not analog ({skipped[unit]}); drop it from the plan")
            shown = ", ".join(sorted(known)[:6]) + (", ..." if len(known) > 6 else "")
            raise AnalogizeError(f"plan: no analog layer or chained input named {unit!r} in this model; its units "
                                 f"are {shown or 'none'} (convert --json lists them)")


def _checked_entry(entry, where: str, sites: tuple | None) -> dict:
    """One entry's settings, checked; ``sites``: those it sets (None: a layer's, which settings of any site
    reach)."""
    if not isinstance(entry, dict):
        raise AnalogizeError(f"plan: {where}: its settings must be an object, got {type(entry).__name__}")
    values = {}
    for name, value in entry.items():
        if name == "sites":
            if sites is None:
                continue
            raise AnalogizeError(f"plan: {where}: only a layer has sites (a graph input has no sites, nor has a site)")
        if name not in FIELDS:
            raise AnalogizeError(f"plan: {where}: unknown setting {name!r}; choose from {', '.join(FIELDS)}")
        field = FIELDS[name]
        if sites is not None and field.sites is not None and not set(sites) & set(field.sites):
            raise AnalogizeError(f"plan: {where}: {name} sets the {', '.join(field.sites)} sites only; drop it here")
        values[name] = field.check(value, where)
    for first, second in EXCLUSIVE:
        if first in values and second in values:
            raise AnalogizeError(f"plan: {where}: give {first} or {second}, not both")
    return values


def model_fingerprint(model: onnx.ModelProto) -> str:
    """The SHA-256 of the model's serialised bytes, as evaluate results record it."""
    return hashlib.sha256(model.SerializeToString()).hexdigest()


def read_plan(source) -> Plan:
    """A plan from a dict, a :class:`Plan` or a JSON file (read as data)."""
    if isinstance(source, Plan):
        return source
    if isinstance(source, dict):
        return Plan.parse(source)
    return Plan.parse(read_json(source, "the plan", "give the file 'analogize plan' wrote"))


def markdown_reference() -> str:
    """The plan file reference page (``docs/plan.md`` is this text; a test keeps them equal)."""
    lines = ["# Plan files", "",
             "Generated from `analogize/plans.py` by `analogize ops --plan-markdown`; do not edit by "
             "hand.", "", (__doc__ or "").split("\n\n", 1)[1].strip().replace("\n", " "), "",
             "```json", json.dumps({"format": PLAN_FORMAT, "version": PLAN_VERSION, "model_sha256": "(optional)",
                                    "layers": {"conv1": {"digital": True},
                                               "fc": {"bits": 8, "sites": {"weight": {"bits": 6, "ep": 0.1}}},
                                               f"{INPUT_UNIT_PREFIX}x": {"bits": 8}}}, indent=2), "```", "",
             "| setting | value | meaning |", "|---|---|---|"]
    lines += [f"| `{field.name}` | {_KIND_TEXT[field.kind]} | {field.doc} |" for field in FIELDS.values()]
    lines += ["", f"Sites: {', '.join(f'`{site}`' for site in LAYER_SITES)}. "
              + "; ".join(f"`{first}` and `{second}` exclude each other" for first, second in EXCLUSIVE)
              + ". A layer input that several layers read takes the first layer's settings, and stays analog while "
              "any of them is. `model_sha256`, when present, must be the SHA-256 of the unconverted model's "
              "bytes as onnx serialises it (the `model_sha256` evaluate reports): a plan for another model is "
              "refused. Unknown layer names and settings are refused; `note` may hold free text.", ""]
    return "\n".join(lines)
