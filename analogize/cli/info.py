"""``analogize ops`` and ``analogize native``: what the installation offers, the analog op set and the path of
the native kernel library."""
from __future__ import annotations

import json
import math

import click

from ..ops.spec import OPS, markdown_reference
from .options import json_flag


@click.command()
@click.option("--markdown", is_flag=True, help="Print the full reference page (docs/ops.md).")
@click.option("--ranges-markdown", is_flag=True, help="Print the range-mode reference page (docs/ranges.md).")
@click.option("--plan-markdown", is_flag=True, help="Print the plan file reference page (docs/plan.md).")
@json_flag("Print the op set as JSON (an unbounded min or max is null).")
def ops(markdown, ranges_markdown, plan_markdown, as_json):
    """List the analog op set."""
    if markdown:
        click.echo(markdown_reference(), nl=False)
        return
    if ranges_markdown:
        from ..ranges.modes import markdown_reference as ranges_reference

        click.echo(ranges_reference(), nl=False)
        return
    if plan_markdown:
        from ..plans import markdown_reference as plan_reference

        click.echo(plan_reference(), nl=False)
        return
    if as_json:
        bound = lambda value: value if math.isfinite(value) else None  # noqa: E731 (strict JSON has no Infinity)
        click.echo(json.dumps({name: {"equation": spec.equation, "doc": spec.doc, "attributes": {
            a.name: {"default": a.default, "required": a.required, "min": bound(a.minimum), "max": bound(a.maximum)}
            for a in spec.attributes}} for name, spec in OPS.items()}, indent=2, allow_nan=False))
        return
    for name, spec in OPS.items():
        click.echo(f"{name:28s} {spec.equation}")


@click.command()
@click.option("--cuda", is_flag=True, help="The library with CUDA kernels too (needs nvcc to build).")
@json_flag("Print as JSON.")
def native(cuda, as_json):
    """Build (on first use) and print the path of the native kernel library for ONNX Runtime."""
    from ..native.build import native_library_path

    path = native_library_path(cuda=cuda)
    if as_json:
        click.echo(json.dumps({"library": str(path), "cuda": cuda}))
        return
    click.echo(str(path))
