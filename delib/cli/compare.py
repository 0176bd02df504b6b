"""``delib compare``: two runs, or two sweeps, side by side."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from delib.cli.common import ArchiveOpt, open_archive, out
from delib.errors import InputError
from delib.experiments import compare
from delib.experiments import report as reports
from delib.experiments.sweep import Sweep, find, names_a_file, sweep_names
from delib.text import inert, safe


class CompareFormat(StrEnum):
    text = "text"
    json = "json"
    html = "html"


def compare_cmd(
    first: Annotated[str, typer.Argument(help="A run id, or a sweep (file or name).")],
    second: Annotated[str, typer.Argument(help="A run id, or a sweep (file or name).")],
    archive: ArchiveOpt = None,
    fmt: Annotated[
        CompareFormat, typer.Option("--format", "-f", help="text (terminal), json or html.")
    ] = CompareFormat.text,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write json/html here (default stdout).")
    ] = None,
    only_different: Annotated[
        bool, typer.Option("--different", help="Sweeps: only cells whose outcome differs.")
    ] = False,
) -> None:
    """Compare two runs (stop reasons, metrics, stance paths, verdicts, settings, turns) or two
    sweeps cell by cell."""
    store = open_archive(archive)
    sweeps = [_as_sweep(store, ref) for ref in (first, second)]
    if (sweeps[0] is None) != (sweeps[1] is None):
        raise InputError("compare two runs or two sweeps, not one of each")
    if sweeps[0] is None or sweeps[1] is None:
        sides = [_load(store, ref) for ref in (first, second)]
        result = compare.runs(sides[0], sides[1])
        if fmt is CompareFormat.text:
            _print_runs(result)
            return
        text = json.dumps(result, default=str) if fmt is CompareFormat.json else (
            compare.runs_html(result))  # fmt: skip
        _write(text, output)
        return
    table = compare.sweeps(reports.rows(store, sweeps[0]), reports.rows(store, sweeps[1]))
    if only_different:
        table = [r for r in table if r["differs"]]
    if fmt is CompareFormat.json:
        _write(json.dumps(table, default=str), output)
        return
    if fmt is CompareFormat.html:
        _write(compare.sweeps_html(sweeps[0].name, sweeps[1].name, table), output)
        return
    grid = Table(title=f"{sweeps[0].name} (A) against {sweeps[1].name} (B)", box=None,
                 title_justify="left")  # fmt: skip
    for column in ("scenario", "model", "seed", "protocol", "stop A/B", "refusal A/B",
                   "stance moved A/B", "tokens A/B", ""):  # fmt: skip
        grid.add_column(column, overflow="fold")

    def pair(row: dict, measure: str) -> str:
        return f"{_short(row[f'{measure}_a'])} / {_short(row[f'{measure}_b'])}"

    for row in table:
        mark = f"only in {row['only_in'].upper()}" if row["only_in"] else (
            "[yellow]differs[/yellow]" if row["differs"] else "")  # fmt: skip
        grid.add_row(
            safe(row["scenario"]), safe(row["model"]), str(row["seed"]),
            safe(row["protocol"] or "(scenario's)"), safe(pair(row, "stop_reason")),
            pair(row, "refusal_rate"), pair(row, "stance_movement"), pair(row, "tokens"), mark,
        )  # fmt: skip
    out.print(grid)
    differing = sum(r["differs"] for r in table)
    out.print(f"{differing} of {len(table)} cells differ")


def _load(archive: Any, ref: str) -> tuple[dict, list[dict]]:
    run_id = archive.find(ref)
    return archive.manifest(run_id), archive.records(run_id)


def _write(text: str, output: Path | None) -> None:
    if output is None or str(output) == "-":
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return
    output.write_text(text, encoding="utf-8")
    out.print(f"wrote {safe(str(output))}")


def _print_runs(result: dict) -> None:
    out.print(f"[bold]A[/bold] {safe(result['a'])}\n[bold]B[/bold] {safe(result['b'])}")
    table = Table(title="metrics", box=None, title_justify="left")
    for column in ("metric", "A", "B"):
        table.add_column(column, overflow="fold")
    for m in result["metrics"]:
        style = "" if m["same"] else "[yellow]"
        end = "" if m["same"] else "[/yellow]"
        table.add_row(f"{style}{safe(m['metric'])}{end}", safe(_short(m["a"])),
                      safe(_short(m["b"])))  # fmt: skip
    out.print(table)
    if result["stance"]:
        stance = Table(title="stance by round (1-7)", box=None, title_justify="left")
        for column in ("participant", "A", "B"):
            stance.add_column(column)
        for pid, paths in result["stance"].items():
            stance.add_row(safe(pid), compare.path(paths["a"]), compare.path(paths["b"]))
        out.print(stance)
    changed = len(result["settings"])
    same = sum(t["same"] for t in result["turns"])
    out.print(
        f"{changed} settings differ · {same} of {len(result['turns'])} turns the same · "
        "'delib transcripts diff A B' shows them turn by turn"
    )
    for side in ("a", "b"):
        verdict = result["verdicts"][side] or {}
        summary = verdict.get("summary") or verdict.get("text") or "(no verdict)"
        out.print(f"[bold]verdict {side.upper()}[/bold] ", end="")
        out.print(inert(str(summary)), markup=False)


def _short(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _as_sweep(archive: Any, ref: str) -> Sweep | None:
    """The sweep ``ref`` names (a file, or a sweep run in this archive), else None (a run)."""
    if names_a_file(ref) or ref in sweep_names(archive):
        return find(archive, ref)
    return None
