"""Running one debate end to end: files in, graph run, archive out."""

from __future__ import annotations

import asyncio
import dataclasses
import platform
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from langgraph.errors import GraphRecursionError
from pydantic import ValidationError

from delib.archive import RunFolder, archive_dir
from delib.config import Config, Overrides, Resolver, SpeakerSettings
from delib.endpoints import Clients
from delib.errors import DelibError, InputError, UnknownIdError
from delib.graph import DEFAULT_TOKEN_BUDGET, Debate, DebateSetup, StopReason, now
from delib.local import DEFAULT_CTX, LocalServer, model_for
from delib.loops import LoopConfig, LoopMode
from delib.personas import Persona, persona_library
from delib.render import markdown
from delib.scenarios import Protocol, cast_for, scenario_library

Listener = Callable[[dict], None]
Status = Callable[[str], None]


@dataclass
class RunRequest:
    """What the user asked for; None means "use the scenario's or the default"."""

    scenario: str
    overrides: Overrides = field(default_factory=Overrides)
    rounds: int | None = None
    protocol: Protocol | None = None
    token_budget: int | None = None
    seed: int | None = None
    stream: bool = True
    archive: Path | None = None
    personas_dir: Path | None = None
    scenarios_dir: Path | None = None
    loops: LoopMode | None = None  # overrides the scenario's loop handling mode
    loop_options: dict[str, str] = field(default_factory=dict)  # --loop-option KEY=VALUE
    ctx: int = DEFAULT_CTX  # context of the embedded server, when one is started
    chat_format: str | None = None  # chat format for the embedded server (default: detected)


