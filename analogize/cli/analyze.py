"""``analogize analyze``: the paper's analyses (EP and noise std, gradient step discontinuity, gradient error,
mini-batch bias, effective bits, critical initialisation), each printed as a table and written as JSON and,
where it has one, a figure."""
from __future__ import annotations


import click

from .. import noise_model
from ..model_io import refuse_overwrites
from .options import (FINITE_FLOAT, FiniteFloatRange, activation_settings_option, analysis_output_options,
                      bit_widths_option, comma_separated_floats, comma_separated_numbers, ep_option,
                      error_probabilities_option, interpolation_options, noise_draws_option, precision_from,
                      precision_options, seed_option, table_output_options)


@click.group()
def analyze():
    """The paper's analyses: tables, JSON and figures."""


@analyze.command("ep-std")
@bit_widths_option(help="Bit widths (comma-separated) [default: 4,6,8 unless --precision is given].")
@click.option("--precision", "precisions", callback=comma_separated_floats,
              help="Precisions p (steps per unit) directly.")
@error_probabilities_option(help="EP values to turn into stds.")
@click.option("--std", "stds", callback=comma_separated_floats, help="Noise stds to turn into EPs.")
@table_output_options
def analyze_ep_std(bits_list, precisions, eps, stds, json_path):
    """Noise std for each EP (and EP for each std), at each bit width under both conventions, or precision."""
    from ..analysis import ep_std_table

    eps = tuple(e for e in eps if e is not None)
    bits_list = tuple(b for b in bits_list if b is not None) or ((4, 6, 8) if not precisions else ())
    if stds and min(stds) < 0:
        raise click.BadParameter("noise stds must be >= 0", param_hint="--std")
    _write_and_print(ep_std_table(bits_list, eps, stds or (), precisions or ()), json_path, None)


@analyze.command("gsd")
@activation_settings_option(default="relu,leaky:0.1,interp-gelu:0.25,interp-gelu:0.5,interp-gelu:0.75,gelu,silu",
                            help="Activation settings (comma-separated), as for evaluate, plus 'relu'.")
@click.option("--at", "at", type=FINITE_FLOAT, default=0.0, show_default=True, help="The point x0.")
@analysis_output_options
def analyze_gsd(activations, at, json_path, plot_path):
    """Gradient step discontinuity |f'(x0-) - f'(x0+)| of each activation."""
    from ..analysis import step_discontinuity

    _write_and_print(step_discontinuity(activations, at), json_path, plot_path)


@analyze.command("gradient-error")
@interpolation_options(factors_default="0,0.25,0.5,0.75,1", factors_help="Interpolation factors i.")
@precision_options(8)
@ep_option(noise_model.DEFAULT_EP)
@click.option("--points", type=click.IntRange(min=3), default=513, show_default=True, help="Grid points per axis.")
@noise_draws_option("Noise draws.", default=10)
@click.option("--near-zero", type=FiniteFloatRange(min=0.0, min_open=True),
              help="Window |product| < W for the near-zero average [default: one step, 1/p].")
@seed_option()
@analysis_output_options
def analyze_gradient_error(factors, smooth, bits, precision, bit_convention, ep, points, repeats, near_zero, seed,
                           json_path, plot_path):
    """Gradient error of ReLU-to-smooth interpolations behind a noisy analog product (paper figure 4)."""
    from ..analysis import gradient_error_map

    if any(not 0.0 <= f <= 1.0 for f in factors):
        raise click.BadParameter("interpolation factors must be in [0, 1]", param_hint="--factors")
    _write_and_print(gradient_error_map(factors, smooth, precision_from(bits, precision, bit_convention), ep, points,
                                        repeats, near_zero, seed), json_path, plot_path)


@analyze.command("minibatch-bias")
@activation_settings_option(default="relu,gelu")
@precision_options(8)
@ep_option(help=f"Noise from EP at the precision [default: {noise_model.DEFAULT_EP}]...")
@click.option("--std", type=FiniteFloatRange(min=0.0, min_open=True), help="...or this noise std.")
@click.option("--batch-sizes", callback=comma_separated_numbers(int, 1, 10**7, "whole number"),
              default="1,10,100,1000,10000", show_default=True)
@click.option("--repeats", type=click.IntRange(min=2), default=200, show_default=True, help="Batches per size.")
@seed_option()
@analysis_output_options
def analyze_minibatch_bias(activations, bits, precision, bit_convention, ep, std, batch_sizes, repeats, seed,
                           json_path, plot_path):
    """Mini-batch mean of f'(x + noise) at x = 0- and 0+ against the true derivative (paper eq 12-13)."""
    from ..analysis import minibatch_bias

    if std is not None and ep is not None:
        raise click.UsageError("give either --ep or --std, not both")
    if std is None:
        std = noise_model.ep_to_std(noise_model.DEFAULT_EP if ep is None else ep,
                                    precision_from(bits, precision, bit_convention))
    _write_and_print(minibatch_bias(activations, std, batch_sizes, repeats, seed=seed), json_path, plot_path)


@analyze.command("effective-bits")
@click.option("--scales", callback=comma_separated_floats, default="0.5,1,1.5,2,2.5,3,3.5,4,4.5,5", show_default=True,
              help="GELU scales s.")
@precision_options(6)
@analysis_output_options
def analyze_effective_bits(scales, bits, precision, bit_convention, json_path, plot_path):
    """Effective bit precision of the scaled GELU's derivative near zero (paper figure 2c)."""
    from ..analysis import effective_bits

    if any(s <= 0 for s in scales):
        raise click.BadParameter("scales must be > 0", param_hint="--scales")
    _write_and_print(effective_bits(scales, precision_from(bits, precision, bit_convention)), json_path, plot_path)


@analyze.command("critical-init")
@activation_settings_option(
    default="smooth-swish,smooth-gelu,smooth-gumbel,smooth-algebraic,smooth-guderman,smooth-mish,relu",
    help="Settings, e.g. smooth-gelu:temperature=0.5, gelu:scale=2, interp-gelu:0.5.")
@click.option("--k-range", nargs=2, type=FiniteFloatRange(min=0.0, min_open=True), default=(1e-3, 1e3),
              show_default=True, help="Where to look for the fixed point K*.")
@table_output_options
def analyze_critical_init(activations, k_range, json_path):
    """Critical initialisation (K*, C_W*, C_b*) of a deep network with each activation (seed 002, Table 1)."""
    from ..analysis import critical_initialisation

    _write_and_print(critical_initialisation(activations, tuple(k_range)), json_path, None)


def _write_and_print(result: dict, json_path, plot_path) -> None:
    """Write the analysis's JSON and figure, then print its table unless the JSON went to stdout."""
    from .. import analysis
    from ..evaluate import results

    refuse_overwrites({}, {"--json": json_path, "--plot": plot_path})

    if json_path:
        results.write_json(analysis.to_json(result), json_path)
    if plot_path:
        analysis.plot(result, plot_path)
    if json_path == "-":
        return
    click.echo(analysis.table(result))
    for path in filter(None, (json_path, plot_path)):
        click.echo(f"wrote {path}")
