"""The ``analogize`` command: a thin layer over the Python API, where each flag maps to an option of the same
name. Each command or command group is a module of this package; the option groups they share, and the parsers
of option values, are in ``options``. ``main`` runs the command and turns user errors into one line on stderr
and exit code 2 (a traceback only with ``--debug``); a command's output files appear together when it succeeds,
and none when it fails."""
from __future__ import annotations

import errno
import os
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
            if sys.stdout is not None:  # None: started with it closed, and click writes nothing there
                sys.stdout.flush()  # a full disk shows here, before the output files appear
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
    except click.exceptions.Exit as done:  # Exit and Abort are RuntimeErrors: handled before torch's
        return done.exit_code
    except click.Abort:
        click.echo("analogize: interrupted", err=True)
        return 130
    except (MemoryError, RuntimeError) as error:  # numpy and torch say how much they could not allocate
        if "--debug" in argv or not _out_of_memory(error):
            raise
        detail = str(error).strip().splitlines()[0] if str(error).strip() else "no detail"
        click.echo(f"analogize: error: out of memory ({detail}); use less data at once "
                   f"(--limit, --batch-size, a smaller --resize) or a machine with more memory", err=True)
        return 2
    except OSError as error:
        if "--debug" in argv or not _stdout_failed(error):
            raise
        click.echo(f"analogize: error: cannot write to standard output ({error.strerror or error}); send it to a "
                   f"file on a disk with room, or to a reader that takes all of it", err=True)
        return 2
    return 0


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed: numpy's MemoryError, or torch's RuntimeError (its CPU
    allocator's "can't allocate memory", or its OutOfMemoryError on a GPU)."""
    return isinstance(error, MemoryError) or "can't allocate memory" in str(error) or \
        type(error).__name__ == "OutOfMemoryError"


def _stdout_failed(error: OSError) -> bool:
    """Whether ``error`` is a write to standard output that failed (a full disk, a reader gone): the files the
    commands write go through model_io, which words their failures itself. Its descriptor then leads to the
    null device, so that Python's own flush at exit does not fail again, in a message of its own."""
    if error.filename is not None or error.errno not in _WRITE_FAILURES:
        return False
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):  # a stream with no descriptor (one a test put there): nothing flushes it at exit
        pass
    return True


_WRITE_FAILURES = {errno.ENOSPC, errno.EPIPE, errno.EIO, errno.EFBIG, errno.EDQUOT}


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
