"""The ``analogize`` command: a thin layer over the Python API, where each flag maps to an option of the same
name. Each command or command group is a module of this package; the option groups they share, and the parsers
of option values, are in ``options``. ``main`` runs the command and turns user errors into one line on stderr
and exit code 2 (a traceback only with ``--debug``); a command's output files appear together when it succeeds,
and none when it fails."""
from __future__ import annotations

import sys

import click

from ..errors import AnalogizeError
from ..model_io import outputs_together
from . import analyze, convert, evaluate, export, fast, finetune, info, planning, report, training, zoo


def main(argv=None) -> int:
    """Console entry point: user errors become one line on stderr and exit code 2 (``--debug``: traceback)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        with outputs_together():
            cli.main(argv, prog_name="analogize", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as error:  # a bare group: its help is the answer, not an error
        click.echo(error.ctx.get_help() if error.ctx else error.format_message())
        return 0
    except click.UsageError as error:
        command = error.ctx.command_path if error.ctx else "analogize"
        click.echo(f"analogize: error: {error.format_message()} (see '{command} --help')", err=True)
        return 2
    except AnalogizeError as error:
        if "--debug" in argv:
            raise
        click.echo(f"analogize: error: {error}", err=True)
        return 2
    except MemoryError as error:  # numpy says how much it could not allocate, and for what shape
        if "--debug" in argv:
            raise
        click.echo(f"analogize: error: out of memory ({str(error).strip() or 'no detail'}); use less data at once "
                   f"(--limit, --batch-size, a smaller --resize) or a machine with more memory", err=True)
        return 2
    except click.exceptions.Exit as done:
        return done.exit_code
    except click.Abort:
        click.echo("analogize: interrupted", err=True)
        return 130
    return 0


class _Commands(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EOFError as error:  # click's main would take it for Ctrl-C: an Abort, 'interrupted', exit 130
            raise AnalogizeError(f"an input ended early ({error or 'end of file'}); a file it read is truncated: "
                                 f"write it again") from error


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.version_option(package_name="analogize")
def cli(debug):
    """Prepare ONNX neural networks for noisy, low-precision analog accelerators."""


for command in (convert.convert, fast.fast, info.ops, info.native, zoo.zoo, evaluate.evaluate, evaluate.merge,
                export.export, export.rebuild, finetune.finetune, analyze.analyze, training.train, training.sweep,
                planning.sensitivity, planning.plan, report.report):
    cli.add_command(command)
