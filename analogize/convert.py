"""``convert``: a model in, its analog-hardware simulation out. The CLI's ``analogize convert`` calls this."""
from __future__ import annotations

import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import onnx

from .errors import AnalogizeError
from .model_io import save_model
from .torch_import import load_any_model
from .noise_model import (DEFAULT_BIT_CONVENTION, DEFAULT_EP, bits_to_precision, check_precision, check_std,
                          ep_to_std, std_to_ep)
from .ops.spec import OPS
from .passes.activations import ACTIVATIONS, activation_choice, swap_activations
from .passes.attributes import seed_random_ops
from .passes.chains import (CLAMP_RANGE, KEPT_DIGITAL, PLACEMENTS, ChainSettings, check_placements,
                            insert_analog_chains)
from .plans import Plan, read_plan
from .passes.graph import bodies, cycle_collection_paused, export_model, import_model
from .passes.model import (MAX_OPSET_WITH_RANDOM_OPS, METADATA_KEY, export_with_functions, fit_opset,
                           inline_analog_functions, is_converted, raise_ir_version, store_settings,
                           sync_analog_functions)
from .ranges.calibration import CalibrationOptions, apply_recorded_ranges, calibrate_sites, clipping_warning
from .ranges.mapping import RangeSettings
from . import untrusted
from .untrusted import Integer, Number
from .ranges.modes import (DEFAULT_ACTIVATION_RANGE, DEFAULT_CALIBRATION_METHOD, DEFAULT_CALIBRATION_SAMPLES,
                           DEFAULT_PERCENTILE, DEFAULT_WEIGHT_RANGE)


#: what convert records in the model's settings besides ``ConvertOptions.summary()``: each site's range, and
#: the calibration that set them
RANGE_RECORDS = ("ranges", "calibration")
#: what the settings record keeps of each chain site (``chain`` and ``owners`` let evaluate vary it alone)
STORED_SITE_KEYS = ("site", "tensor", "layer", "owners", "chain", "range")
#: the paper's fixed [-1, 1] range everywhere: what train and sweep use, for networks trained inside it
PAPER_RANGES = {"weight_range": "unit", "activation_range": "unit"}


