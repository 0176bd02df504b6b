"""``delib sweep …``: experiments over many runs."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from delib.cli.common import EXIT_ERROR, EXIT_INTERRUPTED, ArchiveOpt, err, open_archive, out
from delib.errors import InputError
from delib.experiments import report as reports
from delib.experiments import sweep_run
from delib.experiments.sweep import find, load, status, sweep_names
from delib.text import safe

sweep_app = typer.Typer(
    help="Experiments: scenarios × models × seeds × protocols, run, tracked and reported.",
    no_args_is_help=True,
)
SweepArg = Annotated[
    str, typer.Argument(help="A sweep file, or the name of a sweep already run in the archive.")
]
STATE_STYLE = {
    "done": "green",
    "failed": "red",
    "interrupted": "yellow",
    "running": "cyan",
    "missing": "dim",
}


class Engine(StrEnum):
    local = "local"
    ray = "ray"


def _describe(p: sweep_run.Progress) -> str:
    return f"done {p.done} · failed {p.failed} · running {p.running} · {p.tokens:,} tokens" + (
        f" · {p.skipped} already done or skipped" if p.skipped else ""
    )


@sweep_app.command("run")
def sweep_run_cmd(
    file: Annotated[Path, typer.Argument(help="The sweep file (YAML).")],
    archive: ArchiveOpt = None,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", min=1, help="Debates at once (default: the file's, else 4)."),
    ] = None,
    retry_failed: Annotated[
        bool,
        typer.Option("--retry-failed", help="Run failed cells again (up to max_attempts)."),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the outcome as JSON.")] = False,
    engine: Annotated[
        Engine,
        typer.Option(
            help="local: this process runs the debates. ray: a Ray cluster does (needs a "
            "postgresql:// archive; see docs/scale-out.md)."
        ),
    ] = Engine.local,
    ray_address: Annotated[
        str | None,
        typer.Option(help="With --engine ray: the cluster to join (default: start a local one)."),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="With --engine ray and no --ray-address: worker processes of the local "
            "cluster (default: one per CPU). --concurrency is then per worker.",
        ),
    ] = None,
) -> None:
    """Run every cell of a sweep that is not done yet; a rerun after a crash or Ctrl-C runs
    only what is missing and resumes what was cut off. Several 'sweep run's of one file
    against one postgresql:// archive share the cells between them."""
    sweep = load(file)
    store = open_archive(archive, create=True)
    live = sys.stderr.isatty() and not as_json
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not live,
    )
    task = bar.add_task("starting", total=None)
    shown = {"finished": 0}

    def on_progress(p: sweep_run.Progress) -> None:
        bar.update(task, total=p.total, completed=p.done + p.failed, description=_describe(p))
        for step, run_id, error in p.finished[shown["finished"] :]:
            labels = step.cell.labels()
            what = " · ".join(str(v) for v in labels.values() if v is not None)
            mark = "[red]failed[/red]" if error else "[green]done[/green]"
            tail = f": {safe(error)}" if error else ""
            err.print(f"{mark} {safe(what)} {safe(run_id)}{tail}", soft_wrap=True)
        shown["finished"] = len(p.finished)

    err.print(
        f"sweep [bold]{safe(sweep.name)}[/bold]: {len(sweep.cells)} cells → {safe(store.location)}"
    )
    try:
        with bar:
            if engine is Engine.ray:
                from delib.experiments.ray_engine import run_on_ray

                steps, progress = run_on_ray(
                    sweep,
                    store,
                    address=ray_address,
                    workers=workers or os.cpu_count() or 1,
                    concurrency=concurrency or sweep.spec.concurrency,
                    retry_failed=retry_failed,
                    on_progress=on_progress,
                )
            else:
                steps, progress = asyncio.run(
                    sweep_run.run_sweep(
                        sweep,
                        store,
                        concurrency=concurrency,
                        retry_failed=retry_failed,
                        on_progress=on_progress,
                    )
                )
    except (KeyboardInterrupt, asyncio.CancelledError):
        err.print(
            f"[yellow]interrupted[/yellow]; finished runs are kept; "
            f"'delib sweep run {safe(str(file))}' goes on from there",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    states = status(store, sweep)
    counts = {s: sum(1 for c in states if c.state == s) for s in STATE_STYLE}
    if as_json:
        print(json.dumps({"sweep": sweep.name, "cells": len(states), **counts}))
    else:
        skipped = [s for s in steps if s.action == "skip" and s.why != "done"]
        for step in skipped:
            what = " · ".join(str(v) for v in step.cell.labels().values() if v is not None)
            err.print(f"[dim]skipped {safe(what)}: {safe(step.why)}[/dim]", soft_wrap=True)
        summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        out.print(
            f"sweep {safe(sweep.name)}: {summary} · {progress.tokens:,} tokens this time "
            f"· 'delib sweep report {safe(sweep.name)}' for the report"
        )
    if counts["failed"] or counts["interrupted"] or counts["missing"]:
        raise typer.Exit(EXIT_ERROR)


@sweep_app.command("status")
def sweep_status(
    sweep_ref: SweepArg,
    archive: ArchiveOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print each cell as JSON.")
    ] = False,  # fmt: skip
) -> None:
    """Each cell of a sweep: done, running, failed, interrupted or missing."""
    store = open_archive(archive)
    sweep = find(store, sweep_ref)
    states = status(store, sweep, full=False)
    if as_json:
        rows = [
            {
                "cell": s.cell_key,
                **s.labels,
                "state": s.state,
                "attempts": s.attempts,
                "run_id": (s.latest or {}).get("run_id"),
                "stop_reason": (s.latest or {}).get("stop_reason"),
                "error": s.error,
            }
            for s in states
        ]
        print(json.dumps(rows))
        return
    table = Table(title=f"sweep {sweep.name}", box=None, title_justify="left")
    for column in ("cell", "scenario", "model", "seed", "protocol", "state", "tries"):
        table.add_column(column, no_wrap=column in ("cell", "seed", "state", "tries"))
    table.add_column("run", overflow="fold")
    for s in states:
        style = STATE_STYLE[s.state]
        latest = s.latest or {}
        table.add_row(
            s.cell_key[:8],
            safe(s.labels["scenario"]),
            safe(s.labels["model"]),
            str(s.labels["seed"]),
            safe(s.labels["protocol"] or "(scenario's)"),
            f"[{style}]{s.state}[/{style}]",
            str(s.attempts),
            safe(latest.get("run_id") or (s.error or "")[:60]),
        )
    out.print(table)


