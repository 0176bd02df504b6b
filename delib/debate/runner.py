"""Running a debate: the public entry points and the pipeline behind them.

::

    request ─► prepare ─► DebateContext ─► graph.astream ─► Recorder (turns.jsonl, manifest)
                                    └─ resume.reconcile, for a run that died ─┘

``Run.stream()`` yields every message of a run, in order: ``notice`` (things worth telling the
user while preparing), ``ready`` (the setup, once prepared), the graph's own messages (see
``delib.debate.speaking``), ``human_turn`` (a human seat's turn has come: its ``seat``, a
``seats.Seat``, is being asked), and ``result`` last. ``arun``/``run`` and
``aresume``/``resume`` consume that stream for you; the CLI prints it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import httpx
from langgraph.errors import GraphRecursionError

from delib.archive.folder_store import FolderStore
from delib.archive.run_folder import FINISHED, RunFolder
from delib.archive.store import open_store
from delib.debate import seats, tracing
from delib.debate.graph import compile_graph
from delib.debate.nodes import opening_turn
from delib.debate.prepare import RunRequest, prepare
from delib.debate.recorder import (
    Recorder,
    checkpoints,
    database_lost_error,
    disk_full_error,
    ended_on_its_own,
)
from delib.debate.result import RunResult
from delib.debate.resume import apply, history_entry, kept_records, reconcile, resume_request
from delib.debate.seats import Answerer, answerers_for
from delib.debate.speaking import ask_ahead, cancel_ahead
from delib.debate.state import DebateContext, StopReason
from delib.errors import DelibError, StoreError, disk_full
from delib.library.personas import Persona
from delib.library.scenarios import Scenario
from delib.models.config import Overrides
from delib.models.endpoints import Clients, Limits
from delib.models.local import LocalServer
from delib.records import Manifest, events_of, now, turns_of

Listener = Callable[[dict], None]


class Run:
    """One debate from request to archive. Use ``stream()`` once, then ``aclose()``."""

    def __init__(
        self,
        request: RunRequest,
        *,
        resume: Path | str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: Limits | None = None,
        human: Mapping[str, Answerer] | None = None,
        tracer_provider: Any = None,
    ) -> None:
        self.request = request
        self.tracer_provider = tracer_provider
        self.answerers = answerers_for(tuple(request.human), human)
        self.resume_folder = resume
        self.clients = Clients(transport=transport, limits=limits or Limits())
        self.local: LocalServer | None = None
        self.folder: Path | None = None  # the run folder, once it exists
        self.where = ""  # the run folder, or the run in its database, once it exists
        self.result: RunResult | None = None
        self._notices: list[str] = []
        self._store: Any = None
        self._own_store = False
        self.judge: Any = None  # the run's refusal judge, whose costs the manifest reports
        self.tracer: Any = None  # the run's OpenTelemetry spans, when traced (debate.tracing)

    async def _start_local(self, model: Any, ctx: int) -> LocalServer:
        self.local = LocalServer(model, ctx=ctx)
        await self.local.start()
        return self.local

    def _drain(self) -> list[dict]:
        notices = [{"kind": "notice", "text": text} for text in self._notices]
        self._notices.clear()
        return notices

    async def stream(self) -> AsyncIterator[dict]:
        """Prepare, run and archive, yielding every message (see the module docstring)."""
        prepared = await prepare(
            self.request, self.clients, self._start_local, self._notices.append
        )
        for notice in self._drain():
            yield notice
        self.tracer = tracing.tracer_for_run(self._notices.append, self.tracer_provider)
        ctx = dataclasses.replace(prepared.context, trace=self.tracer)
        self.judge = ctx.judge
        manifest = prepared.manifest
        yield {"kind": "ready", "context": ctx, "local": self.local, "resume": self.resume_folder}
        store = self._open_store()
        if self.resume_folder is None:
            folder = store.create_run(ctx.scenario.id)
            folder.lock()
            manifest.update(run_id=folder.run_id, started_at=now())
        elif isinstance(self.resume_folder, Path):
            folder = RunFolder(self.resume_folder)
            folder.lock()
        else:
            folder = store.open_run(self.resume_folder)
            folder.lock()
        self.folder = folder.path
        self.where = str(folder.path) if folder.path else f"run {folder.run_id} in {store.location}"
        if self.tracer is not None:
            self.tracer.run_started(ctx.scenario.id, ctx.protocol.value, folder.run_id)
        config = {
            "configurable": {"thread_id": folder.run_id},
            "recursion_limit": ctx.recursion_limit(),
        }
        recorder: Recorder | None = None
        final: dict[str, Any] = {}
        stop = StopReason.error
        error: BaseException | None = None
        context: DebateContext | None = None
        try:
            if self.resume_folder is None:
                # A new run's opening needs nothing from the checkpoints: it is asked before
                # they are opened and the graph starts, which then happens while it is answered.
                recorder = self._recorder(folder, store, manifest, [])
                context = dataclasses.replace(ctx, log=recorder)
                recorder.start()
                await ask_ahead(context, None, opening_turn({}, context))
                recorder.index_start()
            async with checkpoints(folder) as saver:
                graph = compile_graph(checkpointer=saver)
                start: dict | None = {}
                if context is None:
                    snapshot = await graph.aget_state(config)
                    final = dict(snapshot.values or {})
                    endpoints = sorted({p["endpoint"] for p in manifest["personas"]})
                    kept = kept_records(store, folder.run_id)
                    plan = reconcile(
                        folder.run_id, kept, final, snapshot.created_at is not None, endpoints
                    )
                    old = store.manifest(folder.run_id)
                    apply(folder, plan)
                    manifest.update(
                        run_id=folder.run_id,
                        request=old.get("request", manifest["request"]),
                        started_at=old.get("started_at"),
                        resumed=[*(old.get("resumed") or []), history_entry(old, plan, now())],
                    )
                    start = {} if plan.fresh else None
                    recorder = self._recorder(folder, store, manifest, plan.records)
                    context = dataclasses.replace(ctx, log=recorder, recovered=plan.recovered)
                    recorder.start()
                    recorder.index_start()
                for notice in self._drain():
                    yield notice
                async for chunk in seats.drive(graph, start, config, context, self.answerers):
                    yield chunk
                    for notice in self._drain():
                        yield notice
                final = dict((await graph.aget_state(config)).values)
                stop = StopReason(final.get("stop_reason") or StopReason.completed)
                if stop.value in FINISHED:
                    ended_on_its_own(saver)
        except DelibError as exc:
            error = exc
            died = self.local.death_note() if self.local else None
            if died:
                error = type(exc)(f"{exc}; {died}")
        except GraphRecursionError as exc:
            error = exc
        except (asyncio.CancelledError, KeyboardInterrupt, GeneratorExit):
            self._finish(folder, recorder, manifest, StopReason.interrupted, None, final)
            raise
        except Exception as exc:
            lost = database_lost_error(exc, store, folder.run_id) or disk_full_error(
                exc, store, folder.run_id
            )
            if lost is None:
                message = f"internal error: {type(exc).__name__}: {exc}"
                self._finish(folder, recorder, manifest, StopReason.error, message, final)
                raise
            error = lost  # the checkpointer lost the database: one line, the run resumable
        finally:
            if context is not None:
                cancel_ahead(context)
        message = None
        if error is not None:
            message = (
                "internal: the debate graph ran past its step limit"
                if isinstance(error, GraphRecursionError)
                else str(error)
            )
        self.result = self._finish(folder, recorder, manifest, stop, message, final, error)
        yield {"kind": "result", "result": self.result}

    def _recorder(self, folder: Any, store: Any, manifest: Manifest, records: list) -> Recorder:
        archive = store.path if isinstance(store, FolderStore) else None
        return Recorder(folder, archive, manifest, records, self._notices.append)

    def _finish(
        self,
        folder: RunFolder,
        recorder: Recorder | None,
        manifest: Manifest,
        stop: StopReason,
        message: str | None,
        final: dict,
        error: BaseException | None = None,
    ) -> RunResult:
        if recorder is None:  # failed before the graph started: the folder is as it was
            folder.close()
            if self.resume_folder is None:
                folder.write_manifest({**manifest, "stop_reason": stop.value, "error": message})
            records: list = []
        else:
            adaptations = [dataclasses.asdict(a) for a in self.clients.adaptations()]
            if self.judge is not None:
                recorder.manifest["refusal_judge"] = self.judge.stats()
            try:
                manifest = recorder.finish(stop.value, message, final.get("verdict"), adaptations)
            except (StoreError, OSError) as exc:  # the database went away, or the disk is full
                if isinstance(exc, OSError) and not disk_full(exc):
                    raise
                if error is None:
                    stop, message = StopReason.error, str(exc)
                    error = (
                        exc
                        if isinstance(exc, StoreError)
                        else disk_full_error(exc, self._store, folder.run_id)
                    )
                manifest = {**manifest, "stop_reason": stop.value, "error": message}
            try:
                recorder.close()
            except OSError as exc:  # a full disk: what could be written is written
                if not disk_full(exc):
                    raise
            records = recorder.records
        return RunResult(
            run_id=folder.run_id,
            folder=folder.path,
            stop_reason=stop,
            error=error,
            turns=turns_of(records),
            events=events_of(records),
            tokens=manifest.get("tokens") or {},  # type: ignore[typeddict-item]
            verdict=final.get("verdict"),
            manifest=manifest,
            archive=self._store.location if self._store is not None else "",
        )

    def _open_store(self) -> Any:
        """Where the run is kept; a store this run opened is closed by ``aclose``."""
        if self._store is None:
            where = self.request.archive
            if isinstance(self.resume_folder, Path):
                where = self.resume_folder.parent
            self._store = open_store(where)
            self._own_store = self._store is not where
        return self._store

    async def aclose(self) -> None:
        """Close connections and stop the embedded server, if one was started."""
        if self.tracer is not None:
            result = self.result
            stop = result.stop_reason.value if result else StopReason.interrupted.value
            self.tracer.run_ended(stop, result.error or result.error_message if result else None)
            self.tracer.close()
            self.tracer = None
        try:
            await self.clients.close()
        finally:
            if self.local:
                self.local.cleanup()
            if self._store is not None and self._own_store:
                self._store.close()
            self._store = None


async def _consume(run: Run, on_message: Listener | None) -> RunResult:
    try:
        async for message in run.stream():
            if on_message:
                on_message(message)
    finally:
        await run.aclose()
    assert run.result is not None
    return run.result


OVERRIDE_FIELDS = {f.name for f in dataclasses.fields(Overrides)}


def make_request(scenario: str | Scenario, **options: Any) -> RunRequest:
    """A ``RunRequest`` from keyword options: endpoint and model options (``base_url``,
    ``model``, ``endpoint``, ``persona_models``, ``temperature``, ``max_tokens``, ``gguf``, …)
    and run options (``rounds``, ``protocol``, ``seed``, ``archive``, ``personas``, …)."""
    overrides = {k: options.pop(k) for k in list(options) if k in OVERRIDE_FIELDS}
    for key in ("personas_dir", "scenarios_dir", "gguf"):
        source = overrides if key == "gguf" else options
        if source.get(key) is not None:
            source[key] = Path(source[key])
    try:
        return RunRequest(scenario=scenario, overrides=Overrides(**overrides), **options)
    except TypeError as exc:
        raise TypeError(f"unknown run option: {exc}") from None


async def arun(
    scenario: str | Scenario,
    *,
    personas: list[Persona] | None = None,
    on_message: Listener | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    human: Mapping[str, Answerer] | None = None,
    tracer_provider: Any = None,
    **options: Any,
) -> RunResult:
    """Run one debate and archive it; ``await delib.arun("alignment-difficulty", base_url=...)``.

    ``scenario`` is an id or a ``Scenario``; ``personas`` adds personas built in code.
    ``on_message`` sees every message as it happens (turns, tokens, events). Errors before the
    run starts (bad input, unreachable endpoint) raise; an error during the run ends it with
    ``stop_reason`` error and the exception in ``result.error`` (``raise_for_error()``).
    ``human`` seats people instead of models: participant id to a callable that takes a
    ``delib.debate.seats.Seat`` and returns the reply (see ``delib.debate.seats``).
    ``tracer_provider`` takes the run's OpenTelemetry spans (see ``delib.debate.tracing``).
    """
    seated = tuple(human or ())
    request = make_request(scenario, personas=list(personas or []), human=seated, **options)
    debate = Run(request, transport=transport, human=human, tracer_provider=tracer_provider)
    return await _consume(debate, on_message)


def _sync(coroutine: Any) -> Any:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    coroutine.close()
    raise RuntimeError(
        "an event loop is already running here (a notebook?): use 'await delib.arun(...)' "
        "or 'await delib.aresume(...)' instead"
    )


def run(scenario: str | Scenario, **options: Any) -> RunResult:
    """``arun`` for code without an event loop: ``delib.run("alignment-difficulty", ...)``."""
    return _sync(arun(scenario, **options))


async def aresume(
    run_id: str,
    *,
    archive: str | Path | None = None,
    on_message: Listener | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    human: Mapping[str, Answerer] | None = None,
    **changes: Any,
) -> RunResult:
    """Go on with a run that died, from its last finished turn. ``changes`` may name another
    endpoint (``base_url``, ``endpoint``, ``gguf``, ``model``, …); a run with human seats needs
    their answerers again (``human``)."""
    request, folder = resume_request(archive, run_id, changes)
    debate = Run(request, resume=folder, transport=transport, human=human)
    return await _consume(debate, on_message)


def resume(run_id: str, **options: Any) -> RunResult:
    """``aresume`` for code without an event loop."""
    return _sync(aresume(run_id, **options))


async def run_debate(
    request: RunRequest,
    listener: Listener | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> RunResult:
    """Prepare, run and archive one debate from a ``RunRequest``."""
    return await _consume(Run(request, transport=transport), listener)
