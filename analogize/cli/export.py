"""``analogize export`` and ``analogize rebuild``: hand a converted model to hardware compilers as a
deterministic graph plus its analog spec, and rebuild the simulation from the two."""
from __future__ import annotations

import json

import click

from .options import json_flag, overwrite_option, writable_file


@click.command("export")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--format", "format_", type=click.Choice(["qdq", "qonnx", "plain"]), default="qdq", show_default=True,
              help="qdq: QuantizeLinear/DequantizeLinear for ONNX Runtime, OpenVINO, TensorRT; qonnx: QONNX Quant "
                   "nodes for the qonnx tools; plain: standard ops.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), callback=writable_file, required=True,
              help="The exported model.")
@click.option("--spec", "spec_path", callback=writable_file,
              help="Write the analog settings here [default: OUTPUT with suffix .spec.json].")
@click.option("--keep-noise", is_flag=True, help="plain only: keep the noise (function bodies inlined).")
@click.option("--verify-data", help="A data spec (as for evaluate) to compare the export with the noise-free "
                                    "simulation on, e.g. digits.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Samples of --verify-data to use.")
@overwrite_option
@json_flag("Print the report as JSON.")
def export(model, format_, output, spec_path, keep_noise, verify_data, limit, overwrite, as_json):
    """Write a converted MODEL as a deterministic graph for hardware compilers, plus its analog spec."""
    from ..export import export_file

    report = export_file(model, output, format_, spec=spec_path, keep_noise=keep_noise, verify_data=verify_data,
                         limit=limit, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(report, indent=2, allow_nan=False))
        return
    click.echo(f"wrote {report['output']} ({format_}) and {report['spec']}: {report['tensors']} analog tensors, "
               f"{report['activations']} activations")
    if "verification" in report:
        check = report["verification"]
        click.echo(f"  against the noise-free simulation on {check['samples']} samples: "
                   f"{100 * check['mismatch_rate']:.2f} % of outputs differ (max {check['max_abs_difference']:.3g}), "
                   f"top-1 agreement {100 * check['top1_agreement']:.2f} %")


@click.command()
@click.argument("exported", type=click.Path(dir_okay=False))
@click.option("--spec", "spec_path", required=True, type=click.Path(dir_okay=False), help="The export's spec.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), callback=writable_file, required=True,
              help="The analog simulation.")
def rebuild(exported, spec_path, output):
    """Rebuild the analog simulation from a qdq or qonnx export and its spec."""
    from ..export import rebuild_file

    click.echo(f"wrote {rebuild_file(exported, spec_path, output)}")
