"""Sweeps on a Ray cluster: ``delib sweep run FILE --engine ray --archive postgresql://…``.

The driver plans the sweep from the database (as ``sweep_run.plan`` does on one machine), cuts
the cells still to do into shares, and hands each share to a Ray task. A task runs its share
on its worker's event loop, ``concurrency`` debates at once, exactly as a local ``sweep run``
does (``sweep_run.run_steps``): each cell is leased in PostgreSQL before it starts
(``PgStore.claim``) and read afresh under the lease, every server's ``max_concurrency`` holds
across the cluster (``pgsession.Slots``), and every finished turn is committed as it happens.

When a worker process dies (``kill -9``, a lost node), PostgreSQL ends its sessions, which
frees its leases, its runs' locks and its server slots; Ray runs its task again on another
worker (``max_retries``), and that task finds the cells the dead one finished done, resumes
the ones it had cut off from their checkpoints, and runs the rest. Nothing finished is lost
and no cell runs twice.

The database password never travels in a task: the driver gives the workers the address
without it, and a local cluster's workers inherit ``PGPASSWORD`` from the driver; on a real
cluster, give the nodes ``PGPASSWORD`` or a ``~/.pgpass`` (see docs/scale-out.md).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from delib.errors import InputError
from delib.experiments.sweep import Sweep, SweepSpec, expand, save_spec, status
from delib.experiments.sweep_run import Progress, Step, plan, run_steps

TASK_RETRIES = 5  # times Ray runs a share again after its worker died
SHARES_PER_WORKER = 4  # smaller shares balance the load; each costs a task start
OBJECT_STORE_BYTES = 200 * 1024 * 1024  # debates pass no large objects between tasks


def split_password(dsn: str) -> tuple[str, str | None]:
    """The address without its password (libpq key=value form), and the password."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    info = conninfo_to_dict(dsn)
    password = info.pop("password", None)
    return make_conninfo(**{k: v for k, v in info.items() if v is not None}), password


def _share(
    dsn: str, record: dict, keys: list[str], concurrency: int, retry_failed: bool
) -> dict[str, Any]:
    """One Ray task: run these cells of the sweep on this worker; what became of them."""
    from delib.archive.pgsession import connect
    from delib.archive.pgstore import PgStore

    sweep = expand(record["name"], SweepSpec.model_validate(record["spec"]), record["source"])
    wanted = set(keys)
    todo = [Step(c, "run", "planned", 0) for c in sweep.cells if c.key in wanted]
    store = PgStore(dsn, connect(dsn))
    progress = Progress(total=len(todo))
    try:
        asyncio.run(run_steps(sweep, store, todo, concurrency, retry_failed, progress))
    finally:
        store.close()
    return {
        "done": progress.done,
        "failed": progress.failed,
        "skipped": progress.skipped,
        "tokens": progress.tokens,
        "finished": [(s.cell.key, run_id, error) for s, run_id, error in progress.finished],
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }


def start_ray(address: str | None, workers: int) -> Any:
    """Connect to the cluster at ``address``, or start a local one with ``workers`` worker
    processes."""
    try:
        import ray
    except ImportError:
        raise InputError(
            "--engine ray needs Ray: pip install 'delib[cluster]'"
        ) from None  # fmt: skip
    options: dict[str, Any] = {
        "logging_level": logging.ERROR,
        "log_to_driver": False,
        "include_dashboard": False,
        "ignore_reinit_error": True,
    }
    if address:
        options["address"] = address
    else:
        options.update(num_cpus=workers, object_store_memory=OBJECT_STORE_BYTES)
    try:
        ray.init(**options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        reason = " ".join(str(exc).split())[:300]
        raise InputError(f"cannot start or reach {where}: {reason}") from None
    return ray


def run_on_ray(
    sweep: Sweep,
    store: Any,
    *,
    address: str | None,
    workers: int,
    concurrency: int,
    retry_failed: bool = False,
    on_progress: Callable[[Progress], None] | None = None,
) -> tuple[list[Step], Progress]:
    """Run what the sweep still needs on Ray; the steps planned and the final counts."""
    if not hasattr(store, "claim"):
        raise InputError(
            "--engine ray needs a PostgreSQL archive that every worker reaches: "
            "--archive postgresql://user@host/db (or $DELIB_ARCHIVE)"
        )
    save_spec(store, sweep)
    steps = plan(sweep, status(store, sweep), retry_failed)
    todo = [s for s in steps if s.action != "skip"]
    progress = Progress(total=len(todo), skipped=len(steps) - len(todo))
    report = on_progress or (lambda p: None)
    report(progress)
    if not todo:
        return steps, progress
    dsn, password = split_password(store.dsn)
    if password and not address:
        os.environ.setdefault("PGPASSWORD", password)  # inherited by the local workers
    ray = start_ray(address, workers)
    record = store.sweep_record(sweep.name)
    count = max(1, min(len(todo), workers * SHARES_PER_WORKER))
    shares = [[s.cell.key for s in todo[i::count]] for i in range(count)]
    task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=False)(_share)
    by_key = {s.cell.key: s for s in todo}
    pending = {task.remote(dsn, record, keys, concurrency, retry_failed): keys for keys in shares}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                keys = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:  # the share failed for good (after its retries)
                    line = " ".join(str(exc).split())[:300]
                    for key in keys:
                        progress.failed += 1
                        progress.finished.append((by_key[key], "", f"on Ray: {line}"))
                    continue
                progress.done += result["done"]
                progress.failed += result["failed"]
                progress.skipped += result["skipped"]
                progress.total -= result["skipped"]
                progress.tokens += result["tokens"]
                for key, run_id, error in result["finished"]:
                    progress.finished.append((by_key[key], run_id, error))
            progress.running = store.in_flight(sweep.name)
            report(progress)
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        ray.shutdown()
    progress.running = 0
    report(progress)
    return steps, progress
