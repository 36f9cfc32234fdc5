"""The option groups that several commands share, each declared once, and the parsers of option values. A group
is a decorator that adds its options to a command; a packed group also hands their values to the command as one
keyword argument, shaped as the library takes them, so that commands pass them on whole. Help texts that differ
between commands are parameters of the group. This is the one module of the command line that reads the
placements and activations of the graph passes, and the range modes."""
from __future__ import annotations

import functools
import math
import os

import click

from .. import noise_model
from ..errors import AnalogizeError
from ..model_io import check_output_target
from ..ops.spec import OPS
from ..passes.activations import ACTIVATIONS
from ..passes.chains import PLACEMENTS
from ..ranges.calibration import MIN_CALIBRATION_SAMPLES
from ..ranges.modes import (ACTIVATION_RANGE_MODES, CALIBRATION_METHODS, DEFAULT_ACTIVATION_RANGE,
                            DEFAULT_CALIBRATION_METHOD, DEFAULT_CALIBRATION_SAMPLES, DEFAULT_PERCENTILE,
                            DEFAULT_WEIGHT_RANGE, WEIGHT_RANGE_MODES)

ACTIVATION_NAMES = tuple(ACTIVATIONS)


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange without NaN and the infinities, which it lets through (NaN fails no comparison with a
    bound, and an open end takes an infinity): the type of every float flag."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


#: a float flag with no bounds
FINITE_FLOAT = FiniteFloatRange()


def option_group(*options):
    """Options added to a command in the order given, as if stacked as decorators in that order."""
    def add(function):
        for option in reversed(options):
            function = option(function)
        return function

    return add


def packed_option_group(keyword, pack, *options):
    """An option group whose values reach the command as the one argument ``keyword``: ``pack`` of a dict of
    the values by parameter name."""
    # click derives the parameter names from the flags: ask it rather than repeat them
    names = [parameter.name for parameter in option_group(*options)(lambda: None).__click_params__]

    def add(function):
        @functools.wraps(function)
        def command(**values):
            group = {name: values.pop(name) for name in names}
            return function(**values, **{keyword: pack(group)})

        return option_group(*options)(command)

    return add


def comma_separated(choices=()):
    """Callback: a comma-separated list as a tuple of its non-empty items, each among ``choices`` if given."""
    def parse(ctx, param, value):
        items = tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()
        bad = [v for v in items if choices and v not in choices]
        if bad:
            raise click.BadParameter(f"{', '.join(bad)} not among {', '.join(choices)}")
        return items

    return parse


def comma_separated_numbers(kind, low, high, what):
    """Callback: comma-separated numbers of ``kind`` in [low, high] (``high`` excluded for floats); when the
    option is not given, one grid point ``None``: the default."""
    def parse(ctx, param, value):
        if value is None:
            return (None,)
        items = []
        for text in (v.strip() for v in value.split(",")):
            try:
                number = kind(text)
            except ValueError:
                raise click.BadParameter(f"{text!r} is not a {what}") from None
            if not low <= number <= high or (kind is float and number == high):
                closing = ")" if kind is float else "]"
                raise click.BadParameter(f"{text} is outside [{low}, {high}{closing}")
            items.append(number)
        return tuple(items)

    return parse


def comma_separated_floats(ctx, param, value):
    """Callback: comma-separated finite numbers as a tuple of floats."""
    if value is None:
        return None
    try:
        numbers = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None
    if not all(math.isfinite(number) for number in numbers):
        raise click.BadParameter(f"{value!r} holds a number that is not finite")
    return numbers


def class_axes(context, parameter, text):
    """``AXIS`` or ``OUTPUT=AXIS,...`` as the class_axis :func:`~analogize.evaluate.engine.evaluate` takes."""
    if text is None:
        return None
    if "=" not in text:
        try:
            return int(text)
        except ValueError:
            raise click.BadParameter(f"{text!r} is not an axis (a whole number) or OUTPUT=AXIS") from None
    axes = {}
    for item in text.split(","):
        name, _, axis = item.rpartition("=")
        try:
            axes[name] = int(axis)
        except ValueError:
            raise click.BadParameter(f"{item!r} is not OUTPUT=AXIS with a whole-number axis") from None
        if not name:
            raise click.BadParameter(f"{item!r} names no output; give OUTPUT=AXIS")
    return axes


