"""The live terminal view of a debate, as its messages arrive."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from delib.archive.markdown import event_detail, stance_text
from delib.text import inert, safe

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
            if turn.get("human"):  # typed, not streamed: shown whole
                self.console.print(inert(turn["text"]), markup=False, highlight=False, end="")
            if turn["kind"] == "verdict":
                self.console.print("[dim](verdict below)[/dim]", end="")
            self.console.print()
            self.live = None
        else:
            start = self.starts.get(index) or {**turn, "turn_kind": turn["kind"]}
            self.header(start)
            if turn["kind"] != "verdict":
                self.console.print(inert(turn["text"]), markup=False, highlight=False)
        if turn.get("finish_reason") == "length":
            self.console.print("[dim](cut at max tokens)[/dim]")
        if turn.get("reasoning"):
            n = len(turn["reasoning"])
            self.console.print(f"[dim](thought for {n} characters, kept in the record)[/dim]")
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