@dataclass(frozen=True)
class ConvertOptions:
    """Every ``analogize convert`` flag, with the same name and default."""

    bits: int | None = 8
    precision: float | None = None  # overrides bits
    bit_convention: str = DEFAULT_BIT_CONVENTION
    ep: float | None = None  # None: DEFAULT_EP unless std is given
    std: float | None = None  # overrides ep
    noise: bool = True
    quantize: bool = True
    clamp: bool = True
    stochastic_rounding: bool = False
    divide: float = OPS["ReducePrecision"].attribute("divide").default
    where: tuple[str, ...] = PLACEMENTS
    activation: str = "keep"
    factor: float | None = None  # None: the op's declared default
    scale: float | None = None
    alpha: float | None = None
    temperature: float | None = None
    exclude: tuple[str, ...] = ()
    analog_products: bool = False  # activation-by-activation MatMuls (attention) analog too
    data_inputs: tuple[str, ...] | None = None  # None: the float graph inputs that reach a layer's data operand
    seed: int | None = None
    inline: bool = False
    weight_range: str = DEFAULT_WEIGHT_RANGE
    activation_range: str | None = None  # None: DEFAULT_ACTIVATION_RANGE, or calibrated when calibrate is given
    calibrate: str | None = None  # a data spec, as evaluate's --data
    calibration_samples: int = DEFAULT_CALIBRATION_SAMPLES
    calibration_method: str = DEFAULT_CALIBRATION_METHOD
    percentile: float = DEFAULT_PERCENTILE
    plan: dict | None = None  # per-layer settings over these (an analogize.plan document; see read_plan)

    def resolved_precision(self) -> float:
        if self.precision is not None:
            return check_precision(self.precision)
        if self.bits is None:
            raise AnalogizeError("give --bits or --precision (or --no-quantize with --std for noise alone)")
        return bits_to_precision(self.bits, self.bit_convention)

    def _noise_precision(self) -> float | None:
        """The precision the chains use; also needed to turn an EP into a std."""
        if self.quantize or (self.noise and self.std is None):
            return self.resolved_precision()
        return None

    def chain_settings(self) -> ChainSettings:
        if self.ep is not None and self.std is not None:
            raise AnalogizeError("give either --ep or --std, not both")
        precision = self._noise_precision()
        if not self.noise and (self.ep or self.std):
            raise AnalogizeError(f"--{'ep' if self.ep else 'std'} sets the noise that --no-noise leaves out; drop "
                                 f"one of them")
        if not self.noise:
            std = 0.0
        elif self.std is not None:
            std = check_std(self.std)
        else:
            std = ep_to_std(DEFAULT_EP if self.ep is None else self.ep, precision)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0):
            raise AnalogizeError(f"seed must be a whole number >= 0, got {self.seed!r}")
        OPS["ReducePrecision"].attribute("divide").check("ReducePrecision", self.divide)
        return ChainSettings(precision=precision if self.quantize else None, std=std, clamp=self.clamp,
                             divide=self.divide, stochastic_rounding=self.stochastic_rounding, seed=self.seed,
                             ranges=self.range_settings())

    def planned_settings(self, base: ChainSettings, entry: dict) -> ChainSettings:
        """One site's chain settings: ``base`` (the global flags') with a plan entry's values put in. A site
        given other bits keeps the global EP (a smaller std at its finer steps) unless the flags set a std."""
        if not entry:
            return base
        precision, std = base.precision, base.std
        if "bits" in entry or "precision" in entry:
            if not self.quantize:
                raise AnalogizeError("the plan sets bits or precision, but --no-quantize leaves no reduce-precision "
                                     "to set them on")
            precision = entry["precision"] if "precision" in entry else \
                bits_to_precision(entry["bits"], self.bit_convention)
        if "ep" in entry or "std" in entry:
            if not self.noise:
                raise AnalogizeError("the plan sets ep or std, but --no-noise leaves no noise to set them on")
            std = entry["std"] if "std" in entry else ep_to_std(entry["ep"], precision or self.resolved_precision())
        elif self.noise and self.std is None and precision != base.precision:
            std = ep_to_std(DEFAULT_EP if self.ep is None else self.ep, precision)
        ranges = RangeSettings(entry.get("weight_range", base.ranges.weights),
                               entry.get("activation_range", base.ranges.activations))
        if ranges.activations == "calibrated" and not self.calibrate:
            raise AnalogizeError("the plan asks for calibrated ranges: add --calibrate DATA (a data spec as "
                                 "evaluate's --data)")
        return replace(base, precision=precision, std=std, ranges=ranges)

    def site_settings(self, base: ChainSettings, plan: Plan | None):
        """Each chain site's settings from its owners and site kind (convert's ``site_settings`` pass input)."""
        if plan is None:
            return None

        def settings_of(owners: tuple, site: str) -> ChainSettings | None:
            entry = plan.entry(owners[0] if owners else None, site)
            return None if entry is None else self.planned_settings(base, entry)
        return settings_of

    def resolved_plan(self) -> Plan | None:
        return None if self.plan is None else read_plan(self.plan)

    def without_plan_check(self) -> "ConvertOptions":
        """These options with the plan's model fingerprint dropped: for a model derived from the one it was
        checked against (an opset move, an export being rebuilt)."""
        if self.plan is None or "model_sha256" not in self.plan:
            return self
        return replace(self, plan={key: value for key, value in self.plan.items() if key != "model_sha256"})

    def activation_parameters(self) -> dict:
        """The swapped activations' parameters as given (None: the op's declared default)."""
        return {"factor": self.factor, "scale": self.scale, "alpha": self.alpha, "temperature": self.temperature}

    def range_settings(self) -> RangeSettings:
        activations = self.activation_range or ("calibrated" if self.calibrate else DEFAULT_ACTIVATION_RANGE)
        if activations == "calibrated" and not self.calibrate:
            raise AnalogizeError("--activation-range calibrated needs calibration data: add --calibrate DATA "
                                 "(a data spec as evaluate's --data)")
        return RangeSettings(self.weight_range, activations)

    def calibration_options(self) -> CalibrationOptions | None:
        if not self.calibrate:
            unused = [flag for flag, value, default in (
                ("--calibration-samples", self.calibration_samples, DEFAULT_CALIBRATION_SAMPLES),
                ("--calibration-method", self.calibration_method, DEFAULT_CALIBRATION_METHOD),
                ("--percentile", self.percentile, DEFAULT_PERCENTILE)) if value != default]
            if unused:
                raise AnalogizeError(f"{', '.join(unused)} set how calibration works, but no --calibrate DATA was "
                                     f"given; add it or drop them")
            return None
        if self.percentile != DEFAULT_PERCENTILE and self.calibration_method != "percentile":
            raise AnalogizeError("--percentile applies to --calibration-method percentile only")
        return CalibrationOptions(self.calibrate, self.calibration_samples, self.calibration_method,
                                  self.percentile)

    def summary(self) -> dict:
        """The options exactly as given, and the chain values derived from them (stored in the model)."""
        settings = self.chain_settings()
        precision = self._noise_precision()
        return {"options": asdict(self), "precision": precision, "std": settings.std,
                "ep": std_to_ep(settings.std, precision) if precision else None,
                "clamp_range": list(CLAMP_RANGE),
                "range_modes": {"weights": settings.ranges.weights, "activations": settings.ranges.activations}}

    def refuse_on_converted(self, command: str, varied: tuple[str, ...] = (), hint: str = "") -> None:
        """Refuse every option set away from its default but the ``varied`` ones, which ``command`` still applies
        to a converted model: the rest shaped chains the model already has, and would be ignored."""
        defaults = ConvertOptions()
        fixed = [name for name in (f.name for f in fields(self))
                 if name not in varied and getattr(self, name) != getattr(defaults, name)]
        if fixed:
            flags = ", ".join(("--no-" if getattr(defaults, name) is True else "--") + name.replace("_", "-")
                              for name in fixed)
            raise AnalogizeError(f"{flags}: a converted model keeps the chains it was converted with; {command} "
                                 f"the original model to change them" + (f" ({hint})" if hint else ""))

    @classmethod
    def from_dict(cls, options: dict) -> "ConvertOptions":
        """Rebuild options from ``summary()["options"]`` (JSON turns tuples into lists); models converted
        before range modes existed had the unit range."""
        fields = {"weight_range": "unit", "activation_range": "unit",
                  **{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}}
        return cls(**fields)


