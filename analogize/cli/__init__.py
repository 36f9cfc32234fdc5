"""The ``analogize`` command: a thin layer over the Python API; each flag maps to an option of the same name."""
from __future__ import annotations

import json
import sys

import click

from .. import noise_model
from ..passes import rewrite
from ..errors import AnalogizeError
from ..ops.spec import OPS, markdown_reference


def _csv(choices):
    def parse(ctx, param, value):
        items = tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()
        bad = [v for v in items if choices and v not in choices]
        if bad:
            raise click.BadParameter(f"{', '.join(bad)} not among {', '.join(choices)}")
        return items

    return parse


def main(argv=None) -> int:
    """Console entry point: user errors become one line on stderr and exit code 2 (``--debug``: traceback)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        cli.main(argv, prog_name="analogize", standalone_mode=False)
    except click.UsageError as error:
        command = error.ctx.command_path if error.ctx else "analogize"
        click.echo(f"analogize: error: {error.format_message()} (see '{command} --help')", err=True)
        return 2
    except AnalogizeError as error:
        if "--debug" in argv:
            raise
        click.echo(f"analogize: error: {error}", err=True)
        return 2
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.Abort:
        click.echo("analogize: interrupted", err=True)
        return 130
    return 0


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="analogize")
def cli(debug):
    """Prepare ONNX neural networks for noisy, low-precision analog accelerators."""


_interp = OPS["ReluGeluInterpolation"]


_CHAIN_OPTIONS = [
    click.option("--precision", type=click.FloatRange(min=1.0),
                 help="Set p (steps per unit) directly; overrides --bits."),
    click.option("--bit-convention", type=click.Choice(noise_model.BIT_CONVENTIONS),
                 default=noise_model.DEFAULT_BIT_CONVENTION, show_default=True,
                 help="pow2: p = 2^B (paper eq. 7, power-of-two hardware scales); pow2-minus-1: p = 2^B - 1 "
                      "(AnalogVNN)."),
    click.option("--no-noise", is_flag=True, help="Insert no Gaussian noise."),
    click.option("--no-quantize", is_flag=True, help="Insert no reduce-precision."),
    click.option("--no-clamp", is_flag=True, help="Insert no clamp to [-1, 1]."),
    click.option("--stochastic-rounding", is_flag=True, help="Use StochasticReducePrecision instead of ReducePrecision."),
    click.option("--where", callback=_csv(rewrite.PLACEMENTS), default=",".join(rewrite.PLACEMENTS),
                 show_default=True, help="Comma-separated placements of the chains."),
    click.option("--scale", type=float,
                 help=f"GELU/SiLU input scale s > 0 [default: {_interp.attribute('scale').default}]."),
    click.option("--alpha", type=float, help="Leaky slope in [0, 1) [default: 0; 0.01 for leaky]."),
    click.option("--temperature", type=float, help="Temperature T > 0 of the smooth-* family [default: 1]."),
    click.option("--exclude", callback=_csv(()), default="",
                 help="Comma-separated node names or op types to keep digital."),
]


def _chain_options(function):
    """The convert flags that shape the inserted chains, shared by every command that converts."""
    for option in reversed(_CHAIN_OPTIONS):
        function = option(function)
    return function


def _chain_fields(chain: dict) -> dict:
    """Chain flags as ConvertOptions fields."""
    return {"precision": chain["precision"], "bit_convention": chain["bit_convention"],
            "noise": not chain["no_noise"], "quantize": not chain["no_quantize"], "clamp": not chain["no_clamp"],
            "stochastic_rounding": chain["stochastic_rounding"], "where": chain["where"], "scale": chain["scale"],
            "alpha": chain["alpha"], "temperature": chain["temperature"], "exclude": chain["exclude"]}


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Output model [default: MODEL with suffix .analog.onnx].")
@click.option("--overwrite", is_flag=True, help="Allow the output to replace the input model.")
@click.option("--bits", type=click.IntRange(1, noise_model.MAX_BITS), default=8, show_default=True,
              help="Bit width B; precision p = 2^B (see --bit-convention).")
@click.option("--ep", type=click.FloatRange(0.0, 1.0, max_open=True),
              help=f"Error probability: chance that noise moves a value past half a step [default: {noise_model.DEFAULT_EP}].")
@click.option("--std", type=click.FloatRange(min=0.0), help="Noise standard deviation; instead of --ep.")
@click.option("--activation", type=click.Choice(list(rewrite.ACTIVATIONS)), default="keep", show_default=True,
              help="Replacement for every ReLU.")
@click.option("--factor", type=float, help=f"Interpolation factor i in [0, 1] [default: {_interp.attribute('factor').default}].")
@click.option("--seed", type=click.IntRange(min=0), help="Base seed: reproducible noise (each node its own stream).")
@click.option("--inline", is_flag=True, help="Write standard ONNX ops only (no custom domain).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_chain_options
def convert(model, output, overwrite, bits, ep, std, activation, factor, seed, inline, as_json, **chain):
    """Insert clamp, reduce-precision and noise into MODEL and swap its activations."""
    from ..convert import ConvertOptions, convert_file

    options = ConvertOptions(bits=bits, ep=ep, std=std, activation=activation, factor=factor, seed=seed,
                             inline=inline, **_chain_fields(chain))
    report = convert_file(model, output, options, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    settings = report["settings"]
    counts = {}
    for site in report["inserted"]:
        counts[site["site"]] = counts.get(site["site"], 0) + 1
    click.echo(f"wrote {report['output']}")
    options = settings["options"]
    noise = "no noise" if settings["std"] == 0 else f"noise std={settings['std']:.4g}" + (
        f" (EP {settings['ep']:.3g})" if settings["ep"] is not None else "")
    precision = f"precision p={settings['precision']:g}" if options["quantize"] else "no reduce-precision"
    click.echo(f"  {precision}; {noise}; " + ("clamp to [-1, 1]" if options["clamp"] else "no clamp"))
    click.echo(f"  {len(report['layers'])} analog layers; chains: "
               + (", ".join(f"{n} {k}" for k, n in counts.items()) or "none"))
    if report["activations"].get("swapped"):
        click.echo(f"  {len(report['activations']['swapped'])} ReLU -> {report['activations']['to']}")
    for skipped in report["skipped_layers"]:
        click.echo(f"  left digital: {skipped['node'] or skipped['op_type']} ({skipped['reason']})")
    for upgrade in report["opset_upgrades"]:
        click.echo(f"  opset moved from {upgrade['from']} to {upgrade['to']} (function bodies need 13-21 with noise)")


@cli.command()
@click.option("--markdown", is_flag=True, help="Print the full reference page (docs/ops.md).")
@click.option("--json", "as_json", is_flag=True, help="Print the op set as JSON.")
def ops(markdown, as_json):
    """List the analog op set."""
    if markdown:
        click.echo(markdown_reference(), nl=False)
        return
    if as_json:
        click.echo(json.dumps({name: {"equation": spec.equation, "doc": spec.doc, "attributes": {
            a.name: {"default": a.default, "required": a.required, "min": a.minimum, "max": a.maximum}
            for a in spec.attributes}} for name, spec in OPS.items()}, indent=2))
        return
    for name, spec in OPS.items():
        click.echo(f"{name:28s} {spec.equation}")


@cli.command()
@click.option("--cuda", is_flag=True, help="The library with CUDA kernels too (needs nvcc to build).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def native(cuda, as_json):
    """Build (on first use) and print the path of the native kernel library for ONNX Runtime."""
    from ..native.build import native_library_path

    path = native_library_path(cuda=cuda)
    if as_json:
        click.echo(json.dumps({"library": str(path), "cuda": cuda}))
        return
    click.echo(str(path))


@cli.group()
def zoo():
    """The paper's architectures (ConvNet, VGG-A, ResNet-18, ViT): list them or export one to ONNX."""