def height_by_width(ctx, param, value):
    """Callback: ``HxW``, or one number for a square, as ``(height, width)``."""
    if value is None:
        return None
    height, separator, width = value.lower().partition("x")
    try:
        size = (int(height), int(width)) if separator else (int(height), int(height))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not HxW (e.g. 32x32)") from None
    if min(size) < 1:
        raise click.BadParameter(f"{value!r}: height and width must be >= 1")
    return size


def writable_file(ctx, param, value):
    """Fail before a long sweep, not after it, when an output cannot be written: '-' is refused (only JSON goes to
    stdout, :func:`json_output_file`), and so is a name that is no regular file (a device, a pipe, a link)."""
    if value is None:
        return value
    if value == "-":
        raise click.BadParameter("'-' (stdout) is taken only by the JSON outputs; give a file name (./- for a file "
                                 "named -)")
    if value.endswith(("/", os.sep)) or os.path.isdir(value):
        raise click.BadParameter(f"{value} is a directory; give a file name")
    directory = os.path.dirname(value) or "."
    if not os.path.isdir(directory):
        raise click.BadParameter(f"directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise click.BadParameter(f"directory {directory} is not writable")
    name = os.path.basename(value)
    longest = os.pathconf(directory, "PC_NAME_MAX")
    if len(os.fsencode(name)) > longest:
        raise click.BadParameter(f"the file name {name[:20]}... is longer than the {longest} bytes a name may have "
                                 f"there; give a shorter one")
    try:
        check_output_target(value)
    except AnalogizeError as error:
        raise click.BadParameter(str(error)) from None
    return value


def json_output_file(ctx, param, value):
    """Callback: a writable file for a JSON output, or '-' for stdout."""
    return value if value == "-" else writable_file(ctx, param, value)


def files_read(model=None, *, data=None, eval_data=None, calibrate=None, torch_import=None) -> dict:
    """The files a command reads, by what to call them, for :func:`~analogize.model_io.refuse_overwrites` (with
    ``models=("the model",)`` for MODEL's weight files): MODEL, the files and folders its data specs name, the
    --plan file (:func:`plan_path`) and torch's --state-dict."""
    from ..data import spec_file

    read = {"the model": model, "--plan": plan_path(),
            "--state-dict": torch_import.state_dict if torch_import is not None else None}
    for flag, spec in (("--data", data), ("--eval-data", eval_data), ("--calibrate", calibrate)):
        read[flag] = spec_file(spec)
    return read


_PLAN_PATH = "analogize.plan_path"


def plan_path():
    """The --plan file of the command being run: its option hands the command the document read from it."""
    context = click.get_current_context(silent=True)
    return context.meta.get(_PLAN_PATH) if context is not None else None


def plot_file(ctx, param, value):
    from ..evaluate.results import PLOT_FORMATS

    value = writable_file(ctx, param, value)
    if value is not None and value.rpartition(".")[2].lower() not in PLOT_FORMATS:
        raise click.BadParameter(f"{value}: plots are written as {', '.join('.' + f for f in PLOT_FORMATS)}")
    return value


def report_file(ctx, param, value):
    """Callback: a writable file for an HTML report, named as one."""
    value = writable_file(ctx, param, value)
    if value is None:
        return value
    from ..report import REPORT_SUFFIXES

    if not value.lower().endswith(REPORT_SUFFIXES):
        raise click.BadParameter(f"{value}: the report is an HTML file; give a name ending in "
                                 f"{' or '.join(REPORT_SUFFIXES)}")
    return value


def zoo_model_config(items) -> dict:
    """``--option KEY=VALUE`` items as zoo model options (values are Python literals)."""
    import ast

    config = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator:
            raise AnalogizeError(f"--option {item!r} is not KEY=VALUE")
        try:
            config[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise AnalogizeError(f"--option {key}: {value!r} is not a number, tuple or boolean") from None
    return config


def _plan_document(context, path):
    """The plan file as the checked document ConvertOptions.plan holds (read as data, never run)."""
    if path is None:
        return None
    context.meta[_PLAN_PATH] = path
    from ..plans import read_plan

    try:
        return read_plan(path).to_document()
    except AnalogizeError as error:
        raise click.BadParameter(str(error)) from None


def _convert_fields(flags: dict) -> dict:
    """The chain flags as ConvertOptions fields: each --no-X flag switches field X off."""
    fields = dict(flags)
    for element in ("noise", "quantize", "clamp"):
        fields[element] = not fields.pop(f"no_{element}")
    return fields


# The convert flags that shape the inserted chains (convert, evaluate, finetune, train, sweep): the command
# gets them as ``chain``, a dict of ConvertOptions fields.
chain_options = packed_option_group(
    "chain", _convert_fields,
    click.option("--precision", type=FiniteFloatRange(min=1.0),
                 help="Set p (steps per unit) directly; overrides --bits."),
    click.option("--bit-convention", type=click.Choice(noise_model.BIT_CONVENTIONS),
                 default=noise_model.DEFAULT_BIT_CONVENTION, show_default=True,
                 help="pow2: p = 2^B (paper eq. 7, power-of-two hardware scales); pow2-minus-1: p = 2^B - 1 "
                      "(AnalogVNN)."),
    click.option("--no-noise", is_flag=True, help="Insert no Gaussian noise."),
    click.option("--no-quantize", is_flag=True, help="Insert no reduce-precision."),
    click.option("--no-clamp", is_flag=True, help="Insert no clamp to [-1, 1]."),
    click.option("--stochastic-rounding", is_flag=True,
                 help="Use StochasticReducePrecision instead of ReducePrecision."),
    click.option("--where", callback=comma_separated(PLACEMENTS), default=",".join(PLACEMENTS),
                 show_default=True, help="Comma-separated placements of the chains."),
    click.option("--scale", type=FINITE_FLOAT,
                 help="GELU/SiLU input scale s > 0 "
                      f"[default: {OPS['ReluGeluInterpolation'].attribute('scale').default}]."),
    click.option("--alpha", type=FINITE_FLOAT, help="Leaky slope in [0, 1) [default: 0; 0.01 for leaky]."),
    click.option("--temperature", type=FINITE_FLOAT, help="Temperature T > 0 of the smooth-* family [default: 1]."),
    click.option("--exclude", callback=comma_separated(), default="",
                 help="Comma-separated node names or op types to keep digital."),
    click.option("--data-inputs", callback=lambda context, parameter, text: None if text is None else tuple(
                     name for name in text.split(",") if name),
                 help="Comma-separated graph inputs the input placement chains [default: the float inputs that "
                      "reach a layer's data operand, not scales, thresholds, masks or recurrent states]."),
    click.option("--plan", callback=lambda context, parameter, path: _plan_document(context, path), metavar="PLAN.json",
                 help="Per-layer settings over these flags: layers kept digital, their own bits, EP or ranges "
                      "(docs/plan.md; 'analogize plan' writes one)."),
    click.option("--analog-products", is_flag=True,
                 help="Also make activation-by-activation MatMuls (attention's Q K^T and A V) analog, as photonic "
                      "chips compute them [default: digital]."),
)


def _shape(context, parameter, text):
    if text is None:
        return None
    try:
        shape = tuple(int(size) for size in text.replace("x", ",").split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a shape: give sizes such as 3,224,224") from None
    if not shape or min(shape) < 1:
        raise click.BadParameter(f"{text!r}: sizes must be whole numbers >= 1")
    return shape


def _torch_import(values: dict):
    from ..torch_import import TorchImport

    static = values.pop("static_batch")
    return TorchImport(**values, dynamic_batch=not static)


# How a torch model given as MODEL becomes ONNX (convert, evaluate, finetune): the command gets ``torch_import``
torch_options = packed_option_group(
    "torch_import", _torch_import,
    click.option("--input-shape", callback=_shape,
                 help="Torch models: one sample's input shape without the batch (e.g. 3,224,224), to export with."),
    click.option("--state-dict", type=click.Path(dir_okay=False),
                 help="Torch models given as module.path:factory: the trained weights (torch.save of "
                      "model.state_dict(); read with weights_only)."),
    click.option("--exporter", type=click.Choice(["legacy", "dynamo"]),
                 help="Factory models: torch.onnx's exporter [default: legacy] (TorchScript uses legacy, .pt2 "
                      "programs dynamo)."),
    click.option("--opset", type=click.IntRange(13, 21), default=18, show_default=True,
                 help="Torch models: the ONNX opset to export to."),
    click.option("--static-batch", is_flag=True, help="Torch models: export with a fixed batch axis."),
)


def _data_source(values: dict) -> dict:
    from ..data import Preprocessing

    return {"data": values["data"], "split": values["split"], "limit": values["limit"],
            "preprocessing": Preprocessing(layout=values["layout"], size=values["resize"], channels=values["channels"],
                                           mean=values["input_mean"], std=values["input_std"])}


# The data a model is scored on and how images are fitted to it (evaluate, sensitivity, plan): the command gets
# ``data_source``, the data, split, limit and preprocessing keywords of the ``*_file`` functions.
scoring_data_options = packed_option_group(
    "data_source", _data_source,
    click.option("--data", required=True,
                 help="digits | npz:PATH (arrays x, y; or one array per model input, named after it, and y) | "
                      "cifar10:DIR (python batches) | imagefolder:DIR."),
    click.option("--split", type=click.Choice(["test", "train", "all"]),
                 help="digits and cifar10 only [default: test]."),
    click.option("--limit", type=click.IntRange(min=1),
                 help="Use only N samples, evenly spaced over the data (a quick look that still sees every class)."),
    click.option("--layout", type=click.Choice(["auto", "nchw", "nhwc"]), default="auto", show_default=True,
                 help="The model's input layout (auto: from its input shape)."),
    click.option("--resize", callback=height_by_width, help="Resize images to HxW [default: the model's input size]."),
    click.option("--channels", type=click.IntRange(min=1),
                 help="Channels the model takes (1: grayscale, 3: RGB) [default: from its input]."),
    click.option("--input-mean", callback=comma_separated_floats,
                 help="Subtract this mean (one value or one per channel)."),
    click.option("--input-std", callback=comma_separated_floats,
                 help="Then divide by this std (one value or one per channel)."),
)

# Which outputs are scored and how (evaluate, sensitivity, plan): the command gets ``scoring``, keywords of
# evaluate's.
output_scoring_options = packed_option_group(
    "scoring", lambda values: {"output": values.pop("output_name"), **values},
    click.option("--primary-output", "output_name",
                 help="The primary graph output: the headline numbers, and what labels are scored against "
                      "[default: the first float output]. Every output is scored."),
    click.option("--score-outputs", "outputs", callback=lambda context, parameter, text: None
                 if text in (None, "all") else tuple(name for name in text.split(",") if name),
                 help="Comma-separated outputs to score besides the primary one, or 'all' [default: all]. Each scored "
                      "output's clean values are held in memory for the whole data."),
    click.option("--class-axis", callback=class_axes,
                 help="The axis argmax agreement (and accuracy) reads classes along: AXIS for the primary output, or "
                      "OUTPUT=AXIS, comma-separated [default: 1, or the last for rank-3 sequence outputs]."),
    click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True),
)

fidelity_option = click.option("--fidelity", is_flag=True,
                               help="Ignore labels: score top-1 agreement with the clean model and output SNR only.")
workers_option = click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                              help="Processes to spread the cells over (they share the cores).")
shard_option = click.option("--shard", help="Compute only shard I of N (I/N, I from 0) and write a partial result "
                                            "for 'analogize merge'.")


# How each chain's full scale is set (convert, evaluate, finetune): the command gets them as ``ranges``, a
# dict of ConvertOptions fields. train and sweep keep the paper's unit range and take none of them.
range_options = packed_option_group(
    "ranges", dict,
    click.option("--weight-range", type=click.Choice(list(WEIGHT_RANGE_MODES)), default=DEFAULT_WEIGHT_RANGE,
                 show_default=True, help="Full scale of weights and biases: " + "; ".join(
                     f"{mode.name}: {mode.doc}" for mode in WEIGHT_RANGE_MODES.values()) + "."),
    click.option("--activation-range", type=click.Choice(list(ACTIVATION_RANGE_MODES)),
                 help=f"Full scale of the input, layer inputs and outputs [default: {DEFAULT_ACTIVATION_RANGE}; "
                      "calibrated with --calibrate]: " + "; ".join(
                          f"{mode.name}: {mode.doc}" for mode in ACTIVATION_RANGE_MODES.values()) + "."),
    click.option("--calibrate", metavar="DATA",
                 help="Calibration data spec (as evaluate's --data; or npz:PATH with one array per model input, "
                      "named after it): static activation ranges, and how much each site clips."),
    click.option("--calibration-samples", type=click.IntRange(min=MIN_CALIBRATION_SAMPLES),
                 default=DEFAULT_CALIBRATION_SAMPLES, show_default=True, help="Samples the calibration uses."),
    click.option("--calibration-method", type=click.Choice(list(CALIBRATION_METHODS)),
                 default=DEFAULT_CALIBRATION_METHOD, show_default=True, help="; ".join(
                     f"{name}: {doc}" for name, doc in CALIBRATION_METHODS.items()) + "."),
    click.option("--percentile", type=FiniteFloatRange(0.0, 100.0, min_open=True), default=DEFAULT_PERCENTILE,
                 show_default=True, help="Percentile of |x| for --calibration-method percentile."),
)


def bits_option(default, help=None):
    """--bits, one bit width (convert, finetune, train, and ``precision_options``)."""
    return click.option("--bits", type=click.IntRange(1, noise_model.MAX_BITS), default=default, show_default=True,
                        help=help)


# --std, one noise std instead of --ep (convert, sensitivity, plan)
std_option = click.option("--std", type=FiniteFloatRange(min=0.0), help="Noise standard deviation; instead of --ep.")


def ep_option(default=None, help=None):
    """--ep, one error probability (convert, finetune, train, analyze gradient-error and minibatch-bias)."""
    return click.option("--ep", type=FiniteFloatRange(0.0, 1.0, max_open=True), default=default, show_default=True,
                        help=help)


def activation_options(activation_help=None, factor_help="Interpolation factor of interp-* activations."):
    """--activation, the one replacement for every ReLU, and its --factor (convert, finetune, train)."""
    return option_group(
        click.option("--activation", type=click.Choice(list(ACTIVATION_NAMES)), default="keep", show_default=True,
                     help=activation_help),
        click.option("--factor", type=FINITE_FLOAT, help=factor_help),
    )


def precision_options(default_bits):
    """--bits, --precision and --bit-convention of the analyses (analyze gradient-error, minibatch-bias,
    effective-bits); ``precision_from`` turns them into p."""
    return option_group(
        bits_option(default_bits),
        click.option("--precision", type=FiniteFloatRange(min=1.0),
                     help="Steps per unit p directly (overrides --bits)."),
        click.option("--bit-convention", type=click.Choice(noise_model.BIT_CONVENTIONS),
                     default=noise_model.DEFAULT_BIT_CONVENTION, show_default=True,
                     help="pow2: p = 2^bits; pow2-minus-1: p = 2^bits - 1."),
    )


def precision_from(bits, precision, bit_convention) -> float:
    """The precision p that ``precision_options`` give."""
    return noise_model.check_precision(precision) if precision is not None else \
        noise_model.bits_to_precision(bits, bit_convention)


def bit_widths_option(default=None, help=None):
    """--bits as a comma-separated grid axis ``bits_list`` (evaluate, sweep, analyze ep-std)."""
    return click.option("--bits", "bits_list",
                        callback=comma_separated_numbers(int, 1, noise_model.MAX_BITS, "whole number"),
                        default=default, show_default=True, help=help)


def error_probabilities_option(default=None, help=None):
    """--ep as a comma-separated grid axis ``eps`` (evaluate, sweep, analyze ep-std)."""
    return click.option("--ep", "eps", callback=comma_separated_numbers(float, 0.0, 1.0, "number"), default=default,
                        show_default=True, help=help)


def activation_settings_option(default=None, help=None):
    """--activation as comma-separated settings ``activations`` (evaluate, sweep, analyze gsd, minibatch-bias,
    critical-init)."""
    return click.option("--activation", "activations", callback=comma_separated(), default=default,
                        show_default=True, help=help)


def interpolation_options(factors_default=None, factors_help=None, smooth_help=None):
    """--factors i and --smooth, the ReLU-to-smooth interpolations (sweep, analyze gradient-error)."""
    return option_group(
        click.option("--factors", callback=comma_separated_floats, default=factors_default, show_default=True,
                     help=factors_help),
        click.option("--smooth", type=click.Choice(["gelu", "silu"]), default="gelu", show_default=True,
                     help=smooth_help),
    )


def noise_draws_option(help, default=5):
    """--repeats, independent noise draws (evaluate, finetune, train, sweep, analyze gradient-error)."""
    return click.option("--repeats", type=click.IntRange(min=1), default=default, show_default=True, help=help)


#: every --seed: numpy, torch (up to 2^64 - 1), and the seeds derived from one (a finetune epoch's is seed * 100003
#: + epoch) take it; a negative seed torch took and numpy refused
SEEDS = click.IntRange(0, 2**32 - 1)


def seed_option(help=None):
    """--seed with default 0 (evaluate, finetune, train, sweep, analyze gradient-error and minibatch-bias)."""
    return click.option("--seed", type=SEEDS, default=0, show_default=True, help=help)


def zoo_model_option(help):
    """--option KEY=VALUE, repeatable, as ``model_options`` (zoo export, train, sweep); ``zoo_model_config``
    parses them."""
    return click.option("--option", "model_options", multiple=True, metavar="KEY=VALUE", help=help)


def training_data_options(data_help):
    """--data, --eval-data and --limit of the commands that train (finetune, train, sweep)."""
    return option_group(
        click.option("--data", required=True, help=data_help),
        click.option("--eval-data", help="Validation data spec [default: the test split, or a held-out fifth]."),
        click.option("--limit", type=click.IntRange(min=1), help="Use at most N samples of each set."),
    )


def training_loop_options(epochs, lr, repeats_help, early_stopping=False):
    """The FinetuneOptions flags (finetune with ``early_stopping``, train, sweep): the command gets them as
    ``training``, a dict of FinetuneOptions fields."""
    return packed_option_group(
        "training", dict,
        click.option("--epochs", type=click.IntRange(min=1), default=epochs, show_default=True),
        click.option("--lr", type=FiniteFloatRange(min=0.0, min_open=True), default=lr, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True),
        click.option("--weight-decay", type=FiniteFloatRange(min=0.0), default=0.0, show_default=True),
        click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True),
        click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True),
        *([click.option("--patience", type=click.IntRange(min=1),
                        help="Stop after N epochs without a better noisy accuracy.")] if early_stopping else []),
        noise_draws_option(repeats_help),
        seed_option(),
        device_option("Where torch trains: cpu, cuda or cuda:N (the before/after accuracy runs in ONNX Runtime on "
                      "the CPU)."),
    )


