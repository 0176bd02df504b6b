"""The ``delib`` command. The only place that prints errors: one line, non-zero exit."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import re
import signal
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.table import Table
from rich.text import Text

from delib import __version__
from delib.archive.export import diff, export
from delib.archive.index import HIT_END, HIT_START, Index
from delib.archive.markdown import LiveView, markdown, verdict_lines
from delib.archive.store import FolderStore, open_store
from delib.cli.sweep import ArchiveOpt, compare_cmd, sweep_app
from delib.debate.prepare import RunRequest
from delib.debate.result import RunResult
from delib.debate.resume import resume_request
from delib.debate.runner import Run
from delib.detect.loops import LoopMode
from delib.detect.refusal_eval import evaluate_files
from delib.errors import DelibError, InputError, SettingError
from delib.library.personas import persona_library
from delib.library.scenarios import Protocol, scenario_library
from delib.models.config import (
    CLI_ENDPOINT,
    EMBEDDED_ENDPOINT,
    PRESETS,
    Config,
    Overrides,
    Resolver,
    parse_pairs,
    parse_persona_models,
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
from delib.text import inert, safe

app = typer.Typer(
    help="Multi-agent deliberation: personas argue a question through on any "
    "OpenAI-compatible endpoint, and every debate is archived.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
personas_app = typer.Typer(help="List and show personas.", no_args_is_help=True)
scenarios_app = typer.Typer(help="List and show scenarios.", no_args_is_help=True)
transcripts_app = typer.Typer(
    help="The archive: list, show, search, export, compare and delete runs.",
    no_args_is_help=True,
)
endpoints_app = typer.Typer(
    help="List configured endpoints and check what a server can do.", no_args_is_help=True
)
local_app = typer.Typer(help="The embedded llama.cpp server.", no_args_is_help=True)
eval_app = typer.Typer(help="Measure delib's detectors on labelled data.", no_args_is_help=True)
app.add_typer(eval_app, name="eval")
app.add_typer(personas_app, name="personas")
app.add_typer(scenarios_app, name="scenarios")
app.add_typer(transcripts_app, name="transcripts")
app.add_typer(endpoints_app, name="endpoints")
app.add_typer(local_app, name="local")
app.add_typer(sweep_app, name="sweep")
archive_app = typer.Typer(
    help="Move runs between archives: a folder and a PostgreSQL database, either way.",
    no_args_is_help=True,
)
app.add_typer(archive_app, name="archive")
app.command("compare")(compare_cmd)


class PromptLayout(StrEnum):
    persona_first = "persona_first"
    shared_first = "shared_first"
    compact = "compact"


class SystemMessage(StrEnum):
    auto = "auto"
    native = "native"
    fold = "fold"


out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)
DEBUG = {"on": bool(os.environ.get("DELIB_DEBUG"))}

# Exit codes: 1 for errors the user can fix, 130 after Ctrl-C (the shell convention).
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130

PersonasDir = Annotated[
    Path | None, typer.Option("--personas-dir", help="Extra folder of persona YAML files.")
]
ScenariosDir = Annotated[
    Path | None, typer.Option("--scenarios-dir", help="Extra folder of scenario YAML files.")
]
GgufOpt = Annotated[
    Path | None,
    typer.Option(
        "--gguf",
        help="Serve this GGUF model file locally instead of a shipped small model "
        "(needs the 'local' extra).",
    ),
]
LocalModelOpt = Annotated[
    str | None,
    typer.Option(
        "--local-model",
        help=f"Which shipped small model the embedded server runs: "
        f"{', '.join(LOCAL_MODELS)} (default {DEFAULT_LOCAL_MODEL}); see 'delib endpoints list'.",
    ),
]
CtxOpt = Annotated[
    int, typer.Option("--ctx", min=256, help="Context size of the local server, in tokens.")
]
ChatFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--chat-format",
        help="llama-cpp-python chat format for the local server (e.g. gemma, chatml); "
        "default: the file's own template, else one for its model family.",
    ),
]


def _version(value: bool) -> None:
    if value:
        out.print(f"delib {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show version.")
    ] = False,
) -> None:
    if debug:
        DEBUG["on"] = True
        logging.getLogger("psycopg").setLevel(logging.NOTSET)


# --- run -------------------------------------------------------------------------------------
@app.command()
def run(
    scenario: Annotated[str, typer.Argument(help="Scenario id (see 'delib scenarios list').")],
    base_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible base URL, e.g. http://localhost:8080/v1.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model for every persona.")] = None,
    endpoint: Annotated[str | None, typer.Option(help="Named endpoint from delib.toml.")] = None,
    persona_model: Annotated[
        list[str] | None,
        typer.Option("--persona-model", help="ID=MODEL: model for one persona (repeatable)."),
    ] = None,
    api_key_env: Annotated[
        str | None,
        typer.Option(
            help="Environment variable holding the key for --base-url (default OPENAI_API_KEY)."
        ),
    ] = None,
    system_message: Annotated[
        SystemMessage | None,
        typer.Option(
            help="native: send a system message; fold: put it in the first user message "
            "(for servers whose chat template drops or rejects system messages); "
            "auto: native, folding on a template error."
        ),
    ] = None,
    rounds: Annotated[int | None, typer.Option(min=1, help="Rounds to run.")] = None,
    protocol: Annotated[
        Protocol | None, typer.Option(help="Turn-taking protocol (default: the scenario's).")
    ] = None,
    temperature: Annotated[float | None, typer.Option(min=0.0, max=2.0)] = None,
    max_tokens: Annotated[
        int | None, typer.Option(min=1, help="Reply length cap per turn.")
    ] = None,
    token_budget: Annotated[
        int | None, typer.Option(min=100, help="Total tokens the run may use.")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Sampling seed, where the server supports it.")
    ] = None,
    no_stream: Annotated[
        bool, typer.Option("--no-stream", help="Wait for whole replies instead of streaming.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON summary on stdout at the end.")
    ] = False,
    loops: Annotated[
        LoopMode | None,
        typer.Option(
            help="Loop handling: off; warn (record only); ladder (moderator steps in, then "
            "stops with 'deadlock'); stop (at the first loop). Default: the scenario's, "
            "else ladder."
        ),
    ] = None,
    loop_option: Annotated[
        list[str] | None,
        typer.Option(
            "--loop-option",
            help="KEY=VALUE: a loop detection setting, e.g. window=8 or repetition=0.7 "
            "(repeatable; see docs/loop-detection.md).",
        ),
    ] = None,
    prompt_layout: Annotated[
        PromptLayout | None,
        typer.Option(
            help="shared_first: what every speaker shares first, the persona last (a local "
            "server reuses its prompt cache); persona_first: the persona as system message. "
            "Default: shared_first for servers on this machine, else persona_first."
        ),
    ] = None,
    gguf: GgufOpt = None,
    local_model: LocalModelOpt = None,
    ctx: CtxOpt = DEFAULT_CTX,
    chat_format: ChatFormatOpt = None,
    archive: ArchiveOpt = None,
    personas_dir: PersonasDir = None,
    scenarios_dir: ScenariosDir = None,
) -> None:
    """Run a debate on a scenario and archive it.

    With no endpoint given by flag, delib.toml, persona, scenario or OPENAI_BASE_URL, delib
    starts its bundled small local model (the 'local' extra) for the run and stops it after.
    """
    _one_endpoint_flag(gguf, base_url, endpoint)
    request = RunRequest(
        scenario=scenario,
        overrides=Overrides(
            base_url=base_url,
            model=model,
            endpoint=endpoint,
            api_key_env=api_key_env,
            system_message=system_message.value if system_message else None,
            persona_models=parse_persona_models(persona_model or []),
            temperature=temperature,
            max_tokens=max_tokens,
            gguf=gguf,
        ),
        rounds=rounds,
        protocol=protocol,
        token_budget=token_budget,
        seed=seed,
        stream=not no_stream,
        archive=archive,
        personas_dir=personas_dir,
        scenarios_dir=scenarios_dir,
        ctx=ctx,
        chat_format=chat_format,
        local_model=local_model,
        prompt_layout=prompt_layout.value if prompt_layout else None,
        loops=loops,
        loop_options=parse_pairs(loop_option or [], "--loop-option"),
    )
    _execute(Run(request), as_json)


# How the CLI words a run setting that the library names in an error (SettingError.setting).
SETTING_FLAGS = {
    "base_url": "--base-url",
    "loop_options": "--loop-option",
    "persona_models": "--persona-model",
    "rounds": "--rounds",
}


def _error_line(exc: DelibError) -> str:
    if isinstance(exc, SettingError) and exc.setting in SETTING_FLAGS:
        return f"{SETTING_FLAGS[exc.setting]} {exc.key}: {exc.reason}"
    return str(exc)


def _execute(debate: Run, as_json: bool) -> None:
    """Run (or resume) a request with the live view; report like 'delib run'."""
    view_console = err if as_json else out
    view = LiveView(view_console, stream=debate.request.stream)
    try:
        result = asyncio.run(_run(debate, view, view_console))
    except (KeyboardInterrupt, asyncio.CancelledError):
        where = f" in {safe(debate.where)}" if debate.where else ""
        err.print(
            f"[yellow]interrupted[/yellow]; finished turns are kept{where}; "
            "'delib resume RUN' goes on from there",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if as_json:
        print(json.dumps(result.summary()))
    else:
        if result.verdict:
            out.print()
            out.print(Markdown("\n".join(verdict_lines(result.manifest))))
        style = "green" if result.stop_reason.value in ("completed", "max_rounds") else "yellow"
        tokens = result.tokens
        out.print()
        out.print(
            f"[{style}]stop reason: {result.stop_reason.value}[/{style}] · {len(result.turns)} "
            f"turns · {tokens.get('total', 0)} tokens"
            f"{' (estimated)' if tokens.get('estimated') else ''} · {safe(result.where)}",
            soft_wrap=True,
        )
    if result.error is not None or result.error_message:
        line = _error_line(result.error) if isinstance(result.error, DelibError) else None
        err.print(
            f"[red]error:[/red] {safe(line or result.error_message or '')}",
            highlight=False,
            soft_wrap=True,
        )
        err.print(
            f"[dim]finished turns are kept in {safe(result.where)}; "
            f"'delib resume {result.run_id}' goes on from there[/dim]",
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_ERROR)


def _one_endpoint_flag(gguf: Path | None, base_url: str | None, endpoint: str | None) -> None:
    if gguf and (base_url or endpoint):
        raise InputError(
            "--gguf serves a local file: it cannot be combined with --base-url or --endpoint"
        )


def _ready(console: Console, message: dict) -> None:
    ctx = message["context"]
    if message["local"]:
        _say_local(console, message["local"])
    models = sorted({f"{s.model} @ {s.endpoint.name}" for s in ctx.speakers.values()})
    if message["resume"] is not None:
        console.print(f"[cyan]resuming[/cyan] {safe(Path(message['resume']).name)}", soft_wrap=True)
    console.print(
        f"[bold]{safe(ctx.scenario.title)}[/bold]  [dim]{ctx.protocol.value}, "
        f"{ctx.rounds} round{'s' if ctx.rounds > 1 else ''}, {safe(', '.join(models))}[/dim]"
    )
    if message["local"] and ctx.rounds < ctx.scenario.rounds and message["resume"] is None:
        console.print(
            f"[dim]the embedded model runs {ctx.rounds} round of this scenario's "
            f"{ctx.scenario.rounds}; --rounds {ctx.scenario.rounds} runs them all[/dim]"
        )


async def _run(debate: Run, view: LiveView, console: Console) -> RunResult:
    """Consume the run's messages: notices while preparing (on the status line), then the
    debate in the live view."""
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    status = console.status("checking endpoints and models…")
    status.start()
    try:
        async for message in debate.stream():
            kind = message["kind"]
            if kind == "notice":
                if status is not None:
                    status.update(safe(message["text"]))
                else:
                    err.print(f"[yellow]note:[/yellow] {safe(message['text'])}", soft_wrap=True)
            elif kind == "ready":
                status.stop()
                status = None
                _ready(console, message)
            elif kind != "result":
                view.handle(message)
    finally:
        if status is not None:
            status.stop()
        view.close()
        loop.remove_signal_handler(signal.SIGTERM)
        await debate.aclose()
    assert debate.result is not None
    return debate.result


@app.command()
def resume(
    run_id: Annotated[str, typer.Argument(help="Run id or unique prefix of a run that died.")],
    base_url: Annotated[
        str | None, typer.Option(help="Go on against this base URL instead of the run's own.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="Model for every persona.")] = None,
    endpoint: Annotated[
        str | None, typer.Option(help="Go on against this named endpoint instead.")
    ] = None,
    api_key_env: Annotated[
        str | None, typer.Option(help="Environment variable holding the key for --base-url.")
    ] = None,
    system_message: Annotated[
        SystemMessage | None, typer.Option(help="native, fold or auto (see 'delib run').")
    ] = None,
    gguf: GgufOpt = None,
    local_model: LocalModelOpt = None,
    ctx: Annotated[
        int | None, typer.Option("--ctx", min=256, help="Context size of the local server.")
    ] = None,
    chat_format: ChatFormatOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON summary on stdout at the end.")
    ] = False,
    archive: ArchiveOpt = None,
) -> None:
    """Continue a run that was killed, interrupted or failed, from its last finished turn.

    It goes on in the same run folder with the run's own settings, against the same endpoint
    unless another is given. Turns cut off mid-reply are spoken again (and the discard is
    recorded); a finished run cannot be resumed.
    """
    _one_endpoint_flag(gguf, base_url, endpoint)
    changes = {
        "base_url": base_url,
        "model": model,
        "endpoint": endpoint,
        "api_key_env": api_key_env,
        "system_message": system_message.value if system_message else None,
        "gguf": gguf,
        "ctx": ctx,
        "chat_format": chat_format,
        "local_model": local_model,
    }
    request, folder = resume_request(archive, run_id, changes)
    _execute(Run(request, resume=folder), as_json)


def _say_local(console: Console, server: LocalServer) -> None:
    model = server.model
    note = (
        "a small, weak local model: expect short, repetitive turns; use --base-url or "
        "--endpoint for a stronger one"
        if model.bundled
        else f"context {server.ctx} tokens"
    )
    console.print(f"[cyan]local model[/cyan] {safe(model.describe())}", soft_wrap=True)
    console.print(f"[dim]serving at {server.base_url} · {note}[/dim]", soft_wrap=True)
    for line in server.notes:
        console.print(f"[dim]{line}[/dim]")


# --- endpoints and the local server ----------------------------------------------------------
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


@eval_app.command("refusals")
def eval_refusals(
    files: Annotated[
        list[Path], typer.Argument(help="JSONL files with 'text' and 'label' on every line.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as JSON.")] = False,
    predictions: Annotated[
        Path | None,
        typer.Option(
            "--predictions", help="Write one prediction per labelled line here (JSONL, in order)."
        ),
    ] = None,
) -> None:
    """Precision, recall, F1 and accuracy of the refusal classifier: full refusal vs.
    compliance, with partial refusals reported apart; per file and, for several files, their
    macro average (each file counts once)."""
    figures, predicted = evaluate_files(files)
    if predictions:
        try:
            predictions.write_text("".join(json.dumps(p) + "\n" for p in predicted))
        except OSError as exc:
            raise InputError(f"cannot write {predictions}: {exc.strerror}") from None
    if as_json:
        print(json.dumps(figures))
        return

    def number(value: float | None) -> str:
        return "—" if value is None else f"{value:.3f}"

    table = Table(box=None, title="full refusal vs. compliance (partial apart)")
    for column in ("file", "n", "precision", "recall", "F1", "accuracy"):
        if column == "file":
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, justify="right", no_wrap=True)
    rows = list(figures["files"].items())
    for name, f in rows:
        has = f["positives"] > 0  # precision and recall mean nothing without refusals
        table.add_row(safe(name), str(f["binary_n"]), number(f["precision"] if has else None),
                      number(f["recall"] if has else None), number(f["f1"]),
                      number(f["accuracy"]))  # fmt: skip
    if len(rows) > 1:
        m = figures["macro"]
        table.add_row("macro (each file once)", "", number(m["precision"]), number(m["recall"]),
                      number(m["f1"]), number(m["accuracy"]))  # fmt: skip
        table.add_row("all lines together", str(figures["binary_n"]), number(figures["precision"]),
                      number(figures["recall"]), number(figures["f1"]),
                      number(figures["accuracy"]))  # fmt: skip
    out.print(table)
    matrix = Table(title="gold (rows) × predicted (columns), all files", box=None)
    matrix.add_column("")
    for label in ("refusal", "partial", "engaged"):
        matrix.add_column(label, justify="right")
    for gold, row in figures["confusion"].items():
        matrix.add_row(gold, *(str(v) for v in row.values()))
    out.print(matrix)


# --- personas and scenarios ------------------------------------------------------------------
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


# --- transcripts ------------------------------------------------------------------------------
@contextmanager
def _store(archive: str | None, must_exist: bool = True) -> Iterator[Any]:
    """The archive (a folder or a database), closed afterwards; it must exist unless told."""
    store = open_store(archive)
    try:
        if must_exist:
            store.require()
        yield store
    finally:
        store.close()


def _warn_skipped(problems: list[str]) -> None:
    for problem in problems:
        err.print(f"[yellow]warning:[/yellow] skipped {safe(problem)}", soft_wrap=True)


def _since(value: str | None) -> str | None:
    """--since: an ISO date or time, or a span back from now (30m, 12h, 7d)."""
    if not value:
        return None
    match = re.fullmatch(r"(\d+)([mhdw])", value.strip())
    if match:
        unit = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}[match.group(2)]
        try:
            then = datetime.now(UTC) - timedelta(**{unit: int(match.group(1))})
        except (OverflowError, ValueError):
            raise InputError(f"--since '{value}': that reaches back before year 1") from None
        return then.isoformat(timespec="milliseconds")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InputError(
            f"--since '{value}': expected a date (2026-11-01), a time (2026-11-01T09:30) "
            "or a span back from now (30m, 12h, 7d, 2w)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat(timespec="milliseconds")


@transcripts_app.command("list")
def transcripts_list(
    scenario: Annotated[str | None, typer.Option(help="Only runs of this scenario.")] = None,
    model: Annotated[str | None, typer.Option(help="Only runs in which this model spoke.")] = None,
    stop_reason: Annotated[
        str | None,
        typer.Option(
            help="Only runs that ended so: completed, max_rounds, token_budget, deadlock, "
            "error, interrupted, or running (also runs killed without a word)."
        ),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Only runs started since: 2026-11-01, 2026-11-01T09:30, 12h, 7d."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the runs as JSON.")] = False,
    archive: ArchiveOpt = None,
) -> None:
    """List archived runs, newest first."""
    with _store(archive) as store:
        runs, problems = store.listing(
            scenario=scenario, model=model, stop_reason=stop_reason, since=_since(since)
        )
        where = store.location
    _warn_skipped(problems)
    if as_json:
        print(json.dumps(runs))
        return
    if not runs:
        out.print(f"no runs match in {safe(where)}", soft_wrap=True)
        return
    table = Table(box=None)
    table.add_column("run", no_wrap=True)
    table.add_column("stop reason", no_wrap=True)
    table.add_column("turns", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("models")
    for r in runs:
        reason = r["stop_reason"] or "running or killed"
        if r["resumed"]:
            reason += f" (resumed ×{r['resumed']})"
        models = safe(", ".join(r["models"]))
        table.add_row(
            safe(r["run_id"]), safe(reason), str(r["turns"]), str(r["tokens"] or ""), models
        )
    out.print(table)


def _load_run(archive: str | None, wanted: str) -> tuple[Path | None, dict, list[dict]]:
    """A run's folder (None in a database), manifest and records."""
    with _store(archive) as store:
        run_id = store.find(wanted)
        return store.folder(run_id), store.manifest(run_id), store.records(run_id)


