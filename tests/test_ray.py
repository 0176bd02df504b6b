"""Sweeps on a real local Ray cluster with a real PostgreSQL archive: a sweep completes, and
killing a Ray worker process midway (SIGKILL) still finishes every cell exactly once with
contiguous turns. Models are reached over loopback HTTP through the real openai client."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from conftest import delib_process

from delib.archive.pgstore import PgStore
from delib.testing import FakeOpenAIServer

if os.environ.get("DELIB_REQUIRE_POSTGRES") != "1":
    pytest.importorskip("ray")  # CI (DELIB_REQUIRE_POSTGRES=1) fails instead


def sweep_file(path: Path, base_url: str, seeds: int, rounds: int = 1) -> Path:
    path.write_text(
        "name: on-ray\nscenarios: [alignment-difficulty, corrigibility]\n"
        f'models:\n  - {{base_url: "{base_url}", model: test-model}}\n'
        f"seeds: [{', '.join(str(s) for s in range(1, seeds + 1))}]\n"
        f"protocols: [round_robin]\nrounds: {rounds}\n",
        encoding="utf-8",
    )
    return path


def check_every_cell_once(store: PgStore, cells: int) -> list[tuple[str, dict]]:
    runs = list(store.sweep_manifests("on-ray"))
    assert len(runs) == cells  # no cell ran twice
    assert len({m["sweep"]["cell"] for _, m in runs}) == cells
    for run_id, manifest in runs:
        assert manifest["stop_reason"] == "completed", (run_id, manifest.get("error"))
        turns = [r["index"] for r in store.records(run_id) if r["type"] == "turn"]
        assert turns == list(range(len(turns))) and len(turns) == manifest["turns"]
    return runs


def test_a_sweep_on_ray_with_postgres_completes(pg, tmp_path):
    with FakeOpenAIServer(delay=0.02) as server:
        path = sweep_file(tmp_path / "s.yaml", server.base_url, seeds=2)
        proc = delib_process("sweep", "run", str(path), "--archive", pg, "--engine", "ray",
                             "--workers", "2", "--concurrency", "2", "--json")  # fmt: skip
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert json.loads(out)["done"] == 4
    store = PgStore.connect(pg)
    check_every_cell_once(store, 4)
    workers = {e["worker"] for e in store.ledger("on-ray") if e["outcome"] == "started"}
    assert all(":" in w for w in workers)  # which worker process started each cell
    store.close()


def test_killing_a_ray_worker_midway_still_finishes_every_cell_once(pg, tmp_path):
    with FakeOpenAIServer(delay=0.15, chunk_delay=0.01) as server:
        path = sweep_file(tmp_path / "s.yaml", server.base_url, seeds=4, rounds=2)
        proc = delib_process("sweep", "run", str(path), "--archive", pg, "--engine", "ray",
                             "--workers", "2", "--concurrency", "2", "--json")  # fmt: skip
        store = PgStore.connect(pg)
        victim = None
        deadline = time.monotonic() + 180
        while victim is None and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            ledger = store.ledger("on-ray") if "on-ray" in store.sweep_names() else []
            ended = {e["cell"] for e in ledger if e["outcome"] in ("finished", "failed")}
            busy = [e for e in ledger if e["outcome"] == "started" and e["cell"] not in ended]
            # A worker with a debate that has finished turns, in the middle of its run.
            for entry in busy:
                runs = list(store.sweep_manifests("on-ray", entry["cell"]))
                if runs and sum(r["type"] == "turn" for r in store.records(runs[0][0])) >= 2:
                    victim = entry
                    break
            time.sleep(0.1)
        assert victim is not None, "no worker was caught mid-debate"
        pid = int(victim["worker"].rsplit(":", 1)[1])
        assert pid != proc.pid
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=400)
    assert proc.returncode == 0, err
    runs = check_every_cell_once(store, 8)
    # The killed worker's debate went on elsewhere from its checkpoint, keeping its turns.
    ((run_id, manifest),) = [r for r in runs if r[1]["sweep"]["cell"] == victim["cell"]]
    assert manifest["resumed"] and manifest["resumed"][0]["after_turn"] >= 2
    starts = [e for e in store.ledger("on-ray", victim["cell"]) if e["outcome"] == "started"]
    assert len(starts) == 2 and starts[1]["worker"] != victim["worker"]
    store.close()
