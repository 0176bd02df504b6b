"""Running one debate end to end: files in, graph run, archive out."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import platform
import sqlite3
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.errors import GraphRecursionError
from pydantic import ValidationError

from delib.archive import (
    CHECKPOINT_FILE,
    RunFolder,
    archive_dir,
    find_run,
    is_locked,
    read_manifest,
    read_records,
)
from delib.config import Config, Overrides, Resolver, SpeakerSettings
from delib.endpoints import Clients
from delib.errors import DelibError, InputError, UnknownIdError
from delib.graph import DEFAULT_TOKEN_BUDGET, Debate, DebateSetup, StopReason, now
from delib.index import Index
from delib.local import DEFAULT_CTX, LocalServer, model_for
from delib.loops import LoopConfig, LoopMode
from delib.personas import Persona, persona_library
from delib.render import markdown
from delib.scenarios import Protocol, cast_for, scenario_library

Listener = Callable[[dict], None]
Status = Callable[[str], None]

# Runs that ended on their own; only the others (killed, interrupted, failed) can be resumed.
FINISHED = ("completed", "max_rounds", "token_budget", "deadlock")
# Events written by resume itself: not part of the graph's state, kept across resumes.
RESUME_EVENTS = ("resumed", "turn_discarded", "truncated_line_dropped")


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
    prompt_layout: str | None = None  # persona_first | shared_first; None: per endpoint


def _key(record: dict) -> str:
    return json.dumps(record, sort_keys=True, ensure_ascii=False)


def request_to_dict(req: RunRequest) -> dict[str, Any]:
    """The request as the manifest keeps it, for resume: flags only, never a key."""
    o = req.overrides
    return {
        "scenario": req.scenario,
        "overrides": {
            "base_url": o.base_url,
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
        "prompt_layout": req.prompt_layout,
    }


def request_from_dict(data: dict[str, Any], archive: Path | None) -> RunRequest:
    o = dict(data.get("overrides") or {})
    o["gguf"] = Path(o["gguf"]) if o.get("gguf") else None
    return RunRequest(
        scenario=data["scenario"],
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
        prompt_layout=data.get("prompt_layout"),
    )


ENDPOINT_FLAGS = ("base_url", "endpoint", "api_key_env", "gguf", "model", "system_message")


def resume_request(
    archive: Path | None, wanted: str, changes: dict[str, Any] | None = None
) -> tuple[RunRequest, Path]:
    """What ``delib resume`` runs: the killed run's own request, with a new endpoint if
    ``changes`` gives one. Refuses finished, running and unresumable runs."""
    folder = find_run(archive_dir(archive), wanted)
    manifest = read_manifest(folder)
    run_id = folder.name
    stop = manifest.get("stop_reason")
    if stop in FINISHED:
        raise InputError(
            f"run {run_id} finished (stop reason: {stop}); only a run that was killed, "
            "interrupted or failed can be resumed"
        )
    if is_locked(folder):
        raise InputError(f"run {run_id} is still running in another process")
    if not manifest.get("request") or not (folder / CHECKPOINT_FILE).exists():
        raise InputError(
            f"run {run_id} has no checkpoints (it was made by an older delib); it cannot be resumed"
        )
    request = request_from_dict(manifest["request"], archive)
    changes = {k: v for k, v in (changes or {}).items() if v not in (None, {}, [])}
    flags = {k: v for k, v in changes.items() if k in ENDPOINT_FLAGS}
    if flags:
        current = dataclasses.asdict(request.overrides)
        if any(k in flags for k in ("base_url", "endpoint", "gguf")):
            # A new endpoint: nothing of the old one's choice carries over.
            for key in ENDPOINT_FLAGS:
                current[key] = None
            current["persona_models"] = {}
        current.update(flags)
        request.overrides = Overrides(**current)
    for key in ("ctx", "chat_format"):
        if key in changes:
            setattr(request, key, changes[key])
    return request, folder


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
        self.index: Index | None = None

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
            prompt_layout=req.prompt_layout,
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
            "request": request_to_dict(self.request),
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

    async def execute(
        self, listener: Listener | None = None, resume: Path | None = None
    ) -> RunResult:
        """Run the prepared debate, archiving as it goes; always leaves a finished manifest.

        With ``resume`` (a run folder), continue that run from its last checkpoint instead.
        """
        setup = self.setup
        assert setup is not None, "call prepare() first"
        if resume is None:
            self.folder = RunFolder.create(archive_dir(self.request.archive), setup.scenario.id)
            self.folder.lock()
            self.manifest.update(run_id=self.folder.run_id, started_at=now())
        else:
            self.folder = RunFolder(resume)
            self.folder.lock()
        folder = self.folder
        self._open_index()
        final: dict[str, Any] = {}
        stop = StopReason.error
        error: str | None = None
        debate = Debate(setup)
        config = {
            "configurable": {"thread_id": folder.run_id},
            "recursion_limit": setup.recursion_limit(),
        }
        try:
            async with AsyncSqliteSaver.from_conn_string(str(folder.checkpoint_path)) as saver:
                graph = debate.compile(checkpointer=saver)
                start: dict | None = {"turns": [], "events": []}
                if resume is not None:
                    start, final = await self._reconcile(graph, config, debate)
                folder.write_manifest(self.manifest)
                self._index_run()
                async for mode, chunk in graph.astream(
                    start, config, stream_mode=["custom", "values"], durability="sync"
                ):
                    if mode == "values":
                        final = chunk
                        continue
                    self._archive(chunk)
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

    def _archive(self, chunk: dict) -> None:
        """Keep what the graph streams: finished records in turns.jsonl (and the index),
        turns being spoken in the run folder's inflight files."""
        folder = self.folder
        assert folder is not None
        kind = chunk["kind"]
        if kind == "turn_start" and not chunk.get("recovered"):
            folder.inflight_start(
                chunk["index"],
                {"speaker": chunk["speaker"], "kind": chunk["turn_kind"], "started_at": now()},
            )
        elif kind == "token":
            folder.inflight_text(chunk["index"], chunk["text"])
        elif kind in ("turn", "event"):
            record = chunk["turn"] if kind == "turn" else chunk["event"]
            self.records.append(record)
            folder.append(record)
            if kind == "turn":
                folder.inflight_done(record["index"])
            self._index(lambda index: index.record_turn(folder.path, record))

    async def _reconcile(self, graph, config: dict, debate: Debate) -> tuple[dict | None, dict]:
        """Make the run folder agree with the last checkpoint before going on.

        turns.jsonl keeps what the checkpoint has; turns finished after it are handed to the
        graph to reuse (no second model call); turns cut off mid-reply are discarded and
        recorded; a truncated last line is cut off. Returns the graph input (None: go on from
        the checkpoint) and the state so far.
        """
        folder = self.folder
        assert folder is not None
        cut = folder.repair()
        records = read_records(folder.path)
        snapshot = await graph.aget_state(config)
        values: dict = dict(snapshot.values or {})
        state_turns = {t["index"]: t for t in values.get("turns", [])}
        state_events = values.get("events", [])
        # Compared as JSON: the checkpoint's copy went through another serialiser.
        state_keys = {_key(e) for e in state_events}
        kept: list[dict] = []
        seen: set[int] = set()
        recovered: dict[int, dict] = {}
        for record in records:
            if record["type"] == "turn":
                index = record["index"]
                if index in state_turns and index not in seen:
                    kept.append(record)
                    seen.add(index)
                elif index not in state_turns:
                    recovered[index] = record
            elif _key(record) in state_keys or record["event"] in RESUME_EVENTS:
                kept.append(record)
        # What the checkpoint has but the file lacks (the process died between the two).
        for index in sorted(set(state_turns) - seen):
            kept.append(state_turns[index])
        kept_keys = {_key(r) for r in kept}
        kept += [e for e in state_events if _key(e) not in kept_keys]
        at = now()
        added: list[dict] = []
        if cut:
            added.append(
                {"type": "event", "event": "truncated_line_dropped", "at": at, "bytes": cut}
            )
        discarded = []
        for entry in folder.take_inflight():
            if entry.get("index") in recovered or entry.get("index") in state_turns:
                continue
            discarded.append(entry.get("index"))
            added.append(
                {
                    "type": "event",
                    "event": "turn_discarded",
                    "at": at,
                    "turn": entry.get("index"),
                    "speaker": entry.get("speaker"),
                    "kind": entry.get("kind"),
                    "partial_chars": entry.get("partial_chars", 0),
                    "reason": "cut off mid-reply when the run died; spoken again",
                }
            )
        endpoints = sorted({p["endpoint"] for p in self.manifest.get("personas", [])})
        added.append(
            {
                "type": "event",
                "event": "resumed",
                "at": at,
                "after_turn": len(state_turns),
                "recovered_turns": sorted(recovered),
                "discarded_turns": discarded,
                "endpoints": endpoints,
            }
        )
        kept += added
        folder.rewrite(kept)
        self.records = kept
        debate.recovered = recovered
        old = read_manifest(folder.path)
        history = [
            *(old.get("resumed") or []),
            {
                "at": at,
                "after_turn": len(state_turns),
                "previous_stop_reason": old.get("stop_reason"),
                "previous_error": old.get("error"),
                "recovered_turns": sorted(recovered),
                "discarded_turns": discarded,
                "endpoints": endpoints,
            },
        ]
        self.manifest.update(
            run_id=folder.run_id,
            request=old.get("request", self.manifest.get("request")),
            started_at=old.get("started_at"),
            resumed=history,
        )
        start = {"turns": [], "events": []} if snapshot.created_at is None else None
        return start, values

    def _open_index(self) -> None:
        try:
            self.index = Index.open(archive_dir(self.request.archive))
        except (DelibError, sqlite3.Error) as exc:
            warnings.warn(f"the archive index is not updated during this run: {exc}", stacklevel=2)
            self.index = None

    def _index(self, action: Callable[[Index], None]) -> None:
        """Update the index; a failure is a warning (reindex repairs it), never a lost run."""
        if self.index is None:
            return
        try:
            action(self.index)
        except sqlite3.Error as exc:
            warnings.warn(
                f"the archive index is not updated during this run ({exc}); "
                "'delib transcripts reindex' repairs it",
                stacklevel=2,
            )
            self.index.close()
            self.index = None

    def _index_run(self) -> None:
        folder = self.folder
        assert folder is not None
        self._index(lambda index: index.record_run(folder.path, self.manifest, self.records))

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
        self._index_run()
        if stop.value in FINISHED:
            self.folder.drop_checkpoints()
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
            if self.index:
                self.index.close()
                self.index = None
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
