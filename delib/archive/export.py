"""A run as one file to share (Markdown, JSON or self-contained HTML), and two runs compared."""

from __future__ import annotations

import html
import json
from itertools import zip_longest
from typing import Any

from delib.archive.markdown import event_detail, markdown

FORMATS = ("md", "json", "html")
# Colours for participants in the HTML export, in order of first appearance.
PALETTE = ("#1f6feb", "#1a7f37", "#8250df", "#bf3989", "#9a6700", "#0a7ea4", "#cf222e")


def export(manifest: dict, records: list[dict], fmt: str) -> str:
    if fmt == "md":
        return markdown(manifest, records)
    if fmt == "json":
        return json.dumps({"manifest": manifest, "records": records}, indent=2, ensure_ascii=False)
    if fmt == "html":
        return to_html(manifest, records)
    raise ValueError(f"unknown format {fmt}")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


CSS = """
body { font: 16px/1.5 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto;
       padding: 0 1rem; color: #1f2328; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
.question { font-style: italic; border-left: 4px solid #d0d7de; padding-left: 1rem; }
table { border-collapse: collapse; margin: .5rem 0 1.5rem; font-size: .9rem; }
td, th { border: 1px solid #d0d7de; padding: .25rem .6rem; text-align: left;
         vertical-align: top; }
.turn { border-left: 6px solid var(--c); padding: .4rem 1rem; margin: 1rem 0;
        background: #f6f8fa; }
.turn.moderator { background: #fff8c5; }
.who { font-weight: 600; color: var(--c); }
.meta { color: #57606a; font-size: .85rem; }
.text { white-space: pre-wrap; margin: .3rem 0 0; }
.event { margin: .6rem 0; padding: .3rem .8rem; border: 1px dashed #bf8700;
         color: #7d4e00; font-size: .9rem; }
.event.event-deadlock { border-color: #cf222e; color: #a40e26; }
.event.event-intervention { border-style: solid; }
.round { margin-top: 2rem; }
.verdict-box { border: 2px solid #1f2328; padding: .5rem 1rem; margin-top: 2rem; }
"""


def speaker_colours(manifest: dict) -> dict[str, str]:
    """Each persona's colour: grey for the moderator, the palette in order for the rest."""
    colours = {}
    for persona in manifest.get("personas", []):
        if persona.get("part") == "moderator":
            colours[persona["id"]] = "#57606a"
        else:
            colours[persona["id"]] = PALETTE[len(colours) % len(PALETTE)]
    return colours


def _settings_rows(manifest: dict) -> list[tuple[str, str]]:
    rows = [
        ("run", manifest.get("run_id")),
        ("scenario", manifest["scenario"]["id"]),
        ("protocol", manifest.get("protocol")),
        ("rounds", manifest.get("rounds")),
        ("token budget", manifest.get("token_budget")),
        ("seed", (manifest.get("generation") or {}).get("seed")),
        ("started", manifest.get("started_at")),
        ("ended", manifest.get("ended_at") or "—"),
        ("stop reason", manifest.get("stop_reason") or "running"),
    ]
    if manifest.get("error"):
        rows.append(("error", manifest["error"]))
    for entry in manifest.get("resumed") or []:
        rows.append(("resumed", f"{entry['at']} after turn {entry['after_turn']}"))
    loops = manifest.get("loops") or {}
    if loops:
        rows.append(("loop handling", loops.get("mode")))
    return [(k, "" if v is None else str(v)) for k, v in rows]


