"""The pages of ``delib view``: the runs (newest first, with search), a run's transcript (the
HTML export, with live updates while the run is going on), a sweep's report.

Every page is whole in itself: its style and script inline, nothing fetched from elsewhere
(a Content-Security-Policy says so to the browser: only this server may be asked, and only for
the live updates), every link relative. Text from the archive is escaped on the server; the
live updates put text into the page with ``textContent`` only.
"""

from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import quote

from delib.archive.export import speaker_colours, to_html
from delib.archive.index import HIT_END, HIT_START
from delib.archive.markdown import event_detail

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'self'"
)
META = f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'

LIST_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 72rem; margin: 2rem auto;
       padding: 0 1rem; color: #1f2328; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
td, th { border-bottom: 1px solid #d0d7de; padding: .3rem .5rem; text-align: left; }
.running { color: #1a7f37; font-weight: 600; }
mark { background: #fff8c5; }
.hit { margin: .5rem 0; }
nav { margin-bottom: 1rem; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _page(title: str, body: str, css: str = LIST_CSS) -> str:
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">{META}'
        f"<title>{_e(title)}</title><style>{css}</style></head><body>{body}</body></html>\n"
    )


def run_link(run_id: str, prefix: str = "") -> str:
    return f"{prefix}runs/{quote(run_id, safe='')}"


def runs_page(rows: list[dict], running: set[str], sweeps: list[str], problems: list[str],
              query: str = "", hits: list[Any] | None = None) -> str:  # fmt: skip
    """The archive's front page: a search box, hits if searched, the runs, the sweeps."""
    out = [
        "<h1>delib archive</h1>",
        '<form method="get" action=""><input type="search" name="q" id="q" '
        f'value="{_e(query)}" placeholder="search every turn"> <button>search</button></form>',
    ]
    if hits is not None:
        out.append(f'<h2>{len(hits)} turn{"s" if len(hits) != 1 else ""} matching '
                   f"“{_e(query)}”</h2>")  # fmt: skip
        for hit in hits:
            snippet = _e(hit.snippet).replace(HIT_START, "<mark>").replace(HIT_END, "</mark>")
            out.append(
                f'<div class="hit"><a href="{run_link(hit.run_id)}#turn-{hit.index}">'
                f"{_e(hit.run_id)} · turn {hit.index}</a> · {_e(hit.name)}: {snippet}</div>"
            )
    for problem in problems:
        out.append(f'<p class="problem">{_e(problem)}</p>')
    out.append(f"<h2>Runs ({len(rows)})</h2><table id=\"runs\"><thead><tr><th>run</th>"
               "<th>scenario</th><th>started</th><th>stop reason</th><th>turns</th>"
               "<th>models</th></tr></thead><tbody>")  # fmt: skip
    for row in rows:
        rid = row["run_id"]
        live = rid in running
        reason = "running" if live else (row.get("stop_reason") or "killed or unfinished")
        out.append(
            f'<tr data-run="{_e(rid)}"><td><a href="{run_link(rid)}">{_e(rid)}</a></td>'
            f"<td>{_e(row.get('title') or row.get('scenario'))}</td>"
            f"<td>{_e(row.get('started_at'))}</td>"
            f'<td class="{"running" if live else ""}">{_e(reason)}</td>'
            f"<td>{_e(row.get('turns'))}</td><td>{_e(', '.join(row.get('models') or []))}</td>"
            "</tr>"
        )
    out.append("</tbody></table>")
    if sweeps:
        out.append("<h2>Sweeps</h2><ul>")
        out += [f'<li><a href="sweeps/{quote(n, safe="")}">{_e(n)}</a></li>' for n in sweeps]
        out.append("</ul>")
    return _page("delib archive", "\n".join(out))


# The live part of a running debate's page: new records come as server-sent events and are
# added with textContent (never as HTML); when the run ends the page reloads for its verdict.
LIVE_SCRIPT = """
(function () {
  const box = document.getElementById("live"), state = document.getElementById("state");
  const colours = %(colours)s;
  const source = new EventSource(%(events)s);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  source.addEventListener("record", function (message) {
    const r = JSON.parse(message.data);
    if (r.type === "event") {
      const div = el("div", "event event-" + r.event);
      div.dataset.event = r.event;
      div.append(el("b", "", "⚑ " + r.event), " " + (r.detail || ""));
      box.append(div);
      return;
    }
    const div = el("div", "turn " + r.role + " kind-" + r.kind);
    div.id = "turn-" + r.index;
    div.dataset.index = r.index;
    div.dataset.speaker = r.speaker;
    div.style.setProperty("--c", colours[r.speaker] || "#57606a");
    div.append(el("span", "who", r.name), " ",
               el("span", "meta", "· " + r.kind + " · turn " + r.index + " · " + r.model));
    div.append(el("p", "text", r.text || "(empty reply)"));
    box.append(div);
  });
  source.addEventListener("end", function (message) {
    source.close();
    state.textContent = "finished: " + message.data;
    location.reload();
  });
  source.onerror = function () { state.textContent = "connection lost; reload to retry"; };
})();
"""


def run_page(run_id: str, manifest: dict, records: list[dict], live: bool) -> str:
    """A run's transcript; while it runs, it grows as turns are finished."""
    top = '<nav><a href="../">← all runs</a></nav>'
    bottom = ""
    if live:
        events = json.dumps(f"{quote(run_id, safe='')}/events?after={len(records)}")
        script = LIVE_SCRIPT % {"colours": json.dumps(speaker_colours(manifest)), "events": events}
        bottom = (
            '<div id="live"></div><p class="meta" id="state">running: new turns appear as '
            f"they are finished</p><script>{script}</script>"
        )
    return to_html(manifest, records, top=top, bottom=bottom)


def live_record(record: dict) -> dict:
    """What the live script needs of a record (the text goes as data, never as markup)."""
    if record["type"] == "event":
        return {"type": "event", "event": record["event"], "detail": event_detail(record)}
    keys = ("index", "round", "speaker", "name", "role", "kind", "text", "model")
    return {"type": "turn", **{k: record.get(k) for k in keys}}


def not_found(what: str) -> str:
    return _page("not found", f"<h1>not found</h1><p>{_e(what)}</p>")
