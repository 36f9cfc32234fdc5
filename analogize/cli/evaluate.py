"""``analogize evaluate`` and ``analogize merge``: the accuracy a model keeps under analog noise over a grid of
bits x EP x activation, computed whole or in shards and merged, printed as a table and written as JSON, CSV and
a plot."""
from __future__ import annotations

import click

from .. import noise_model
from ..model_io import refuse_overwrites
from .options import (ACTIVATION_NAMES, activation_settings_option, bit_widths_option, chain_options,
                      csv_file_option, error_probabilities_option, fidelity_option, files_read, json_file_option,
                      json_output_file, noise_draws_option, output_scoring_options, plot_file_option, quiet_option,
                      range_options, report_option, scoring_data_options, seed_option, session_device_option,
                      shard_option, torch_options, workers_option)


def _renamed_output(context, parameter, value):
    if value is not None:  # every other command's --output is a file; this one named a graph output
        raise click.BadParameter("evaluate names its primary graph output with --primary-output; files go to "
                                 "--json, --csv and --plot")


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@scoring_data_options
@output_scoring_options
@click.option("--output", hidden=True, expose_value=False, callback=_renamed_output)
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
@fidelity_option
@workers_option
@session_device_option
@shard_option
@json_file_option("Write the result as JSON ('-': to stdout, no table).")
@csv_file_option("Write one CSV row per cell and baseline.")
@plot_file_option("Write accuracy against EP as a PNG (or .pdf, .svg).")
@report_option
@quiet_option
@chain_options
@range_options
@torch_options
def evaluate(model, data_source, scoring, bits_list, eps, activations, repeats, seed, baseline, fidelity, workers,
             device, shard, json_path, csv_path, plot_path, report_path, quiet, chain, ranges, torch_import):
    """Accuracy of MODEL (clean or converted ONNX, or a torch model) under analog noise over a grid of bits x EP x
    activation."""
    from ..convert import ConvertOptions
    from ..evaluate.engine import Grid, evaluate_file, parse_shard

    refuse_overwrites(files_read(model, data=data_source["data"], calibrate=ranges["calibrate"],
                                 torch_import=torch_import),
                      {"--json": json_path, "--csv": csv_path, "--plot": plot_path, "--report": report_path},
                      models=("the model",))
    grid = Grid(bits=bits_list, ep=eps, activations=activations, repeats=repeats, seed=seed)
    if baseline and chain["noise"]:
        grid = grid.with_baseline()
    result = evaluate_file(model, grid=grid, options=ConvertOptions(**chain, **ranges), **data_source, **scoring,
                           fidelity=fidelity, workers=workers, device=device,
                           shard=parse_shard(shard) if shard else None, torch_import=torch_import, progress=not quiet)
    _write_and_print(result, json_path, csv_path, plot_path, report_path)


@click.command()
@click.argument("parts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", "json_path", callback=json_output_file, required=True,
              help="The merged result (JSON; '-': to stdout).")
@csv_file_option("Also write the CSV.")
@plot_file_option("Also write the plot.")
@report_option
def merge(parts, json_path, csv_path, plot_path, report_path):
    """Merge the shard results of one 'analogize evaluate --shard' (or 'analogize sensitivity --shard') sweep into
    the full result."""
    from ..evaluate.results import load_result, merge_results

    refuse_overwrites({f"part {p}": p for p in parts}, {"-o": json_path, "--csv": csv_path, "--plot": plot_path,
                                                        "--report": report_path})
    merged = merge_results([load_result(p) for p in parts])
    if "sensitivity" in merged:
        from ..planning.sensitivity import finish
        from .planning import write_sensitivity

        write_sensitivity(finish(merged), json_path, csv_path, plot_path, report_path)
        return
    _write_and_print(merged, json_path, csv_path, plot_path, report_path)


def _write_and_print(result: dict, json_path, csv_path, plot_path, report_path) -> None:
    """Write the result's files, then print its table unless the JSON went to stdout."""
    from ..evaluate import results
    from ..report import write_report

    if json_path:
        results.write_json(result, json_path)
    if csv_path:
        results.write_csv(result, csv_path)
    if plot_path and result["cells"]:
        results.plot(result, plot_path)
    elif plot_path:
        click.echo(f"no cells in this shard: {plot_path} not written", err=True)
        plot_path = None
    if report_path:
        write_report([result], report_path)
    if json_path != "-":
        click.echo(results.table(result))
        for path in filter(None, (json_path, csv_path, plot_path, report_path)):
            click.echo(f"wrote {path}")
