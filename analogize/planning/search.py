"""``plan``: the cheapest per-unit settings that meet an accuracy or agreement target, within the user's bounds.

Cost, lowest first: the number of digital units (layers and graph-input DACs kept digital), then the total bits
over the analog units. The search is greedy from the sensitivity ranking (:mod:`.sensitivity`, measured at the
lowest bit width allowed, where units differ most):

1. every unit analog at the highest bit width allowed; if that misses the target,
2. units kept digital one by one in ranking order until the target is met, then each of them tried analog again
   (latest first) and left analog where the target still holds;
3. each analog unit, least costly first, lowered to the lowest bit width that still meets the target.

Every candidate is one cell of one evaluate sweep (:class:`~analogize.evaluate.engine.Evaluation`: the graph is
converted once, a candidate only takes chains out and sets attributes), scored over ``repeats`` noise draws; the
target counts as met when the mean over the draws reaches it (a relative-error target: stays at or below it). The
plan found is then converted as ``convert --plan`` would and evaluated plainly, over ``verify_repeats`` draws: that
verification is what the result reports as met or not. ``bench/plan_optimality.py`` compares the greedy cost with
the optimum found by enumerating every candidate on a small model.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace

import onnx

from ..convert import SETTINGS_SCHEMA, ConvertOptions, convert
from ..data import Dataset, Feeds, Preprocessing
from ..data.feeds import as_feeds
from ..errors import AnalogizeError
from ..evaluate.engine import ActivationVariant, Cell, Evaluation, Grid, evaluate, on_model_file
from ..evaluate.results import RESULT_SCHEMA
from ..noise_model import MAX_BITS
from ..passes.model import is_converted
from ..progress import progress_bar
from ..untrusted import Integer, Number
from ..plans import Plan, model_fingerprint
from .metrics import LOWER_IS_BETTER, METRICS
from .sensitivity import sensitivity

PLAN_SEARCH_FORMAT, PLAN_SEARCH_VERSION = "analogize.plan-search", 1
#: what the report's section and the figure read of a plan search, as :mod:`analogize.untrusted` checks it
PLAN_SEARCH_SCHEMA = {
    "model?": (str, None), "model_sha256?": (str, None), "target": {"metric": str, "value": Number},
    "bounds": {"bits": [Integer], "digital?": bool, "max_digital?": (Integer, None)},
    "cost": {"definition?": str, "digital_layers?": (Integer, None), "total_bits?": (Integer, None)}, "met": bool,
    "plan": {"layers": {str: {"digital?": bool, "bits?": Integer}}}, "repeats": Integer, "settings": SETTINGS_SCHEMA,
    "steps": [{"step": Integer, "change": str, "metric_mean": (Number, None), "metric_std?": (Number, None),
               "digital_layers?": (Integer, None), "total_bits?": (Integer, None), "met?": bool}],
    "verification?": (RESULT_SCHEMA, None), "warnings": [str]}
COST_DEFINITION = "number of digital units (layers and input DACs kept digital), then total bits over the analog units"
DIGITAL = "digital"


@dataclass(frozen=True)
class SearchBounds:
    """What the search may choose: each analog unit's bit width among ``bits``, and whether (and how many) units
    may be kept digital."""

    bits: tuple = (8,)
    digital: bool = True
    max_digital: int | None = None

    def check(self) -> "SearchBounds":
        if not self.bits or any(isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BITS
                                for b in self.bits):
            raise AnalogizeError(f"plan: --bits-choices must be whole numbers from 1 to {MAX_BITS}, got "
                                 f"{list(self.bits)!r}")
        if self.max_digital is not None and (isinstance(self.max_digital, bool) or
                                             not isinstance(self.max_digital, int) or self.max_digital < 0):
            raise AnalogizeError(f"plan: --max-digital must be a whole number >= 0, got {self.max_digital!r}")
        return replace(self, bits=tuple(sorted(set(self.bits))))

    def digital_allowed(self) -> int:
        return 0 if not self.digital else (self.max_digital if self.max_digital is not None else 1 << 30)

    def as_dict(self) -> dict:
        return {"bits": list(self.bits), "digital": self.digital, "max_digital": self.max_digital}


def _cost(state: dict) -> tuple[int, int]:
    return (sum(1 for value in state.values() if value == DIGITAL),
            sum(value for value in state.values() if value != DIGITAL))


def state_plan(state: dict, model: onnx.ModelProto | None = None) -> Plan:
    """The plan of a search state (unit -> bits or DIGITAL), recording ``model``'s fingerprint when given."""
    return Plan({unit: {"digital": True} if value == DIGITAL else {"bits": value} for unit, value in state.items()},
                {}, None if model is None else model_fingerprint(model))