@zoo.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def zoo_list(as_json):
    """List the models and their size options."""
    import inspect

    from ..zoo import MODELS

    entries = {name: {p.name: p.default for p in inspect.signature(f).parameters.values()} for name, f in MODELS.items()}
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for name, options in entries.items():
        click.echo(f"{name:10s} " + " ".join(f"{k}={v}" for k, v in options.items()))


def _zoo_config(options) -> dict:
    """``--option KEY=VALUE`` items as zoo model options (values are Python literals)."""
    import ast

    config = {}
    for item in options:
        key, separator, value = item.partition("=")
        if not separator:
            raise AnalogizeError(f"--option {item!r} is not KEY=VALUE")
        try:
            config[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise AnalogizeError(f"--option {key}: {value!r} is not a number, tuple or boolean") from None
    return config


@zoo.command("export")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Output .onnx path.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="A size option, e.g. --option width=0.5 --option image_size=32 (see 'analogize zoo list').")
@click.option("--exporter", type=click.Choice(["legacy", "dynamo"]), default="legacy", show_default=True)
@click.option("--opset", type=click.IntRange(13, 23), default=18, show_default=True)
@click.option("--image-size", type=click.IntRange(min=1),
              help="Input height and width [default: the model's image_size option, else 32].")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random initial weights.")