@sweep_app.command("list")
def sweep_list(archive: ArchiveOpt = None) -> None:
    """The sweeps run in an archive, with how many cells are done."""
    store = open_archive(archive)
    names = sweep_names(store)
    if not names:
        out.print(f"no sweeps in {safe(store.location)}; 'delib sweep run FILE' starts one")
        return
    table = Table(box=None)
    for column in ("sweep", "cells", "done", "failed", "other", "runs"):
        table.add_column(column)
    for name in names:
        states = status(store, find(store, name), full=False)
        done = sum(s.state == "done" for s in states)
        failed = sum(s.state == "failed" for s in states)
        runs = sum(len(s.runs) for s in states)
        other = len(states) - done - failed
        table.add_row(safe(name), str(len(states)), str(done), str(failed), str(other), str(runs))
    out.print(table)


@sweep_app.command("report")
def sweep_report(
    sweep_ref: SweepArg,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Where to write (default: stdout for csv/json, SWEEP.html for html).",
        ),  # fmt: skip
    ] = None,
    fmt: Annotated[
        reports.Format, typer.Option("--format", help="html (charts), csv or json.")
    ] = reports.Format.html,
    archive: ArchiveOpt = None,
    per_turn: Annotated[
        bool, typer.Option("--per-turn", help="csv/json: one row per participant statement.")
    ] = False,
) -> None:
    """A report on a sweep: the matrix, stance over rounds, refusals, deadlocks, tokens,
    latency; HTML with charts (one offline file, transcripts beside it), or CSV/JSON."""
    store = open_archive(archive)
    sweep = find(store, sweep_ref)
    if per_turn and fmt is reports.Format.html:
        raise InputError("--per-turn is for --format csv or json")
    rows = reports.turn_table(store, sweep) if per_turn else reports.rows(store, sweep)
    if fmt is not reports.Format.html:
        columns = list(rows[0]) if per_turn and rows else None
        text = reports.as_csv(rows, columns) if fmt is reports.Format.csv else (
            reports.as_json(rows))  # fmt: skip
        if output is None or str(output) == "-":
            sys.stdout.write(text)
        else:
            output.write_text(text, encoding="utf-8")
            out.print(f"wrote {safe(str(output))}")
        return
    target = output or Path(f"{sweep.name}.html")
    if target.is_dir():
        raise InputError(f"{target} is a folder; give a file name such as {sweep.name}.html")
    written = reports.write_html(store, sweep, rows, target)
    out.print(f"wrote {safe(str(target))} and {written} transcripts beside it")
