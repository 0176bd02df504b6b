"""Two runs, or two sweeps, side by side: stop reasons, metrics, stance paths and verdicts.

``runs`` builds on ``export.diff`` (settings that differ, turns side by side, verdicts) and adds
each run's metrics and every participant's stance path; ``sweeps`` matches two sweeps' cells by
scenario, model label, seed and protocol. ``to_html`` renders either as one offline page.
"""

from __future__ import annotations

import html
from typing import Any

from delib.archive.export import diff
from delib.detect.metrics import run_metrics
from delib.experiments.report import CSP, outcome

METRICS = (
    "stop_reason", "turns", "refusal_rate", "loop_events", "interventions", "novelty",
    "agreement_chain", "words", "latency_s", "tokens", "cost_usd", "verdict_valid",
)  # fmt: skip
SWEEP_MEASURES = ("stop_reason", "refusal_rate", "loop_events", "stance_movement", "tokens")


def runs(a: tuple[dict, list[dict]], b: tuple[dict, list[dict]]) -> dict[str, Any]:
    """``export.diff`` plus metrics side by side and each participant's stance path."""
    out = diff(a, b)
    ma, mb = run_metrics(a[0], a[1]), run_metrics(b[0], b[1])
    out["metrics"] = [
        {"metric": k, "a": ma.get(k), "b": mb.get(k), "same": ma.get(k) == mb.get(k)}
        for k in METRICS
    ]
    people = sorted(set(ma["stance"]["by_round"]) | set(mb["stance"]["by_round"]))
    out["stance"] = {
        pid: {
            "a": ma["stance"]["by_round"].get(pid, {}),
            "b": mb["stance"]["by_round"].get(pid, {}),
        }
        for pid in people
    }
    return out


def sweeps(a: list[dict], b: list[dict]) -> list[dict]:
    """Two sweeps' report rows matched by scenario, model, seed and protocol: each measure on
    both sides and whether the outcome differs."""

    def key(row: dict) -> tuple:
        return (row["scenario"], row["model"], row["seed"], row["protocol"])

    left = {key(r): r for r in a}
    right = {key(r): r for r in b}
    out = []
    for k in [*left, *(k for k in right if k not in left)]:
        ra, rb = left.get(k), right.get(k)
        row: dict[str, Any] = dict(zip(("scenario", "model", "seed", "protocol"), k, strict=True))
        for measure in SWEEP_MEASURES:
            row[f"{measure}_a"] = ra.get(measure) if ra else None
            row[f"{measure}_b"] = rb.get(measure) if rb else None
        row["only_in"] = None if ra and rb else ("a" if ra else "b")
        row["differs"] = bool(ra and rb and outcome(ra) != outcome(rb)) or bool(row["only_in"])
        out.append(row)
    return out


def path(by_round: dict) -> str:
    """A stance path in words: ``4 → 5 → 5`` (rounds in order), or a dash."""
    return " → ".join(str(by_round[r]) for r in sorted(by_round, key=int)) or "—"


def _e(value: Any) -> str:
    return "—" if value is None else html.escape(str(value))


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>{html.escape(title)}</title><style>"
        "body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:72em;color:#222}"
        "table{border-collapse:collapse;width:100%;margin-bottom:1.5em}"
        "th,td{padding:.3em .5em;border-bottom:1px solid #eee;text-align:left;"
        "vertical-align:top}th{background:#f6f6f8}tr.differs td{background:#fff4e5}"
        f"</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )


def _table(head: list[str], rows: list[tuple[list[str], bool]]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join(
        f"<tr{' class=differs' if differs else ''}>"
        + "".join(f"<td>{c}</td>" for c in row)
        + "</tr>"
        for row, differs in rows
    )
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def runs_html(result: dict) -> str:
    metrics = _table(["metric", "A", "B"], [
        ([_e(m["metric"]), _e(m["a"]), _e(m["b"])], not m["same"]) for m in result["metrics"]
    ])  # fmt: skip
    stance = _table(["participant", "stance A", "stance B"], [
        ([_e(pid), _e(path(p["a"])), _e(path(p["b"]))], path(p["a"]) != path(p["b"]))
        for pid, p in result["stance"].items()
    ])  # fmt: skip
    verdicts = result["verdicts"]
    fields = ("summary", "agreements", "disagreements", "open_questions", "positions")
    verdict = _table(["verdict", "A", "B"], [
        ([_e(f), _e((verdicts["a"] or {}).get(f)), _e((verdicts["b"] or {}).get(f))],
         (verdicts["a"] or {}).get(f) != (verdicts["b"] or {}).get(f))
        for f in fields
    ])  # fmt: skip
    settings = _table(["setting", "A", "B"], [
        ([_e(s["setting"]), _e(s["a"]), _e(s["b"])], True) for s in result["settings"]
    ])  # fmt: skip
    turns = _table(["#", "A", "B"], [
        ([_e(t["index"]), _e(t["a"] and f"{t['a']['speaker']}: {t['a']['text']}"),
          _e(t["b"] and f"{t['b']['speaker']}: {t['b']['text']}")], not t["same"])
        for t in result["turns"]
    ])  # fmt: skip
    body = (
        f"<p>A: {_e(result['a'])}<br>B: {_e(result['b'])}</p><h2>Metrics</h2>{metrics}"
        f"<h2>Stance by round</h2>{stance}<h2>Verdicts</h2>{verdict}"
        f"<h2>Settings that differ</h2>{settings}<h2>Turns</h2>{turns}"
    )
    return _page(f"Compare {result['a']} and {result['b']}", body)


def sweeps_html(name_a: str, name_b: str, table: list[dict]) -> str:
    head = ["scenario", "model", "seed", "protocol"] + [
        f"{m} {side}" for m in SWEEP_MEASURES for side in ("A", "B")
    ]
    rows = [
        (
            [_e(r["scenario"]), _e(r["model"]), _e(r["seed"]), _e(r["protocol"])]
            + [_e(r[f"{m}_{side}"]) for m in SWEEP_MEASURES for side in ("a", "b")],
            r["differs"],
        )
        for r in table
    ]
    differing = sum(r["differs"] for r in table)
    body = f"<p>{differing} of {len(table)} cells differ (highlighted).</p>{_table(head, rows)}"
    return _page(f"Compare sweeps {name_a} (A) and {name_b} (B)", body)
