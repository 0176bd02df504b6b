"""The terminal side of a human seat (``--human PERSONA``): the person's turn is read from the
terminal (a blank line sends it), or one line of standard input per turn when that is not a
terminal (a script, a pipe, a file)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

from rich.console import Console

from delib.debate.seats import Seat
from delib.text import safe


def terminal_answerer(
    console: Console, stdin: TextIO | None = None
) -> Callable[[Seat], str | None]:
    """An answerer for ``Run(human=...)`` reading ``stdin``; None once the input has ended."""
    source = stdin or sys.stdin

    def answer(seat: Seat) -> str | None:
        if not source.isatty():
            line = source.readline()
            return None if line == "" else line.rstrip("\r\n")
        console.print()
        console.print(
            f"[bold]your turn[/bold] as {safe(seat.name)} (round {seat.round}): "
            "type your reply; a blank line sends it",
            soft_wrap=True,
        )
        lines: list[str] = []
        while True:
            try:
                line = input("> ")
            except EOFError:
                return "\n".join(lines) if lines else None
            if line.strip():
                lines.append(line)
            elif lines:
                return "\n".join(lines)

    return answer
