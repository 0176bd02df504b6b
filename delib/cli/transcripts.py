"""``delib transcripts …``: list, show, search, export, compare and delete runs."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from delib.archive.export import diff, export
from delib.archive.folder_store import FolderStore
from delib.archive.index import HIT_END, HIT_START, Index
from delib.archive.markdown import markdown, verdict_lines
from delib.archive.store import open_store
from delib.cli.common import (
    EXIT_ERROR,
    ArchiveOpt,
    archive_store,
    err,
    out,
    warn_skipped,
)
from delib.errors import InputError
from delib.text import inert, safe

transcripts_app = typer.Typer(
    help="The archive: list, show, search, export, compare and delete runs.",
    no_args_is_help=True,
)


def _since(value: str | None) -> str | None:
    """--since: an ISO date or time, or a span back from now (30m, 12h, 7d)."""
    if not value:
        return None
    match = re.fullmatch(r"(\d+)([mhdw])", value.strip())
    if match:
        unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match.group(2)]
        try:
            then = datetime.now(UTC) - timedelta(**{unit: int(match.group(1))})
        except (OverflowError, ValueError):
            raise InputError(f"--since '{value}': that reaches back before year 1") from None
        return then.isoformat(timespec="milliseconds")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InputError(
            f"--since '{value}': expected a date (2026-11-01), a time (2026-11-01T09:30) "
            "or a span back from now (30m, 12h, 7d, 2w)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat(timespec="milliseconds")


@transcripts_app.command("list")
def transcripts_list(
    scenario: Annotated[str | None, typer.Option(help="Only runs of this scenario.")] = None,
    model: Annotated[str | None, typer.Option(help="Only runs in which this model spoke.")] = None,
    stop_reason: Annotated[
        str | None,
        typer.Option(
            help="Only runs that ended so: completed, max_rounds, token_budget, deadlock, "
            "closure, empty_replies, error, interrupted, or running (also runs killed without "
            "a word)."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only runs started since: 2026-11-01, 2026-11-01T09:30, 12h, 7d."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
    archive: ArchiveOpt = None,
) -> None:
    """List archived runs, newest first."""
    with archive_store(archive) as store:
        runs, problems = store.listing(
            scenario=scenario, model=model, stop_reason=stop_reason, since=_since(since)
        )
        where = store.location
    warn_skipped(problems)
    if as_json:
        print(json.dumps(runs))
        return
    if not runs:
        out.print(f"no runs match in {safe(where)}", soft_wrap=True)
        return
    table = Table(box=None)
    table.add_column("run", no_wrap=True)
    table.add_column("stop reason", no_wrap=True)
    table.add_column("turns", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("models")
    for r in runs:
        reason = r["stop_reason"] or "running or killed"
        if r["resumed"]:
            reason += f" (resumed ×{r['resumed']})"
        models = safe(", ".join(r["models"]))
        table.add_row(
            safe(r["run_id"]), safe(reason), str(r["turns"]), str(r["tokens"] or ""), models
        )
    out.print(table)


def _load_run(archive: str | None, wanted: str) -> tuple[Path | None, dict, list[dict]]:
    """A run's folder (None in a database), manifest and records."""
    with archive_store(archive) as store:
        run_id = store.find(wanted)
        return store.folder(run_id), store.manifest(run_id), store.records(run_id)


@transcripts_app.command("show")
def transcripts_show(
    run_id: Annotated[str, typer.Argument(help="Run id or unique prefix.")],
    reasoning: Annotated[
        bool, typer.Option("--reasoning", help="Show reasoning models' thinking, folded.")
    ] = False,
    archive: ArchiveOpt = None,
) -> None:
    """Print one run as Markdown (a reasoning model's thinking only noted, unless --reasoning)."""
    _, manifest, records = _load_run(archive, run_id)
    out.print(markdown(manifest, records, reasoning=reasoning), markup=False)


@transcripts_app.command("search")
def transcripts_search(
    query: Annotated[
        str,
        typer.Argument(
            help='Words to find (all must occur); FTS5 syntax works too: "a phrase", '
            "word*, a OR b, NEAR(a b). In a postgresql:// archive: words (stemmed), "
            '"a phrase", a or b, -word.'
        ),
    ],
    limit: Annotated[int, typer.Option(min=1, help="At most this many hits.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print the hits as JSON.")] = False,
    archive: ArchiveOpt = None,
) -> None:
    """Find turns by what was said, across every archived run."""
    with archive_store(archive) as store:
        hits, problems = store.search(query, limit)
    warn_skipped(problems)
    if as_json:
        plain = [
            {
                **dataclasses.asdict(h),
                "snippet": h.snippet.replace(HIT_START, "").replace(HIT_END, ""),
            }
            for h in hits
        ]
        print(json.dumps(plain))
        return
    if not hits:
        out.print(f"no turn matches {safe(repr(query))}")
        raise typer.Exit(EXIT_ERROR)
    for h in hits:
        snippet = Text("  ")
        for n, part in enumerate(h.snippet.replace(HIT_END, HIT_START).split(HIT_START)):
            snippet.append(inert(part), style="bold reverse" if n % 2 else "")
        out.print(
            f"[cyan]{safe(h.run_id)}[/cyan] [dim]turn {h.index} · round {h.round} ·[/dim] "
            f"[bold]{safe(h.name or h.speaker)}[/bold]",
            soft_wrap=True,
        )
        out.print(snippet, soft_wrap=True)
    out.print(f"[dim]{len(hits)} hit{'s' if len(hits) != 1 else ''}[/dim]")


