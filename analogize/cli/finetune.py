"""``analogize finetune``: tune a model, clean or converted, under analog noise; and the before/after report
that it and ``analogize train`` print."""
from __future__ import annotations


import click

from ..model_io import model_output, refuse_overwrites
from .options import (activation_options, bits_option, chain_options, checkpoint_and_report_options, ep_option,
                      files_read, quiet_option, range_options, report_option, torch_options, training_data_options,
                      training_loop_options, writable_file)


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@training_data_options("Training data spec (as for evaluate); digits and cifar10 use their train split and "
                       "validate on test.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), callback=writable_file, required=True,
              help="The tuned model.")
@bits_option(8, help="For a clean MODEL: bit width to convert with.")
@ep_option(help="For a clean MODEL: error probability.")
@activation_options()
@training_loop_options(epochs=10, lr=1e-3, repeats_help="Noise draws of the before/after evaluations.",
                       early_stopping=True)
@checkpoint_and_report_options
@report_option
@quiet_option
@chain_options
@range_options
@torch_options
def finetune(model, data, eval_data, limit, output, bits, ep, activation, factor, checkpoint_dir, resume, json_path,
             plot_path, report_path, quiet, training, chain, ranges, torch_import):
    """Fine-tune MODEL (clean or converted ONNX, or a torch model) under analog noise and write the tuned model."""
    from ..convert import ConvertOptions
    from ..training.finetune import FinetuneOptions, finetune_file

    refuse_overwrites(files_read(model, data=data, eval_data=eval_data, calibrate=ranges["calibrate"],
                                 torch_import=torch_import),
                      {**model_output("-o", output), "--json": json_path, "--plot": plot_path, "--report": report_path},
                      models=("the model",))
    convert_options = ConvertOptions(bits=bits, ep=ep, activation=activation, factor=factor, seed=training["seed"],
                                     **chain, **ranges)
    report = finetune_file(model, output, data, FinetuneOptions(**training), convert_options, eval_data=eval_data,
                           limit=limit, checkpoint_dir=checkpoint_dir, resume=resume, progress=not quiet,
                           plot=plot_path, torch_import=torch_import)
    print_training_report(report, json_path, report_path)


def print_training_report(report: dict, json_path, report_path=None) -> None:
    """The report of finetune or train: as JSON, as an HTML report, and as two lines before/after."""
    if "rank" in report:  # not process 0 of a torchrun job
        return
    if report_path:
        from ..report.html import write_report as write_html_report

        write_html_report([report], report_path)
    if json_path:
        from ..evaluate.results import write_json

        write_json(report, json_path)
        if json_path == "-":
            return
    before, after = report["before"], report["after"]
    click.echo(f"noisy accuracy {100 * before['noisy_mean']:.1f} ± {100 * before['noisy_std']:.1f} % -> "
               f"{100 * after['noisy_mean']:.1f} ± {100 * after['noisy_std']:.1f} % ({after['repeats']} draws); "
               f"digital (chains removed) {100 * before['digital']:.1f} % -> {100 * after['digital']:.1f} %")
    click.echo(f"wrote {report['output']} after {report['epochs_run']} epochs"
               + (" (stopped early)" if report["stopped_early"] else ""))
    if report_path:
        click.echo(f"wrote {report_path}")
