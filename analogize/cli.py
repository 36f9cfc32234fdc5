"""The ``analogize`` command: a thin layer over the Python API; each flag maps to an option of the same name."""
from __future__ import annotations

import json
import sys

import click

from . import noise_model, rewrite
from .errors import AnalogizeError
from .ops import OPS, markdown_reference


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
    from .convert import ConvertOptions, convert_file

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
    from .native import native_library_path

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

    from .zoo import MODELS

    entries = {name: {p.name: p.default for p in inspect.signature(f).parameters.values()} for name, f in MODELS.items()}
    if as_json:
        click.echo(json.dumps(entries, indent=2))
        return
    for name, options in entries.items():
        click.echo(f"{name:10s} " + " ".join(f"{k}={v}" for k, v in options.items()))


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
    import ast

    import torch

    from .zoo import create_model, export_onnx

    config = {}
    for item in options:
        key, separator, value = item.partition("=")
        if not separator:
            raise AnalogizeError(f"--option {item!r} is not KEY=VALUE")
        try:
            config[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise AnalogizeError(f"--option {key}: {value!r} is not a number, tuple or boolean") from None
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
    from .results import PLOT_FORMATS

    value = _writable(ctx, param, value)
    if value is not None and value.rpartition(".")[2].lower() not in PLOT_FORMATS:
        raise click.BadParameter(f"{value}: plots are written as {', '.join('.' + f for f in PLOT_FORMATS)}")
    return value


def _emit(result: dict, json_path, csv_path, plot_path) -> None:
    from . import results

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
    from .convert import ConvertOptions
    from .data import Preprocessing
    from .evaluate import Grid, evaluate_file, parse_shard

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
    from .results import load_result, merge_results

    _emit(merge_results([load_result(p) for p in parts]), json_path, csv_path, plot_path)


@cli.command("export")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--format", "format_", type=click.Choice(["qdq", "plain"]), default="qdq", show_default=True,
              help="qdq: QuantizeLinear/DequantizeLinear for ONNX Runtime, OpenVINO, TensorRT; plain: standard ops.")
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
    from .export import export_file

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
    """Rebuild the analog simulation from a qdq export and its spec."""
    from .export import rebuild_file

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
    from .convert import ConvertOptions
    from .finetune import FinetuneOptions, finetune_file

    options = FinetuneOptions(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
                              optimizer=optimizer, schedule=schedule, seed=seed, patience=patience, repeats=repeats,
                              device=device)
    convert_options = ConvertOptions(bits=bits, ep=ep, activation=activation, factor=factor, seed=seed,
                                     **_chain_fields(chain))
    report = finetune_file(model, output, data, options, convert_options, eval_data=eval_data, limit=limit,
                           checkpoint_dir=checkpoint_dir, resume=resume, progress=not quiet, plot=plot_path)
    if "rank" in report:  # not process 0 of a torchrun job
        return
    if json_path:
        from .finetune import write_report

        if json_path == "-":
            click.echo(json.dumps(report, indent=2))
            return
        write_report(report, json_path)
    before, after = report["before"], report["after"]
    click.echo(f"noisy accuracy {100 * before['noisy_mean']:.1f} ± {100 * before['noisy_std']:.1f} % -> "
               f"{100 * after['noisy_mean']:.1f} ± {100 * after['noisy_std']:.1f} % ({after['repeats']} draws); "
               f"digital (chains removed) {100 * before['digital']:.1f} % -> {100 * after['digital']:.1f} %")
    click.echo(f"wrote {report['output']} after {report['epochs_run']} epochs"
               + (" (stopped early)" if report["stopped_early"] else ""))