@transcripts_app.command("show")
def transcripts_show(
    run_id: Annotated[str, typer.Argument(help="Run id or unique prefix.")],
    archive: ArchiveOpt = None,
) -> None:
    """Print one run as Markdown."""
    _, manifest, records = _load_run(archive, run_id)
    out.print(markdown(manifest, records), markup=False)


@transcripts_app.command("search")
def transcripts_search(
    query: Annotated[
        str,
        typer.Argument(
            help='Words to find (all must occur); FTS5 syntax works too: "a phrase", '
            "word*, a OR b, NEAR(a b). In a postgresql:// archive: words (stemmed), "
            '"a phrase", a or b, -word.'
        ),
    ],
    limit: Annotated[int, typer.Option(min=1, help="At most this many hits.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print the hits as JSON.")] = False,
    archive: ArchiveOpt = None,
) -> None:
    """Find turns by what was said, across every archived run."""
    with _store(archive) as store:
        hits, problems = store.search(query, limit)
    _warn_skipped(problems)
    if as_json:
        plain = [
            {
                **dataclasses.asdict(h),
                "snippet": h.snippet.replace(HIT_START, "").replace(HIT_END, ""),
            }
            for h in hits
        ]
        print(json.dumps(plain))
        return
    if not hits:
        out.print(f"no turn matches {safe(repr(query))}")
        raise typer.Exit(EXIT_ERROR)
    for h in hits:
        snippet = Text("  ")
        for n, part in enumerate(h.snippet.replace(HIT_END, HIT_START).split(HIT_START)):
            snippet.append(inert(part), style="bold reverse" if n % 2 else "")
        out.print(
            f"[cyan]{safe(h.run_id)}[/cyan] [dim]turn {h.index} · round {h.round} ·[/dim] "
            f"[bold]{safe(h.name or h.speaker)}[/bold]",
            soft_wrap=True,
        )
        out.print(snippet, soft_wrap=True)
    out.print(f"[dim]{len(hits)} hit{'s' if len(hits) != 1 else ''}[/dim]")


