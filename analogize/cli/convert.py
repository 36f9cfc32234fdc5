"""``analogize convert``: insert the analog chains into one model and swap its activations, then summarise the
conversion report (or print it whole as JSON)."""
from __future__ import annotations

import json
import os

import click

from .. import noise_model
from ..model_io import model_output, refuse_overwrites
from ..ops.spec import OPS
from .options import (SEEDS, activation_options, bits_option, chain_options, ep_option, files_read, json_flag,
                      overwrite_option, range_options, std_option, torch_options, writable_file)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), callback=writable_file,
              help="Output model [default: MODEL with suffix .analog.onnx].")
@overwrite_option
@bits_option(8, help="Bit width B; precision p = 2^B (see --bit-convention).")
@ep_option(help="Error probability: chance that noise moves a value past half a step "
                f"[default: {noise_model.DEFAULT_EP}].")
@std_option
@activation_options(activation_help="Replacement for every ReLU.",
                    factor_help="Interpolation factor i in [0, 1] "
                                f"[default: {OPS['ReluGeluInterpolation'].attribute('factor').default}].")
@click.option("--seed", type=SEEDS, help="Base seed: reproducible noise (each node its own stream).")
@click.option("--inline", is_flag=True, help="Write standard ONNX ops only (no custom domain).")
@json_flag("Print the report as JSON.")
@chain_options
@range_options
@torch_options
def convert(model, output, overwrite, bits, ep, std, activation, factor, seed, inline, as_json, chain, ranges,
            torch_import):
    """Insert clamp, reduce-precision and noise into MODEL (ONNX, or a torch model: .pt2, TorchScript, or
    module.path:factory with --state-dict) and swap its activations."""
    from ..convert import ConvertOptions, convert_file, default_output

    inputs = files_read(model, calibrate=ranges["calibrate"], torch_import=torch_import)
    destination = output or (default_output(model) if os.path.isfile(model) else None)
    refuse_overwrites(inputs, model_output("-o", destination), models=("the model",), replaceable="the model",
                      overwrite=overwrite)
    options = ConvertOptions(bits=bits, ep=ep, std=std, activation=activation, factor=factor, seed=seed,
                             inline=inline, **chain, **ranges)
    report = convert_file(model, output, options, overwrite=overwrite, torch_import=torch_import)
    for line in report["warnings"]:
        click.echo(line, err=True)
    if as_json:
        click.echo(json.dumps(report, indent=2, allow_nan=False))
        return
    _print_summary(report)


def _print_summary(report: dict) -> None:
    settings, options = report["settings"], report["settings"]["options"]
    counts = {}
    for site in report["inserted"]:
        counts[site["site"]] = counts.get(site["site"], 0) + 1
    click.echo(f"wrote {report['output']}")
    noise = "no noise" if settings["std"] == 0 else f"noise std={settings['std']:.4g}" + (
        f" (EP {settings['ep']:.3g})" if settings["ep"] is not None else "")
    precision = f"precision p={settings['precision']:g}" if options["quantize"] else "no reduce-precision"
    modes = settings["range_modes"]
    click.echo(f"  {precision}; {noise}; " + ("clamp to the full scale" if options["clamp"] else "no clamp")
               + f"; ranges: weights {modes['weights']}, activations {modes['activations']}")
    if "calibration" in settings:
        calibration = settings["calibration"]
        click.echo(f"  calibrated on {calibration['samples']} samples of {calibration['data']} "
                   f"({calibration['method']})")
    click.echo(f"  {len(report['layers'])} analog layers; chains: "
               + (", ".join(f"{n} {k}" for k, n in counts.items()) or "none"))
    if report["activations"].get("swapped"):
        click.echo(f"  {len(report['activations']['swapped'])} ReLU -> {report['activations']['to']}")
    for skipped in report["skipped_layers"]:
        click.echo(f"  left digital: {skipped['node'] or skipped['op_type']} ({skipped['reason']})")
    for upgrade in report["opset_upgrades"]:
        click.echo(f"  opset moved from {upgrade['from']} to {upgrade['to']} (function bodies need 13-21 with noise)")