def zoo_export(name, output, options, exporter, opset, image_size, seed):
    """Export zoo model NAME (randomly initialised, eval mode) with a dynamic batch axis."""
    import torch

    from ..zoo import create_model, export_onnx

    config = _zoo_config(options)
    torch.manual_seed(seed)
    model = create_model(name, **config)
    channels, size = config.get("in_channels", 3), image_size or config.get("image_size", 32)
    export_onnx(model, output, (channels, size, size), exporter=exporter, opset=opset)
    click.echo(f"wrote {output} ({name}, input {channels}x{size}x{size}, {exporter} exporter, opset {opset})")


def _numbers(kind, low, high, what):
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
                raise click.BadParameter(f"{text} is outside {'[' + str(low) + ', ' + str(high) + (')' if kind is float else ']')}")
            items.append(number)
        return tuple(items)

    return parse


def _size(ctx, param, value):
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


def _floats(ctx, param, value):
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None


def _writable(ctx, param, value):
    """Fail before a long sweep, not after it, when an output cannot be written."""
    import os

    if value is None or value == "-":
        return value
    directory = os.path.dirname(value) or "."
    if not os.path.isdir(directory):
        raise click.BadParameter(f"directory {directory} does not exist")
    if os.path.isdir(value):
        raise click.BadParameter(f"{value} is a directory; give a file name")
    return value


def _plot_path(ctx, param, value):
    from ..evaluate.results import PLOT_FORMATS

    value = _writable(ctx, param, value)
    if value is not None and value.rpartition(".")[2].lower() not in PLOT_FORMATS:
        raise click.BadParameter(f"{value}: plots are written as {', '.join('.' + f for f in PLOT_FORMATS)}")
    return value


def _emit(result: dict, json_path, csv_path, plot_path) -> None:
    from ..evaluate import results

    if json_path:
        results.write_json(result, json_path)
    if csv_path:
        results.write_csv(result, csv_path)
    if plot_path and result["cells"]:
        results.plot(result, plot_path)
    elif plot_path:
        click.echo(f"no cells in this shard: {plot_path} not written", err=True)
        plot_path = None
    if json_path != "-":
        click.echo(results.table(result))
        for path in filter(None, (json_path, csv_path, plot_path)):
            click.echo(f"wrote {path}")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", required=True,
              help="digits | npz:PATH (arrays x, y) | cifar10:DIR (python batches) | imagefolder:DIR.")
@click.option("--split", type=click.Choice(["test", "train", "all"]),
              help="digits and cifar10 only [default: test].")
@click.option("--output", "output_name", help="The graph output holding the class scores [default: the first].")
@click.option("--limit", type=click.IntRange(min=1), help="Use only the first N samples (a quick look).")
@click.option("--bits", callback=_numbers(int, 1, noise_model.MAX_BITS, "whole number"),
              help="Comma-separated bit widths [default: 8, or the converted model's own].")
@click.option("--ep", callback=_numbers(float, 0.0, 1.0, "number"),
              help=f"Comma-separated error probabilities in [0, 1) [default: {noise_model.DEFAULT_EP}, "
                   f"or the converted model's own].")
@click.option("--activation", "activations", default="keep", show_default=True,
              help="Comma-separated ReLU replacements, each NAME[:VALUE][:KEY=VALUE], e.g. keep,gelu,interp-gelu:0.5 "
                   f"(names: {', '.join(rewrite.ACTIVATIONS)}).")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Independent noise draws per cell.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Sweep seed: same seed, same numbers (each cell and node draws its own stream).")
@click.option("--fidelity", is_flag=True,
              help="Ignore labels: score top-1 agreement with the clean model and output SNR only.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes to spread the cells over (they share the cores).")
@click.option("--shard", help="Compute only shard I of N (I/N, I from 0) and write a partial result for "
                              "'analogize merge'.")
@click.option("--layout", type=click.Choice(["auto", "nchw", "nhwc"]), default="auto", show_default=True,
              help="The model's input layout (auto: from its input shape).")
@click.option("--resize", callback=_size, help="Resize images to HxW [default: the model's input size].")
@click.option("--channels", type=click.IntRange(min=1),
              help="Channels the model takes (1: grayscale, 3: RGB) [default: from its input].")