def _device(context, parameter, text):
    from ..devices import gpu_index

    try:
        gpu_index(text)
    except AnalogizeError as error:
        raise click.BadParameter(str(error)) from None
    return text


def _session_device(context, parameter, text):
    _device(context, parameter, text)
    if text != "cpu":
        import onnxruntime

        # onnxruntime-gpu 1.31 warns "No registered plugin EP device found for 'CUDAExecutionProvider'" at every
        # session given the CUDA provider by name, which it then runs on. Its other warnings go too (nodes left
        # to the CPU provider: analogize's own run on the GPU); a provider that does not start is still an error.
        onnxruntime.set_default_logger_severity(3)
    return text


def device_option(help, callback=_device):
    """--device cpu | cuda | cuda:N (:mod:`analogize.devices`): ONNX Runtime's provider (evaluate), torch's
    device (finetune, train, sweep)."""
    return click.option("--device", default="cpu", show_default=True, callback=callback, help=help)


# where the commands that score a model run ONNX Runtime (evaluate, sensitivity, plan)
session_device_option = device_option("Where ONNX Runtime runs the model: cpu, or cuda / cuda:N (its CUDA provider "
                                      "with the native CUDA kernels; onnxruntime-gpu).", _session_device)

quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bar.")

overwrite_option = click.option("--overwrite", is_flag=True, help="Allow the output to replace the input model.")


