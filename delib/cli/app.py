"""The ``delib`` command. The only place that prints errors: one line, non-zero exit.

Each command group is a module of this package; this one puts them together and runs them.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import warnings
from typing import Annotated

import typer

from delib import __version__
from delib.cli import run as run_commands
from delib.cli.archive import archive_app
from delib.cli.common import DEBUG, EXIT_ERROR, EXIT_INTERRUPTED, err, error_line, out
from delib.cli.compare import compare_cmd
from delib.cli.endpoints import endpoints_app, local_app
from delib.cli.evals import eval_app
from delib.cli.library import personas_app, scenarios_app
from delib.cli.sweep import sweep_app
from delib.cli.transcripts import transcripts_app
from delib.cli.view import view
from delib.errors import DelibError
from delib.text import safe

app = typer.Typer(
    help="Multi-agent deliberation: personas argue a question through on any "
    "OpenAI-compatible endpoint, and every debate is archived.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(eval_app, name="eval")
app.add_typer(personas_app, name="personas")
app.add_typer(scenarios_app, name="scenarios")
app.add_typer(transcripts_app, name="transcripts")
app.add_typer(endpoints_app, name="endpoints")
app.add_typer(local_app, name="local")
app.add_typer(sweep_app, name="sweep")
app.add_typer(archive_app, name="archive")
app.command("compare")(compare_cmd)
app.command()(run_commands.run)
app.command()(run_commands.resume)
app.command()(view)


def _version(value: bool) -> None:
    if value:
        out.print(f"delib {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    if debug:
        DEBUG["on"] = True
        logging.getLogger("psycopg").setLevel(logging.NOTSET)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err.print(f"[yellow]warning:[/yellow] {safe(str(message))}", soft_wrap=True)


def main() -> None:
    """Console entry point: run the app, turning delib's errors into one line."""
    warnings.showwarning = _show_warning
    # psycopg logs a lost connection on its own ("error ignored terminating <AsyncPipeline
    # [BAD]>") beside the one line delib prints for it; --debug shows it again.
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    try:
        app()
    except DelibError as exc:
        if DEBUG["on"]:
            raise
        err.print(f"[red]error:[/red] {safe(error_line(exc))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_ERROR)
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM cancelling the run
        err.print("[yellow]interrupted[/yellow]; finished turns are kept in the run folder")
        sys.exit(EXIT_INTERRUPTED)
