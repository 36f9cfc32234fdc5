"""``analogize train`` and ``analogize sweep``: train zoo models from scratch under analog noise, one model or
a resumable grid of activations x depths x bits x EP x seeds."""
from __future__ import annotations


import click

from .. import noise_model
from ..model_io import model_output, refuse_overwrites
from .finetune import print_training_report
from .options import (activation_options, activation_settings_option, bit_widths_option, bits_option,
                      chain_options, checkpoint_and_report_options, comma_separated_floats, comma_separated_numbers,
                      ep_option, error_probabilities_option, files_read, interpolation_options, json_file_option,
                      option_group, plot_file_option, quiet_option, training_data_options, training_loop_options,
                      writable_file, zoo_model_config, zoo_model_option)

_zoo_training_options = option_group(
    training_data_options("Data spec (as for evaluate); digits and cifar10 train on their train split and validate "
                          "on test."),
    zoo_model_option("Zoo model option, e.g. --option stages=0 --option hidden=(64,64) [default: sized to the data]."),
    click.option("--init", type=click.Choice(["default", "critical"]), default="default", show_default=True,
                 help="critical: weights N(0, C_W*/fan_in), biases N(0, C_b*) for the activation."),
    training_loop_options(epochs=15, lr=3e-3, repeats_help="Noise draws of the final evaluation."),
    quiet_option,
)


@click.command()
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, callback=writable_file,
              help="The trained converted model.")
@bits_option(4)
@ep_option(noise_model.DEFAULT_EP)
@activation_options()
@checkpoint_and_report_options
@_zoo_training_options
@chain_options
def train(name, output, bits, ep, activation, factor, checkpoint_dir, resume, json_path, plot_path, data, eval_data,
          limit, model_options, init, quiet, training, chain):
    """Train zoo model NAME from scratch under analog noise (converted with the convert flags)."""
    from ..convert import PAPER_RANGES, ConvertOptions
    from ..training.finetune import FinetuneOptions
    from ..training.train import TrainSetup, train_file

    refuse_overwrites(files_read(data=data, eval_data=eval_data),
                      {**model_output("-o", output), "--json": json_path, "--plot": plot_path})
    setup = TrainSetup(name, zoo_model_config(model_options), init)
    convert_options = ConvertOptions(bits=bits, ep=ep, activation=activation, factor=factor, **chain,
                                     **PAPER_RANGES)
    report = train_file(output, setup, data, FinetuneOptions(**training), convert_options, eval_data=eval_data,
                        limit=limit, checkpoint_dir=checkpoint_dir, resume=resume, progress=not quiet, plot=plot_path)
    print_training_report(report, json_path)


@click.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--model", "name", default="convnet", show_default=True, help="Zoo model to train in every cell.")
@activation_settings_option(help="Activation settings (comma-separated): relu, leaky:0.1, gelu, interp-silu:0.5 ...")
@interpolation_options(factors_help="Interpolation factors i: adds interp-SMOOTH:i for each.",
                       smooth_help="The smooth end of --factors.")
@click.option("--alphas", callback=comma_separated_floats, help="LeakyReLU slopes: adds leaky:alpha for each.")
@click.option("--depths", callback=comma_separated_numbers(int, 0, 64, "whole number"),
              help="Depths (hidden linear layers, or conv stages with --depth-kind conv) [default: the model's].")
@click.option("--depth-kind", type=click.Choice(["linear", "conv"]), default="linear", show_default=True,
              help="linear: hidden linear layers; conv: conv stages (two convolutions and a max-pool each) "
                   "before one linear layer.")
@click.option("--width", type=click.IntRange(min=1), default=64, show_default=True,
              help="Width of each hidden linear layer of a --depths sweep.")
@bit_widths_option(default="4")
@error_probabilities_option(default="0.5")
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Training runs per grid point (seed, seed+1, ...).")
@click.option("--shard", help="Run only shard I of N (I/N, I from 0); shards share DIRECTORY.")
@json_file_option("Write the summary as JSON ('-': to stdout).")
@plot_file_option("Write accuracy against factor / slope / depth, as the paper's figures.")
@_zoo_training_options
@chain_options
def sweep(directory, name, activations, factors, smooth, alphas, depths, depth_kind, width, bits_list, eps, seeds,
          shard, json_path, plot_path, data, eval_data, limit, model_options, init, quiet, training, chain):
    """Train NAME over a grid of activations x depths x bits x EP x seeds into DIRECTORY (resumable)."""
    from ..convert import PAPER_RANGES, ConvertOptions
    from ..evaluate.engine import parse_shard
    from ..evaluate.results import write_json
    from ..training import sweep as sweeping
    from ..training.finetune import FinetuneOptions
    from ..training.train import TrainSetup

    given = click.get_current_context().get_parameter_source
    depths = tuple(d for d in depths if d is not None)
    for flag, parameter in (("--width", "width"), ("--depth-kind", "depth_kind")):
        if not depths and given(parameter) != click.core.ParameterSource.DEFAULT:
            raise click.UsageError(f"{flag} shapes the models of a --depths sweep; give --depths too")
    if not factors and given("smooth") != click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--smooth names the smooth end of --factors; give --factors too")
    refuse_overwrites(files_read(data=data, eval_data=eval_data), {"--json": json_path, "--plot": plot_path})
    config = zoo_model_config(model_options)
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
    result = sweeping.sweep(directory, data, grid, TrainSetup(name, config, init), FinetuneOptions(**training),
                            ConvertOptions(**chain, **PAPER_RANGES), eval_data=eval_data, limit=limit,
                            shard=parse_shard(shard) if shard else (0, 1), progress=not quiet)
    if json_path:
        write_json(result, json_path)
    if plot_path and result["points"]:
        sweeping.plot(result, plot_path)
    if json_path == "-":
        return
    click.echo(sweeping.table(result))
    for path in filter(None, (json_path, plot_path if result["points"] else None)):
        click.echo(f"wrote {path}")
