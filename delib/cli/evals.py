"""``delib eval …``: delib's detectors measured on labelled data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from delib.cli.common import (
    out,
)
from delib.detect.refusal_eval import evaluate_files
from delib.errors import InputError
from delib.text import safe

eval_app = typer.Typer(help="Measure delib's detectors on labelled data.", no_args_is_help=True)


@eval_app.command("refusals")
def eval_refusals(
    files: Annotated[
        list[Path], typer.Argument(help="JSONL files with 'text' and 'label' on every line.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    predictions: Annotated[
        Path | None,
        typer.Option(
            "--predictions", help="Write one prediction per labelled line here (JSONL, in order)."
        ),
    ] = None,
) -> None:
    """Precision, recall, F1 and accuracy of the refusal classifier: full refusal vs.
    compliance, with partial refusals reported apart; per file and, for several files, their
    macro average (each file counts once)."""
    figures, predicted = evaluate_files(files)
    if predictions:
        try:
            predictions.write_text("".join(json.dumps(p) + "\n" for p in predicted))
        except OSError as exc:
            raise InputError(f"cannot write {predictions}: {exc.strerror}") from None
    if as_json:
        print(json.dumps(figures))
        return

    def number(value: float | None) -> str:
        return "—" if value is None else f"{value:.3f}"

    table = Table(box=None, title="full refusal vs. compliance (partial apart)")
    for column in ("file", "n", "precision", "recall", "F1", "accuracy"):
        if column == "file":
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, justify="right", no_wrap=True)
    rows = list(figures["files"].items())
    for name, f in rows:
        has = f["positives"] > 0  # precision and recall mean nothing without refusals
        table.add_row(safe(name), str(f["binary_n"]), number(f["precision"] if has else None),
                      number(f["recall"] if has else None), number(f["f1"]),
                      number(f["accuracy"]))  # fmt: skip
    if len(rows) > 1:
        m = figures["macro"]
        table.add_row("macro (each file once)", "", number(m["precision"]), number(m["recall"]),
                      number(m["f1"]), number(m["accuracy"]))  # fmt: skip
        table.add_row("all lines together", str(figures["binary_n"]), number(figures["precision"]),
                      number(figures["recall"]), number(figures["f1"]),
                      number(figures["accuracy"]))  # fmt: skip
    out.print(table)
    matrix = Table(title="gold (rows) × predicted (columns), all files", box=None)
    matrix.add_column("")
    for label in ("refusal", "partial", "engaged"):
        matrix.add_column(label, justify="right")
    for gold, row in figures["confusion"].items():
        matrix.add_row(gold, *(str(v) for v in row.values()))
    out.print(matrix)
