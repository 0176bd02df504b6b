"""From a request to a debate ready to run: files, endpoints, models, the embedded server.

``prepare`` fails before any run folder exists: an unknown persona, a broken file, an
unreachable endpoint or an unknown model never leaves an empty run behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from delib.debate.judge import Judge
from delib.debate.seats import check_seats
from delib.debate.state import DEFAULT_TOKEN_BUDGET, DebateContext
from delib.detect.loops import LoopConfig, LoopMode
from delib.errors import SettingError
from delib.library.personas import Persona, persona_library
from delib.library.scenarios import Protocol, Scenario, cast_for, scenario_library
from delib.models.config import Config, Overrides, Resolver, SpeakerSettings
from delib.models.endpoints import Clients
from delib.models.local import DEFAULT_CTX, LocalServer
from delib.models.local_models import model_for
from delib.models.urls import redact_url
from delib.records import SCHEMA_VERSION, Manifest

Notify = Callable[[str], None]
# Where a persona or scenario given in code (not read from a file) says it came from.
IN_CODE = "(given in code)"

# Rounds a debate on the embedded model has unless --rounds (or RunRequest.rounds) says.
EMBEDDED_ROUNDS = 1


@dataclass
class RunRequest:
    """What the user asked for; None means "use the scenario's or the default".

    ``scenario`` is an id from the scenario folders or a ``Scenario`` built in code;
    ``personas`` adds personas built in code (they win over files with the same id).
    """

    scenario: str | Scenario
    overrides: Overrides = field(default_factory=Overrides)
    rounds: int | None = None
    protocol: Protocol | None = None
    token_budget: int | None = None
    seed: int | None = None
    stream: bool = True
    archive: Any = None  # a folder, a postgresql:// address or an open store (delib.archive.store)
    personas_dir: Path | None = None
    scenarios_dir: Path | None = None
    loops: LoopMode | None = None  # overrides the scenario's loop handling mode
    loop_options: dict[str, str] = field(default_factory=dict)  # loop settings by name
    ctx: int = DEFAULT_CTX  # context of the embedded server, when one is started
    chat_format: str | None = None  # chat format for the embedded server (default: detected)
    local_model: str | None = None  # which shipped model the embedded server runs (None: default)
    prompt_layout: str | None = None  # persona_first | shared_first; None: per endpoint
    personas: list[Persona] = field(default_factory=list)
    participant_order: list[str] | None = None  # the scenario's participants, reordered
    sweep: dict[str, Any] | None = None  # the sweep and cell this run belongs to
    refusal_judge: str | None = None  # an endpoint or base URL asked about uncertain refusals
    human: tuple[str, ...] = ()  # participants seated by a person (debate.seats)

    @property
    def scenario_id(self) -> str:
        return self.scenario if isinstance(self.scenario, str) else self.scenario.id


def request_to_dict(req: RunRequest) -> dict[str, Any]:
    """The request as the manifest keeps it, for resume: flags only, never a key."""
    o = req.overrides
    data: dict[str, Any] = {
        "scenario": req.scenario_id,
        "overrides": {
            "base_url": redact_url(o.base_url),
            "model": o.model,
            "endpoint": o.endpoint,
            "api_key_env": o.api_key_env,
            "system_message": o.system_message,
            "persona_models": dict(o.persona_models),
            "temperature": o.temperature,
            "max_tokens": o.max_tokens,
            "gguf": str(o.gguf) if o.gguf else None,
        },
        "rounds": req.rounds,
        "protocol": req.protocol.value if req.protocol else None,
        "token_budget": req.token_budget,
        "seed": req.seed,
        "stream": req.stream,
        "personas_dir": str(req.personas_dir.absolute()) if req.personas_dir else None,
        "scenarios_dir": str(req.scenarios_dir.absolute()) if req.scenarios_dir else None,
        "loops": req.loops.value if req.loops else None,
        "loop_options": dict(req.loop_options),
        "ctx": req.ctx,
        "chat_format": req.chat_format,
        "local_model": req.local_model,
        "prompt_layout": req.prompt_layout,
        "participant_order": req.participant_order,
        "sweep": req.sweep,
        "refusal_judge": redact_url(req.refusal_judge) if req.refusal_judge else None,
        "human": list(req.human),
    }
    if isinstance(req.scenario, Scenario):
        data["scenario_inline"] = req.scenario.model_dump(mode="json")
    if req.personas:
        data["personas_inline"] = [p.model_dump(mode="json") for p in req.personas]
    return data


def request_from_dict(data: dict[str, Any], archive: Any) -> RunRequest:
    o = dict(data.get("overrides") or {})
    o["gguf"] = Path(o["gguf"]) if o.get("gguf") else None
    inline = data.get("scenario_inline")
    return RunRequest(
        scenario=Scenario.model_validate(inline) if inline else data["scenario"],
        overrides=Overrides(**o),
        rounds=data.get("rounds"),
        protocol=Protocol(data["protocol"]) if data.get("protocol") else None,
        token_budget=data.get("token_budget"),
        seed=data.get("seed"),
        stream=data.get("stream", True),
        archive=archive,
        personas_dir=Path(data["personas_dir"]) if data.get("personas_dir") else None,
        scenarios_dir=Path(data["scenarios_dir"]) if data.get("scenarios_dir") else None,
        loops=LoopMode(data["loops"]) if data.get("loops") else None,
        loop_options=dict(data.get("loop_options") or {}),
        ctx=data.get("ctx") or DEFAULT_CTX,
        chat_format=data.get("chat_format"),
        local_model=data.get("local_model"),
        prompt_layout=data.get("prompt_layout"),
        personas=[Persona.model_validate(p) for p in data.get("personas_inline") or []],
        participant_order=data.get("participant_order"),
        sweep=data.get("sweep"),
        refusal_judge=data.get("refusal_judge"),
        human=tuple(data.get("human") or ()),
    )


def loop_config(base: LoopConfig, mode: LoopMode | None, options: dict[str, str]) -> LoopConfig:
    """The scenario's loop settings with the request's changes, validated like the file's."""
    data = base.model_dump()
    unknown = sorted(set(options) - set(data))
    if unknown:
        known = ", ".join(sorted(data))
        raise SettingError("loop_options", unknown[0], f"unknown setting; known: {known}")
    data.update(options)
    if mode:
        data["mode"] = mode
    try:
        return LoopConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise SettingError("loop_options", where, first["msg"]) from None


