"""What people read of a run: the Markdown transcript (``markdown``), and the one-line
wordings of its events, stances and verdict that the terminal view uses too."""

from __future__ import annotations

from delib.text import inert, md_text

SPEAKER_STYLES = ("cyan", "green", "magenta", "yellow", "blue", "bright_red", "bright_cyan")
MODERATOR_STYLE = "bold white"


def event_detail(event: dict) -> str:
    """One line saying what an event was about."""
    name = event["event"]
    if name == "loop_detected":
        turns = ", ".join(str(i) for i in event["turns"])
        return (
            f"{event['detector']}: {event['detail']} · {', '.join(event['speakers'])} · "
            f"turns {turns} · score {event['score']}"
        )
    if name == "intervention":
        model = f" → {event['model']}" if event.get("model") else ""
        return f"{event['action']}: {', '.join(event['speakers'])}{model}"
    if name == "deadlock":
        return f"stopped: {event['diagnosis']}"
    if name == "loop_resolved":
        return f"the loop broke after: {event['after']}"
    if name == "turn_discarded":
        return (
            f"turn {event['turn']} ({event.get('speaker')}, {event.get('partial_chars', 0)} "
            f"characters streamed) was cut off when the run died; it is spoken again"
        )
    if name == "resumed":
        kept = event["after_turn"]
        parts = [f"the run goes on after turn {kept - 1}" if kept else "the run starts over"]
        if event.get("recovered_turns"):
            parts.append(f"turns {event['recovered_turns']} finished before the crash are kept")
        parts.append(f"endpoint {', '.join(event.get('endpoints') or [])}")
        return "; ".join(parts)
    if name == "empty_reply":
        why = f"finish reason {event.get('finish_reason')}"
        if event.get("reasoning_chars"):
            why += f", {event['reasoning_chars']} characters of reasoning only"
        if event.get("tool_calls"):
            why += f", {event['tool_calls']} tool call(s) only"
        return (
            f"turn {event['turn']} ({event.get('speaker')}) had no answer ({why}); {event['then']}"
        )
    if name == "closure":
        return f"the moderator closes: {event['detail']} ({', '.join(event['speakers'])})"
    if name == "empty_replies":
        return f"stopped: {event['hint']}"
    if name == "truncated_line_dropped":
        return f"a half-written last line ({event['bytes']} bytes) was cut from turns.jsonl"
    return str(event.get("reason") or event.get("what") or event.get("speaker") or "")


def stance_text(stance: dict) -> str:
    """A turn's stance on the motion, in words."""
    if stance.get("agreement") is None:
        return f"stance: unknown ({stance.get('status')})"
    confidence = stance.get("confidence")
    sure = f", confidence {confidence:.2f}" if confidence is not None else ""
    return f"stance: {stance['agreement']}/7{sure}"


def _tokens_line(tokens: dict) -> str:
    mark = " (estimated)" if tokens.get("estimated") else ""
    return f"{tokens['prompt']} prompt + {tokens['completion']} completion tokens{mark}"


def markdown(manifest: dict, records: list[dict], reasoning: bool = True) -> str:
    """The debate as a person would read it; a reasoning model's thinking folded, or (with
    ``reasoning`` false) only said to be there."""
    scenario = manifest["scenario"]
    lines = [
        f"# {scenario['title']}",
        "",
        f"> {scenario['question'].strip()}",
        "",
        f"- Run: `{manifest['run_id']}`",
        f"- Protocol: {manifest['protocol']}, rounds: {manifest['rounds']}",
        f"- Started: {manifest['started_at']}; ended: {manifest.get('ended_at') or '—'}",
        f"- Stop reason: **{manifest.get('stop_reason') or 'running'}**",
    ]
    if manifest.get("error"):
        lines.append(f"- Error: {manifest['error']}")
    models = sorted({f"{p['model']} @ {p['endpoint']}" for p in manifest["personas"]})
    lines += [f"- Models: {', '.join(models)}", ""]
    current_round = None
    for record in records:
        if record["type"] == "event":
            detail = md_text(event_detail(record)).replace("\n", " ")
            lines += [f"> ⚑ *{record['event']}* {detail}".rstrip(), ""]
            continue
        if record["kind"] == "statement" and record["round"] != current_round:
            current_round = record["round"]
            lines += [f"## Round {current_round}", ""]
        label = {
            "opening": "opening",
            "interjection": "moderator",
            "intervention": "moderator steps in",
            "verdict": "verdict",
        }.get(record["kind"], record["role"])
        lines += [f"### {inert(record['name'])} · {label}", ""]
        if record["kind"] == "verdict" and (manifest.get("verdict") or {}).get("valid"):
            lines += ["*(structured verdict below)*", ""]
        else:
            if record.get("reasoning") and reasoning:
                thought = md_text(record["reasoning"]).replace("\n", "\n> ")
                lines += ["<details><summary>reasoning</summary>", "", f"> {thought}", "",
                          "</details>", ""]  # fmt: skip
            elif record.get("reasoning"):
                lines += [f"*(reasoning hidden: {len(record['reasoning'])} characters)*", ""]
            lines += [md_text(record["text"]) or "*(empty reply)*", ""]
        if record.get("finish_reason") == "length":
            lines += ["*(cut at max tokens)*", ""]
        if "stance" in record:
            lines += [f"*{stance_text(record['stance'])}*", ""]
    lines += verdict_lines(manifest)
    cut = sum(1 for r in records if r["type"] == "turn" and r.get("finish_reason") == "length")
    tokens = manifest.get("tokens")
    if tokens or cut:
        lines += ["---", ""]
    if cut:
        lines += [f"{cut} turn{'s' if cut != 1 else ''} cut at max tokens.", ""]
    if tokens:
        lines += [f"Tokens: {_tokens_line(tokens)}.", ""]
    return "\n".join(lines)


def verdict_lines(manifest: dict) -> list[str]:
    """The verdict section of a transcript, in Markdown."""
    verdict = manifest.get("verdict")
    if not verdict:
        return []
    lines = ["## Verdict", ""]
    if not verdict.get("valid"):
        return lines + [
            f"*The verdict could not be validated ({verdict.get('error')}); kept as plain text:*",
            "",
            md_text(verdict.get("text", "")),
            "",
        ]
    lines += [md_text(verdict["summary"]), ""]
    sections = (
        ("Agreements", "agreements"),
        ("Disagreements", "disagreements"),
        ("Open questions", "open_questions"),
    )
    for title, key in sections:
        if verdict[key]:
            items = [f"- {md_text(item)}" for item in verdict[key]]
            lines += [f"**{title}**", "", *items, ""]
    names = {p["id"]: p["name"] for p in manifest["personas"]}
    lines += ["**Final positions**", ""]
    positions = verdict["positions"].items()
    lines += [f"- {inert(names.get(pid, pid))}: {md_text(pos)}" for pid, pos in positions]
    return lines + [""]
