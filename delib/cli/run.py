"""``delib run`` and ``delib resume``: a debate in the live view, and how it ended."""

from __future__ import annotations

import asyncio
import json
import signal
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markdown import Markdown

from delib.archive.markdown import verdict_lines
from delib.cli.common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    ArchiveOpt,
    ChatFormatOpt,
    CtxOpt,
    GgufOpt,
    LocalModelOpt,
    PersonasDir,
    ScenariosDir,
    err,
    error_line,
    out,
)
from delib.cli.live import LiveView
from delib.cli.seats import terminal_answerer
from delib.debate.prepare import RunRequest
from delib.debate.result import RunResult
from delib.debate.resume import resume_request
from delib.debate.runner import Run
from delib.detect.loops import LoopMode
from delib.errors import DelibError, InputError
from delib.library.scenarios import Protocol
from delib.models.config import (
    Overrides,
    parse_pairs,
    parse_persona_models,
)
from delib.models.local import DEFAULT_CTX, LocalServer
from delib.text import safe


class PromptLayout(StrEnum):
    persona_first = "persona_first"
    shared_first = "shared_first"
    compact = "compact"


class SystemMessage(StrEnum):
    auto = "auto"
    native = "native"
    fold = "fold"


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
    refusal_judge: Annotated[
        str | None,
        typer.Option(
            help="Ask this endpoint (a name or a base URL) about replies the refusal "
            "classifier is unsure of (off by default; see docs/loop-detection.md)."
        ),
    ] = None,
    human: Annotated[
        list[str] | None,
        typer.Option(
            "--human",
            help="PERSONA: a person speaks for this participant (repeatable); their turns are "
            "read from the terminal, or one line of standard input per turn.",
        ),
    ] = None,
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
        refusal_judge=refusal_judge,
        human=tuple(dict.fromkeys(human or ())),
    )
    _execute(Run(request, human=_answerers(request, as_json)), as_json)


def _answerers(request: RunRequest, as_json: bool) -> dict:
    """The terminal's answerer for each human seat of the run."""
    answer = terminal_answerer(err if as_json else out)
    return dict.fromkeys(request.human, answer)


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
        cut = sum(1 for t in result.turns if t.get("finish_reason") == "length")
        if cut:
            out.print(
                f"[dim]{cut} turn{'s' if cut != 1 else ''} cut at max tokens "
                "(--max-tokens raises the cap)[/dim]"
            )
        hint = next((e["hint"] for e in result.events if e["event"] == "empty_replies"), None)
        if hint:
            out.print(f"[yellow]hint:[/yellow] {safe(hint)}", soft_wrap=True)
    if result.error is not None or result.error_message:
        line = error_line(result.error) if isinstance(result.error, DelibError) else None
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
    _execute(Run(request, resume=folder, human=_answerers(request, as_json)), as_json)


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
