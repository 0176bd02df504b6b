"""A sweep's report: one row per cell (its latest run's metrics), as CSV, JSON or one offline
HTML page with charts rendered to inline SVG by matplotlib and every run's transcript exported
beside it.
"""

from __future__ import annotations

import csv
import html
import io
import json
import statistics
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

from delib.archive.export import export
from delib.archive.store import open_store
from delib.detect.metrics import run_metrics, turn_rows
from delib.errors import DelibError, InputError
from delib.experiments.sweep import CellStatus, Sweep, status
from delib.records import now


class Format(StrEnum):
    html = "html"
    csv = "csv"
    json = "json"


COLUMNS = (
    "cell", "scenario", "model", "seed", "protocol", "state", "attempts", "run_id",
    "stop_reason", "turns", "refusal_rate", "loop_events", "interventions", "deadlock",
    "novelty", "agreement_chain", "words", "latency_s", "latency_p95_s", "tokens", "cost_usd",
    "verdict_valid", "stance_known_share", "stance_movement", "stance_converged", "moved",
)  # fmt: skip


def _latest_runs(archive: Any, sweep: Sweep) -> Iterator[tuple[CellStatus, list[dict]]]:
    """Each cell's status with its latest run's records (none for a cell with no run)."""
    store = open_store(archive)
    for st in status(store, sweep):
        records: list[dict] = []
        if st.latest_run is not None:
            try:
                records = store.records(st.latest_run)
            except DelibError:
                pass
        yield st, records


def _labels(st: CellStatus) -> dict[str, Any]:
    return {"cell": st.cell_key, **st.labels}


def rows(archive: Any, sweep: Sweep) -> list[dict[str, Any]]:
    """Each cell with its latest run's metrics (empty metrics for a cell with no run)."""
    out = []
    for st, records in _latest_runs(archive, sweep):
        row: dict[str, Any] = {**_labels(st), "state": st.state, "attempts": st.attempts,
                               "error": st.error}  # fmt: skip
        if st.latest is not None:
            m = run_metrics(st.latest, records, sweep.spec.prices)
            stance = m.pop("stance")
            row.update(m)
            row.update(
                stance_known_share=stance["known_share"],
                stance_movement=stance["movement"],
                stance_converged=stance["converged"],
                moved=" ".join(stance["moved"]),
                stance_by_round=stance["by_round"],
                run=st.latest_run,
            )
        out.append(row)
    _mark_differences(out)
    return out


def turn_table(archive: Any, sweep: Sweep) -> list[dict[str, Any]]:
    """One row per participant statement of each cell's latest run, with the cell's labels."""
    out = []
    for st, records in _latest_runs(archive, sweep):
        if st.latest is None:
            continue
        labels = {**_labels(st), "run_id": st.latest.get("run_id")}
        out += [{**labels, **turn} for turn in turn_rows(records)]
    return out


def outcome(row: dict) -> tuple:
    """What 'ended differently' compares: stop reason, any refusal, final mean stance."""
    rate = row.get("refusal_rate")
    last = row.get("stance_by_round") or {}
    finals = [max(r.items())[1] for r in last.values() if r]
    return (
        row.get("stop_reason"),
        None if rate is None else rate > 0,
        round(statistics.mean(finals)) if finals else None,
    )


def _mark_differences(table: list[dict]) -> None:
    """``differs``: the same scenario, seed and protocol ended differently on another model
    (stop reason, any refusal, or the panel's final mean stance, rounded)."""
    groups: dict[tuple, set] = {}
    for row in table:
        key = (row["scenario"], row["seed"], row["protocol"])
        groups.setdefault(key, set()).add(outcome(row))
    for row in table:
        row["differs"] = len(groups[(row["scenario"], row["seed"], row["protocol"])]) > 1


