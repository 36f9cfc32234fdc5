"""``analogize sensitivity`` and ``analogize plan``: where a model loses accuracy unit by unit, and the cheapest
per-layer plan that meets a target."""
from __future__ import annotations

import click

from .. import noise_model
from ..model_io import refuse_overwrites
from ..planning.metrics import METRICS
from .options import (FiniteFloatRange, bits_option, chain_options, csv_file_option, ep_option, fidelity_option,
                      files_read, json_file_option, json_output_file, noise_draws_option, output_scoring_options,
                      plot_file_option, quiet_option, range_options, report_option, scoring_data_options, seed_option,
                      session_device_option, shard_option, std_option, torch_options, workers_option)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@scoring_data_options
@output_scoring_options
@bits_option(8, help="Bit width B of every analog unit (a --plan may set others).")
@ep_option(help=f"Error probability [default: {noise_model.DEFAULT_EP}].")
@std_option
@noise_draws_option("Independent noise draws per cell.")
@seed_option("Sweep seed: same seed, same numbers.")
@click.option("--metric", type=click.Choice(list(METRICS)),
              help="What loss and recovery are measured in [default: accuracy with labels, else top-1 agreement with "
                   "the clean model, else (outputs without classes, such as embeddings) the relative error].")
@click.option("--statistics/--no-statistics", default=True, show_default=True,
              help="Measure each site's clipping, rounding to zero and noise against its signal (one extra pass).")
@fidelity_option
@workers_option
@session_device_option
@shard_option
@json_file_option("Write the result as JSON ('-': to stdout, no table).")
@csv_file_option("Write one CSV row per unit, ranked.")
@plot_file_option("Write loss and recovery per unit as a PNG (or .pdf, .svg).")
@report_option
@quiet_option
@chain_options
@range_options
@torch_options
def sensitivity(model, data_source, scoring, bits, ep, std, repeats, seed, metric, statistics, fidelity, workers,
                device, shard, json_path, csv_path, plot_path, report_path, quiet, chain, ranges, torch_import):
    """Rank MODEL's analog layers and input DACs by the accuracy they cost: the loss when only that unit is
    analog, the recovery when only it is kept digital, and each site's clipping and range statistics."""
    from ..convert import ConvertOptions
    from ..evaluate.engine import parse_shard
    from ..planning.sensitivity import sensitivity_file

    refuse_overwrites(files_read(model, data=data_source["data"], calibrate=ranges["calibrate"],
                                 torch_import=torch_import),
                      {"--json": json_path, "--csv": csv_path, "--plot": plot_path, "--report": report_path},
                      models=("the model",))
    if shard and (not json_path or csv_path or plot_path or report_path):
        raise click.UsageError("--shard writes only a partial result for 'analogize merge': give --json, and "
                               "--csv, --plot or --report to merge")
    options = ConvertOptions(bits=bits, ep=ep, std=std, **chain, **ranges)
    result = sensitivity_file(model, options=options, **data_source, **scoring, repeats=repeats, seed=seed,
                              metric=metric, statistics=statistics, fidelity=fidelity, workers=workers, device=device,
                              shard=parse_shard(shard) if shard else None, torch_import=torch_import,
                              progress=not quiet)
    write_sensitivity(result, json_path, csv_path, plot_path, report_path)


def write_sensitivity(result: dict, json_path, csv_path, plot_path, report_path) -> None:
    """Write a sensitivity result's files (a shard's partial result: its JSON only), then print its table."""
    from ..evaluate.results import write_json
    from ..planning import outputs
    from ..report import write_report

    if result.get("shard"):
        write_json(result, json_path)
        if json_path != "-":
            click.echo(f"shard {result['shard']['index']}/{result['shard']['count']}: {len(result['cells'])} of "
                       f"{result['cell_count']} cells; wrote {json_path}")
        return
    if json_path:
        write_json(result, json_path)
    if csv_path:
        outputs.write_sensitivity_csv(result, csv_path)
    if plot_path:
        outputs.plot_sensitivity(result, plot_path)
    if report_path:
        write_report([result], report_path)
    if json_path != "-":
        _print(result, outputs.sensitivity_table(result), (json_path, csv_path, plot_path, report_path))


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@scoring_data_options
@output_scoring_options
@click.option("-o", "--output", "plan_path", callback=json_output_file, required=True,
              help="The plan file to write (JSON, as convert's --plan reads it; '-': to stdout, no table).")
