"""``analogize fast``: write a converted model in its fast form, for ONNX Runtime sessions the package does not
make (other programs, other languages), or ONNX Runtime's optimised graph of it for this machine."""
from __future__ import annotations

import json

import click

from .options import json_flag, overwrite_option, writable_file


@click.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), callback=writable_file, required=True,
              help="The fast model.")
@click.option("--for-this-machine", is_flag=True,
              help="Write ONNX Runtime's optimised graph instead (convolutions in its blocked layout, as analogize's "
                   "own sessions run them). It ties the file to this ONNX Runtime version, this CPU's vector "
                   "features and the native library: it has no function bodies and loads only where the library is "
                   "registered; load it with graph optimisations off.")
@overwrite_option
@json_flag("Print the report as JSON.")
def fast(model, output, for_this_machine, overwrite, as_json):
    """Write the converted MODEL with each chain of element-wise analog nodes as one fused native node that keeps
    the chain as its ONNX function body: fast in any ONNX Runtime session that registers the native library
    (analogize native prints its path), and the same numbers without it, in any runtime."""
    from ..runtime.fast_form import fast_file

    report = fast_file(model, output, for_this_machine, overwrite)
    if as_json:
        click.echo(json.dumps(report, indent=2, allow_nan=False))
        return
    click.echo(f"wrote {report['output']}: {report['fused_chains']} chains fused")
    if for_this_machine:
        tied = report["tied_to"]
        blocked = "yes" if tied["blocked_layout"] else "no"
        click.echo(f"  ONNX Runtime's optimised graph (blocked layout: {blocked}) for ONNX Runtime {tied['onnxruntime']} "
                   f"on {tied['cpu']}; needs the native library {tied['native_library']} registered, and graph "
                   f"optimisations off")