@dataclass
class RunResult:
    run_id: str
    folder: Path
    stop_reason: StopReason
    error: str | None
    turns: int
    events: int
    tokens: dict[str, Any]
    verdict_valid: bool | None

    def summary(self) -> dict:
        return {
            "run_id": self.run_id,
            "folder": str(self.folder),
            "stop_reason": self.stop_reason.value,
            "error": self.error,
            "turns": self.turns,
            "events": self.events,
            "tokens": self.tokens,
            "verdict_valid": self.verdict_valid,
        }


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("delib", "openai", "langgraph", "pydantic"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "unknown"
    return versions


def _token_totals(records: list[dict]) -> dict[str, Any]:
    totals: dict[str, Any] = {
        "prompt": 0,
        "completion": 0,
        "total": 0,
        "estimated": False,
        "by_speaker": {},
    }
    for record in records:
        tokens = record.get("tokens")
        if not tokens:
            continue
        totals["prompt"] += tokens["prompt"]
        totals["completion"] += tokens["completion"]
        totals["estimated"] = totals["estimated"] or tokens["estimated"]
        who = record.get("speaker") if record["type"] == "turn" else "moderator-calls"
        totals["by_speaker"][who] = totals["by_speaker"].get(who, 0) + (
            tokens["prompt"] + tokens["completion"]
        )
    totals["total"] = totals["prompt"] + totals["completion"]
    return totals


def loop_config(base: LoopConfig, mode: LoopMode | None, options: dict[str, str]) -> LoopConfig:
    """The scenario's loop settings with the flags' changes, validated like the file's."""
    data = base.model_dump()
    unknown = sorted(set(options) - set(data))
    if unknown:
        raise InputError(
            f"--loop-option {unknown[0]}: unknown setting; known: {', '.join(sorted(data))}"
        )
    data.update(options)
    if mode:
        data["mode"] = mode
    try:
        return LoopConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(f"--loop-option {where}: {first['msg']}") from None


class Run:
    """Prepares a debate (files, endpoints, models) and then runs and archives it."""

    def __init__(self, request: RunRequest) -> None:
        self.request = request
        self.clients = Clients()
        self.setup: DebateSetup | None = None
        self.folder: RunFolder | None = None
        self.records: list[dict] = []
        self.manifest: dict[str, Any] = {}
        self.local: LocalServer | None = None

    async def prepare(self, status: Status | None = None) -> DebateSetup:
        """Load and check everything, starting the embedded model if no endpoint is set;
        fails before any run folder is created."""
        req = self.request
        personas = persona_library(req.personas_dir)
        scenarios = scenario_library(req.scenarios_dir)
        loaded_scenario = scenarios.get(req.scenario)
        scenario = loaded_scenario.item
        cast_ids = cast_for(scenario, loaded_scenario.path, personas)
        unknown = [pid for pid in req.overrides.persona_models if pid not in cast_ids]
        if unknown:
            raise UnknownIdError(
                "persona", unknown[0], cast_ids, hint="in --persona-model; this scenario's cast"
            )
        cast: dict[str, Persona] = {pid: personas.get(pid).item for pid in cast_ids}
        resolver = Resolver(Config.load(), req.overrides)
        if resolver.needs_embedded(list(cast.values()), scenario):
            model = model_for(req.overrides.gguf, req.chat_format)
            if status:
                status(f"starting the local model server for {model.alias}…")
            self.local = LocalServer(model, ctx=req.ctx)
            await self.local.start()
            resolver.embedded = self.local.endpoint()
            if status:
                status("checking endpoints and models…")
        speakers: dict[str, SpeakerSettings] = {}
        for pid, persona in cast.items():
            settings = resolver.settings_for(persona, scenario)
            client = self.clients.get(settings.endpoint)
            model = await client.check_model(settings.model)
            speakers[pid] = dataclasses.replace(settings, model=model)
        rounds = req.rounds or scenario.rounds
        if rounds < 1:
            raise InputError("--rounds must be at least 1")
        self.setup = DebateSetup(
            scenario=scenario,
            cast=cast,
            speakers=speakers,
            clients=self.clients,
            protocol=req.protocol or scenario.protocol,
            rounds=rounds,
            max_rounds=scenario.limits.max_rounds,
            token_budget=req.token_budget or scenario.limits.token_budget or DEFAULT_TOKEN_BUDGET,
            seed=req.seed,
            stream=req.stream,
            loops=loop_config(scenario.loops, req.loops, req.loop_options),
        )
        self.manifest = self._manifest_start(loaded_scenario, personas)
        return self.setup

    def _manifest_start(self, loaded_scenario, personas) -> dict[str, Any]:
        setup = self.setup
        assert setup is not None
        scenario = setup.scenario
        entries = []
        for pid, settings in setup.speakers.items():
            loaded = personas.get(pid)
            entries.append(
                {
                    "id": pid,
                    "name": setup.cast[pid].name,
                    "part": "moderator" if pid == scenario.moderator else "participant",
                    "path": str(loaded.path),
                    "sha256": loaded.sha256,
                    "endpoint": settings.endpoint.name,
                    "model": settings.model,
                    "temperature": settings.temperature,
                    "max_tokens": settings.max_tokens,
                }
            )
        endpoints = {s.endpoint.name: s.endpoint.describe() for s in setup.speakers.values()}
        return {
            "run_id": None,
            "scenario": {
                "id": scenario.id,
                "title": scenario.title,
                "question": scenario.question,
                "source_seed": scenario.source_seed,
                "path": str(loaded_scenario.path),
                "sha256": loaded_scenario.sha256,
            },
            "protocol": setup.protocol.value,
            "rounds": setup.rounds,
            "max_rounds": setup.max_rounds,
            "token_budget": setup.token_budget,
            "generation": {"seed": setup.seed, "stream": setup.stream},
            "loops": setup.loops.model_dump(mode="json"),
            "personas": entries,
            "endpoints": list(endpoints.values()),
            "local_model": self._local_description(),
            "versions": _versions(),
            "started_at": None,
            "ended_at": None,
            "stop_reason": None,
            "error": None,
        }

    def _local_description(self) -> dict | None:
        if self.local is None:
            return None
        model = self.local.model
        return {
            "alias": model.alias,
            "path": str(model.path),
            "bundled": model.bundled,
            "chat_format": model.chat_format or "from the file",
            "context_tokens": self.local.ctx,
            "threads": self.local.threads,
        }

    async def execute(self, listener: Listener | None = None) -> RunResult:
        """Run the prepared debate, archiving as it goes; always leaves a finished manifest."""
        setup = self.setup
        assert setup is not None, "call prepare() first"
        self.folder = RunFolder.create(archive_dir(self.request.archive), setup.scenario.id)
        self.manifest.update(run_id=self.folder.run_id, started_at=now())
        self.folder.write_manifest(self.manifest)
        graph = Debate(setup).compile()
        final: dict[str, Any] = {}
        stop = StopReason.error
        error: str | None = None
        try:
            async for mode, chunk in graph.astream(
                {"turns": [], "events": []},
                {"recursion_limit": setup.recursion_limit()},
                stream_mode=["custom", "values"],
            ):
                if mode == "values":
                    final = chunk
                    continue
                if chunk["kind"] in ("turn", "event"):
                    record = chunk["turn"] if chunk["kind"] == "turn" else chunk["event"]
                    self.records.append(record)
                    self.folder.append(record)
                if listener:
                    listener(chunk)
            stop = StopReason(final.get("stop_reason") or StopReason.completed)
        except DelibError as exc:
            error = str(exc)
            died = self.local.death_note() if self.local else None
            if died:
                error = f"{error}; {died}"
        except GraphRecursionError:
            error = "internal: the debate graph ran past its step limit"
        except (asyncio.CancelledError, KeyboardInterrupt):
            stop = StopReason.interrupted
            self._finish(stop, None, final)
            raise
        except Exception as exc:
            self._finish(StopReason.error, f"internal error: {type(exc).__name__}: {exc}", final)
            raise
        return self._finish(stop, error, final)

    def _finish(self, stop: StopReason, error: str | None, final: dict) -> RunResult:
        assert self.folder is not None
        adaptations = [dataclasses.asdict(a) for a in self.clients.adaptations()]
        tokens = _token_totals(self.records)
        turns = sum(1 for r in self.records if r["type"] == "turn")
        events = sum(1 for r in self.records if r["type"] == "event")
        verdict = final.get("verdict")
        loop_events: dict[str, Any] = {"detections": {}, "interventions": {}, "deadlock": None}
        for r in self.records:
            if r["type"] != "event":
                continue
            if r["event"] == "loop_detected":
                counts = loop_events["detections"]
                counts[r["detector"]] = counts.get(r["detector"], 0) + 1
            elif r["event"] == "intervention":
                counts = loop_events["interventions"]
                counts[r["action"]] = counts.get(r["action"], 0) + 1
            elif r["event"] == "deadlock":
                loop_events["deadlock"] = r["diagnosis"]
        self.manifest.update(
            loop_events=loop_events,
            ended_at=now(),
            stop_reason=stop.value,
            error=error,
            tokens=tokens,
            turns=turns,
            events=events,
            verdict=verdict,
            adaptations=adaptations,
        )
        self.folder.write_manifest(self.manifest)
        self.folder.write_transcript(markdown(self.manifest, self.records))
        self.folder.close()
        return RunResult(
            run_id=self.folder.run_id,
            folder=self.folder.path,
            stop_reason=stop,
            error=error,
            turns=turns,
            events=events,
            tokens=tokens,
            verdict_valid=verdict.get("valid") if verdict else None,
        )

    async def close(self) -> None:
        """Close connections and stop the embedded server, if one was started."""
        try:
            await self.clients.close()
        finally:
            if self.local:
                self.local.cleanup()


async def run_debate(request: RunRequest, listener: Listener | None = None) -> RunResult:
    """Prepare, run and archive one debate."""
    run = Run(request)
    try:
        await run.prepare()
        return await run.execute(listener)
    finally:
        await run.close()