def to_html(manifest: dict, records: list[dict], top: str = "", bottom: str = "") -> str:
    """One self-contained page: no scripts, no fonts, no images, nothing fetched. ``top`` and
    ``bottom`` are HTML put at the start and the end of the body (``delib view`` adds its
    navigation and live updates there)."""
    scenario = manifest["scenario"]
    colours = speaker_colours(manifest)
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(scenario['title'])} · {_e(manifest.get('run_id'))}</title>",
        f"<style>{CSS}</style></head><body>",
        top,
        f"<h1>{_e(scenario['title'])}</h1>",
        f'<p class="question">{_e(scenario["question"].strip())}</p>',
        "<h2>Settings</h2><table>",
    ]
    out += [f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in _settings_rows(manifest)]
    out.append("</table><h2>Speakers</h2><table>")
    out.append("<tr><th>speaker</th><th>part</th><th>model</th><th>tokens</th></tr>")
    by_speaker = (manifest.get("tokens") or {}).get("by_speaker", {})
    for p in manifest.get("personas", []):
        out.append(
            f'<tr><td><span class="who" style="--c:{colours[p["id"]]}">{_e(p["name"])}</span>'
            f"</td><td>{_e(p['part'])}</td><td>{_e(p['model'])} @ {_e(p['endpoint'])}</td>"
            f"<td>{_e(by_speaker.get(p['id'], 0))}</td></tr>"
        )
    out.append("</table><h2>Debate</h2>")
    current_round = None
    for record in records:
        if record["type"] == "event":
            name = record["event"]
            out.append(
                f'<div class="event event-{_e(name)}" data-event="{_e(name)}">⚑ <b>{_e(name)}</b> '
                f"{_e(event_detail(record))}</div>"
            )
            continue
        if record["kind"] == "statement" and record["round"] != current_round:
            current_round = record["round"]
            out.append(f'<h3 class="round">Round {_e(current_round)}</h3>')
        label = {
            "opening": "opens",
            "interjection": "interjects",
            "intervention": "moderator steps in",
            "verdict": "verdict",
        }.get(record["kind"], f"round {record['round']}")
        tokens = record.get("tokens") or {}
        spent = tokens.get("prompt", 0) + tokens.get("completion", 0)
        out.append(
            f'<div class="turn {_e(record["role"])} kind-{_e(record["kind"])}" '
            f'id="turn-{_e(record["index"])}" '
            f'data-index="{_e(record["index"])}" data-speaker="{_e(record["speaker"])}" '
            f'style="--c:{colours.get(record["speaker"], "#57606a")}">'
            f'<span class="who">{_e(record["name"])}</span> '
            f'<span class="meta">· {_e(label)} · turn {_e(record["index"])} · '
            f"{_e(record.get('model', ''))} · {spent} tokens</span>"
            + (
                f'<details class="reasoning"><summary>reasoning</summary>'
                f'<p class="text">{_e(record["reasoning"])}</p></details>'
                if record.get("reasoning")
                else ""
            )
            + f'<p class="text">{_e(record["text"]) or "<i>(empty reply)</i>"}</p>'
            + (
                '<p class="meta">(cut at max tokens)</p>'
                if record.get("finish_reason") == "length"
                else ""
            )
            + "</div>"
        )
    verdict = manifest.get("verdict")
    if verdict:
        out.append('<div class="verdict-box"><h2>Verdict</h2>')
        if verdict.get("valid"):
            out.append(f"<p>{_e(verdict['summary'])}</p>")
            for title, key in (
                ("Agreements", "agreements"),
                ("Disagreements", "disagreements"),
                ("Open questions", "open_questions"),
            ):
                if verdict.get(key):
                    items = "".join(f"<li>{_e(i)}</li>" for i in verdict[key])
                    out.append(f"<h4>{title}</h4><ul>{items}</ul>")
            names = {p["id"]: p["name"] for p in manifest.get("personas", [])}
            items = "".join(
                f"<li><b>{_e(names.get(pid, pid))}</b>: {_e(pos)}</li>"
                for pid, pos in verdict.get("positions", {}).items()
            )
            out.append(f"<h4>Final positions</h4><ul>{items}</ul>")
        else:
            out.append(
                f"<p><i>Not a valid structured verdict ({_e(verdict.get('error'))}); "
                "kept as plain text:</i></p>"
                f'<p class="text">{_e(verdict.get("text", ""))}</p>'
            )
        out.append("</div>")
    tokens = manifest.get("tokens")
    if tokens:
        mark = " (estimated)" if tokens.get("estimated") else ""
        out.append(
            f'<p class="meta">Tokens: {tokens["prompt"]} prompt + {tokens["completion"]} '
            f"completion{mark}.</p>"
        )
    out.append(bottom)
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# --- comparing two runs ----------------------------------------------------------------------
def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, inner in value.items():
            flat.update(_flat(inner, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def settings(manifest: dict) -> dict[str, Any]:
    """The settings of a run that can differ between comparable runs, flattened."""
    chosen: dict[str, Any] = {
        "scenario": manifest["scenario"]["id"],
        "scenario sha256": manifest["scenario"].get("sha256"),
        "protocol": manifest.get("protocol"),
        "rounds": manifest.get("rounds"),
        "token_budget": manifest.get("token_budget"),
        "generation": manifest.get("generation"),
        "loops": manifest.get("loops"),
        "stop_reason": manifest.get("stop_reason"),
    }
    for p in manifest.get("personas", []):
        for key in ("model", "endpoint", "temperature", "max_tokens", "sha256"):
            chosen[f"{p['id']}.{key}"] = p.get(key)
    return _flat(chosen)


def diff(a: tuple[dict, list[dict]], b: tuple[dict, list[dict]]) -> dict[str, Any]:
    """Settings that differ, the turns side by side, and both verdicts."""
    (ma, ra), (mb, rb) = a, b
    sa, sb = settings(ma), settings(mb)
    changed = [
        {"setting": k, "a": sa.get(k), "b": sb.get(k)}
        for k in sorted(set(sa) | set(sb))
        if sa.get(k) != sb.get(k)
    ]
    ta = [r for r in ra if r["type"] == "turn"]
    tb = [r for r in rb if r["type"] == "turn"]
    turns = []
    for x, y in zip_longest(ta, tb):
        turns.append(
            {
                "index": (x or y)["index"],
                "a": {k: x[k] for k in ("speaker", "kind", "text")} if x else None,
                "b": {k: y[k] for k in ("speaker", "kind", "text")} if y else None,
                "same": bool(x and y and x["text"] == y["text"]),
            }
        )
    return {
        "a": ma.get("run_id"),
        "b": mb.get("run_id"),
        "settings": changed,
        "turns": turns,
        "verdicts": {"a": ma.get("verdict"), "b": mb.get("verdict")},
    }