@click.option("--input-mean", callback=_floats, help="Subtract this mean (one value or one per channel).")
@click.option("--input-std", callback=_floats, help="Then divide by this std (one value or one per channel).")
@click.option("--json", "json_path", callback=_writable, help="Write the result as JSON ('-': to stdout, no table).")
@click.option("--csv", "csv_path", callback=_writable, help="Write one CSV row per cell and baseline.")
@click.option("--plot", "plot_path", callback=_plot_path, help="Write accuracy against EP as a PNG (or .pdf, .svg).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_chain_options
def evaluate(model, data, split, output_name, limit, bits, ep, activations, repeats, seed, fidelity, batch_size, workers, shard,
             layout, resize, channels, input_mean, input_std, json_path, csv_path, plot_path, quiet, **chain):
    """Accuracy of MODEL (clean or converted) under analog noise over a grid of bits x EP x activation."""
    from ..convert import ConvertOptions
    from ..data import Preprocessing
    from ..evaluate.engine import Grid, evaluate_file, parse_shard

    grid = Grid(bits=bits, ep=ep, activations=tuple(a.strip() for a in activations.split(",") if a.strip()),
                repeats=repeats, seed=seed)
    options = ConvertOptions(**_chain_fields(chain))
    preprocessing = Preprocessing(layout=layout, size=resize, channels=channels, mean=input_mean, std=input_std)
    result = evaluate_file(model, data, grid, options, split=split, limit=limit, preprocessing=preprocessing,
                           batch_size=batch_size, fidelity=fidelity, workers=workers,
                           shard=parse_shard(shard) if shard else None, output=output_name, progress=not quiet)
    _emit(result, json_path, csv_path, plot_path)


@cli.command()
@click.argument("parts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", "json_path", callback=_writable, required=True,
              help="The merged result (JSON; '-': to stdout).")
@click.option("--csv", "csv_path", callback=_writable, help="Also write the CSV.")
@click.option("--plot", "plot_path", callback=_plot_path, help="Also write the plot.")
def merge(parts, json_path, csv_path, plot_path):
    """Merge the shard results of one 'analogize evaluate --shard' sweep into the full result."""
    from ..evaluate.results import load_result, merge_results

    _emit(merge_results([load_result(p) for p in parts]), json_path, csv_path, plot_path)


@cli.command("export")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--format", "format_", type=click.Choice(["qdq", "qonnx", "plain"]), default="qdq", show_default=True,
              help="qdq: QuantizeLinear/DequantizeLinear for ONNX Runtime, OpenVINO, TensorRT; qonnx: QONNX Quant "
                   "nodes for the qonnx tools; plain: standard ops.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="The exported model.")
@click.option("--spec", "spec_path", callback=_writable,
              help="Write the analog settings here [default: OUTPUT with suffix .spec.json].")
@click.option("--keep-noise", is_flag=True, help="plain only: keep the noise (function bodies inlined).")
@click.option("--verify-data", help="A data spec (as for evaluate) to compare the export with the noise-free "
                                    "simulation on, e.g. digits.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Samples of --verify-data to use.")
@click.option("--overwrite", is_flag=True, help="Allow the output to replace the input model.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def export_command(model, format_, output, spec_path, keep_noise, verify_data, limit, overwrite, as_json):
    """Write a converted MODEL as a deterministic graph for hardware compilers, plus its analog spec."""
    from ..export.formats import export_file

    report = export_file(model, output, format_, spec=spec_path, keep_noise=keep_noise, verify_data=verify_data,
                         limit=limit, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"wrote {report['output']} ({format_}) and {report['spec']}: {report['tensors']} analog tensors, "
               f"{report['activations']} activations")
    if "verification" in report:
        check = report["verification"]
        click.echo(f"  against the noise-free simulation on {check['samples']} samples: "
                   f"{100 * check['mismatch_rate']:.2f} % of outputs differ (max {check['max_abs_difference']:.3g}), "
                   f"top-1 agreement {100 * check['top1_agreement']:.2f} %")


@cli.command()
@click.argument("exported", type=click.Path(dir_okay=False))
@click.option("--spec", "spec_path", required=True, type=click.Path(dir_okay=False), help="The export's spec.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="The analog simulation.")
def rebuild(exported, spec_path, output):
    """Rebuild the analog simulation from a qdq or qonnx export and its spec."""
    from ..export.formats import rebuild_file

    click.echo(f"wrote {rebuild_file(exported, spec_path, output)}")


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Training data spec (as for evaluate); digits and cifar10 use their "
                                            "train split and validate on test.")
@click.option("--eval-data", help="Validation data spec [default: the test split, or a held-out fifth].")
@click.option("--limit", type=click.IntRange(min=1), help="Use at most N samples of each set.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="The tuned model.")
@click.option("--bits", type=click.IntRange(1, noise_model.MAX_BITS), default=8, show_default=True,
              help="For a clean MODEL: bit width to convert with.")
@click.option("--ep", type=click.FloatRange(0.0, 1.0, max_open=True), help="For a clean MODEL: error probability.")
@click.option("--activation", type=click.Choice(list(rewrite.ACTIVATIONS)), default="keep", show_default=True)
@click.option("--factor", type=float, help="Interpolation factor of interp-* activations.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0.0, min_open=True), default=1e-3, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--weight-decay", type=click.FloatRange(min=0.0), default=0.0, show_default=True)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True)
@click.option("--patience", type=click.IntRange(min=1), help="Stop after N epochs without a better noisy accuracy.")
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Noise draws of the before/after evaluations.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda:0.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), help="Save a checkpoint here every epoch.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --checkpoint-dir.")
@click.option("--json", "json_path", callback=_writable, help="Write the report as JSON ('-': to stdout).")
@click.option("--plot", "plot_path", callback=_plot_path, help="Write the training curves.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
@_chain_options
def finetune(model, data, eval_data, limit, output, bits, ep, activation, factor, epochs, lr, batch_size,
             weight_decay, optimizer, schedule, patience, repeats, seed, device, checkpoint_dir, resume, json_path,
             plot_path, quiet, **chain):
    """Fine-tune MODEL (clean or converted) under analog noise and write the tuned model."""
    from ..convert import ConvertOptions
    from ..training.finetune import FinetuneOptions, finetune_file

    options = FinetuneOptions(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                              optimizer=optimizer, schedule=schedule, seed=seed, patience=patience, repeats=repeats,
                              device=device)
    convert_options = ConvertOptions(bits=bits, ep=ep, activation=activation, factor=factor, seed=seed,
                                     **_chain_fields(chain))
    report = finetune_file(model, output, data, options, convert_options, eval_data=eval_data, limit=limit,
                           checkpoint_dir=checkpoint_dir, resume=resume, progress=not quiet, plot=plot_path)
    _training_summary(report, json_path)


def _training_summary(report: dict, json_path) -> None:
    """The report of finetune or train: as JSON, and as two lines before/after."""
    if "rank" in report:  # not process 0 of a torchrun job
        return
    if json_path:
        from ..training.finetune import write_report

        if json_path == "-":
            click.echo(json.dumps(report, indent=2, default=float))
            return
        write_report(report, json_path)
    before, after = report["before"], report["after"]
    click.echo(f"noisy accuracy {100 * before['noisy_mean']:.1f} ± {100 * before['noisy_std']:.1f} % -> "
               f"{100 * after['noisy_mean']:.1f} ± {100 * after['noisy_std']:.1f} % ({after['repeats']} draws); "
               f"digital (chains removed) {100 * before['digital']:.1f} % -> {100 * after['digital']:.1f} %")
    click.echo(f"wrote {report['output']} after {report['epochs_run']} epochs"
               + (" (stopped early)" if report["stopped_early"] else ""))


def _activation_list(ctx, param, value):
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else ()


def _analysis_output(function):
    """--json and --plot, shared by the analyze subcommands."""
    function = click.option("--plot", "plot_path", callback=_plot_path,
                            help="Write the analysis's figure (PNG, or .pdf, .svg).")(function)
    return click.option("--json", "json_path", callback=_writable,
                        help="Write the result as JSON ('-': to stdout, no table).")(function)


def _emit_analysis(result: dict, json_path, plot_path) -> None:
    from .. import analysis
    from ..evaluate import results

    if json_path:
        document = analysis.to_json(result)
        if json_path == "-":
            click.echo(json.dumps(document, indent=2))
        else:
            results.write_json(document, json_path)
    if plot_path:
        analysis.plot(result, plot_path)
    if json_path == "-":
        return
    click.echo(analysis.table(result))
    for path in filter(None, (json_path, plot_path)):
        click.echo(f"wrote {path}")


def _precision_of(bits, precision, bit_convention) -> float:
    return noise_model.check_precision(precision) if precision is not None else \
        noise_model.bits_to_precision(bits, bit_convention)


def _precision_options(default_bits):
    def decorate(function):
        function = click.option("--bit-convention", type=click.Choice(noise_model.BIT_CONVENTIONS),
                                default=noise_model.DEFAULT_BIT_CONVENTION, show_default=True,
                                help="pow2: p = 2^bits; pow2-minus-1: p = 2^bits - 1.")(function)
        function = click.option("--precision", type=click.FloatRange(min=1.0),
                                help="Steps per unit p directly (overrides --bits).")(function)
        return click.option("--bits", type=click.IntRange(1, noise_model.MAX_BITS), default=default_bits,
                            show_default=True)(function)

    return decorate


@cli.group()
def analyze():
    """The paper's analyses: tables, JSON and figures."""


@analyze.command("ep-std")
@click.option("--bits", "bits_list", callback=_numbers(int, 1, noise_model.MAX_BITS, "whole number"),
              help="Bit widths (comma-separated) [default: 4,6,8 unless --precision is given].")
@click.option("--precision", "precisions", callback=_floats, help="Precisions p (steps per unit) directly.")
@click.option("--ep", "eps", callback=_numbers(float, 0.0, 1.0, "number"), help="EP values to turn into stds.")
@click.option("--std", "stds", callback=_floats, help="Noise stds to turn into EPs.")
@_analysis_output
def analyze_ep_std(bits_list, precisions, eps, stds, json_path, plot_path):
    """Noise std for each EP (and EP for each std), at each bit width under both conventions, or precision."""
    from ..analysis import ep_std_table

    eps = tuple(e for e in eps if e is not None)
    bits_list = tuple(b for b in bits_list if b is not None) or ((4, 6, 8) if not precisions else ())
    if stds and min(stds) < 0:
        raise click.BadParameter("noise stds must be >= 0", param_hint="--std")
    if plot_path:
        raise click.BadParameter("ep-std is a table; it has no figure", param_hint="--plot")
    _emit_analysis(ep_std_table(bits_list, eps, stds or (), precisions or ()), json_path, None)


@analyze.command("gsd")
@click.option("--activation", "activations", callback=_activation_list, show_default=True,
              default="relu,leaky:0.1,interp-gelu:0.25,interp-gelu:0.5,interp-gelu:0.75,gelu,silu",
              help="Activation settings (comma-separated), as for evaluate, plus 'relu'.")
@click.option("--at", "at", type=float, default=0.0, show_default=True, help="The point x0.")
@_analysis_output
def analyze_gsd(activations, at, json_path, plot_path):
    """Gradient step discontinuity |f'(x0-) - f'(x0+)| of each activation."""
    from ..analysis import step_discontinuity

    _emit_analysis(step_discontinuity(activations, at), json_path, plot_path)


@analyze.command("gradient-error")
@click.option("--factors", callback=_floats, default="0,0.25,0.5,0.75,1", show_default=True,
              help="Interpolation factors i.")
@click.option("--smooth", type=click.Choice(["gelu", "silu"]), default="gelu", show_default=True)
@_precision_options(8)
@click.option("--ep", type=click.FloatRange(0.0, 1.0, max_open=True), default=noise_model.DEFAULT_EP,
              show_default=True)
@click.option("--points", type=click.IntRange(min=3), default=513, show_default=True, help="Grid points per axis.")
@click.option("--repeats", type=click.IntRange(min=1), default=10, show_default=True, help="Noise draws.")
@click.option("--near-zero", type=click.FloatRange(min=0.0, min_open=True),
              help="Window |product| < W for the near-zero average [default: one step, 1/p].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@_analysis_output
def analyze_gradient_error(factors, smooth, bits, precision, bit_convention, ep, points, repeats, near_zero, seed,
                           json_path, plot_path):
    """Gradient error of ReLU-to-smooth interpolations behind a noisy analog product (paper figure 4)."""
    from ..analysis import gradient_error_map

    if any(not 0.0 <= f <= 1.0 for f in factors):
        raise click.BadParameter("interpolation factors must be in [0, 1]", param_hint="--factors")
    _emit_analysis(gradient_error_map(factors, smooth, _precision_of(bits, precision, bit_convention), ep, points,
                                      repeats, near_zero, seed), json_path, plot_path)


@analyze.command("minibatch-bias")
@click.option("--activation", "activations", callback=_activation_list, default="relu,gelu", show_default=True)
@_precision_options(8)
@click.option("--ep", type=click.FloatRange(0.0, 1.0, max_open=True),
              help=f"Noise from EP at the precision [default: {noise_model.DEFAULT_EP}]...")
@click.option("--std", type=click.FloatRange(min=0.0, min_open=True), help="...or this noise std.")
@click.option("--batch-sizes", callback=_numbers(int, 1, 10**7, "whole number"), default="1,10,100,1000,10000",
              show_default=True)
@click.option("--repeats", type=click.IntRange(min=2), default=200, show_default=True, help="Batches per size.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@_analysis_output
def analyze_minibatch_bias(activations, bits, precision, bit_convention, ep, std, batch_sizes, repeats, seed,
                           json_path, plot_path):
    """Mini-batch mean of f'(x + noise) at x = 0- and 0+ against the true derivative (paper eq 12-13)."""
    from ..analysis import minibatch_bias

    if std is not None and ep is not None:
        raise click.UsageError("give either --ep or --std, not both")
    if std is None:
        std = noise_model.ep_to_std(noise_model.DEFAULT_EP if ep is None else ep,
                                    _precision_of(bits, precision, bit_convention))
    _emit_analysis(minibatch_bias(activations, std, batch_sizes, repeats, seed=seed), json_path, plot_path)


@analyze.command("effective-bits")
@click.option("--scales", callback=_floats, default="0.5,1,1.5,2,2.5,3,3.5,4,4.5,5", show_default=True,
              help="GELU scales s.")
@_precision_options(6)
@_analysis_output
def analyze_effective_bits(scales, bits, precision, bit_convention, json_path, plot_path):
    """Effective bit precision of the scaled GELU's derivative near zero (paper figure 2c)."""
    from ..analysis import effective_bits

    if any(s <= 0 for s in scales):
        raise click.BadParameter("scales must be > 0", param_hint="--scales")
    _emit_analysis(effective_bits(scales, _precision_of(bits, precision, bit_convention)), json_path, plot_path)


@analyze.command("critical-init")
@click.option("--activation", "activations", callback=_activation_list, show_default=True,
              default="smooth-swish,smooth-gelu,smooth-gumbel,smooth-algebraic,smooth-guderman,smooth-mish,relu",
              help="Settings, e.g. smooth-gelu:temperature=0.5, gelu:scale=2, interp-gelu:0.5.")
@click.option("--k-range", nargs=2, type=click.FloatRange(min=0.0, min_open=True), default=(1e-3, 1e3),
              show_default=True, help="Where to look for the fixed point K*.")
@_analysis_output
def analyze_critical_init(activations, k_range, json_path, plot_path):
    """Critical initialisation (K*, C_W*, C_b*) of a deep network with each activation (seed 002, Table 1)."""
    from ..analysis import critical_initialisation

    if plot_path:
        raise click.BadParameter("critical-init is a table; it has no figure", param_hint="--plot")
    _emit_analysis(critical_initialisation(activations, tuple(k_range)), json_path, None)


def _training_options(function):
    """The training flags shared by train and sweep (FinetuneOptions fields)."""
    for option in reversed([
        click.option("--data", required=True, help="Data spec (as for evaluate); digits and cifar10 train on "
                                                   "their train split and validate on test."),
        click.option("--eval-data", help="Validation data spec [default: the test split, or a held-out fifth]."),
        click.option("--limit", type=click.IntRange(min=1), help="Use at most N samples of each set."),
        click.option("--option", "model_options", multiple=True, metavar="KEY=VALUE",
                     help="Zoo model option, e.g. --option stages=0 --option hidden=(64,64) [default: sized to "
                          "the data]."),
        click.option("--init", type=click.Choice(["default", "critical"]), default="default", show_default=True,
                     help="critical: weights N(0, C_W*/fan_in), biases N(0, C_b*) for the activation."),
        click.option("--epochs", type=click.IntRange(min=1), default=15, show_default=True),
        click.option("--lr", type=click.FloatRange(min=0.0, min_open=True), default=3e-3, show_default=True),
        click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True),
        click.option("--weight-decay", type=click.FloatRange(min=0.0), default=0.0, show_default=True),
        click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True),
        click.option("--schedule", type=click.Choice(["cosine", "constant"]), default="cosine", show_default=True),
        click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True,
                     help="Noise draws of the final evaluation."),
        click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True),
        click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cpu or cuda:0."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bar."),
    ]):
        function = option(function)
    return function


