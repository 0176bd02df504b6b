"""Running a sweep: the cells that need it, several at once, within each server's limit.

``plan`` reads each cell's state from the archive and decides: run it (missing), resume it
(cut off: killed or interrupted; or failed, with ``retry_failed``: its finished turns are kept
and it goes on from there; a cell that failed before its run began starts afresh), or leave
it (done, running elsewhere, or out of attempts). ``run_sweep`` carries that out with at most
``concurrency`` debates at once; every server's ``max_concurrency`` holds across all of them
(``endpoints.Limits``). One ``sweep run`` per sweep and archive at a time
(``folder_store.SweepLock``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from delib.archive.store import open_store
from delib.debate.prepare import RunRequest
from delib.debate.result import RunResult
from delib.debate.resume import resume_request
from delib.debate.runner import Run
from delib.errors import DelibError
from delib.experiments.sweep import Cell, CellStatus, Sweep, note, request_for, save_spec, status
from delib.library.scenarios import scenario_library
from delib.models.endpoints import Limits
from delib.models.pool import ServerPool

Action = Literal["run", "resume", "retry", "skip"]
WORKER = f"{socket.gethostname()}:{os.getpid()}"  # who started a cell, in the ledger


@dataclass
class Step:
    cell: Cell
    action: Action
    why: str
    attempt: int
    run_id: str | None = None  # the run to resume


def plan(
    sweep: Sweep, states: list[CellStatus], retry_failed: bool, cells: list[Cell] | None = None
) -> list[Step]:
    """What to do with each cell (of the sweep, or of ``cells``)."""
    cap = sweep.spec.max_attempts
    by_key = {s.cell_key: s for s in states}
    steps = []
    for cell in cells if cells is not None else sweep.cells:
        st = by_key[cell.key]
        attempt = st.attempts + 1
        if st.state == "done":
            steps.append(Step(cell, "skip", "done", st.attempts))
        elif st.state == "running":
            steps.append(Step(cell, "skip", "running in another process", st.attempts))
        elif st.attempts >= cap:
            steps.append(Step(cell, "skip", f"{st.state}; out of attempts ({cap})", st.attempts))
        elif st.state == "missing":
            steps.append(Step(cell, "run", "missing", attempt))
        elif st.state == "interrupted":
            latest = st.latest or {}
            run_id = latest.get("run_id")
            steps.append(Step(cell, "resume", "cut off", attempt, run_id))
        elif retry_failed:
            run_id = (st.latest or {}).get("run_id")
            steps.append(Step(cell, "retry", "failed", attempt, run_id))
        else:
            steps.append(Step(cell, "skip", "failed (--retry-failed tries it again)", st.attempts))
    return steps


@dataclass
class Progress:
    """Counts for a progress bar; ``on_progress`` gets it after every change."""

    total: int  # cells this invocation works on
    done: int = 0
    failed: int = 0
    running: int = 0
    tokens: int = 0
    skipped: int = 0
    finished: list[tuple[Step, str, str | None]] = field(default_factory=list)


def _request(sweep: Sweep, step: Step, archive: Any) -> tuple[RunRequest, Path | str | None]:
    if step.action in ("resume", "retry") and step.run_id:
        if archive.has_checkpoints(step.run_id):
            request, folder = resume_request(
                archive, step.run_id, step.cell.model.endpoint_options()
            )
            if request.sweep is not None:
                request.sweep = {**request.sweep, "attempt": step.attempt}
            return request, folder
    participants = None
    if sweep.spec.order == "shuffle":
        participants = list(scenario_library().get(step.cell.scenario).item.participants)
    return request_for(sweep, step.cell, archive, step.attempt, participants), None


async def _one(
    sweep: Sweep, step: Step, archive: Any, limits: Limits, pool: ServerPool
) -> tuple[str, str | None, RunResult | None]:
    """Run one cell; (outcome, error line, result)."""
    note(archive, sweep.name, cell=step.cell.key, outcome="started", attempt=step.attempt,
         action=step.action, worker=WORKER)  # fmt: skip
    result: RunResult | None = None
    try:
        request, resume = _request(sweep, step, archive)
        async with _pinned(step, request, archive, pool):
            run = Run(request, resume=resume, limits=limits)
            try:
                async for _ in run.stream():
                    pass
            finally:
                await run.aclose()
        result = run.result
    except DelibError as exc:  # before the run started: no run folder
        note(archive, sweep.name, cell=step.cell.key, outcome="failed", error=str(exc))
        return "failed", str(exc), None
    assert result is not None
    failed = result.stop_reason.value in ("error", "interrupted")
    outcome = "failed" if failed else "finished"
    note(archive, sweep.name, cell=step.cell.key, outcome=outcome, run_id=result.run_id,
         stop_reason=result.stop_reason.value, error=result.error_message)  # fmt: skip
    return outcome, result.error_message, result


@asynccontextmanager
async def _pinned(step: Step, request: RunRequest, archive: Any, pool: ServerPool) -> Any:
    """A pool model's debate speaks to one server of the pool throughout (``delib.models.pool``)."""
    urls = step.cell.model.pool
    if not urls:
        yield
        return
    before = None
    if step.run_id:  # a resume: the server it spoke to, if that one is still up
        with suppress(DelibError):
            old = archive.manifest(step.run_id).get("request") or {}
            before = (old.get("overrides") or {}).get("base_url")
    key_env = step.cell.model.api_key_env
    async with pool.pinned(urls, os.environ.get(key_env) if key_env else None, before) as url:
        request.overrides = dataclasses.replace(request.overrides, base_url=url)
        yield