def _field_schema(hint):
    """The schema (:mod:`analogize.untrusted`) of a ConvertOptions field of type ``hint`` as JSON holds it."""
    if isinstance(hint, types.UnionType):
        return tuple(_field_schema(option) for option in hint.__args__)
    if typing.get_origin(hint) is tuple:
        return [_field_schema(typing.get_args(hint)[0])]
    return {int: Integer, float: Number, type(None): None}.get(hint, hint)


# Every field optional: models converted before a field existed do not record it.
OPTIONS_SCHEMA = {f"{name}?": _field_schema(hint) for name, hint in typing.get_type_hints(ConvertOptions).items()}
#: convert's settings record (``summary()`` and the chain sites) as :mod:`analogize.untrusted` checks it where a
#: model's metadata or a spec is read: a model comes from outside like any file
SETTINGS_SCHEMA = {
    "options": OPTIONS_SCHEMA, "precision": (Number, None), "std": Number, "ep": (Number, None),
    "clamp_range?": [Number], "range_modes?": {"weights": str, "activations": str},
    "ranges?": [{"site": str, "tensor": str, "layer?": (str, None), "owners?": [str], "chain?": str,
                 "range?": {"mode": str, "scope?": str, "value?": Number, "clipped?": Number, "largest_seen?": Number,
                            "method?": str, "range_tensor?": str}}],
    "calibration?": {"data": str, "method?": str, "samples?": Integer, "recorded?": bool}}



def stored_settings(model: onnx.ModelProto) -> dict:
    """Convert's settings as recorded in the model ({} when it has none), checked as a file from outside is."""
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            what, hint = f"the model's {METADATA_KEY} metadata", "convert the original model again"
            return _checked_record(untrusted.parse_json(entry.value, what, hint), what, hint)
    return {}


def _checked_record(document, what: str, hint: str) -> dict:
    """A settings record checked as convert writes one: of :data:`SETTINGS_SCHEMA`, with options convert takes
    (the fields a record lacks taking their defaults) and a precision and noise std chains can have. Of the right
    shape alone, a record could hold options no conversion had (bits -3, an unknown activation), which evaluate
    and export would pass on as the model's."""
    settings = untrusted.check(document, SETTINGS_SCHEMA, what, hint)
    unknown = sorted(set(settings["options"]) - {option.name for option in fields(ConvertOptions)})
    if unknown:
        raise AnalogizeError(f"{what}: options holds {', '.join(unknown)}, which convert has no option for; {hint}")
    try:
        options = ConvertOptions.from_dict(settings["options"])
        options.summary()  # bits or precision, EP or std, seed, divide, range modes
        options.calibration_options()
        options.resolved_plan()
        activation_choice(options.activation)
        check_placements(options.where)
        if settings["precision"] is not None:
            check_precision(settings["precision"])
        check_std(settings["std"])
    except AnalogizeError as error:
        raise AnalogizeError(f"{what}: {error}; {hint}") from None
    return settings