def as_csv(table: list[dict], columns: list[str] | None = None) -> str:
    buffer = io.StringIO()
    fields = columns or [*COLUMNS, "differs", "error"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def as_json(table: list[dict]) -> str:
    return json.dumps(table, indent=2, default=str) + "\n"


# --- charts -----------------------------------------------------------------------------------
def _svg(fig: Any) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


def _figure(width: float = 6.4, height: float = 3.2) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError(
            "the HTML report draws its charts with matplotlib: pip install 'delib[report]' "
            "(or use --format csv|json)"
        ) from None
    import matplotlib

    matplotlib.rcParams["svg.fonttype"] = "path"  # text as shapes: no font needed offline
    matplotlib.rcParams["svg.hashsalt"] = "delib"  # the same report for the same data
    return Figure(figsize=(width, height))


def _by_model(table: list[dict], key: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for row in table:
        value = row.get(key)
        if value is not None:
            out.setdefault(row["model"], []).append(float(value))
    return out


def _bars(series: dict[str, dict[str, float]], ylabel: str, share: bool = False) -> tuple[str, int]:
    """Grouped bars: series name -> model -> value. (svg, number of bars)"""
    models = sorted({m for values in series.values() for m in values})
    fig = _figure()
    ax = fig.subplots()
    width = 0.8 / max(len(series), 1)
    count = 0
    for i, (name, values) in enumerate(series.items()):
        xs = [j + i * width for j, m in enumerate(models) if m in values]
        ys = [values[m] for m in models if m in values]
        ax.bar(xs, ys, width=width, label=name)
        count += len(ys)
    ax.set_xticks([j + width * (len(series) - 1) / 2 for j in range(len(models))], models)
    ax.set_ylabel(ylabel)
    if share:
        ax.set_ylim(0, 1)
    if len(series) > 1:
        ax.legend()
    return _svg(fig), count


def _mean(values: list[float]) -> float:
    return round(statistics.mean(values), 4)


def charts(table: list[dict]) -> list[tuple[str, str, int]]:
    """(title, svg or an explanation, data points) for each chart; stance over rounds for each
    scenario that states a motion."""
    out = []
    for scenario in sorted({r["scenario"] for r in table}):
        lines: dict[str, dict[int, list[int]]] = {}
        for row in table:
            if row["scenario"] != scenario:
                continue
            for persona, by_round in (row.get("stance_by_round") or {}).items():
                for rnd, value in by_round.items():
                    lines.setdefault(persona, {}).setdefault(int(rnd), []).append(value)
        title = f"Stance over rounds: {scenario}"
        if not lines:
            asked = any(r.get("stance_known_share") is not None for r in table
                        if r["scenario"] == scenario)  # fmt: skip
            if asked:  # a scenario without a motion has no stances to chart, and no chart
                out.append((title, "no stance was readable", 0))
            continue
        fig = _figure()
        ax = fig.subplots()
        points = 0
        for persona, by_round in sorted(lines.items()):
            xs = sorted(by_round)
            ax.plot(xs, [_mean(by_round[x]) for x in xs], marker="o", label=persona)
            points += len(xs)
        ax.set_ylim(0.5, 7.5)
        ax.set_xlabel("round")
        ax.set_ylabel("agreement (1-7), mean over cells")
        ax.set_xticks(sorted({x for b in lines.values() for x in b}))
        ax.legend(fontsize="small")
        out.append((title, _svg(fig), points))
    refusal = {m: _mean(v) for m, v in _by_model(table, "refusal_rate").items()}
    deadlock = {
        m: _mean([1.0 if r.get("deadlock") else 0.0 for r in table if r["model"] == m])
        for m in {r["model"] for r in table if r.get("run_id")}
    }
    svg, n = _bars({"refusal rate": refusal, "deadlock rate": deadlock}, "share", share=True)
    out.append(("Refusal and deadlock rate by model", svg if n else "no finished run yet", n))
    tokens = {m: _mean(v) for m, v in _by_model(table, "tokens").items()}
    svg, n = _bars({"tokens": tokens}, "tokens")
    out.append(("Tokens per run by model", svg if n else "no finished run yet", n))
    latency = {m: _mean(v) for m, v in _by_model(table, "latency_s").items()}
    svg, n = _bars({"latency": latency}, "seconds")
    out.append(("Latency per call by model", svg if n else "no finished run yet", n))
    return out


# --- the page ---------------------------------------------------------------------------------
SHOWN = (
    ("scenario", "scenario"), ("model", "model"), ("seed", "seed"), ("protocol", "protocol"),
    ("state", "state"), ("stop_reason", "stop"), ("turns", "turns"),
    ("refusal_rate", "refusal rate"), ("loop_events", "loops"),
    ("interventions", "interventions"), ("novelty", "novelty"),
    ("agreement_chain", "agree chain"), ("stance_movement", "stance moved"),
    ("stance_converged", "converged"), ("tokens", "tokens"), ("latency_s", "latency s"),
    ("cost_usd", "cost $"),
)  # fmt: skip

# Nothing is fetched: the page works offline and cannot phone home.
CSP = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:"
STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: .2em; } .meta { color: #666; margin-bottom: 1.5em; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { padding: .3em .5em; border-bottom: 1px solid #eee; text-align: left; }
th { cursor: pointer; background: #f6f6f8; position: sticky; top: 0; user-select: none; }
th[aria-sort=ascending]::after { content: " ▲"; } th[aria-sort=descending]::after { content: " ▼"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.differs td:first-child { border-left: 3px solid #d9822b; }
.state-done { color: #1a7f37; } .state-failed { color: #c62828; } .state-missing { color: #888; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(28em, 1fr)); gap: 1em; }
figure { margin: 0; padding: .5em; border: 1px solid #eee; border-radius: 6px; }
figure svg { width: 100%; height: auto; } figcaption { font-weight: 600; margin-bottom: .3em; }
.nodata { color: #888; font-style: italic; }
"""

SCRIPT = """
(function () {
  const table = document.getElementById('matrix');
  const body = table.tBodies[0];
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      const asc = th.getAttribute('aria-sort') !== 'ascending';
      table.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      const rows = Array.from(body.rows);
      rows.sort(function (a, b) {
        const x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        const nx = parseFloat(x), ny = parseFloat(y);
        const c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return asc ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
  const only = document.getElementById('differs');
  only.addEventListener('change', function () {
    Array.from(body.rows).forEach(function (r) {
      r.hidden = only.checked && !r.classList.contains('differs');
    });
    document.getElementById('shown').textContent =
      Array.from(body.rows).filter(function (r) { return !r.hidden; }).length;
  });
})();
"""


def _cell(key: str, row: dict, link: str | None) -> str:
    value = row.get(key)
    if key == "state":
        return f'<td data-v="{value}" class="state-{value}">{html.escape(str(value))}</td>'
    if key == "stop_reason" and link:
        return f'<td data-v="{html.escape(str(value))}"><a href="{html.escape(link)}">' \
               f"{html.escape(str(value))}</a></td>"  # fmt: skip
    if value is None or value == "":
        return '<td data-v="">—</td>'
    if isinstance(value, bool):
        return f'<td data-v="{int(value)}">{"yes" if value else "no"}</td>'
    if isinstance(value, int | float):
        return f'<td class="num" data-v="{value}">{value:,}</td>' if isinstance(value, int) \
            else f'<td class="num" data-v="{value}">{value:.3g}</td>'  # fmt: skip
    return f'<td data-v="{html.escape(str(value))}">{html.escape(str(value))}</td>'


def write_html(archive: Any, sweep: Sweep, table: list[dict], target: Path) -> int:
    """The report page, and each run's transcript in ``<target stem>-runs/``; how many
    transcripts were written."""
    store = open_store(archive)
    runs_dir = target.with_name(f"{target.stem}-runs")
    written = 0
    links: dict[str, str] = {}
    for row in table:
        run_id = row.get("run")
        if not run_id:
            continue
        manifest, records = store.manifest(run_id), store.records(run_id)
        runs_dir.mkdir(parents=True, exist_ok=True)
        name = f"{row['run_id']}.html"
        (runs_dir / name).write_text(export(manifest, records, "html"), encoding="utf-8")
        links[row["cell"]] = f"{runs_dir.name}/{name}"
        written += 1
    target.write_text(report_page(sweep, table, links), encoding="utf-8")
    return written


def report_page(sweep: Sweep, table: list[dict], links: dict[str, str]) -> str:
    """The report as one offline page; ``links``: each cell's transcript, a relative URL."""
    figures = []
    for title, svg, points in charts(table):
        body = svg if points else f'<p class="nodata">no data: {html.escape(svg)}</p>'
        figures.append(
            f'<figure class="chart" data-points="{points}"><figcaption>{html.escape(title)}'
            f"</figcaption>{body}</figure>"
        )
    header = "".join(f"<th>{html.escape(label)}</th>" for _, label in SHOWN)
    body_rows = []
    for row in table:
        cls = ' class="differs"' if row.get("differs") else ""
        cells = "".join(_cell(key, row, links.get(row["cell"])) for key, _ in SHOWN)
        body_rows.append(f"<tr{cls}>{cells}</tr>")
    counts = {s: sum(r["state"] == s for r in table) for s in ("done", "failed", "missing")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<title>delib sweep {html.escape(sweep.name)}</title><style>{STYLE}</style></head>
<body>
<h1>Sweep {html.escape(sweep.name)}</h1>
<div class="meta">{len(table)} cells ({summary}) · {html.escape(sweep.source)} ·
report of {now()}</div>
<section class="charts">{"".join(figures)}</section>
<h2>Cells</h2>
<p><label><input type="checkbox" id="differs"> only cells that differ across models</label>
· showing <span id="shown">{len(table)}</span> · click a column to sort · the stop reason links
to the transcript</p>
<table id="matrix"><thead><tr>{header}</tr></thead><tbody>{"".join(body_rows)}</tbody></table>
<script>{SCRIPT}</script>
</body></html>
"""
    return page