class _Candidates:
    """Measures search states as cells of one evaluate sweep, remembering each (a state is measured once)."""

    def __init__(self, sweep: Evaluation, metric: str, target: float, bar):
        self.sweep, self.metric, self.target, self.bar = sweep, metric, target, bar
        self.steps: list[dict] = []
        self._seen: dict[tuple, dict] = {}

    def measure(self, state: dict, change: str) -> bool:
        key = tuple(sorted(state.items()))
        if key not in self._seen:
            cell = Cell(len(self._seen), ActivationVariant.parse("keep"), None, None, state_plan(state), change)
            record = self.sweep.run([cell], bar=self.bar)[0]
            mean = record.get(f"{self.metric}_mean")
            digital, bits = _cost(state)
            self._seen[key] = {"step": len(self.steps), "change": change, "metric_mean": mean,
                               "metric_std": record.get(f"{self.metric}_std"), "digital_layers": digital,
                               "total_bits": bits, "met": _meets(mean, self.metric, self.target),
                               "state": dict(state)}
            self.steps.append(self._seen[key])
        return self._seen[key]["met"]

    def best(self) -> dict:
        sign = -1.0 if self.metric in LOWER_IS_BETTER else 1.0
        return max(self.steps, key=lambda step: -math.inf if step["metric_mean"] is None
                   else sign * step["metric_mean"])


def _meets(value, metric: str, target: float) -> bool:
    if value is None:
        return False
    return value <= target if metric in LOWER_IS_BETTER else value >= target


