"""``delib personas …`` and ``delib scenarios …``: the YAML library."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from delib.cli.common import (
    PersonasDir,
    ScenariosDir,
    out,
)
from delib.library.personas import persona_library
from delib.library.scenarios import scenario_library
from delib.text import inert, safe

personas_app = typer.Typer(help="List and show personas.", no_args_is_help=True)
scenarios_app = typer.Typer(help="List and show scenarios.", no_args_is_help=True)


@personas_app.command("list")
def personas_list(personas_dir: PersonasDir = None) -> None:
    """List known personas."""
    table = Table(box=None)
    table.add_column("id", no_wrap=True)
    table.add_column("name")
    table.add_column("role")
    for loaded in persona_library(personas_dir).all():
        p = loaded.item
        table.add_row(safe(p.id), safe(p.name), safe(p.role))
    out.print(table)


@personas_app.command("show")
def personas_show(
    persona_id: Annotated[str, typer.Argument(help="Persona id.")], personas_dir: PersonasDir = None
) -> None:
    """Show one persona in full."""
    loaded = persona_library(personas_dir).get(persona_id)
    p = loaded.item
    out.print(
        f"[bold]{safe(p.name)}[/bold] ({safe(p.id)}) — {safe(p.role)}\n"
        f"[dim]{safe(loaded.path)}[/dim]\n"
    )
    out.print(inert(p.prompt.strip()), markup=False)
    settings = {
        k: v
        for k, v in p.model_dump().items()
        if k in ("endpoint", "model", "temperature", "max_tokens") and v is not None
    }
    if settings:
        out.print(f"\n[dim]model settings: {safe(settings)}[/dim]")


@scenarios_app.command("list")
def scenarios_list(scenarios_dir: ScenariosDir = None) -> None:
    """List known scenarios."""
    table = Table(box=None)
    table.add_column("id", no_wrap=True)
    table.add_column("title")
    table.add_column("protocol", no_wrap=True)
    table.add_column("rounds")
    table.add_column("participants", overflow="fold")
    for loaded in scenario_library(scenarios_dir).all():
        s = loaded.item
        who = safe(", ".join(s.participants))
        table.add_row(safe(s.id), safe(s.title), s.protocol.value, str(s.rounds), who)
    out.print(table)


@scenarios_app.command("show")
def scenarios_show(
    scenario_id: Annotated[str, typer.Argument(help="Scenario id.")],
    scenarios_dir: ScenariosDir = None,
) -> None:
    """Show one scenario in full."""
    loaded = scenario_library(scenarios_dir).get(scenario_id)
    s = loaded.item
    out.print(f"[bold]{safe(s.title)}[/bold] ({safe(s.id)})\n[dim]{safe(loaded.path)}[/dim]\n")
    out.print(inert(f"Question: {s.question.strip()}\n"), markup=False)
    if s.motion:
        out.print(inert(f"Motion (stance 1-7): {s.motion.strip()}\n"), markup=False)
    if s.background:
        out.print(inert(f"Background: {s.background.strip()}\n"), markup=False)
    out.print(safe(f"Moderator: {s.moderator}\nParticipants: {', '.join(s.participants)}"))
    out.print(safe(f"Protocol: {s.protocol.value}, rounds: {s.rounds}, source: {s.source_seed}"))
    limits = {k: v for k, v in s.limits.model_dump().items() if v is not None}
    if limits:
        out.print(f"Limits: {safe(limits)}")
