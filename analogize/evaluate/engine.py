"""``evaluate``: how much accuracy a model keeps on noisy, low-precision analog hardware.

A sweep is a grid of cells (activation variant x bits x EP), each evaluated over ``repeats`` independent
noise draws on the same data, beside the clean model. What it reuses: the data is decoded and fitted once,
the clean outputs are computed once, the graph is rewritten once per activation variant (a cell only sets
attribute values on that rewritten graph), and one session serves all repeats of a cell.

Noise seeds: each cell's base seed is derived from the sweep seed and the cell's coordinates, so a cell gets
the same numbers whichever process, worker or shard computes it; repeat ``r`` is the ``r``-th pass of the
cell's session over the data (ONNX Runtime's seeded random ops continue their stream from run to run).
"""
from __future__ import annotations

import copy

import hashlib
import json
import math
import multiprocessing
import os
import zlib
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import onnx

from ..convert import RANGE_RECORDS, ConvertOptions, convert, stored_settings
from ..ranges.calibration import choose_calibrated_ranges
from ..data import Dataset, Feeds, Preprocessing, fixed_batch_size, model_feeds
from ..data.feeds import as_feeds
from ..devices import device_kind
from ..errors import AnalogizeError
from ..native.fusion import unfuse_model_chains
from ..ops.spec import DOMAIN, OPS
from ..passes.activations import ACTIVATIONS, swap_activations
from ..passes.attributes import SEED_LIMIT, analog_nodes, seed_random_ops, set_analog_attributes
from ..passes.chains import CHAIN_ELEMENTS, remove_analog_chains
from ..passes.deterministic import noise_free
from ..passes.graph import import_model, is_default_domain
from ..plans import Plan, read_plan
from ..passes.model import (MAX_OPSET_WITH_RANDOM_OPS, export_with_functions, fit_opset, is_converted,
                            store_settings)
from ..noise_model import MAX_BITS, bits_to_precision, ep_to_std, std_to_ep
from ..progress import progress_bar
from ..runtime.sessions import check_cuda_usable, kernels_in_use

RESULT_FORMAT = "analogize.evaluate"
RESULT_VERSION = 2  # 2: every output scored (outputs, data.outputs, data.inputs, rel_error, cosine)
TOP5_MIN_CLASSES = 6  # top-5 accuracy says something only with more than five classes
_QUANTIZE_OPS = CHAIN_ELEMENTS["quantize"]
_NOISE_OPS = CHAIN_ELEMENTS["noise"]


@dataclass(frozen=True)
class ActivationVariant:
    """``NAME[:VALUE][:KEY=VALUE...]``: an activation choice and its parameters; a bare VALUE sets the
    choice's first parameter (factor for interp-*, scale for gelu/silu, alpha for leaky, temperature for
    smooth-*)."""

    label: str
    activation: str
    parameters: tuple = ()

    @classmethod
    def parse(cls, text: str) -> "ActivationVariant":
        name, _, rest = text.partition(":")
        if name not in ACTIVATIONS:
            raise AnalogizeError(f"unknown activation {name!r} in {text!r}: choose from "
                                 f"{', '.join(ACTIVATIONS)}")
        settable = ACTIVATIONS[name].settable
        parameters = {}
        for item in rest.split(":") if rest else []:
            key, separator, value = item.partition("=")
            if not separator:
                if not settable:
                    raise AnalogizeError(f"activation {name!r} takes no parameters (in {text!r})")
                key, value = settable[0], key
            if key not in settable:
                raise AnalogizeError(f"activation {name!r} has no parameter {key!r}; it takes "
                                     f"{', '.join(settable) or 'none'}")
            try:
                parameters[key] = float(value)
            except ValueError:
                raise AnalogizeError(f"{text!r}: {key}={value!r} is not a number") from None
        return cls(text, name, tuple(sorted(parameters.items())))


@dataclass(frozen=True)
class Cell:
    index: int
    variant: ActivationVariant
    bits: int | None
    ep: float | None
    plan: Plan | None = field(default=None, compare=False)  # per-layer settings of this cell (sensitivity, plan)
    label: str = ""  # what the cell stands for, where a plan sets it

    @property
    def key(self) -> str:
        planned = "" if self.plan is None else "|plan=" + json.dumps(self.plan.to_document(), sort_keys=True)
        return f"{self.variant.label}|bits={self.bits}|ep={self.ep!r}{planned}"

    def seed(self, sweep_seed: int) -> int:
        """The cell's noise entropy: a function of the sweep seed and the cell alone."""
        return int(np.random.SeedSequence([sweep_seed, zlib.crc32(self.key.encode())]).generate_state(1)[0])


def node_seeds(cell_seed: int, count: int) -> list[int]:
    """One seed per random node, drawn independently, so no two cells share shifted streams."""
    return [int(s) % SEED_LIMIT for s in np.random.SeedSequence(cell_seed).generate_state(count)]