class ExportFormat(StrEnum):
    md = "md"
    json = "json"
    html = "html"


@transcripts_app.command("export")
def transcripts_export(
    run_id: Annotated[str, typer.Argument(help="Run id or unique prefix.")],
    fmt: Annotated[
        ExportFormat,
        typer.Option("--format", "-f", help="md, json (manifest and records) or html (one file)."),
    ] = ExportFormat.md,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write here instead of stdout ('-' is stdout)."),
    ] = None,
    archive: ArchiveOpt = None,
) -> None:
    """Export one run as Markdown, JSON or a self-contained HTML page."""
    folder, manifest, records = _load_run(archive, run_id)
    text = export(manifest, records, fmt.value)
    if output is None or str(output) == "-":
        sys.stdout.write(text)
        return
    if folder is not None and output.resolve().parent == folder.resolve():
        raise InputError(
            f"--output {output} is inside the run's own folder; export elsewhere "
            "(the run's files are its record)"
        )
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {output}: {exc.strerror}") from None
    err.print(f"wrote {output}", soft_wrap=True)


@transcripts_app.command("diff")
def transcripts_diff(
    run_a: Annotated[str, typer.Argument(help="First run (id or unique prefix).")],
    run_b: Annotated[str, typer.Argument(help="Second run (id or unique prefix).")],
    width: Annotated[int, typer.Option(min=20, help="Characters of each turn shown.")] = 160,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    archive: ArchiveOpt = None,
) -> None:
    """Compare two runs: settings that differ, turn by turn, and their verdicts."""
    _, ma, ra = _load_run(archive, run_a)
    _, mb, rb = _load_run(archive, run_b)
    result = diff((ma, ra), (mb, rb))
    if as_json:
        print(json.dumps(result))
        return
    out.print(
        f"[bold]A[/bold] {safe(result['a'])}\n[bold]B[/bold] {safe(result['b'])}", soft_wrap=True
    )
    if result["settings"]:
        table = Table(title="settings that differ", box=None, title_justify="left")
        for column in ("setting", "A", "B"):
            table.add_column(column, overflow="fold")
        for row in result["settings"]:
            table.add_row(safe(row["setting"]), safe(row["a"]), safe(row["b"]))
        out.print(table)
    else:
        out.print("[dim]same settings[/dim]")

    def cell(side: dict | None) -> str:
        if side is None:
            return "[dim]—[/dim]"
        text = side["text"] if len(side["text"]) <= width else side["text"][: width - 1] + "…"
        return f"[bold]{safe(side['speaker'])}[/bold] [dim]{safe(side['kind'])}[/dim]\n{safe(text)}"

    table = Table(title="turns", box=None, title_justify="left", show_lines=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("A", ratio=1, overflow="fold")
    table.add_column("B", ratio=1, overflow="fold")
    for row in result["turns"]:
        mark = "" if not row["same"] else " [dim]=[/dim]"
        table.add_row(f"{row['index']}{mark}", cell(row["a"]), cell(row["b"]))
    out.print(table)
    for side, manifest in (("A", ma), ("B", mb)):
        lines = verdict_lines(manifest)
        out.print(f"[bold]verdict {side}[/bold]")
        out.print(inert("\n".join(lines[2:]).strip()) or "(none)", markup=False)


@transcripts_app.command("delete")
def transcripts_delete(
    run_id: Annotated[str, typer.Argument(help="Run id or unique prefix.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    archive: ArchiveOpt = None,
) -> None:
    """Delete one run (its folder, or its rows in a database) and its index entries."""
    with archive_store(archive) as store:
        name = store.find(run_id)
        folder = store.folder(name)
        if folder is not None and folder.is_symlink():
            raise InputError(
                f"{folder} is a symbolic link; delete does not follow links: remove the link itself"
            )
        if store.running(name):
            raise InputError(f"run {name} is running; stop it before deleting it")
        if not yes:
            if not sys.stdin.isatty():
                raise InputError(f"not deleting {name} without --yes (no terminal to ask)")
            where = folder if folder is not None else store.location
            if not typer.confirm(f"delete run {name} and everything in {where}?"):
                err.print("kept")
                raise typer.Exit(EXIT_ERROR)
        store.delete(name)
    out.print(f"deleted {name}")


@transcripts_app.command("reindex")
def transcripts_reindex(archive: ArchiveOpt = None) -> None:
    """Rebuild the archive's search index from the run folders alone."""
    store = open_store(archive)
    if not isinstance(store, FolderStore):
        store.close()
        out.print(f"{safe(store.location)} is a database: it indexes every record as it is written")
        return
    path = store.require().path
    with Index.open(path) as index:
        count, problems, rebuilt = index.rebuild()
    for name in rebuilt:
        err.print(
            f"rebuilt the missing manifest of {safe(name)} from its turns.jsonl", soft_wrap=True
        )
    for problem in problems:
        err.print(f"[yellow]warning:[/yellow] skipped {safe(problem)}", soft_wrap=True)
    out.print(f"indexed {count} run{'s' if count != 1 else ''} in {path}", soft_wrap=True)
    if problems:
        raise typer.Exit(EXIT_ERROR)
