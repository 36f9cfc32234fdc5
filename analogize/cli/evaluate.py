"""``analogize evaluate`` and ``analogize merge``: the accuracy a model keeps under analog noise over a grid of
bits x EP x activation, computed whole or in shards and merged, printed as a table and written as JSON, CSV and
a plot."""
from __future__ import annotations

import click

from .. import noise_model
from ..model_io import refuse_overwrites
from .options import (ACTIVATION_NAMES, activation_settings_option, bit_widths_option, chain_options, class_axes,
                      comma_separated_floats, csv_file_option, device_option, error_probabilities_option,
                      height_by_width, json_file_option, noise_draws_option, plot_file_option, quiet_option,
                      range_options, seed_option, torch_options, writable_file)


def _renamed_output(context, parameter, value):
    if value is not None:  # every other command's --output is a file; this one named a graph output
        raise click.BadParameter("evaluate names its primary graph output with --primary-output; files go to "
                                 "--json, --csv and --plot")


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", required=True,
              help="digits | npz:PATH (arrays x, y; or one array per model input, named after it, and y) | "
                   "cifar10:DIR (python batches) | imagefolder:DIR.")
@click.option("--split", type=click.Choice(["test", "train", "all"]),
              help="digits and cifar10 only [default: test].")
@click.option("--primary-output", "output_name",
              help="The primary graph output: the headline numbers, and what labels are scored against "
                   "[default: the first float output]. Every output is scored.")
@click.option("--output", hidden=True, expose_value=False, callback=_renamed_output)
@click.option("--score-outputs", callback=lambda context, parameter, text: None if text in (None, "all") else
              tuple(name for name in text.split(",") if name),
              help="Comma-separated outputs to score besides the primary one, or 'all' [default: all]. Each scored "
                   "output's clean values are held in memory for the whole data.")
@click.option("--class-axis", callback=class_axes,
              help="The axis argmax agreement (and accuracy) reads classes along: AXIS for the primary output, or "
                   "OUTPUT=AXIS, comma-separated [default: 1, or the last for rank-3 sequence outputs].")
@click.option("--limit", type=click.IntRange(min=1),
              help="Use only N samples, evenly spaced over the data (a quick look that still sees every class).")
@bit_widths_option(help="Comma-separated bit widths [default: 8, or the converted model's own].")
@error_probabilities_option(help=f"Comma-separated error probabilities in [0, 1) [default: {noise_model.DEFAULT_EP}, "
                                 f"or the converted model's own].")
@activation_settings_option(default="keep",
                            help="Comma-separated ReLU replacements, each NAME[:VALUE][:KEY=VALUE], e.g. "
                                 f"keep,gelu,interp-gelu:0.5 (names: {', '.join(ACTIVATION_NAMES)}).")
@noise_draws_option("Independent noise draws per cell.")
@seed_option("Sweep seed: same seed, same numbers (each cell and node draws its own stream).")
@click.option("--baseline/--no-baseline", default=True, show_default=True,
              help="Add EP 0 to the grid: the ranges and rounding without noise, what quantisation alone costs.")
@click.option("--fidelity", is_flag=True,
              help="Ignore labels: score top-1 agreement with the clean model and output SNR only.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes to spread the cells over (they share the cores).")
@device_option("Where ONNX Runtime runs the model: cpu, or cuda / cuda:N (its CUDA provider with the native CUDA "
               "kernels; onnxruntime-gpu).")
@click.option("--shard", help="Compute only shard I of N (I/N, I from 0) and write a partial result for "
                              "'analogize merge'.")
@click.option("--layout", type=click.Choice(["auto", "nchw", "nhwc"]), default="auto", show_default=True,
              help="The model's input layout (auto: from its input shape).")
@click.option("--resize", callback=height_by_width, help="Resize images to HxW [default: the model's input size].")
@click.option("--channels", type=click.IntRange(min=1),
              help="Channels the model takes (1: grayscale, 3: RGB) [default: from its input].")
@click.option("--input-mean", callback=comma_separated_floats,
              help="Subtract this mean (one value or one per channel).")
@click.option("--input-std", callback=comma_separated_floats,
              help="Then divide by this std (one value or one per channel).")
@json_file_option("Write the result as JSON ('-': to stdout, no table).")
@csv_file_option("Write one CSV row per cell and baseline.")
@plot_file_option("Write accuracy against EP as a PNG (or .pdf, .svg).")
@quiet_option
@chain_options
@range_options
@torch_options
def evaluate(model, data, split, output_name, score_outputs, class_axis, limit, bits_list, eps, activations, repeats,
             seed, baseline, fidelity, batch_size, workers, device, shard, layout, resize, channels, input_mean,
             input_std, json_path, csv_path, plot_path, quiet, chain, ranges, torch_import):
    """Accuracy of MODEL (clean or converted ONNX, or a torch model) under analog noise over a grid of bits x EP x
    activation."""
    from ..convert import ConvertOptions
    from ..data import Preprocessing
    from ..evaluate.engine import Grid, evaluate_file, parse_shard

    refuse_overwrites({"the model": model}, {"--json": json_path, "--csv": csv_path, "--plot": plot_path})
    grid = Grid(bits=bits_list, ep=eps, activations=activations, repeats=repeats, seed=seed)
    if baseline and chain["noise"]:
        grid = grid.with_baseline()
    preprocessing = Preprocessing(layout=layout, size=resize, channels=channels, mean=input_mean, std=input_std)
    result = evaluate_file(model, data, grid, ConvertOptions(**chain, **ranges), split=split, limit=limit,
                           preprocessing=preprocessing, batch_size=batch_size, fidelity=fidelity, workers=workers,
                           device=device, shard=parse_shard(shard) if shard else None, output=output_name,
                           class_axis=class_axis, outputs=score_outputs, torch_import=torch_import,
                           progress=not quiet)
    _write_and_print(result, json_path, csv_path, plot_path)


@click.command()
@click.argument("parts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", "json_path", callback=writable_file, required=True,
              help="The merged result (JSON; '-': to stdout).")
@csv_file_option("Also write the CSV.")
@plot_file_option("Also write the plot.")
def merge(parts, json_path, csv_path, plot_path):
    """Merge the shard results of one 'analogize evaluate --shard' sweep into the full result."""
    from ..evaluate.results import load_result, merge_results

    refuse_overwrites({f"part {p}": p for p in parts}, {"-o": json_path, "--csv": csv_path, "--plot": plot_path})
    _write_and_print(merge_results([load_result(p) for p in parts]), json_path, csv_path, plot_path)


def _write_and_print(result: dict, json_path, csv_path, plot_path) -> None:
    """Write the result's files, then print its table unless the JSON went to stdout."""
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
