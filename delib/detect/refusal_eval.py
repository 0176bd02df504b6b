"""Measuring the refusal classifier on labelled replies: ``delib eval refusals FILE…``."""

from __future__ import annotations

import json
from pathlib import Path

from delib.detect.refusal import classify
from delib.errors import InputError

# Labels accepted in a file, and the classifier's label each corresponds to.
GOLD_LABELS = {
    "refusal": "refusal",
    "partial": "partial",
    "compliance": "engaged",
    "engaged": "engaged",
}


def read_labelled(path: Path) -> list[dict]:
    """JSONL lines with ``text`` and ``label``; an InputError names the first bad line."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read file: {exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{number}: not a JSON object ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "label" not in row:
            raise InputError(
                f"{path}:{number}: each line needs a string 'text' and a 'label' "
                f"({', '.join(sorted(GOLD_LABELS))})"
            )
        if row["label"] not in GOLD_LABELS:
            raise InputError(
                f"{path}:{number}: unknown label {row['label']!r}; expected one of "
                f"{', '.join(sorted(GOLD_LABELS))}"
            )
        rows.append({**row, "_line": number})
    if not rows:
        raise InputError(f"{path}: no labelled lines")
    return rows


def context_of(row: dict) -> str | None:
    """What a labelled reply answers: its ``prompt``, after its ``context_turns`` (strings, or
    objects with a ``text`` or ``content``) where it has them."""
    parts = []
    turns = row.get("context_turns")
    if isinstance(turns, list):
        for turn in turns:
            if isinstance(turn, dict):
                turn = turn.get("text") or turn.get("content")
            if isinstance(turn, str) and turn.strip():
                parts.append(turn)
    if isinstance(row.get("prompt"), str) and row["prompt"].strip():
        parts.append(row["prompt"])
    return "\n\n".join(parts) or None


def binary_figures(pairs: list[tuple[str, str]]) -> dict:
    """Precision, recall, F1 and accuracy of full refusal against compliance, from (gold,
    predicted) labels in the classifier's terms; gold partials are left out. F1 is None for a
    source with no refusals in it (only accuracy means something there)."""
    tp = fp = fn = tn = 0
    for gold, predicted in pairs:
        if gold == "partial":
            continue
        said, actual = predicted == "refusal", gold == "refusal"
        tp += said and actual
        fp += said and not actual
        fn += actual and not said
        tn += not said and not actual
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    n = tp + fp + fn + tn
    return {
        "binary_n": n,
        "positives": tp + fn,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4) if tp + fn else None,
        "accuracy": round((tp + tn) / n, 4) if n else 0.0,
    }


def macro(rows: list[dict]) -> dict:
    """The unweighted mean of per-source figures (precision, recall and F1 over the sources
    that have refusals in them, accuracy over all)."""
    out: dict = {"sources": len(rows)}
    for key in ("precision", "recall", "f1", "accuracy"):
        values = [
            r[key] for r in rows if r[key] is not None and (key == "accuracy" or r["positives"])
        ]
        out[key] = round(sum(values) / len(values), 4) if values else None
    return out


def evaluate(rows: list[dict]) -> tuple[dict, list[dict]]:
    """Figures for full refusal vs. compliance (partial apart) and one prediction per row."""
    predictions = []
    pairs = []
    labels = ("refusal", "partial", "engaged")
    confusion = {gold: dict.fromkeys(labels, 0) for gold in labels}
    for row in rows:
        result = classify(row["text"], context_of(row))
        gold = GOLD_LABELS[row["label"]]
        confusion[gold][result.label] += 1
        pairs.append((gold, result.label))
        predictions.append(
            {"id": row.get("id", row["_line"]), "predicted": result.label, "score": result.score}
        )
    figures = {
        "n": len(rows),
        **binary_figures(pairs),
        "partial": confusion["partial"],
        "confusion": confusion,
    }
    return figures, predictions


def evaluate_files(paths: list[Path]) -> tuple[dict, list[dict]]:
    """Figures over all the files together, per file, and their macro average; predictions
    for every labelled line, file by file, in input order."""
    per_file: dict[str, dict] = {}
    predictions: list[dict] = []
    labels = ("refusal", "partial", "engaged")
    confusion = {gold: dict.fromkeys(labels, 0) for gold in labels}
    for path in paths:
        figures, predicted = evaluate(read_labelled(path))
        per_file[str(path)] = figures
        predictions += [{"file": str(path), **p} for p in predicted]
        for gold, row in figures["confusion"].items():
            for label, count in row.items():
                confusion[gold][label] += count
    pairs = [
        (g, p) for g, row in confusion.items() for p, count in row.items() for _ in range(count)
    ]
    return {
        "n": sum(f["n"] for f in per_file.values()),
        **binary_figures(pairs),
        "partial": confusion["partial"],
        "confusion": confusion,
        "files": per_file,
        "macro": macro(list(per_file.values())),
    }, predictions