_TRAINING_FIELDS = ("epochs", "lr", "batch_size", "weight_decay", "optimizer", "schedule", "seed", "repeats", "device")


def _split_training(flags: dict):
    """The training flags as FinetuneOptions, and the rest (the chain flags) as ConvertOptions fields."""
    from ..training.finetune import FinetuneOptions

    options = FinetuneOptions(**{k: flags[k] for k in _TRAINING_FIELDS})
    return options, _chain_fields({k: v for k, v in flags.items() if k not in _TRAINING_FIELDS})


@cli.command()
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, callback=_writable,
              help="The trained converted model.")
@click.option("--bits", type=click.IntRange(1, noise_model.MAX_BITS), default=4, show_default=True)
@click.option("--ep", type=click.FloatRange(0.0, 1.0, max_open=True), default=noise_model.DEFAULT_EP,
              show_default=True)
@click.option("--activation", type=click.Choice(list(rewrite.ACTIVATIONS)), default="keep", show_default=True)
@click.option("--factor", type=float, help="Interpolation factor of interp-* activations.")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), help="Save a checkpoint here every epoch.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --checkpoint-dir.")
@click.option("--json", "json_path", callback=_writable, help="Write the report as JSON ('-': to stdout).")
@click.option("--plot", "plot_path", callback=_plot_path, help="Write the training curves.")
@_training_options
@_chain_options
def train(name, output, bits, ep, activation, factor, checkpoint_dir, resume, json_path, plot_path, data, eval_data,
          limit, model_options, init, quiet, **rest):
    """Train zoo model NAME from scratch under analog noise (converted with the convert flags)."""
    from ..convert import ConvertOptions
    from ..training.train import TrainSetup, train_file

    options, chain = _split_training(rest)
    setup = TrainSetup(name, _zoo_config(model_options), init)
    convert_options = ConvertOptions(bits=bits, ep=ep, activation=activation, factor=factor, **chain)
    report = train_file(output, setup, data, options, convert_options, eval_data=eval_data,
                        limit=limit, checkpoint_dir=checkpoint_dir, resume=resume, progress=not quiet, plot=plot_path)
    _training_summary(report, json_path)


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--model", "name", default="convnet", show_default=True, help="Zoo model to train in every cell.")
@click.option("--activation", "activations", callback=_activation_list,
              help="Activation settings (comma-separated): relu, leaky:0.1, gelu, interp-silu:0.5 ...")