def json_flag(help):
    """--json as a flag ``as_json``: print to stdout (convert, export, ops, native, zoo list)."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def json_file_option(help):
    """--json FILE as ``json_path``, '-' for stdout (evaluate, finetune, train, sweep, analyze)."""
    return click.option("--json", "json_path", callback=json_output_file, help=help)


def csv_file_option(help):
    """--csv FILE as ``csv_path`` (evaluate, merge)."""
    return click.option("--csv", "csv_path", callback=writable_file, help=help)


def plot_file_option(help):
    """--plot FILE as ``plot_path`` (evaluate, merge, finetune, train, sweep, analyze)."""
    return click.option("--plot", "plot_path", callback=plot_file, help=help)


# --report PATH.html as ``report_path`` (evaluate, merge, finetune): the command's own result as an HTML report.
report_option = click.option("--report", "report_path", callback=report_file, metavar="PATH.html",
                             help="Write a self-contained HTML report of the result: settings, tables, plots and "
                                  "warnings, readable offline.")

# What finetune and train keep besides the model: checkpoints, the report, the training curves.
checkpoint_and_report_options = option_group(
    click.option("--checkpoint-dir", type=click.Path(file_okay=False), help="Save a checkpoint here every epoch."),
    click.option("--resume", is_flag=True, help="Continue from the checkpoint in --checkpoint-dir."),
    json_file_option("Write the report as JSON ('-': to stdout)."),
    plot_file_option("Write the training curves."),
)

# The analyze subcommands' outputs.
# The outputs of the analyses that have a figure, and of those that are tables only (no --plot to refuse later).
analysis_output_options = option_group(
    json_file_option("Write the result as JSON ('-': to stdout, no table)."),
    plot_file_option("Write the analysis's figure (PNG, or .pdf, .svg)."),
)
table_output_options = json_file_option("Write the result as JSON ('-': to stdout, no table).")