@dataclass
class ConversionResult:
    model: onnx.ModelProto
    report: dict = field(default_factory=dict)
    #: with calibration: the values seen at each calibrated tensor (evaluate chooses each cell's ranges from them)
    calibration_values: dict | None = None


@cycle_collection_paused()
def convert(model: onnx.ModelProto, options: ConvertOptions | None = None, reuse_input: bool = False,
            recorded_ranges: list | None = None, **overrides) -> ConversionResult:
    """Rewrite ``model`` into its analog simulation; ``overrides`` replace option fields. ``model`` is left
    untouched unless ``reuse_input``: then the caller gives it up, and the conversion is written into it
    instead of copying its weights. ``recorded_ranges`` (the ``ranges`` of stored settings or a spec) give the
    calibrated sites their recorded values instead of calibrating again.

    The pipeline: the opset move (protobuf); on the graph, insert the chains, swap the activations and seed the
    random nodes; then the function bodies, IR version and settings record (protobuf), and the optional
    inlining."""
    options = replace(options or ConvertOptions(), **overrides)
    calibration = options.calibration_options()
    if is_converted(model):
        raise AnalogizeError("the model is already converted (it contains ai.analogize ops or settings); "
                             "convert the original model instead")
    settings = options.chain_settings()
    plan = options.resolved_plan()
    if plan is not None:
        plan.check_model(model)
    random_ops = settings.std > 0 or settings.stochastic_rounding or plan is not None and plan.adds_noise()
    working, upgrades = fit_opset(model, maximum=MAX_OPSET_WITH_RANDOM_OPS if random_ops else None)
    if options.analog_products:  # a product's operands take their DAC gains by row and column: ranks needed
        working = _with_shapes(working)
    graph = import_model(working)
    chains = insert_analog_chains(graph, settings, options.where, options.exclude, options.analog_products,
                                  options.data_inputs, options.site_settings(settings, plan),
                                  plan.digital_units() if plan else ())
    if plan is not None:
        skipped = {layer["node"]: layer["reason"] for layer in chains["skipped_layers"]}
        plan.check_units(chains["layers"] + [name for name, reason in skipped.items() if reason == KEPT_DIGITAL],
                         chains["input_units"], skipped)
    swaps = swap_activations(graph, options.activation, options.activation_parameters(), options.exclude)
    if not chains["layers"] and not swaps["swapped"] and not chains["sites"]:
        raise AnalogizeError(_nothing_to_convert(chains["skipped_layers"]))
    seed_random_ops(graph, settings.seed)
    calibrated, seen = None, None
    if calibration and recorded_ranges is not None:
        apply_recorded_ranges(graph, chains["sites"], recorded_ranges)
        calibrated = {"data": calibration.data, "recorded": True}
    elif calibration:  # on the clean model with the new activations: the ranges are theirs
        clean = _with_activations(working, options) if swaps["swapped"] else working
        calibrated, seen = calibrate_sites(graph, chains["sites"], clean, calibration, settings.precision,
                                           settings.std)
    converted = export_model(graph, working, in_place=reuse_input or working is not model)
    sync_analog_functions(converted)
    raise_ir_version(converted)
    summary = options.summary()
    summary["ranges"] = [{key: site[key] for key in STORED_SITE_KEYS} for site in chains["sites"]]
    if calibrated:
        summary["calibration"] = calibrated
    store_settings(converted, summary)
    if options.inline:
        converted = inline_analog_functions(converted)
    report = {"settings": summary, "opset_upgrades": upgrades, "layers": chains["layers"],
              "layer_op_types": chains["layer_op_types"],
              "skipped_layers": chains["skipped_layers"], "notes": chains["notes"],
              "digital_inputs": chains["digital_inputs"], "inserted": chains["sites"],
              "activations": {k: swaps[k] for k in ("swapped", "to", "attributes") if k in swaps},
              "op_types": sorted(set(chains["op_types"] + swaps["op_types"])),
              "warnings": [line for line in [clipping_warning(chains["sites"]), _unswapped(options, swaps, graph)]
                           if line] + _ignored_flags(options, graph, chains["skipped_layers"], chains["layers"],
                                                     chains["sites"])}
    return ConversionResult(converted, report, seen)