@click.option("--factors", callback=_floats, help="Interpolation factors i: adds interp-SMOOTH:i for each.")
@click.option("--smooth", type=click.Choice(["gelu", "silu"]), default="gelu", show_default=True,
              help="The smooth end of --factors.")
@click.option("--alphas", callback=_floats, help="LeakyReLU slopes: adds leaky:alpha for each.")
@click.option("--depths", callback=_numbers(int, 0, 64, "whole number"),
              help="Depths (hidden linear layers, or conv stages with --depth-kind conv) [default: the model's].")
@click.option("--depth-kind", type=click.Choice(["linear", "conv"]), default="linear", show_default=True,
              help="linear: hidden linear layers; conv: conv stages (two convolutions and a max-pool each) "
                   "before one linear layer.")
@click.option("--width", type=click.IntRange(min=1), default=64, show_default=True,
              help="Width of each hidden linear layer of a --depths sweep.")
@click.option("--bits", "bits_list", callback=_numbers(int, 1, noise_model.MAX_BITS, "whole number"), default="4",
              show_default=True)
@click.option("--ep", "eps", callback=_numbers(float, 0.0, 1.0, "number"), default="0.5", show_default=True)
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Training runs per grid point (seed, seed+1, ...).")
@click.option("--shard", help="Run only shard I of N (I/N, I from 0); shards share DIRECTORY.")
@click.option("--json", "json_path", callback=_writable, help="Write the summary as JSON ('-': to stdout).")
@click.option("--plot", "plot_path", callback=_plot_path,
              help="Write accuracy against factor / slope / depth, as the paper's figures.")
