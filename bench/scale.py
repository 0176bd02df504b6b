"""Scale-out on this machine: sweeps of short debates on a local Ray cluster of 1, 2 and 4
worker processes, with a real PostgreSQL server (started here, in a temporary folder) as the
archive, against two scripted servers (each in its own process) with a fixed reply latency.

    python -m bench.scale                     # 2,000 debates per worker count (about 15 min)
    python -m bench.scale --debates 200 --workers 1 2
    python -m bench.scale --tiny              # what the tests run

Measured, side by side in one run:
- throughput: debates and turns per second, from the first cell started to the last finished
  (the ledger's timestamps), and the wall time including the cluster's start;
- PostgreSQL write latency per turn: a probe commits a turn every 50 ms (``PgRun.add_turn``,
  what a debate does) while the workers run, and once with the machine idle; the folder
  archive's append (``RunFolder``) beside it;
- the per-turn cost of the database against the folder archive: one 10-round debate at 50 ms
  reply latency, alternating folder and PostgreSQL, in this process;
- LangGraph's async PostgreSQL saver: one saver shared by every run of a process against one
  saver per run (delib's choice; the saver serialises its calls with a lock of its own), and
  the pool's size, at 16 debates at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time
from contextlib import ExitStack
from datetime import datetime
from typing import Any

from bench.common import Stopwatch, fake_server, median, temp_archive
from delib.debate.runner import Run, RunRequest
from delib.models.config import Overrides

SCENARIOS = ["alignment-difficulty", "corrigibility"]
LATENCY = 0.05  # seconds before each reply


def _database(server: Any, name: str) -> str:
    import psycopg

    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return server.dsn.rsplit("/", 1)[0] + "/" + name


def _spec(urls: list[str], debates: int, concurrency: int) -> Any:
    from delib.experiments.sweep import SweepSpec

    per_seed = len(SCENARIOS) * len(urls)
    seeds = list(range(1, max(1, debates // per_seed) + 1))
    return SweepSpec.model_validate(
        {
            "scenarios": SCENARIOS,
            "models": [
                {"base_url": url, "model": "test-model", "label": f"server-{n}"}
                for n, url in enumerate(urls)
            ],
            "seeds": seeds,
            "rounds": 1,
            "token_budget": 10**9,
            "concurrency": concurrency,
            "stream": False,
        }
    )


def probe_turn(index: int) -> dict:
    """A turn of about the usual length, for timing a commit."""
    return {"type": "turn", "index": index, "round": 0, "speaker": "probe", "name": "Probe",
            "role": "probe", "kind": "statement",
            "text": "a turn of about the usual length " * 12}  # fmt: skip


class Probe:
    """Commits one turn every ``every`` seconds into a scratch run, on a thread of its own;
    ``stop`` gives the commit latencies."""

    def __init__(self, dsn: str, every: float = 0.05) -> None:
        from delib.archive.pgstore import PgStore

        self.store = PgStore.connect(dsn)
        self.handle = self.store.create_run("probe")
        self.every = every
        self.samples: list[float] = []
        self.connections: list[int] = []  # sessions open on the server, every tenth sample
        self.halt = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        index = 0
        while not self.halt.is_set():
            record = probe_turn(index)
            self.handle.inflight_start(index, {"speaker": "probe", "kind": "statement"})
            started = time.perf_counter()
            self.handle.add_turn(record)
            self.samples.append((time.perf_counter() - started) * 1000)
            if index % 10 == 0:
                row = self.store.conn.execute(
                    "SELECT count(*) AS n FROM pg_stat_activity "
                    "WHERE backend_type = 'client backend'"
                ).fetchone()
                self.connections.append(row["n"])
            index += 1
            self.halt.wait(self.every)

    def start(self) -> Probe:
        self.thread.start()
        return self

    def stop(self) -> dict:
        self.halt.set()
        self.thread.join(timeout=10)
        self.handle.close()
        self.store.close()
        return {**_latency(self.samples), "connections_max": max(self.connections, default=0)}


def _latency(samples: list[float]) -> dict:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    return {
        "n": len(samples),
        "p50_ms": round(statistics.median(ordered), 3),
        "p95_ms": round(ordered[int(0.95 * (len(ordered) - 1))], 3),
    }


def _ledger_span(store: Any, name: str) -> float:
    entries = store.ledger(name)
    starts = [e["at"] for e in entries if e["outcome"] == "started"]
    ends = [e["at"] for e in entries if e["outcome"] in ("finished", "failed")]
    if not starts or not ends:
        return 0.0
    first = datetime.fromisoformat(min(starts))
    last = datetime.fromisoformat(max(ends))
    return (last - first).total_seconds()


def ray_sweep(server: Any, urls: list[str], debates: int, workers: int, concurrency: int) -> dict:
    """One sweep on a fresh database and a fresh local cluster of ``workers`` processes."""
    from delib.archive.pgstore import PgStore
    from delib.experiments.ray_engine import run_on_ray
    from delib.experiments.sweep import expand

    dsn = _database(server, f"scale_w{workers}_{int(time.time())}")
    store = PgStore.connect(dsn)
    sweep = expand("scale", _spec(urls, debates, concurrency))
    probe = Probe(dsn).start()
    started = time.perf_counter()
    steps, progress = run_on_ray(
        sweep, store, address=None, workers=workers, concurrency=concurrency
    )
    wall = time.perf_counter() - started
    latency = probe.stop()
    span = _ledger_span(store, "scale")
    turns = store.conn.execute(
        "SELECT count(*) AS n FROM delib_records WHERE turn_index IS NOT NULL "
        "AND run_id NOT LIKE '%%-probe-%%'"
    ).fetchone()["n"]
    store.close()
    return {
        "workers": workers,
        "concurrency_per_worker": concurrency,
        "debates": len(sweep.cells),
        "done": progress.done,
        "failed": progress.failed,
        "turns": turns,
        "wall_s": round(wall, 1),
        "span_s": round(span, 1),
        "debates_per_s": round(progress.done / span, 2) if span else None,
        "turns_per_s": round(turns / span, 1) if span else None,
        "write_p50_ms": latency.get("p50_ms"),
        "write_p95_ms": latency.get("p95_ms"),
        "connections_max": latency.get("connections_max"),
    }


def idle_writes(server: Any, n: int = 400) -> dict:
    """Commit latency with nothing else running: the database against the folder archive."""
    from delib.archive.run_folder import RunFolder

    probe = Probe(_database(server, f"idle_{int(time.time())}"), every=0.0).start()
    while len(probe.samples) < n:
        time.sleep(0.01)
    pg = probe.stop()
    folder = RunFolder.create(temp_archive(), "probe")
    samples = []
    for index in range(n):
        record = probe_turn(index)
        folder.inflight_start(index, {"speaker": "probe", "kind": "statement"})
        started = time.perf_counter()
        folder.append(record)
        folder.inflight_done(index)
        samples.append((time.perf_counter() - started) * 1000)
    folder.close()
    return {"postgresql": pg, "folder": _latency(samples)}


async def _one_debate(base_url: str, archive: Any, rounds: int) -> tuple[float, int]:
    request = RunRequest(
        scenario=SCENARIOS[0],
        overrides=Overrides(base_url=base_url, model="test-model"),
        rounds=rounds,
        token_budget=10**9,
        archive=archive,
        stream=False,
    )
    run = Run(request)
    watch = Stopwatch()
    try:
        async for message in run.stream():
            if message["kind"] == "ready":
                watch.__enter__()
        watch.__exit__()
    finally:
        await run.aclose()
    assert run.result is not None and run.result.stop_reason.value == "completed"
    return watch.wall, len(run.result.turns)


def per_turn_cost(server: Any, base_url: str, repeats: int, rounds: int) -> dict:
    """One debate at a time, alternating folder and database archives: the extra wall time per
    turn the database costs."""
    dsn = _database(server, f"turns_{int(time.time())}")
    folder_walls, pg_walls = [], []
    turns = 0
    for _ in range(repeats):
        wall, turns = asyncio.run(_one_debate(base_url, temp_archive(), rounds))
        folder_walls.append(wall)
        wall, turns = asyncio.run(_one_debate(base_url, dsn, rounds))
        pg_walls.append(wall)
    return {
        "turns": turns,
        "folder_wall_s": round(median(folder_walls), 3),
        "postgresql_wall_s": round(median(pg_walls), 3),
        "extra_ms_per_turn": round((median(pg_walls) - median(folder_walls)) / turns * 1000, 2),
    }


def saver_settings(server: Any, urls: list[str], debates: int) -> list[dict]:
    """A local sweep of ``debates`` at 16 at once, with LangGraph's saver shared or per run,
    and the pool at 1 or 16 connections."""
    from delib.archive import pgrun
    from delib.archive.pgstore import PgStore
    from delib.experiments.sweep import expand
    from delib.experiments.sweep_run import run_sweep

    rows = []
    for shared, pool in ((False, 16), (True, 16), (False, 1)):
        dsn = _database(server, f"saver_{int(shared)}_{pool}_{int(time.time())}")
        store = PgStore.connect(dsn)
        pgrun.SHARED_SAVER = shared
        pgrun.POOL_SIZE = pool
        try:
            sweep = expand("saver", _spec(urls, debates, 16))
            started = time.perf_counter()
            _, progress = asyncio.run(run_sweep(sweep, store))
            wall = time.perf_counter() - started
        finally:
            pgrun.SHARED_SAVER = False
            pgrun.POOL_SIZE = None
            store.close()
        rows.append({
            "saver": "one shared by all runs" if shared else "one per run",
            "pool_connections": pool,
            "debates": progress.done,
            "wall_s": round(wall, 1),
            "debates_per_s": round(progress.done / wall, 2),
        })  # fmt: skip
    return rows


def measure(debates: int, workers: list[int], concurrency: int, tiny: bool = False) -> dict:
    from delib.testing.pgtemp import TempPostgres

    with ExitStack() as stack:
        server = stack.enter_context(TempPostgres(max_connections=400))
        urls = [stack.enter_context(fake_server(delay=LATENCY)) for _ in range(2)]
        result: dict[str, Any] = {"latency_s": LATENCY}
        result["idle_writes"] = idle_writes(server, 50 if tiny else 400)
        result["per_turn"] = per_turn_cost(server, urls[0], 1 if tiny else 3, 2 if tiny else 10)
        if not tiny:
            result["saver"] = saver_settings(server, urls, 200)
        result["ray"] = [ray_sweep(server, urls, debates, w, concurrency) for w in workers]
    return result


def section(result: dict, flag: str = "") -> list[str]:
    """The benchmarks page's section for these figures."""
    idle, turn = result["idle_writes"], result["per_turn"]
    lines = [
        "## 9. Scale-out: Ray and PostgreSQL",
        "",
        f"`python -m bench.scale{flag}`. Short debates (1 round, `alignment-difficulty` and "
        "`corrigibility`, about 6 model calls each, whole replies) against two scripted servers "
        f"in their own processes, {result['latency_s'] * 1000:.0f} ms before each reply, on a "
        "local Ray cluster started for each worker count, with a real PostgreSQL 15 (started "
        "in a temporary folder, `fsync` on) as the archive. Throughput is counted from the "
        "first cell started to the last finished (the ledger's times); the wall time adds the "
        "cluster's start. Write latency: a probe commits a turn every 50 ms while the sweep "
        "runs (`PgRun.add_turn`: the turn and the end of its in-flight row, one statement); "
        "connections: the most client sessions the server had open (driver, workers, probe).",
        "",
        "| worker processes | debates at once per worker | debates | done | failed | turns | "
        "wall (s) | span (s) | debates/s | turns/s | write p50 (ms) | write p95 (ms) | "
        "connections (max) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["ray"]:
        lines.append(
            f"| {r['workers']} | {r['concurrency_per_worker']} | {r['debates']} | {r['done']} "
            f"| {r['failed']} | {r['turns']} | {r['wall_s']} | {r['span_s']} | "
            f"{r['debates_per_s']} | {r['turns_per_s']} | {r['write_p50_ms']} | "
            f"{r['write_p95_ms']} | {r.get('connections_max')} |"
        )
    lines += [
        "",
        f"With nothing else running, committing a turn takes {idle['postgresql']['p50_ms']} ms "
        f"(p95 {idle['postgresql']['p95_ms']}) in PostgreSQL against "
        f"{idle['folder']['p50_ms']} ms (p95 {idle['folder']['p95_ms']}) for the folder "
        f"archive's flushed line. One debate of {turn['turns']} turns at "
        f"{result['latency_s'] * 1000:.0f} ms latency, alternating archives in one process: "
        f"{turn['folder_wall_s']} s in a folder, {turn['postgresql_wall_s']} s in PostgreSQL, "
        f"**{turn['extra_ms_per_turn']} ms more per turn**.",
        "",
    ]
    if result.get("saver"):
        lines += [
            "LangGraph's async PostgreSQL saver serialises every call on one saver with a lock "
            "of its own. A local sweep of 200 debates, 16 at once, in one process:",
            "",
            "| saver | pool connections | debates | wall (s) | debates/s |",
            "|---|---|---|---|---|",
        ]
        for r in result["saver"]:
            lines.append(
                f"| {r['saver']} | {r['pool_connections']} | {r['debates']} | {r['wall_s']} "
                f"| {r['debates_per_s']} |"
            )
        lines.append("")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--debates", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--concurrency", type=int, default=8, help="debates at once per worker")
    parser.add_argument("--tiny", action="store_true", help="a few debates on 1 worker")
    parser.add_argument("--markdown", action="store_true", help="print the page's section too")
    args = parser.parse_args()
    if args.tiny:
        result = measure(8, [1], 2, tiny=True)
    else:
        result = measure(args.debates, args.workers, args.concurrency)
    print(json.dumps(result, indent=2))
    if args.markdown:
        print("\n".join(section(result, " --tiny" if args.tiny else "")))


if __name__ == "__main__":
    main()