def _with_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with the shapes ONNX's inference finds recorded (a copy), or as it is where inference fails."""
    try:
        return onnx.shape_inference.infer_shapes(model)
    except (onnx.shape_inference.InferenceError, ValueError):
        return model


def _unswapped(options: ConvertOptions, swaps: dict, graph) -> str | None:
    if options.activation == "keep" or swaps["swapped"]:
        return None
    inside = sum(1 for body in bodies(graph) for node in body.nodes if node.op == "Relu")
    if inside:
        return (f"--activation {options.activation}: the {inside} ReLUs lie inside If/Loop/Scan bodies, which swaps "
                f"do not reach; the activations are unchanged")
    return f"--activation {options.activation}: the model has no ReLU to swap, so its activations are unchanged"


def _node_names(graph, skipped: list[dict]) -> set[str]:
    """What --exclude can match: node names and op types, in bodies too, and the paths the report gives body
    layers (an excluded one is among the skipped)."""
    return {value for body in (graph, *bodies(graph)) for node in body.nodes for value in (node.name, node.op)} | \
        {layer["node"] for layer in skipped}


def _ignored_flags(options: ConvertOptions, graph, skipped: list, layers: list, sites: list) -> list[str]:
    """Flags that had nothing to act on: activation parameters the chosen activation does not take, and
    --exclude names that match no node name or op type (the names are gathered only when --exclude is given)."""
    settable = ACTIVATIONS[options.activation].settable
    lines = [f"--{name} does not apply to --activation {options.activation} (it takes "
             f"{', '.join('--' + k for k in settable) or 'no parameters'}); ignored"
             for name, value in options.activation_parameters().items() if value is not None and name not in settable]
    if layers and not sites:
        lines.append(f"--where {','.join(options.where)}: no chain was inserted (recurrent layers have no "
                     f"layer-output chain); the model is unchanged but for its settings record")
    graph_names = _node_names(graph, skipped) if options.exclude else set()
    unmatched = [name for name in options.exclude if name not in graph_names]
    if unmatched:
        lines.append(f"--exclude {', '.join(unmatched)}: no node or op type of that name; nothing was excluded by it")
    return lines


def _nothing_to_convert(skipped: list[dict]) -> str:
    """Why convert found nothing: the layers it saw and left digital (by reason), or that it saw none."""
    if not skipped:
        return ("nothing to convert: no Conv/ConvTranspose/Gemm/MatMul/LSTM/GRU/RNN layer with a constant float "
                "weight, no float graph input that reaches one (--data-inputs names inputs to chain anyway) and no "
                "ReLU to swap were found (check --exclude/--where)")
    reasons: dict[str, int] = {}
    for layer in skipped:
        reasons[layer["reason"]] = reasons.get(layer["reason"], 0) + 1
    listed = "; ".join(f"{count} x {reason}" for reason, count in reasons.items())
    return f"nothing to convert: the model's {len(skipped)} layers stay digital ({listed})"


def _with_activations(model: onnx.ModelProto, options: ConvertOptions) -> onnx.ModelProto:
    """``model`` with its activations swapped as ``options`` say and no chains: what calibration runs."""
    graph = import_model(model)
    swap_activations(graph, options.activation, options.activation_parameters(), options.exclude)
    return export_with_functions(graph, model)


def default_output(source) -> Path:
    """Where convert writes the model ``source`` when not told: beside it, with suffix .analog.onnx."""
    source = Path(str(source))
    return source.with_name(f"{source.stem}.analog.onnx")


def convert_file(source, destination=None, options: ConvertOptions | None = None, overwrite: bool = False,
                 torch_import=None, **overrides) -> dict:
    """Convert the model ``source`` (an ONNX file, or a torch model exported with ``torch_import``: see
    :func:`~analogize.torch_import.load_any_model`) and write the result to ``destination`` atomically."""
    if destination is None and not Path(str(source)).is_file():
        raise AnalogizeError(f"{source} is no file to name the output after: give -o")
    source = Path(str(source)) if Path(str(source)).is_file() else source
    destination = Path(destination) if destination else default_output(source)
    options = replace(options or ConvertOptions(), **overrides)
    options.chain_settings()  # reject bad flags before reading a possibly large model
    options.calibration_options()
    model, external, exported = load_any_model(source, torch_import)
    result = convert(model, options, reuse_input=True)
    save_model(result.model, destination, external_data=external, overwrite_input=None if overwrite else source)
    result.report.update(input=str(source), output=str(destination))
    if exported:
        result.report["exported"] = exported
    return result.report