@_training_options
@_chain_options
def sweep(directory, name, activations, factors, smooth, alphas, depths, depth_kind, width, bits_list, eps, seeds,
          shard, json_path, plot_path, data, eval_data, limit, model_options, init, quiet, **rest):
    """Train NAME over a grid of activations x depths x bits x EP x seeds into DIRECTORY (resumable)."""
    from ..training import sweep as sweeping
    from ..convert import ConvertOptions
    from ..evaluate.engine import parse_shard
    from ..training.train import TrainSetup

    from ..evaluate.results import write_json

    options, chain = _split_training(rest)
    given = click.get_current_context().get_parameter_source
    depths = tuple(d for d in depths if d is not None)
    for flag, name_ in (("--width", "width"), ("--depth-kind", "depth_kind")):
        if not depths and given(name_) != click.core.ParameterSource.DEFAULT:
            raise click.UsageError(f"{flag} shapes the models of a --depths sweep; give --depths too")
    if not factors and given("smooth") != click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--smooth names the smooth end of --factors; give --factors too")
    config = _zoo_config(model_options)
    if depths and {"stages", "hidden"} & set(config):
        raise click.UsageError("--depths sets the model's stages and hidden layers; leave them out of --option")
    every = activations + sweeping.interpolation_activations(smooth, factors or ()) + tuple(
        f"leaky:{a!r}" for a in alphas or ())
    if not every:
        raise click.UsageError("give activations: --activation, --factors and/or --alphas")
    grid = sweeping.SweepGrid(activations=every, depths=depths or (None,), depth_kind=depth_kind, width=width,
                              bits=bits_list, eps=eps, seeds=seeds).check()
    if plot_path and not grid.figure_axes():
        raise click.UsageError("--plot draws accuracy against the factor, slope or depth, but none of them varies "
                               "in this grid; vary one, or leave out --plot")
    setup = TrainSetup(name, config, init)
    result = sweeping.sweep(directory, data, grid, setup, options, ConvertOptions(**chain),
                            eval_data=eval_data, limit=limit, shard=parse_shard(shard) if shard else (0, 1),
                            progress=not quiet)
    if json_path == "-":
        click.echo(json.dumps(result, indent=1))
    elif json_path:
        write_json(result, json_path)
    if plot_path and result["points"]:
        sweeping.plot(result, plot_path)
    if json_path == "-":
        return
    click.echo(sweeping.table(result))
    for path in filter(None, (json_path, plot_path if result["points"] else None)):
        click.echo(f"wrote {path}")
