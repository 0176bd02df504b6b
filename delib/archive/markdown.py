"""What people read: the live terminal view and the Markdown transcript."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from delib.text import inert, md_text, safe

SPEAKER_STYLES = ("cyan", "green", "magenta", "yellow", "blue", "bright_red", "bright_cyan")
MODERATOR_STYLE = "bold white"


class LiveView:
    """Prints a debate as it happens.

    Tokens of one turn at a time are printed live; when several speakers talk at once
    (simultaneous rounds), the others are held back and printed whole as they finish, so
    output never interleaves.
    """

    def __init__(self, console: Console, stream: bool = True) -> None:
        self.console = console
        self.stream = stream
        self.styles: dict[str, str] = {}
        self.live: int | None = None
        self.starts: dict[int, dict] = {}
        self.buffers: dict[int, list[str]] = {}
        self.done: dict[int, dict] = {}

    def style(self, speaker: str, role: str) -> str:
        if role == "moderator":
            return MODERATOR_STYLE
        if speaker not in self.styles:
            self.styles[speaker] = SPEAKER_STYLES[len(self.styles) % len(SPEAKER_STYLES)]
        return self.styles[speaker]

    def header(self, start: dict) -> None:
        label = {"opening": "opens", "interjection": "interjects", "verdict": "closes"}.get(
            start.get("turn_kind", ""), f"round {start['round']}"
        )
        self.console.print()
        self.console.print(
            Text(inert(start["name"]), style=self.style(start["speaker"], start["role"]))
            + Text(f" · {label}", style="dim")
        )

    def handle(self, message: dict) -> None:
        kind = message["kind"]
        if kind == "turn_start":
            self.starts[message["index"]] = message
            self.buffers.setdefault(message["index"], [])
            if self.live is None and self.stream:
                self.live = message["index"]
                self.header(message)
        elif kind == "token":
            if message["index"] == self.live:
                self.console.print(inert(message["text"]), end="", markup=False, highlight=False)
            else:
                self.buffers.setdefault(message["index"], []).append(message["text"])
        elif kind == "retry":
            self.console.print(
                f"\n[dim]… retrying {safe(message['speaker'])} (attempt {message['attempt'] + 1}): "
                f"{safe(message['error'])}[/dim]",
                highlight=False,
            )
            if message["index"] in self.buffers:
                self.buffers[message["index"]].clear()
        elif kind == "turn":
            self._finish(message["turn"])
        elif kind == "event":
            self.event(message["event"])

    def _finish(self, turn: dict) -> None:
        index = turn["index"]
        if index == self.live:
            if turn["kind"] == "verdict":
                self.console.print("[dim](verdict below)[/dim]", end="")
            self.console.print()
            self.live = None
        else:
            start = self.starts.get(index) or {**turn, "turn_kind": turn["kind"]}
            self.header(start)
            if turn["kind"] != "verdict":
                self.console.print(inert(turn["text"]), markup=False, highlight=False)
        if "stance" in turn:
            self.console.print(f"[dim]{safe(stance_text(turn['stance']))}[/dim]")
        self.starts.pop(index, None)
        self.buffers.pop(index, None)
        # Promote a turn still streaming, showing what it has said so far.
        if self.live is None and self.stream and self.starts:
            nxt = min(self.starts)
            self.live = nxt
            self.header(self.starts[nxt])
            self.console.print(
                inert("".join(self.buffers.get(nxt, []))), end="", markup=False, highlight=False
            )

    def close(self) -> None:
        """The run ended with a turn still streaming (an error, Ctrl-C): end its line, so what
        is printed next starts on a line of its own."""
        if self.live is not None:
            self.console.print(" [dim]… (cut off)[/dim]", highlight=False)
            self.live = None

    def event(self, event: dict) -> None:
        name = event["event"]
        if name == "speaker_selected":
            note = " (reply named nobody eligible; round-robin order)" if event["fallback"] else ""
            self.console.print(f"[dim]moderator picks {safe(event['speaker'])}{note}[/dim]")
        else:
            detail = safe(event_detail(event))
            self.console.print(
                f"[yellow]⚑ {safe(name)}[/yellow] [dim]{detail}[/dim]", highlight=False
            )


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


def markdown(manifest: dict, records: list[dict]) -> str:
    """The debate as a person would read it."""
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
            lines += [md_text(record["text"]) or "*(empty reply)*", ""]
        if "stance" in record:
            lines += [f"*{stance_text(record['stance'])}*", ""]
    lines += verdict_lines(manifest)
    tokens = manifest.get("tokens")
    if tokens:
        lines += ["---", "", f"Tokens: {_tokens_line(tokens)}.", ""]
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
