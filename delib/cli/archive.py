"""``delib archive copy``: runs and sweeps from one store to another."""

from __future__ import annotations

from typing import Annotated

import typer

from delib.cli.common import (
    EXIT_ERROR,
    archive_store,
    err,
    out,
)
from delib.errors import InputError
from delib.text import safe

archive_app = typer.Typer(
    help="Move runs between archives: a folder and a PostgreSQL database, either way.",
    no_args_is_help=True,
)


@archive_app.command("copy")
def archive_copy(
    source: Annotated[str, typer.Argument(help="From: a folder or a postgresql:// address.")],
    target: Annotated[str, typer.Argument(help="To: a folder or a postgresql:// address.")],
    run: Annotated[
        list[str] | None,
        typer.Option("--run", help="Only this run (id or prefix); repeat for more."),
    ] = None,
) -> None:
    """Copy every run (manifest, records, checkpoints of unfinished runs) and every sweep;
    runs already in the target are left as they are."""
    from delib.archive.transfer import copy_archive

    with archive_store(source) as src, archive_store(target, must_exist=False) as dst:
        if src.location == dst.location:
            raise InputError(f"{src.location} is both source and target; name another target")
        done = copy_archive(src, dst, run)
        where = dst.location
    for line in done.skipped:
        err.print(f"[yellow]warning:[/yellow] skipped {safe(line)}", soft_wrap=True)
    extra = f", {len(done.present)} already there" if done.present else ""
    sweeps = f", {len(done.sweeps)} sweeps" if done.sweeps else ""
    out.print(
        f"copied {len(done.runs)} runs ({done.checkpointed} with checkpoints){extra}{sweeps} "
        f"to {safe(where)}",
        soft_wrap=True,
    )
    if done.skipped:
        raise typer.Exit(EXIT_ERROR)
