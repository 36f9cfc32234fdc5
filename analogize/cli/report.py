"""``analogize report``: one self-contained HTML file of results that analogize commands wrote as JSON."""
from __future__ import annotations

import click

from .options import report_file


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, callback=report_file, metavar="PATH.html", help="The report.")
@click.option("--title", help="The report's title [default: it names the models].")
def report(results, output, title):
    """Write one HTML report of RESULTS, readable offline: per result its model and settings, tables, plots and
    warnings. RESULTS are the JSON files analogize commands write with --json; files of any other kind are
    refused, naming the formats known."""
    from ..report import read_result, write_report

    write_report([read_result(path) for path in results], output, title, sources=list(results))
    click.echo(f"wrote {output}")