def _claim(archive: Any, sweep: Sweep, step: Step, retry_failed: bool) -> tuple[Step, Any]:
    """In a database shared by several ``sweep run``s: the cell's lease and what to do with it
    now (another worker may have finished it since the plan was made); a skip, holding
    nothing, if another worker holds it. In a folder archive the sweep's lock covers it."""
    claim = getattr(archive, "claim", None)
    if claim is None:
        return step, None
    lease = claim(sweep.name, step.cell.key)
    if lease is None:
        return Step(step.cell, "skip", "running in another process", step.attempt), None
    (fresh,) = plan(sweep, status(archive, sweep, only=step.cell), retry_failed, [step.cell])
    if fresh.action == "skip":
        lease.release()
        return fresh, None
    return fresh, lease


async def run_sweep(
    sweep: Sweep,
    archive: Any,
    *,
    concurrency: int | None = None,
    retry_failed: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> tuple[list[Step], Progress]:
    """Run what the sweep still needs; the steps planned and the final counts. ``archive``:
    a folder, a postgresql:// address or an open store."""
    store = open_store(archive)
    try:
        return await _run_sweep(sweep, store, concurrency, retry_failed, on_progress)
    finally:
        if store is not archive:
            store.close()


async def _run_sweep(
    sweep: Sweep,
    archive: Any,
    concurrency: int | None,
    retry_failed: bool,
    on_progress: Callable[[Progress], None] | None,
) -> tuple[list[Step], Progress]:
    lock = archive.sweep_lock(sweep.name)
    try:
        save_spec(archive, sweep)
        steps = plan(sweep, status(archive, sweep), retry_failed)
        todo = [s for s in steps if s.action != "skip"]
        progress = Progress(total=len(todo), skipped=len(steps) - len(todo))
        await run_steps(
            sweep, archive, todo, concurrency or sweep.spec.concurrency, retry_failed,
            progress, on_progress,
        )  # fmt: skip
        return steps, progress
    finally:
        lock.release()


async def run_steps(
    sweep: Sweep,
    archive: Any,
    todo: list[Step],
    concurrency: int,
    retry_failed: bool,
    progress: Progress,
    on_progress: Callable[[Progress], None] | None = None,
) -> None:
    """Carry out ``todo`` with ``concurrency`` debates at once on this event loop (also what
    each Ray worker does with its share of a sweep)."""
    report = on_progress or (lambda p: None)
    report(progress)
    limits = archive.limits()
    pool = ServerPool(getattr(limits, "conn", None))
    queue = iter(todo)  # workers take the next cell as they free up: no task per cell

    async def worker() -> None:
        for planned in queue:
            step, lease = _claim(archive, sweep, planned, retry_failed)
            if step.action == "skip":
                progress.total -= 1
                progress.skipped += 1
                report(progress)
                continue
            progress.running += 1
            report(progress)
            try:
                outcome, error, result = await _one(sweep, step, archive, limits, pool)
            finally:
                progress.running -= 1
                if lease is not None:
                    lease.release()
            if outcome == "finished":
                progress.done += 1
            else:
                progress.failed += 1
            if result is not None:
                progress.tokens += result.tokens["total"]
            run_id = result.run_id if result else None
            progress.finished.append((step, run_id or "", error))
            report(progress)

    workers = min(concurrency, len(todo))
    try:
        async with checkpoint_pool(archive, workers):
            await asyncio.gather(*(worker() for _ in range(workers)))
    finally:
        getattr(limits, "close", lambda: None)()


@asynccontextmanager
async def checkpoint_pool(archive: Any, size: int) -> AsyncIterator[None]:
    """A database archive's checkpoints share one connection pool while the sweep runs."""
    dsn = getattr(archive, "dsn", None)
    if dsn is None:
        yield
        return
    from delib.archive.pgrun import checkpoint_pool as pool

    async with pool(dsn, size):
        yield