class ExportFormat(StrEnum):
    md = "md"
    json = "json"
    html = "html"


@transcripts_app.command("export")
def transcripts_export(
    run_id: Annotated[str, typer.Argument(help="Run id or unique prefix.")],
    fmt: Annotated[
        ExportFormat,
        typer.Option("--format", "-f", help="md, json (manifest and records) or html (one file)."),
    ] = ExportFormat.md,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Write here instead of stdout ('-' is stdout)."),
    ] = None,
    archive: ArchiveOpt = None,
) -> None:
    """Export one run as Markdown, JSON or a self-contained HTML page."""
    folder, manifest, records = _load_run(archive, run_id)
    text = export(manifest, records, fmt.value)
    if output is None or str(output) == "-":
        sys.stdout.write(text)
        return
    if folder is not None and output.resolve().parent == folder.resolve():
        raise InputError(
            f"--output {output} is inside the run's own folder; export elsewhere "
            "(the run's files are its record)"
        )
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {output}: {exc.strerror}") from None
    err.print(f"wrote {output}", soft_wrap=True)


@transcripts_app.command("diff")
def transcripts_diff(
    run_a: Annotated[str, typer.Argument(help="First run (id or unique prefix).")],
    run_b: Annotated[str, typer.Argument(help="Second run (id or unique prefix).")],
    width: Annotated[int, typer.Option(min=20, help="Characters of each turn shown.")] = 160,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
    archive: ArchiveOpt = None,
) -> None:
    """Compare two runs: settings that differ, turn by turn, and their verdicts."""
    _, ma, ra = _load_run(archive, run_a)
    _, mb, rb = _load_run(archive, run_b)
    result = diff((ma, ra), (mb, rb))
    if as_json:
        print(json.dumps(result))
        return
    out.print(
        f"[bold]A[/bold] {safe(result['a'])}\n[bold]B[/bold] {safe(result['b'])}", soft_wrap=True
    )
    if result["settings"]:
        table = Table(title="settings that differ", box=None, title_justify="left")
        for column in ("setting", "A", "B"):
            table.add_column(column, overflow="fold")
        for row in result["settings"]:
            table.add_row(safe(row["setting"]), safe(row["a"]), safe(row["b"]))
        out.print(table)
    else:
        out.print("[dim]same settings[/dim]")

    def cell(side: dict | None) -> str:
        if side is None:
            return "[dim]—[/dim]"
        text = side["text"] if len(side["text"]) <= width else side["text"][: width - 1] + "…"
        return f"[bold]{safe(side['speaker'])}[/bold] [dim]{safe(side['kind'])}[/dim]\n{safe(text)}"

    table = Table(title="turns", box=None, title_justify="left", show_lines=True)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("A", ratio=1, overflow="fold")
    table.add_column("B", ratio=1, overflow="fold")
    for row in result["turns"]:
        mark = "" if not row["same"] else " [dim]=[/dim]"
        table.add_row(f"{row['index']}{mark}", cell(row["a"]), cell(row["b"]))
    out.print(table)
    for side, manifest in (("A", ma), ("B", mb)):
        lines = verdict_lines(manifest)
        out.print(f"[bold]verdict {side}[/bold]")
        out.print(inert("\n".join(lines[2:]).strip()) or "(none)", markup=False)