@dataclass(frozen=True)
class Grid:
    """The sweep: ``None`` in ``bits``/``ep`` means the converted model's own value (or convert's default)."""

    bits: tuple = (None,)
    ep: tuple = (None,)
    activations: tuple = ("keep",)
    repeats: int = 5
    seed: int = 0
    #: (label, Plan): per-layer settings as a grid axis (sensitivity and plan search); None: the options' own
    plans: tuple = (("", None),)

    def check(self) -> "Grid":
        for values, what in ((self.bits, "bits"), (self.ep, "ep"), (self.activations, "activation")):
            if not values:
                raise AnalogizeError(f"the grid needs at least one {what} value")
            if len(set(values)) != len(values):
                raise AnalogizeError(f"--{what} lists a value twice: {', '.join(map(str, values))}")
        for bits in self.bits:
            if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS):
                raise AnalogizeError(f"bits must be whole numbers from 1 to {MAX_BITS}, got {bits!r}")
        for ep in self.ep:
            if ep is not None and not (isinstance(ep, (int, float)) and 0.0 <= ep < 1.0):
                raise AnalogizeError(f"EP values must lie in [0, 1), got {ep!r}")
        if isinstance(self.repeats, bool) or not isinstance(self.repeats, int) or self.repeats < 1:
            raise AnalogizeError(f"repeats must be a whole number >= 1, got {self.repeats!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise AnalogizeError(f"seed must be a whole number >= 0, got {self.seed!r}")
        return self

    def variants(self) -> list[ActivationVariant]:
        return [ActivationVariant.parse(a) for a in self.activations]

    def with_baseline(self) -> "Grid":
        """The grid with EP 0 first on its EP axis, if absent: per bit width and activation, a cell with the
        ranges and rounding but no noise, which shows what quantisation alone costs."""
        return self if 0.0 in self.ep else replace(self, ep=(0.0, *self.ep))

    def cells(self) -> list[Cell]:
        combos = [(v, b, e, plan) for v in self.variants() for b in self.bits for e in self.ep for plan in self.plans]
        return [Cell(k, v, b, e, plan, label) for k, (v, b, e, (label, plan)) in enumerate(combos)]

    def as_dict(self) -> dict:
        planned = {"plans": [{"label": label, "plan": None if plan is None else plan.to_document()}
                             for label, plan in self.plans]} if self.plans != Grid.plans else {}
        return {"bits": list(self.bits), "ep": list(self.ep), "activation": list(self.activations),
                "repeats": self.repeats, "seed": self.seed, **planned}


def cell_convert_options(base: ConvertOptions, variant: ActivationVariant, bits, ep, seed) -> ConvertOptions:
    """Convert's options for one cell of a grid over a clean model: ``base``, with the cell's values put in (an EP
    of None keeps ``base``'s own EP or std)."""
    noise = {} if ep is None else {"ep": ep, "std": None}
    options = replace(base, **{"activation": variant.activation, **noise, "seed": seed, **dict(variant.parameters)})
    if bits is not None:
        return replace(options, bits=bits)
    if options.precision is None and options.bits is None:
        return replace(options, bits=ConvertOptions.bits)
    return options


def parse_shard(text: str) -> tuple[int, int]:
    """``I/N`` (I counted from 0, as job-array task ids are) into ``(I, N)``."""
    index, separator, count = text.partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        index = count = -1
    if not separator or count < 1 or not 0 <= index < count:
        raise AnalogizeError(f"--shard {text!r} is not I/N with 0 <= I < N (e.g. 0/4 ... 3/4)")
    return index, count


def default_class_axis(rank: int) -> int | None:
    """The axis an output's class scores lie along when the user names none: (batch, classes) and NCHW maps
    (detection and segmentation heads) hold them on axis 1, sequences ((batch, time, classes) or time-major
    (time, batch, classes), as CTC models give) on the last; a vector or a scalar has none."""
    if rank < 2:
        return None
    return 2 if rank == 3 else 1


@dataclass
class _Workload:
    """What every evaluation in a sweep shares; sent once to each worker process. ``outputs`` lists the graph
    outputs scored, the primary (accuracy, the headline numbers) first."""

    feeds: Feeds
    outputs: list[str]
    labels: np.ndarray | None
    batch_size: int
    pad_batches: bool = False
    class_axes: dict | None = None  # output -> axis or None, settled on the clean pass
    clean: list | None = None  # the clean model's outputs: per batch, per output
    threads: int | None = None
    device: str = "cpu"

    def session(self, model: bytes):
        from ..runtime.sessions import create_session

        return create_session(model, self.threads, device=self.device)

    def outputs_of(self, model: bytes) -> list[list[np.ndarray]]:
        return list(self._batches(self.session(model)))

    def repeats(self, model: bytes, count: int, reference: bytes | None = None, on_repeat=None) -> list[dict]:
        """Metrics of ``count`` passes; SNR is measured against ``reference`` (the model without its noise)."""
        noise_free = self.outputs_of(reference) if reference is not None else None
        session = self.session(model)
        results = []
        for _ in range(count):
            tally = _Tally(self)
            for index, batch in enumerate(self._batches(session)):
                tally.add(index, batch, None if noise_free is None else noise_free[index])
            results.append(tally.metrics())
            if on_repeat:
                on_repeat()
        return results

    def _batches(self, session):
        from ..runtime.sessions import run_session

        for start in range(0, len(self.feeds), self.batch_size):
            chunk = self.feeds.batch(start, self.batch_size)
            rows = min(self.batch_size, len(self.feeds) - start)
            if self.pad_batches and rows < self.batch_size:  # a model built for a fixed batch size
                chunk = {name: np.concatenate([array, np.zeros((self.batch_size - rows, *array.shape[1:]),
                                                               array.dtype)]) for name, array in chunk.items()}
            results = run_session(session, self.outputs, chunk)
            padded = rows < self.batch_size and self.pad_batches
            yield [_unpadded(name, np.asarray(result), rows, self.batch_size) if padded else np.asarray(result)
                   for name, result in zip(self.outputs, results)]

    def classes(self) -> int | None:
        """How many classes the primary output scores (its size along its class axis), once it ran."""
        axis = self.class_axes[self.outputs[0]]
        return None if axis is None or not self.clean else self.clean[0][0].shape[axis]


def _unpadded(name: str, output: np.ndarray, rows: int, batch: int) -> np.ndarray:
    """The rows of a padded batch's output that belong to real samples, along the output's batch axis: the first
    when it has the batch's size, else the one other axis that has (time-major outputs hold it second)."""
    axes = [k for k, size in enumerate(output.shape) if size == batch]
    axes = axes[:1] if axes and axes[0] == 0 else axes
    if len(axes) != 1:
        which = "no axis" if not axes else f"{len(axes)} axes"
        raise AnalogizeError(f"output {name!r} has shape {list(output.shape)} for a padded batch of {batch}: {which} "
                             f"of that size to drop the padding from; give a sample count that is a multiple of "
                             f"{batch} (--limit)")
    return np.take(output, np.arange(rows), axis=axes[0])


class _OutputTally:
    """One output's running sums over a pass, against the clean model (agreement, relative error, cosine) and
    against the same cell without noise (SNR)."""

    def __init__(self, class_axis: int | None):
        self.class_axis = class_axis
        self.agree = self.positions = 0
        self.mismatched = self.non_finite = 0  # batches whose outputs cannot be compared, by cause
        self.error = self.reference = self.dot = self.power = 0.0
        self.signal = self.noise = 0.0
        self.snr = False
        self.exact = True  # integer and boolean outputs: equal or not, no distances

    def add(self, output: np.ndarray, clean: np.ndarray, noise_free: np.ndarray | None) -> None:
        if output.shape != clean.shape:  # e.g. a detector's post-processing keeps another number of boxes
            self.mismatched += 1
            return
        if output.dtype.kind == "f" and not (np.isfinite(output).all() and np.isfinite(clean).all()):
            self.non_finite += 1
            return
        if output.dtype.kind != "f":
            self.agree += int(np.sum(output == clean))
            self.positions += output.size
            return
        self.exact = False
        if self.class_axis is not None:
            self.agree += int(np.sum(output.argmax(self.class_axis) == clean.argmax(self.class_axis)))
            self.positions += output.size // output.shape[self.class_axis]
        value, reference = output.astype(np.float64), clean.astype(np.float64)
        self.error += float(np.sum((value - reference) ** 2))
        self.reference += float(np.sum(reference**2))
        self.dot += float(np.sum(value * reference))
        self.power += float(np.sum(value**2))
        if noise_free is not None and noise_free.shape == output.shape:
            self.snr = True
            signal = noise_free.astype(np.float64)
            self.signal += float(np.sum(signal**2))
            self.noise += float(np.sum((value - signal) ** 2))

    def metrics(self) -> dict:
        invalid = self.mismatched + self.non_finite
        result = {"invalid_batches": invalid}
        if invalid:  # partial numbers over the comparable batches would flatter exactly where noise did harm
            causes = [f"its shape differs from the clean output's in {self.mismatched} batch(es)"] * bool(
                self.mismatched) + [f"it holds NaN or infinite values in {self.non_finite} batch(es)"] * bool(
                self.non_finite)
            result.update(agreement=None, rel_error=None, cosine=None, snr_db=None, note=" and ".join(causes))
            return result
        result["agreement"] = self.agree / self.positions if self.positions else None
        if not self.exact:
            result["rel_error"] = math.sqrt(self.error / self.reference) if self.reference > 0 else None
            result["cosine"] = self.dot / math.sqrt(self.reference * self.power) \
                if self.reference > 0 and self.power > 0 else None
        if self.snr:
            result["snr_db"] = 10 * math.log10(self.signal / self.noise) if self.noise > 0 and self.signal > 0 \
                else None
            if self.noise == 0 or self.signal == 0:
                result["snr_note"] = "identical to the noise-free output" if self.noise == 0 else \
                    "the noise-free output is all zero"
        return result


class _Tally:
    """Running counts of one pass over the data: accuracy of the primary output against labels, and each
    output's fidelity to the clean model (and to the noise-free model, when given)."""

    def __init__(self, workload: _Workload):
        self.workload = workload
        self.outputs = [_OutputTally(workload.class_axes[name]) for name in workload.outputs]
        self.count = self.correct = self.correct5 = 0

    def add(self, index: int, outputs: list, noise_free: list | None = None) -> None:
        workload = self.workload
        primary, axis = outputs[0], workload.class_axes[workload.outputs[0]]
        start = index * workload.batch_size
        rows = slice(start, min(start + workload.batch_size, len(workload.feeds)))
        if workload.labels is not None:
            scores = np.moveaxis(primary, axis, -1)
            self.correct += int(np.sum(scores.argmax(-1) == workload.labels[rows]))
            if scores.shape[-1] >= TOP5_MIN_CLASSES:
                top5 = np.argpartition(-scores, 4, axis=-1)[..., :5]
                self.correct5 += int(np.sum(np.any(top5 == workload.labels[rows, None], axis=-1)))
        self.count += rows.stop - rows.start
        if workload.clean is not None:
            for k, (tally, output) in enumerate(zip(self.outputs, outputs)):
                tally.add(output, workload.clean[index][k], None if noise_free is None else noise_free[k])

    def metrics(self, against_clean: bool = True) -> dict:
        result = {}
        if self.workload.labels is not None:
            result["accuracy"] = self.correct / self.count
            if self.workload.classes() >= TOP5_MIN_CLASSES:
                result["top5"] = self.correct5 / self.count
        if not against_clean:
            return result
        each = [tally.metrics() for tally in self.outputs]
        result.update(each[0])
        if len(each) > 1:
            result["outputs"] = dict(zip(self.workload.outputs, each))
        return result


def _summarise(per_repeat: list[dict]) -> dict:
    """Mean and spread of each metric over the repeats, the values themselves, and each output's summary."""
    summary = _mean_and_spread(per_repeat)
    summary["per_repeat"] = {metric: [r.get(metric) for r in per_repeat] for metric in per_repeat[0]
                             if metric != "outputs" and not isinstance(per_repeat[0][metric], str)}
    if "outputs" in per_repeat[0]:
        summary["outputs"] = {name: _mean_and_spread([r["outputs"][name] for r in per_repeat])
                              for name in per_repeat[0]["outputs"]}
    return summary


def _mean_and_spread(per_repeat: list[dict]) -> dict:
    """``<metric>_mean`` and ``<metric>_std`` (sample std) of each number, None where a repeat has none; notes
    (strings) as they are when every repeat has the same, else how many repeats had each."""
    summary = {}
    for metric in dict.fromkeys(key for r in per_repeat for key in r if key != "outputs"):
        values = [r.get(metric) for r in per_repeat]
        if any(isinstance(v, str) for v in values):
            notes = [v for v in values if v is not None]
            summary[metric] = notes[0] if len(set(notes)) == 1 and len(notes) == len(values) else "; ".join(
                f"{note} in {notes.count(note)} of {len(values)} draws" for note in dict.fromkeys(notes))
        elif any(v is None for v in values):
            summary[f"{metric}_mean"] = summary[f"{metric}_std"] = None
        else:
            summary[f"{metric}_mean"] = float(np.mean(values))
            summary[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return summary


class _CellModels:
    """Builds each cell's model from one rewritten graph per activation variant: each model is the skeleton
    imported, changed by the passes of :mod:`analogize.passes.attributes` and :mod:`.chains`, and exported."""

    def __init__(self, model: onnx.ModelProto, options: ConvertOptions, grid: Grid):
        self.options, self.grid = options, grid
        self.converted = is_converted(model)
        if options.precision is not None and grid.bits != (None,):
            raise AnalogizeError("give --bits or --precision, not both")
        if self.converted:
            model = unfuse_model_chains(model)  # a fast-form file: its nodes, whose values each cell sets
            _check_variable(model, options)
            if grid.plans != Grid.plans:
                raise AnalogizeError("per-cell plans (sensitivity, plan search) need the original model: a converted "
                                     "model has its chains in place")
            self.base = model
            self.current_precision = options.precision or _first_attribute(
                import_model(model), _QUANTIZE_OPS, "precision") or stored_settings(model).get("precision")
        else:
            plan = options.resolved_plan()
            if plan is not None:  # checked on the model as given; the skeleton is converted after an opset move
                plan.check_model(model)
                self.options = options = options.without_plan_check()
            noisy = options.noise and (any(ep != 0 for ep in grid.ep) or plan is not None and plan.adds_noise())
            if not options.noise and any(ep not in (None, 0) for ep in grid.ep):
                raise AnalogizeError("--no-noise leaves no noise for --ep to set; drop one of them")
            self.base, _ = fit_opset(
                model, maximum=MAX_OPSET_WITH_RANDOM_OPS if noisy or options.stochastic_rounding else None)
        self._skeletons: dict[str, onnx.ModelProto] = {}
        self._calibration_values: dict[str, dict] = {}  # per variant: what calibration saw, per tensor
        self.warnings: list[str] = []  # convert's, e.g. calibrated sites that clip heavily

    def skeleton(self, variant: ActivationVariant) -> onnx.ModelProto:
        if variant.label not in self._skeletons:
            self._skeletons[variant.label] = (self._vary_converted(variant) if self.converted
                                              else self._convert(variant))
        return self._skeletons[variant.label]

    def _convert(self, variant: ActivationVariant) -> onnx.ModelProto:
        result = convert(self.base, cell_convert_options(self.options, variant, None, None, None))
        self.warnings += [line for line in result.report["warnings"] if line not in self.warnings]
        if result.calibration_values is not None:
            self._calibration_values[variant.label] = result.calibration_values
        return result.model

    def _vary_converted(self, variant: ActivationVariant) -> onnx.ModelProto:
        choice = ACTIVATIONS[variant.activation]
        if choice.op_type is None:
            return self.base
        graph = import_model(self.base)
        values = {**dict(choice.fixed), **dict(variant.parameters)}
        standard = [n for n in graph.nodes if n.op == choice.op_type and is_default_domain(n)]
        if choice.domain == DOMAIN and analog_nodes(graph, {choice.op_type}):
            set_analog_attributes(graph, {choice.op_type}, **values)
        elif choice.domain == "" and standard:
            for node in standard:
                node.attrs.clear()
                node.attrs.update((k, float(v)) for k, v in sorted(values.items()))
        elif not swap_activations(graph, variant.activation, dict(variant.parameters))["swapped"]:
            raise AnalogizeError(f"activation variant {variant.label!r}: the converted model has no ReLU and no "
                                 f"{choice.op_type} to vary; evaluate the original model instead")
        return export_with_functions(graph, self.base)

    def clean(self) -> onnx.ModelProto:
        """The digital model: the original, or a converted one with its chains taken out."""
        if not self.converted:
            return self.base
        graph = import_model(self.base)
        remove_analog_chains(graph)
        return export_with_functions(graph, self.base)

    def digital(self, variant: ActivationVariant) -> onnx.ModelProto:
        """The variant's activations without noise, reduce-precision or clamp."""
        skeleton = self.skeleton(variant)
        graph = import_model(skeleton)
        remove_analog_chains(graph)
        return export_with_functions(graph, skeleton)

    def build(self, cell: Cell) -> tuple[onnx.ModelProto, dict]:
        """The cell's model (equal to converting with the cell's options) and its resolved settings."""
        skeleton = self.skeleton(cell.variant)
        graph = import_model(skeleton)
        seed = cell.seed(self.grid.seed)
        recorded = stored_settings(skeleton) if not self.converted else {}
        if self.converted:  # its own values where the cell sets none (a planned model's differ from site to site)
            precision, std = self._converted_precision_and_std(graph, cell)
            stored = stored_settings(skeleton)
            planned = stored.get("options", {}).get("plan")
            if planned is not None and (cell.bits is not None or cell.ep is not None):
                # the sites the plan sets keep their values, the others take the cell's: convert --plan at them
                options = cell_convert_options(ConvertOptions.from_dict(stored["options"]).without_plan_check(),
                                               cell.variant, cell.bits, cell.ep, None)
                precision, std = options.resolved_precision(), options.chain_settings().std
                apply_plan(graph, stored.get("ranges", []), read_plan(planned), options)
            else:
                if cell.bits is not None:
                    set_analog_attributes(graph, _QUANTIZE_OPS, precision=precision)
                if cell.ep is not None:
                    _set_noise(graph, std)
        else:
            options = cell_convert_options(self.options, cell.variant, cell.bits, cell.ep, None)
            precision, std = options.resolved_precision(), options.chain_settings().std
            plan = cell.plan if cell.plan is not None else options.resolved_plan()
            if plan is None:
                if precision is not None:
                    set_analog_attributes(graph, _QUANTIZE_OPS, precision=precision)
                _set_noise(graph, std)
            else:
                recorded["ranges"] = apply_plan(graph, recorded["ranges"], plan, options)
        random_nodes = [n for n in analog_nodes(graph) if OPS[n.op].random]
        seed_random_ops(graph, node_seeds(seed, len(random_nodes)))
        seen = self._calibration_values.get(cell.variant.label)
        if seen is not None:  # calibrated ranges chosen for this cell's precision and noise, as convert would
            recorded["ranges"] = copy.deepcopy(recorded["ranges"])
            choose_calibrated_ranges(graph, recorded["ranges"], seen, options.calibration_options(),
                                     precision, std)
        model = export_with_functions(graph, skeleton)
        if not self.converted:  # the other ranges convert recorded in the skeleton hold for every cell
            store_settings(model, {**options.summary(), **{key: recorded[key] for key in RANGE_RECORDS
                                                           if key in recorded}})
        ep = cell.ep if cell.ep is not None else (std_to_ep(std, precision) if std and precision else 0.0)
        return model, {"bits": cell.bits, "precision": precision, "ep": ep, "std": std, "seed": seed}

    @staticmethod
    def noise_free(model: onnx.ModelProto, settings: dict) -> bytes | None:
        """The SNR reference: the cell's model without noise and with deterministic rounding (so it shares no
        random draw with any repeat), or None when the cell has no noise."""
        if not settings["std"]:
            return None
        return noise_free(model).SerializeToString()

    def _converted_precision_and_std(self, graph, cell: Cell) -> tuple[float | None, float]:
        precision = (bits_to_precision(cell.bits, self.options.bit_convention) if cell.bits is not None
                     else self.current_precision)
        if cell.ep is None:
            return precision, _first_attribute(graph, _NOISE_OPS, "std") or 0.0
        if cell.ep > 0 and not analog_nodes(graph, _NOISE_OPS):
            raise AnalogizeError("the converted model has no AnalogNoise to set --ep on; convert it with noise "
                                 "or evaluate the original model")
        if cell.ep > 0 and precision is None:
            raise AnalogizeError("the converted model has no reduce-precision, so an EP has no step size; "
                                 "give --bits")
        return precision, ep_to_std(cell.ep, precision) if cell.ep > 0 else 0.0


# What evaluate still sets on a converted model: the precision (--precision and --bit-convention here, or the
# grid's bits) and, through the grid, the noise, activations and seeds.
_VARIED_IN_CONVERTED = ("bits", "precision", "bit_convention", "ep", "std", "activation", "factor", "seed")


def _check_variable(model: onnx.ModelProto, options: ConvertOptions) -> None:
    """A converted model has its precision, noise std and activations varied; refuse what cannot be."""
    if stored_settings(model).get("options", {}).get("inline"):
        raise AnalogizeError("the model was converted with --inline, so its analog ops are standard ops that "
                             "cannot be told apart; evaluate the original model (or one converted without --inline)")
    options.refuse_on_converted("evaluate", _VARIED_IN_CONVERTED, hint="use --ep 0 for no noise")


def _set_noise(graph, std: float) -> None:
    if std:
        set_analog_attributes(graph, _NOISE_OPS, std=std)
    else:
        remove_analog_chains(graph, ("noise",))


def apply_plan(graph, sites: list[dict], plan: Plan, options: ConvertOptions) -> list[dict]:
    """A graph pass over a graph converted with a chain at every site: take out the chains ``plan`` keeps digital
    (a layer input shared by several layers stays while one of them is analog), and give every other chain the
    precision and noise std the plan and ``options`` set for it. Returns the records of the chains that remain,
    each with its precision and std (calibration chooses their ranges for them)."""
    if any("chain" not in site or "owners" not in site for site in sites):
        raise AnalogizeError("the converted model records no chain names (converted by an older analogize); "
                             "convert the original model again")
    digital = plan.digital_units()
    settings_of = options.site_settings(options.chain_settings(), plan)
    removed, kept, values = set(), [], {}
    for site in sites:
        owners = tuple(owner for owner in site["owners"] if owner not in digital)
        if not owners or plan.entry(owners[0], site["site"]) is None:
            removed.add(site["chain"])
            continue
        values[site["chain"]] = chain_settings = settings_of(owners, site["site"])
        kept.append({**site, "precision": chain_settings.precision, "std": chain_settings.std})
    remove_analog_chains(graph, chains=removed)
    quiet = {chain for chain, chain_settings in values.items() if not chain_settings.std}
    remove_analog_chains(graph, ("noise",), chains=quiet)
    for node in analog_nodes(graph, set(_QUANTIZE_OPS) | set(_NOISE_OPS)):
        chain_settings = values[node.name.rpartition("/")[0]]  # every chain left is one of the plan's sites
        if node.op in _QUANTIZE_OPS and chain_settings.precision is not None:
            node.attrs["precision"] = OPS[node.op].attribute("precision").check(node.op, chain_settings.precision)
        elif node.op in _NOISE_OPS:
            node.attrs["std"] = OPS[node.op].attribute("std").check(node.op, chain_settings.std)
    return kept


def _first_attribute(graph, op_types, name: str) -> float | None:
    return next((node.attrs[name] for node in analog_nodes(graph, set(op_types)) if name in node.attrs), None)


_WORKER_WORKLOAD: _Workload | None = None


def _start_worker(workload: _Workload) -> None:
    global _WORKER_WORKLOAD
    _WORKER_WORKLOAD = workload


def _evaluate_in_worker(model: bytes, reference: bytes | None, repeats: int) -> list[dict]:
    return _WORKER_WORKLOAD.repeats(model, repeats, reference)


class Evaluation:
    """What every cell of a sweep shares, set up once: the data fitted to the model, the outputs scored, the cell
    models' builder; then the clean pass, and cells evaluated in as many calls as the caller likes (evaluate runs
    its grid in one, plan's search one candidate at a time). Arguments as :func:`evaluate`'s."""

    def __init__(self, model: onnx.ModelProto, data: Dataset | Feeds, grid: Grid, options: ConvertOptions | None,
                 *, preprocessing: Preprocessing = Preprocessing(), batch_size: int = 256, fidelity: bool = False,
                 output: str | None = None, class_axis: int | dict | None = None, outputs: list | None = None,
                 device: str = "cpu", threads: int | None = None):
        grid.check()
        check_cuda_usable(device)  # before the data is read and the cells are built
        self.model, self.grid, self.device = model, grid, device
        self.options = options or ConvertOptions()
        self.fidelity = fidelity
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise AnalogizeError(f"batch size must be a whole number >= 1, got {batch_size!r}")
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise AnalogizeError(f"threads must be a whole number >= 1, got {threads!r}")
        if not len(data):
            raise AnalogizeError(f"{data.name}: the dataset is empty")
        self.builder = _CellModels(model, self.options, grid)
        feeds = as_feeds(data, model, preprocessing)
        self.data_name = data.name
        labels = None if fidelity else feeds.labels
        self.adaptations = list(feeds.notes)
        fixed_batch = fixed_batch_size(model)
        if feeds.whole:
            self.adaptations.append(f"one sample per run: {', '.join(sorted(feeds.whole))} hold one whole input per "
                                    f"sample")
            batch_size, fixed_batch = 1, None
        elif fixed_batch:
            self.adaptations.append(f"fed in batches of {fixed_batch}, the model's fixed batch size")
            batch_size = fixed_batch
        output_names = [value.name for value in model.graph.output]
        if not output_names:
            raise AnalogizeError("the model has no graph output, so nothing to score; list the tensors it computes "
                                 "as outputs of its graph")
        if output is not None and output not in output_names:
            raise AnalogizeError(f"the model has no output {output!r}; its outputs are {', '.join(output_names)}")
        floating = [value.name for value in model.graph.output
                    if value.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                                            onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)]
        self.primary = output or (floating or output_names)[0]
        if output is None and len(output_names) > 1:
            which = "the first float one" if self.primary != output_names[0] else "the first"
            self.adaptations.append(f"headline numbers from output {self.primary!r}, {which} of {len(output_names)} "
                                    f"(choose with --primary-output; every output is scored)")
        unknown = [name for name in outputs or () if name not in output_names]
        if unknown:
            raise AnalogizeError(f"the model has no output {unknown[0]!r}; its outputs are {', '.join(output_names)}")
        scored = [self.primary] + [name for name in output_names
                                   if name != self.primary and (outputs is None or name in outputs)]
        self.axes = _requested_axes(class_axis, self.primary, scored)
        self.workload = _Workload(feeds, scored, labels, batch_size, pad_batches=bool(fixed_batch), threads=threads,
                                  device=device)
        self.described: list[dict] = []
        self.clean: dict = {}
        self.baselines: list[dict] = []

    def digital_variants(self) -> list[ActivationVariant]:
        return [variant for variant in self.grid.variants() if variant.activation != "keep"]

    def clean_pass(self, bar) -> None:
        """The clean model's outputs (what every cell is scored against), and each swapped activation's digital
        baseline; one step of ``bar`` each."""
        workload = self.workload
        workload.clean = workload.outputs_of(self.builder.clean().SerializeToString())
        bar.update()
        self.described = _describe_outputs(workload, self.axes)
        _check_labels_fit(workload, self.data_name)
        self.clean = _summarise([_score_outputs(workload, workload.clean, against_clean=False)]) \
            if workload.labels is not None else {}
        for variant in self.digital_variants():
            outputs = workload.outputs_of(self.builder.digital(variant).SerializeToString())
            self.baselines.append({"activation": variant.label, **_summarise([_score_outputs(workload, outputs)])})
            bar.update()

    def run(self, cells: list[Cell], workers: int = 1, bar=None) -> list[dict]:
        """Each cell's record, over the grid's repeats (one step of ``bar`` per repeat)."""
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise AnalogizeError(f"workers must be a whole number >= 1, got {workers!r}")
        return _run_cells(self.builder, self.workload, cells, self.grid.repeats, workers,
                          bar or progress_bar(len(cells) * self.grid.repeats, "evaluate", False))

    def result(self, records: list[dict], shard: tuple[int, int] | None = None) -> dict:
        """The result document (schema ``analogize.evaluate``) of the cells ``records``."""
        feeds, workload = self.workload.feeds, self.workload
        shapes = feeds.shapes()
        return {
            "format": RESULT_FORMAT, "version": RESULT_VERSION,
            "model_sha256": hashlib.sha256(self.model.SerializeToString()).hexdigest(), "output": self.primary,
            "kernels": kernels_in_use(), "device": device_kind(self.device),
            "data": {"name": feeds.name, "samples": len(feeds), "classes": workload.classes(),
                     "labels": workload.labels is not None,
                     "input_shape": next(iter(shapes.values())) if len(shapes) == 1 else None, "inputs": shapes,
                     "outputs": self.described, "adaptations": self.adaptations},
            "grid": self.grid.as_dict(), "options": asdict(self.options), "converted_input": self.builder.converted,
            "fidelity": self.fidelity or workload.labels is None, "batch_size": workload.batch_size,
            "clean": self.clean,
            "baselines": self.baselines, "cells": records, "cell_count": len(self.grid.cells()),
            "warnings": self.builder.warnings + _output_warnings(self.described, [*self.baselines, *records],
                                                                 self.primary),
            "shard": None if shard is None else {"index": shard[0], "count": shard[1]},
        }


def evaluate(model: onnx.ModelProto, data: Dataset | Feeds, grid: Grid = Grid(),
             options: ConvertOptions | None = None, *, preprocessing: Preprocessing = Preprocessing(),
             batch_size: int = 256, fidelity: bool = False, workers: int = 1, shard: tuple[int, int] | None = None,
             output: str | None = None, class_axis: int | dict | None = None, outputs: list | None = None,
             device: str = "cpu", threads: int | None = None, progress: bool = False) -> dict:
    """Evaluate the clean model and every grid cell (of ``shard`` ``(i, n)`` when given) on ``data``: a dataset
    (fitted to the model's one float input as ``preprocessing`` says) or :class:`~analogize.data.Feeds` (one
    array per input, as :func:`~analogize.data.model_feeds` reads them).

    ``options`` are convert's options for a clean model (the grid overrides bits, EP and activation);
    a converted model keeps its graph and has its precision, noise std and activations varied.
    Every graph output is scored against the clean model's (agreement along its class axis, relative error,
    cosine similarity, and SNR against the same cell without noise); ``output`` names the primary one (default:
    the first), whose numbers head the result and which labels are scored against. ``class_axis`` is the
    primary output's class axis, or a dict of axes by output name (default: :func:`default_class_axis`).
    ``outputs`` limits the outputs scored besides the primary (default: all; every scored output's clean and
    noise-free values are held in memory for the whole data). ``fidelity`` ignores labels. ``device``: where
    ONNX Runtime runs every session (``cpu``, ``cuda`` or ``cuda:N``; worker processes too). ``threads``: each
    session's intra-op threads (default: ONNX Runtime's own count, one per physical core; with ``workers``, the
    cores shared out among them).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise AnalogizeError(f"workers must be a whole number >= 1, got {workers!r}")
    sweep = Evaluation(model, data, grid, options, preprocessing=preprocessing, batch_size=batch_size,
                       fidelity=fidelity, output=output, class_axis=class_axis, outputs=outputs, device=device,
                       threads=threads)
    mine = [c for c in grid.cells() if shard is None or c.index % shard[1] == shard[0]]
    bar = progress_bar(1 + len(sweep.digital_variants()) + len(mine) * grid.repeats, "evaluate", progress)
    with bar:
        sweep.clean_pass(bar)
        records = sweep.run(mine, workers, bar)
    return sweep.result(records, shard)


def _requested_axes(class_axis, primary: str, output_names: list[str]) -> dict:
    """``class_axis`` as a dict by output name, refused in one line when it names no output."""
    if class_axis is None:
        return {}
    requested = class_axis if isinstance(class_axis, dict) else {primary: class_axis}
    for name, axis in requested.items():
        if name not in output_names:
            raise AnalogizeError(f"--class-axis names output {name!r}, which is not among the outputs scored: "
                                 f"{', '.join(output_names)}")
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise AnalogizeError(f"--class-axis for {name!r} must be a whole number (an axis), got {axis!r}")
    return requested


def _describe_outputs(workload: _Workload, requested: dict) -> list[dict]:
    """Each output as the clean model gave it on the first batch: shape, type, the class axis its agreement is
    measured along, and whether it is the same for every sample; settles ``workload.class_axes``."""
    described, workload.class_axes = [], {}
    for k, name in enumerate(workload.outputs):
        first = workload.clean[0][k]
        named = name in requested
        axis = requested[name] if named else default_class_axis(first.ndim)
        if named and not -first.ndim <= axis < first.ndim:
            raise AnalogizeError(f"--class-axis {axis} is not an axis of output {name!r}, which has shape "
                                 f"{list(first.shape)}")
        if named and first.dtype.kind != "f":
            raise AnalogizeError(f"--class-axis names output {name!r}, which holds {first.dtype.name} values, not "
                                 f"class scores (integer outputs are compared value by value)")
        if axis is not None:
            axis %= first.ndim
            if first.dtype.kind != "f" or first.shape[axis] < 2:
                axis = None
        workload.class_axes[name] = axis
        described.append({"name": name, "shape": list(first.shape), "dtype": first.dtype.name, "class_axis": axis,
                          # a guessed axis of a rank-3+ output (anchors, time, pixels) may hold no classes at all
                          "class_axis_guessed": axis is not None and not named and first.ndim > 2,
                          "classes": None if axis is None else first.shape[axis],
                          "varies": _varies(name, k, workload)})
    return described


def _varies(name: str, k: int, workload: _Workload) -> bool | None:
    """Whether the clean model's output ``k`` differs between samples (None: it has no batch axis to tell)."""
    batches = [outputs[k] for outputs in workload.clean]
    if len(workload.feeds) < 2:
        return None
    if workload.feeds.whole:  # one sample per run: compare the runs
        return not all(batch.shape == batches[0].shape and np.array_equal(batch, batches[0])
                       for batch in batches)
    if any(batch.ndim == 0 for batch in batches):
        return None
    rows = [min(workload.batch_size, len(workload.feeds) - start)
            for start in range(0, len(workload.feeds), workload.batch_size)]
    if any(batch.shape[0] != count for batch, count in zip(batches, rows)):
        return None
    first = batches[0][:1]
    return not all(batch.shape[1:] == first.shape[1:] and np.array_equal(batch, np.broadcast_to(first, batch.shape),
                                                                          equal_nan=batch.dtype.kind == "f")
                   for batch in batches)


def _output_warnings(described: list[dict], records: list[dict], primary: str) -> list[str]:
    """One line per output whose numbers mislead unless read with care: constant outputs, guessed class axes,
    and outputs that could not be compared in some cell."""
    lines = [f"output {entry['name']!r} is the same for every sample of this data: its agreement, error and SNR "
             f"say nothing about the model" for entry in described if entry["varies"] is False]
    lines += [f"output {entry['name']!r}: agreement is the argmax along axis {entry['class_axis']} of "
              f"{entry['shape']}, a guess for a rank-{len(entry['shape'])} output; name the class axis with "
              f"--class-axis" for entry in described if entry["class_axis_guessed"]]
    for entry in described:
        notes = {(record.get("outputs", {}).get(entry["name"]) or (record if entry["name"] == primary else {}))
                 .get("note") for record in records} - {None}
        lines += [f"output {entry['name']!r} is not scored where {note}" for note in sorted(notes)]
    return lines


def _check_labels_fit(workload: _Workload, name: str) -> None:
    """Labels are scored against the primary output's class axis: one score vector per sample."""
    if workload.labels is None:
        return
    primary, axis = workload.clean[0][0], workload.class_axes[workload.outputs[0]]
    rows = min(workload.batch_size, len(workload.feeds))
    if axis is None or np.moveaxis(primary, axis, -1).shape[:-1] != (rows,):
        raise AnalogizeError(f"{name}: labels need an output of class scores shaped (samples, classes), but output "
                             f"{workload.outputs[0]!r} has shape {list(primary.shape)} for a batch of {rows}; choose "
                             f"another with --primary-output or --class-axis, or pass --fidelity")
    classes = primary.shape[axis]
    if len(workload.labels) and workload.labels.max() >= classes:
        raise AnalogizeError(f"{name}: labels go up to {workload.labels.max()} but the model has {classes} outputs; "
                             f"check that the data matches the model (or use --fidelity)")


def _score_outputs(workload: _Workload, outputs: list, against_clean: bool = True) -> dict:
    tally = _Tally(workload)
    for index, batch in enumerate(outputs):
        tally.add(index, batch)
    return tally.metrics(against_clean)


def _run_cells(builder: _CellModels, workload: _Workload, cells: list[Cell], repeats: int, workers: int,
               bar) -> list[dict]:
    records: dict[int, dict] = {}

    def record(cell: Cell, settings: dict, per_repeat: list[dict]) -> None:
        records[cell.index] = {"cell": cell.index, "activation": cell.variant.label,
                               **({"plan": cell.label} if cell.plan is not None else {}), **settings,
                               "repeats": repeats, **_summarise(per_repeat)}

    def prepared(cell: Cell) -> tuple[bytes, bytes | None, dict]:
        model, settings = builder.build(cell)
        return model.SerializeToString(), builder.noise_free(model, settings), settings

    if workers == 1 or len(cells) < 2:
        for cell in cells:
            model, reference, settings = prepared(cell)
            record(cell, settings, workload.repeats(model, repeats, reference, bar.update))
        return [records[c.index] for c in cells]

    workers = min(workers, len(cells))
    shared = replace(workload, threads=workload.threads or max(1, (os.cpu_count() or 1) // workers))
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_start_worker, initargs=(shared,)) as pool:
            _drain(pool, cells, prepared, record, repeats, workers, bar)
    except BrokenProcessPool:
        raise AnalogizeError("a worker process failed to start or died (out of memory, or a script calling "
                             "evaluate without an `if __name__ == '__main__':` guard); run with fewer --workers") \
            from None
    return [records[c.index] for c in cells]


def _drain(pool, cells, prepared, record, repeats: int, workers: int, bar) -> None:
    """Keep at most two cells per worker in flight: each holds a serialised model."""
    pending, queue = {}, list(cells)
    while queue or pending:
        while queue and len(pending) < 2 * workers:
            cell = queue.pop(0)
            model, reference, settings = prepared(cell)
            pending[pool.submit(_evaluate_in_worker, model, reference, repeats)] = (cell, settings)
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            cell, settings = pending.pop(future)
            record(cell, settings, future.result())
            bar.update(repeats)


def on_model_file(run, model_path, data: str, *args, split: str | None = None, limit: int | None = None,
                  preprocessing: Preprocessing = Preprocessing(), torch_import=None, labels: bool = True,
                  **settings) -> dict:
    """``run(model, feeds, *args, preprocessing=..., **settings)`` (evaluate, sensitivity, plan) on the model
    ``model_path`` (an ONNX file, or a torch model exported with ``torch_import``) and the data spec ``data``, with
    the model's path, the data spec and what was exported recorded in the result: what the CLI runs."""
    from ..torch_import import load_any_model

    check_cuda_usable(settings.get("device", "cpu"))  # before a possibly long load
    model, _, exported = load_any_model(model_path, torch_import)
    feeds = model_feeds(data, model, preprocessing, split=split, limit=limit, labels=labels)
    result = run(model, feeds, *args, preprocessing=preprocessing, **settings)
    result["model"] = str(model_path)
    if "data" in result:
        result["data"].update(spec=data, split=split, limit=limit)
    if exported:
        result["exported"] = exported
    return result


def evaluate_file(model_path, data: str, grid: Grid = Grid(), options: ConvertOptions | None = None,
                  **settings) -> dict:
    """:func:`evaluate` on a model file and a data spec (see :func:`on_model_file`)."""
    grid.check()
    return on_model_file(evaluate, model_path, data, grid, options, labels=not settings.get("fidelity"), **settings)
