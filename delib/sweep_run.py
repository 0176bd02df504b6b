"""Running a sweep: the cells that need it, several at once, within each server's limit.

``plan`` reads each cell's state from the archive and decides: run it (missing), resume it
(cut off: killed or interrupted; or failed, with ``retry_failed``: its finished turns are kept
and it goes on from there; a cell that failed before its run began starts afresh), or leave
it (done, running elsewhere, or out of attempts). ``run_sweep`` carries that out with at most
``concurrency`` debates at once; every server's ``max_concurrency`` holds across all of them
(``endpoints.Limits``). One ``sweep run`` per sweep and archive at a time (``SweepLock``).
"""

from __future__ import annotations

import asyncio
import fcntl
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from delib.archive import CHECKPOINT_FILE
from delib.endpoints import Limits
from delib.errors import DelibError, InputError
from delib.prepare import RunRequest
from delib.resume import resume_request
from delib.runner import Run, RunResult
from delib.scenarios import scenario_library
from delib.sweep import Cell, CellStatus, Sweep, note, request_for, save_spec, status, sweep_dir

Action = Literal["run", "resume", "retry", "skip"]


@dataclass
class Step:
    cell: Cell
    action: Action
    why: str
    attempt: int
    run_id: str | None = None  # the run to resume


def plan(sweep: Sweep, states: list[CellStatus], retry_failed: bool) -> list[Step]:
    """What to do with each cell."""
    cap = sweep.spec.max_attempts
    by_key = {s.cell_key: s for s in states}
    steps = []
    for cell in sweep.cells:
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


class SweepLock:
    """Held while one ``sweep run`` works on a sweep in an archive."""

    def __init__(self, archive: Path, name: str) -> None:
        folder = sweep_dir(archive, name)
        folder.mkdir(parents=True, exist_ok=True)
        self.handle = open(folder / "lock", "a+", encoding="utf-8")  # noqa: SIM115
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.handle.close()
            raise InputError(
                f"sweep '{name}' is already running on {archive} in another process; "
                "wait for it, or see `delib sweep status`"
            ) from None

    def release(self) -> None:
        fcntl.flock(self.handle, fcntl.LOCK_UN)
        self.handle.close()


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


def _request(sweep: Sweep, step: Step, archive: Path) -> tuple[RunRequest, Path | None]:
    if step.action in ("resume", "retry") and step.run_id:
        folder = archive / step.run_id
        if (folder / CHECKPOINT_FILE).exists():
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
    sweep: Sweep, step: Step, archive: Path, limits: Limits
) -> tuple[str, str | None, RunResult | None]:
    """Run one cell; (outcome, error line, result)."""
    note(archive, sweep.name, cell=step.cell.key, outcome="started", attempt=step.attempt,
         action=step.action)  # fmt: skip
    result: RunResult | None = None
    try:
        request, resume = _request(sweep, step, archive)
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


async def run_sweep(
    sweep: Sweep,
    archive: Path,
    *,
    concurrency: int | None = None,
    retry_failed: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> tuple[list[Step], Progress]:
    """Run what the sweep still needs; the steps planned and the final counts."""
    lock = SweepLock(archive, sweep.name)
    try:
        save_spec(archive, sweep)
        steps = plan(sweep, status(archive, sweep), retry_failed)
        todo = [s for s in steps if s.action != "skip"]
        progress = Progress(total=len(todo), skipped=len(steps) - len(todo))
        report = on_progress or (lambda p: None)
        report(progress)
        limits = Limits()
        queue = iter(todo)  # workers take the next cell as they free up: no task per cell

        async def worker() -> None:
            for step in queue:
                progress.running += 1
                report(progress)
                try:
                    outcome, error, result = await _one(sweep, step, archive, limits)
                finally:
                    progress.running -= 1
                if outcome == "finished":
                    progress.done += 1
                else:
                    progress.failed += 1
                if result is not None:
                    progress.tokens += result.tokens["total"]
                run_id = result.run_id if result else None
                progress.finished.append((step, run_id or "", error))
                report(progress)

        workers = min(concurrency or sweep.spec.concurrency, len(todo))
        await asyncio.gather(*(worker() for _ in range(workers)))
        return steps, progress
    finally:
        lock.release()