@transcripts_app.command("delete")
def transcripts_delete(
    run_id: Annotated[str, typer.Argument(help="Run id or unique prefix.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False,
    archive: ArchiveOpt = None,
) -> None:
    """Delete one run (its folder, or its rows in a database) and its index entries."""
    with _store(archive) as store:
        name = store.find(run_id)
        folder = store.folder(name)
        if folder is not None and folder.is_symlink():
            raise InputError(
                f"{folder} is a symbolic link; delete does not follow links: remove the link itself"
            )
        if store.running(name):
            raise InputError(f"run {name} is running; stop it before deleting it")
        if not yes:
            if not sys.stdin.isatty():
                raise InputError(f"not deleting {name} without --yes (no terminal to ask)")
            where = folder if folder is not None else store.location
            if not typer.confirm(f"delete run {name} and everything in {where}?"):
                err.print("kept")
                raise typer.Exit(EXIT_ERROR)
        store.delete(name)
    out.print(f"deleted {name}")


@transcripts_app.command("reindex")
def transcripts_reindex(archive: ArchiveOpt = None) -> None:
    """Rebuild the archive's search index from the run folders alone."""
    store = open_store(archive)
    if not isinstance(store, FolderStore):
        store.close()
        out.print(f"{safe(store.location)} is a database: it indexes every record as it is written")
        return
    path = store.require().path
    with Index.open(path) as index:
        count, problems, rebuilt = index.rebuild()
    for name in rebuilt:
        err.print(
            f"rebuilt the missing manifest of {safe(name)} from its turns.jsonl", soft_wrap=True
        )
    for problem in problems:
        err.print(f"[yellow]warning:[/yellow] skipped {safe(problem)}", soft_wrap=True)
    out.print(f"indexed {count} run{'s' if count != 1 else ''} in {path}", soft_wrap=True)
    if problems:
        raise typer.Exit(EXIT_ERROR)


@archive_app.command("copy")
def archive_copy(
    source: Annotated[str, typer.Argument(help="From: a folder or a postgresql:// address.")],
    target: Annotated[str, typer.Argument(help="To: a folder or a postgresql:// address.")],
    run: Annotated[
        list[str] | None,
        typer.Option("--run", help="Only this run (id or prefix); repeat for more."),
    ] = None,
) -> None:
    """Copy every run (manifest, records, checkpoints of unfinished runs) and every sweep;
    runs already in the target are left as they are."""
    from delib.archive.transfer import copy_archive

    with _store(source) as src, _store(target, must_exist=False) as dst:
        if src.location == dst.location:
            raise InputError(f"{src.location} is both source and target; name another target")
        done = copy_archive(src, dst, run)
        where = dst.location
    for line in done.skipped:
        err.print(f"[yellow]warning:[/yellow] skipped {safe(line)}", soft_wrap=True)
    extra = f", {len(done.present)} already there" if done.present else ""
    sweeps = f", {len(done.sweeps)} sweeps" if done.sweeps else ""
    out.print(
        f"copied {len(done.runs)} runs ({done.checkpointed} with checkpoints){extra}{sweeps} "
        f"to {safe(where)}",
        soft_wrap=True,
    )
    if done.skipped:
        raise typer.Exit(EXIT_ERROR)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err.print(f"[yellow]warning:[/yellow] {safe(str(message))}", soft_wrap=True)


def main() -> None:
    """Console entry point: run the app, turning delib's errors into one line."""
    warnings.showwarning = _show_warning
    # psycopg logs a lost connection on its own ("error ignored terminating <AsyncPipeline
    # [BAD]>") beside the one line delib prints for it; --debug shows it again.
    logging.getLogger("psycopg").setLevel(logging.ERROR)
    try:
        app()
    except DelibError as exc:
        if DEBUG["on"]:
            raise
        err.print(f"[red]error:[/red] {safe(_error_line(exc))}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_ERROR)
    except (KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C, or SIGTERM cancelling the run
        err.print("[yellow]interrupted[/yellow]; finished turns are kept in the run folder")
        sys.exit(EXIT_INTERRUPTED)