def _digest(item: Persona | Scenario) -> str:
    return hashlib.sha256(
        json.dumps(item.model_dump(mode="json"), sort_keys=True).encode()
    ).hexdigest()


@dataclass
class Source:
    """Where a persona or scenario came from, for the manifest."""

    path: str
    sha256: str


@dataclass
class Prepared:
    """A debate ready to run: the context for the graph and the manifest to start with."""

    context: DebateContext
    manifest: Manifest


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("delib", "openai", "langgraph", "pydantic"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def _local_description(local: LocalServer | None) -> dict | None:
    if local is None:
        return None
    model = local.model
    return {
        "alias": model.alias,
        "path": str(model.path),
        "bundled": model.bundled,
        "chat_format": model.chat_format or "from the file",
        "context_tokens": local.ctx,
        "threads": local.threads,
    }


async def _judge(name: str | None, resolver: Resolver, clients: Clients) -> Judge | None:
    """The refusal judge a run asked for (``--refusal-judge``), its model checked."""
    if not name:
        return None
    if "://" in name:
        endpoint = resolver.ad_hoc("refusal-judge", name)
    else:
        endpoint = resolver.named(name, "--refusal-judge")
        if endpoint is None:
            raise SettingError(
                "refusal_judge", name, "no such endpoint: name one of delib.toml or a preset, "
                "or give a base URL"
            )  # fmt: skip
    client = clients.get(endpoint)
    return Judge(client, await client.check_model(endpoint.config.model))


@dataclass
class Loaded:
    """What a request reads from files (``load``): no network, no event loop needed."""

    scenario: Scenario
    scenario_source: Source
    cast: dict[str, Persona]
    sources: dict[str, Source]
    config: Config
    versions: dict[str, str]


def load(req: RunRequest) -> Loaded:
    """The scenario, its cast and the configuration, read and checked (blocking file reads:
    ``prepare`` does this first unless given it)."""
    personas = persona_library(req.personas_dir)
    given = {p.id: p for p in req.personas}
    if isinstance(req.scenario, Scenario):
        scenario = req.scenario
        scenario_source = Source(IN_CODE, _digest(scenario))
    else:
        loaded = scenario_library(req.scenarios_dir).get(req.scenario)
        scenario = loaded.item
        scenario_source = Source(str(loaded.path), loaded.sha256)
    if req.participant_order is not None:
        if sorted(req.participant_order) != sorted(scenario.participants):
            raise SettingError(
                "participant_order",
                ", ".join(req.participant_order),
                f"must list this scenario's participants: {', '.join(scenario.participants)}",
            )
        scenario = scenario.model_copy(update={"participants": list(req.participant_order)})
    check_seats(list(req.human), list(scenario.participants), scenario.moderator)
    cast_ids = cast_for(scenario, scenario_source.path, personas, extra=given)
    unknown = [pid for pid in req.overrides.persona_models if pid not in cast_ids]
    if unknown:
        known = ", ".join(cast_ids)
        raise SettingError(
            "persona_models",
            unknown[0],
            f"unknown persona '{unknown[0]}'; this scenario's cast: {known}",
        )
    cast: dict[str, Persona] = {}
    sources: dict[str, Source] = {}
    for pid in cast_ids:
        if pid in given:
            cast[pid] = given[pid]
            sources[pid] = Source(IN_CODE, _digest(given[pid]))
        else:
            loaded_persona = personas.get(pid)
            cast[pid] = loaded_persona.item
            sources[pid] = Source(str(loaded_persona.path), loaded_persona.sha256)
    config = Config.load()
    return Loaded(scenario, scenario_source, cast, sources, config, _versions())


async def prepare(
    req: RunRequest,
    clients: Clients,
    start_local: Callable[..., Any],
    notify: Notify,
    loaded: Loaded | None = None,
) -> Prepared:
    """Load and check everything, starting the embedded model (through ``start_local``) if
    no endpoint is set; ``loaded``: what ``load(req)`` read, if that was done already."""
    loaded = loaded or load(req)
    scenario, scenario_source, cast, sources, config = (
        loaded.scenario, loaded.scenario_source, loaded.cast, loaded.sources, loaded.config
    )  # fmt: skip
    resolver = Resolver(config, req.overrides)
    local: LocalServer | None = None
    if resolver.needs_embedded(list(cast.values()), scenario):
        model = model_for(req.overrides.gguf, req.chat_format, req.local_model)
        notify(f"starting the local model server for {model.alias}…")
        local = await start_local(model, req.ctx)
        resolver = Resolver(config, req.overrides, embedded=local.endpoint())
        notify("checking endpoints and models…")
    speakers: dict[str, SpeakerSettings] = {}
    for pid, persona in cast.items():
        settings = resolver.settings_for(persona, scenario)
        model_id = await clients.get(settings.endpoint).check_model(settings.model)
        speakers[pid] = dataclasses.replace(settings, model=model_id)
    # The embedded model writes a turn in seconds to tens of seconds on a laptop's CPU: a
    # first debate on it is one round unless asked for more (the CLI says so).
    default_rounds = min(scenario.rounds, EMBEDDED_ROUNDS) if local else scenario.rounds
    rounds = req.rounds or default_rounds
    if rounds < 1:
        raise SettingError("rounds", str(rounds), "must be at least 1")
    context = DebateContext(
        scenario=scenario,
        cast=cast,
        speakers=speakers,
        clients=clients,
        protocol=req.protocol or scenario.protocol,
        rounds=rounds,
        max_rounds=scenario.limits.max_rounds,
        token_budget=req.token_budget or scenario.limits.token_budget or DEFAULT_TOKEN_BUDGET,
        seed=req.seed,
        stream=req.stream,
        loops=loop_config(scenario.loops, req.loops, req.loop_options),
        prompt_layout=req.prompt_layout,
        judge=await _judge(req.refusal_judge or config.refusal_judge, resolver, clients),
        humans=frozenset(req.human),
    )
    entries = [
        {
            "id": pid,
            "name": cast[pid].name,
            "part": context.role(pid),
            "path": sources[pid].path,
            "sha256": sources[pid].sha256,
            "endpoint": settings.endpoint.name,
            "model": settings.model,
            "temperature": settings.temperature,
            "max_tokens": settings.max_tokens,
            **({"seat": "human"} if pid in context.humans else {}),
        }
        for pid, settings in speakers.items()
    ]
    endpoints = {s.endpoint.name: s.endpoint.describe() for s in speakers.values()}
    manifest: Manifest = {
        "schema_version": SCHEMA_VERSION,
        "run_id": None,
        "request": request_to_dict(req),
        "scenario": {
            "id": scenario.id,
            "title": scenario.title,
            "question": scenario.question,
            "source_seed": scenario.source_seed,
            "path": scenario_source.path,
            "sha256": scenario_source.sha256,
        },
        "protocol": context.protocol.value,
        "rounds": context.rounds,
        "max_rounds": context.max_rounds,
        "token_budget": context.token_budget,
        "generation": {"seed": context.seed, "stream": context.stream},
        "loops": context.loops.model_dump(mode="json"),
        "personas": entries,
        "endpoints": list(endpoints.values()),
        "local_model": _local_description(local),
        "versions": loaded.versions,
        "sweep": req.sweep,
        "refusal_judge": context.judge.stats() if context.judge else None,
        "started_at": None,
        "ended_at": None,
        "stop_reason": None,
        "error": None,
    }
    return Prepared(context=context, manifest=manifest)