@click.option("--target-agreement", type=FiniteFloatRange(0.0, 1.0, min_open=True),
              help="Top-1 agreement with the clean model to reach (a fraction, e.g. 0.99); needs no labels.")
@click.option("--target-accuracy", type=FiniteFloatRange(0.0, 1.0, min_open=True),
              help="Accuracy against the labels to reach (a fraction).")
@click.option("--target-rel-error", type=FiniteFloatRange(0.0, 1.0, min_open=True),
              help="Relative error of the primary output against the clean model's to stay at or below (for outputs "
                   "without classes: regressions, detectors' boxes, states).")
@click.option("--bits-choices", callback=lambda context, parameter, text: None if text is None else tuple(
                  int(item) if item.strip().isdigit() else _not_bits(item) for item in text.split(",")),
              help="Comma-separated bit widths a unit may take [default: --bits alone].")
@click.option("--max-digital", type=click.IntRange(min=0),
              help="At most this many units kept digital [default: no limit].")
@click.option("--no-digital", is_flag=True, help="Keep every unit analog (search bit widths only).")
@bits_option(8, help="Bit width when --bits-choices is not given.")
@ep_option(help=f"Error probability of every analog unit [default: {noise_model.DEFAULT_EP}].")
@std_option
@noise_draws_option("Noise draws per candidate.", default=3)
@click.option("--verify-repeats", type=click.IntRange(min=1), default=5, show_default=True,
              help="Noise draws of the verification evaluate of the plan found.")
@seed_option("Seed of every candidate's noise.")
@session_device_option
@json_file_option("Write the search (steps, plan, verification) as JSON ('-': to stdout, no table).")
@plot_file_option("Write the metric of each search step as a PNG (or .pdf, .svg).")
@report_option
@quiet_option
@chain_options
@range_options
@torch_options
def plan(model, data_source, scoring, plan_path, target_agreement, target_accuracy, target_rel_error, bits_choices,
         max_digital, no_digital, bits, ep, std, repeats, verify_repeats, seed, device, json_path, plot_path,
         report_path, quiet, chain, ranges, torch_import):
    """Search the cheapest per-layer settings of MODEL (fewest digital units, then fewest bits) that meet a target,
    verify them with a plain evaluate, and write the plan convert --plan takes."""
    from ..convert import ConvertOptions
    from ..evaluate.results import write_json
    from ..planning import outputs
    from ..planning.search import SearchBounds, search_plan_file
    from ..report import write_report

    targets = {metric: value for metric, value in (("agreement", target_agreement), ("accuracy", target_accuracy),
                                                   ("rel_error", target_rel_error)) if value is not None}
    if len(targets) != 1:
        raise click.UsageError("give one target: --target-agreement, --target-accuracy or --target-rel-error")
    refuse_overwrites(files_read(model, data=data_source["data"], calibrate=ranges["calibrate"],
                                 torch_import=torch_import),
                      {"-o": plan_path, "--json": json_path, "--plot": plot_path, "--report": report_path},
                      models=("the model",))
    options = ConvertOptions(bits=bits, ep=ep, std=std, **chain, **ranges)
    bounds = SearchBounds(bits=bits_choices or (bits,), digital=not no_digital, max_digital=max_digital)
    (metric, target), = targets.items()
    result = search_plan_file(model, options=options, **data_source, **scoring, metric=metric, target=target,
                              bounds=bounds, repeats=repeats, verify_repeats=verify_repeats, seed=seed, device=device,
                              torch_import=torch_import, progress=not quiet)
    write_json(result["plan"], plan_path)
    if json_path:
        write_json(result, json_path)
    if plot_path:
        outputs.plot_plan(result, plot_path)
    if report_path:
        write_report([result], report_path)
    if "-" not in (plan_path, json_path):
        _print(result, outputs.plan_table(result), (plan_path, json_path, plot_path, report_path))
        click.echo(f"analogize convert {model} with this command's chain flags and --plan {plan_path} writes the "
                   f"model verified above (analogize evaluate on it, --seed {seed}, gives the same numbers)")


def _print(result: dict, table: str, paths) -> None:
    """A result's warnings on stderr, its table, and the files written."""
    for line in result["warnings"]:
        click.echo(line, err=True)
    click.echo(table)
    for path in filter(None, paths):
        click.echo(f"wrote {path}")


def _not_bits(text: str):
    raise click.BadParameter(f"{text!r} is not a bit width (a whole number)")