def search_plan(model: onnx.ModelProto, data: Dataset | Feeds, options: ConvertOptions | None = None, *,
                metric: str = "agreement", target: float = 0.99, bounds: SearchBounds | None = None,
                repeats: int = 3, verify_repeats: int = 5, seed: int = 0,
                preprocessing: Preprocessing = Preprocessing(), progress: bool = False, **scoring) -> dict:
    """Search the cheapest plan meeting ``target`` for ``metric`` (see the module's docstring); ``scoring`` takes
    evaluate's batch_size, output, class_axis, outputs and device. Raises when the target cannot be met in ``bounds``,
    saying the best reached and which units limit it."""
    options = options or ConvertOptions()
    bounds = (bounds or SearchBounds(bits=(options.bits or ConvertOptions.bits,))).check()
    if metric not in METRICS:
        raise AnalogizeError(f"plan: the target metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
        raise AnalogizeError(f"plan: the target {metric} must be a fraction in (0, 1], got {target!r}")
    comparison = "<=" if metric in LOWER_IS_BETTER else ">="
    if options.plan is not None:
        raise AnalogizeError("plan writes a plan rather than reading one: drop --plan")
    if options.precision is not None:
        raise AnalogizeError("plan chooses bit widths from --bits-choices: drop --precision")
    if is_converted(model):
        raise AnalogizeError("plan takes the original (unconverted) model and convert's flags")
    feeds = as_feeds(data, model, preprocessing)
    if metric == "accuracy" and feeds.labels is None:
        raise AnalogizeError("plan: --target-accuracy needs labelled data; use --target-agreement without labels")
    fidelity = metric != "accuracy"
    ranking_options = replace(options, bits=bounds.bits[0])
    ranking = sensitivity(model, feeds, ranking_options, repeats=repeats, seed=seed, statistics=False,
                          fidelity=fidelity, metric=metric, **scoring)
    if ranking["reference"]["analog"].get(f"{metric}_mean") is None:
        raise AnalogizeError(f"plan: output {ranking['output']!r} has no {metric} (no class axis to take an argmax "
                             f"along); use --target-rel-error, or name its class axis with --class-axis")
    order = [unit["unit"] for unit in ranking["units"]]  # most costly first

    sweep = Evaluation(model, feeds, Grid(repeats=repeats, seed=seed), options, fidelity=fidelity, **scoring)
    bar = progress_bar(1 + repeats * len(order) * (len(bounds.bits) + 2), "plan", progress)
    with bar:
        sweep.clean_pass(bar)
        candidates = _Candidates(sweep, metric, target, bar)
        state = _search(order, bounds, candidates)
    if state is None:
        raise AnalogizeError(_unmet(metric, comparison, target, candidates.best(), order, bounds))
    if all(value == DIGITAL for value in state.values()):
        raise AnalogizeError(f"plan: only keeping every analog unit digital meets {metric} {comparison} {target:g} "
                             f"(the clean model); lower the target or allow more bits (--bits-choices)")
    plan = state_plan(state, model)
    verification = verify_plan(model, feeds, options, plan, Grid(repeats=verify_repeats, seed=seed),
                               fidelity=fidelity, **scoring)
    verified = verification["cells"][0].get(f"{metric}_mean")
    digital, bits = _cost(state)
    warnings = list(ranking["warnings"])
    if not _meets(verified, metric, target):
        warnings.append(f"the verification evaluate ({verify_repeats} draws) gives {metric} "
                        f"{_fraction(verified)}, missing the target {comparison} {target:g} that the search's "
                        f"{repeats} draws met: the plan sits at the edge of the noise; raise --repeats or the target")
    return {"format": PLAN_SEARCH_FORMAT, "version": PLAN_SEARCH_VERSION, "model": None,
            "model_sha256": plan.model_sha256, "target": {"metric": metric, "value": target},
            "bounds": bounds.as_dict(), "settings": options.summary(),
            "cost": {"definition": COST_DEFINITION, "digital_layers": digital, "total_bits": bits},
            "met": _meets(verified, metric, target), "ranking": order,
            "steps": [{key: value for key, value in step.items() if key != "state"} for step in candidates.steps],
            "plan": plan.to_document(), "verification": verification, "repeats": repeats,
            "verify_repeats": verify_repeats, "seed": seed, "warnings": warnings}


def _search(order: list[str], bounds: SearchBounds, candidates: _Candidates) -> dict | None:
    """The greedy search over states (unit -> bits or DIGITAL); None when no state within bounds meets the target."""
    top = bounds.bits[-1]
    state = {unit: top for unit in order}
    met = candidates.measure(state, f"all analog at {top} bits")
    added = []
    for unit in order:
        if met or len(added) >= bounds.digital_allowed():
            break
        state[unit] = DIGITAL
        added.append(unit)
        met = candidates.measure(state, f"{unit} digital")
    if not met:
        return None
    for unit in reversed(added[:-1]):  # the last one added was needed to reach the target
        trial = {**state, unit: top}
        if candidates.measure(trial, f"{unit} analog again at {top} bits"):
            state = trial
    for unit in reversed(order):
        for bits in bounds.bits:
            if state[unit] == DIGITAL or bits >= state[unit]:
                break
            trial = {**state, unit: bits}
            if candidates.measure(trial, f"{unit} at {bits} bits"):
                state = trial
                break
    return state


def enumerated_optimum(sweep: Evaluation, units: list[str], bounds: SearchBounds, metric: str, target: float,
                       bar=None) -> tuple[tuple | None, dict | None, int]:
    """The cheapest state meeting the target among all states within ``bounds`` ((bits choices + 1) ** units of
    them), each measured as :func:`search_plan` measures its candidates (same cells, same seeds): the reference
    the greedy search is compared with on small models. Returns its cost, the state, and how many were measured."""
    candidates = _Candidates(sweep, metric, target, bar)
    choices = (*([DIGITAL] if bounds.digital else []), *bounds.bits)
    best = None
    for values in itertools.product(choices, repeat=len(units)):
        state = dict(zip(units, values))
        if _cost(state)[0] > bounds.digital_allowed():
            continue
        if candidates.measure(state, "") and (best is None or _cost(state) < _cost(best)):
            best = state
    return (None if best is None else _cost(best)), best, len(candidates.steps)


def _fraction(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _unmet(metric: str, comparison: str, target: float, best: dict, order: list[str], bounds: SearchBounds) -> str:
    analog = [unit for unit in order if best["state"].get(unit) != DIGITAL]
    limit = "; allow more digital units (--max-digital)" if bounds.digital else "; allow digital units"
    return (f"plan: no plan within the bounds meets {metric} {comparison} {target:g}: the best reached is "
            f"{_fraction(best['metric_mean'])} ({best['change']}: {best['digital_layers']} digital units); the units "
            f"that limit it, most costly first: {', '.join(analog[:3]) or 'none'}{limit}, or lower the target")


def verify_plan(model: onnx.ModelProto, feeds: Feeds, options: ConvertOptions, plan: Plan, grid: Grid,
                **scoring) -> dict:
    """Evaluate the model ``convert --plan`` writes for ``plan``, as ``evaluate`` would evaluate that file: the
    numbers a user gets from the two commands."""
    converted = convert(model, replace(options, plan=plan.to_document())).model
    return evaluate(converted, feeds, grid, **scoring)


def search_plan_file(model_path, data: str, options: ConvertOptions | None = None, **settings) -> dict:
    """:func:`search_plan` on a model file and a data spec (see :func:`~analogize.evaluate.engine.on_model_file`)."""
    return on_model_file(search_plan, model_path, data, options, labels=settings.get("metric") == "accuracy",
                         **settings)
