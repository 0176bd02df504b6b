"""Parallel rounds: the ``simultaneous`` protocol with N participants against a server that
answers N requests at once, vs. the same round with one speaker after another.

    python -m bench.parallel [--tiny]

The endpoint's ``max_concurrency`` (delib.toml) is set to N, so delib may send all N at once;
with the default cap (4) or a preset for a one-at-a-time server (Ollama: 1), fewer go out
together. A round's wall time runs from its first participant turn's start to its last one's
end, read from the archived turns.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from datetime import datetime
from pathlib import Path

import yaml

from bench.common import fake_server, median, temp_archive
from delib.archive.reading import read_records
from delib.debate.runner import RunRequest, run_debate
from delib.library.scenarios import Protocol
from delib.models.config import Overrides

BASE_PERSONA = {
    "role": "a panelist in a benchmark debate",
    "prompt": "You are a careful panelist. Answer the question from your own angle, briefly.",
}


def _files(n: int) -> tuple[Path, Path]:
    """A scenario with N participants, and N personas for it."""
    root = Path(tempfile.mkdtemp(prefix="delib-bench-parallel-"))
    personas, scenarios = root / "personas", root / "scenarios"
    personas.mkdir()
    scenarios.mkdir()
    ids = [f"panelist-{i + 1}" for i in range(n)]
    for pid in ids:
        data = {"id": pid, "name": f"Panelist {pid[-1]}", **BASE_PERSONA}
        (personas / f"{pid}.yaml").write_text(yaml.safe_dump(data))
    scenario = {
        "id": f"bench-parallel-{n}",
        "title": f"Benchmark with {n} participants",
        "question": "Which research bet makes alignment most tractable?",
        "source_seed": "benchmark",
        "participants": ids,
        "protocol": "simultaneous",
        "rounds": 2,
        "interjections": False,
    }
    (scenarios / f"bench-parallel-{n}.yaml").write_text(yaml.safe_dump(scenario))
    return personas, scenarios


def _round_seconds(folder: Path) -> list[float]:
    rounds: dict[int, list[float]] = {}
    for record in read_records(folder):
        if record["type"] != "turn" or record["kind"] != "statement":
            continue
        start = datetime.fromisoformat(record["started_at"]).timestamp()
        rounds.setdefault(record["round"], []).extend([start, start + record["latency"]])
    return [max(times) - min(times) for _, times in sorted(rounds.items())]


async def _one(n: int, protocol: str, base_url: str, personas: Path, scenarios: Path) -> float:
    config = Path(tempfile.mkdtemp(prefix="delib-bench-config-"))
    (config / "delib.toml").write_text(
        f'[endpoints.bench]\nbase_url = "{base_url}"\nmodel = "test-model"\nmax_concurrency = {n}\n'
    )
    os.environ["DELIB_CONFIG_DIR"] = str(config)
    request = RunRequest(
        scenario=f"bench-parallel-{n}",
        overrides=Overrides(endpoint="bench"),
        protocol=Protocol(protocol),
        token_budget=10**9,
        archive=temp_archive(),
        personas_dir=personas,
        scenarios_dir=scenarios,
    )
    result = await run_debate(request)
    return median(_round_seconds(result.folder))


async def measure(tiny: bool = False) -> list[dict]:
    sizes = (2,) if tiny else (2, 4, 8)
    delay, chunk_delay = (0.05, 0.0) if tiny else (0.5, 0.01)
    rows = []
    with fake_server(delay=delay, chunk_delay=chunk_delay) as base_url:
        for n in sizes:
            personas, scenarios = _files(n)
            sequential = await _one(n, "round_robin", base_url, personas, scenarios)
            parallel = await _one(n, "simultaneous", base_url, personas, scenarios)
            rows.append(
                {
                    "participants": n,
                    "reply_latency_s": delay,
                    "sequential_round_s": round(sequential, 3),
                    "simultaneous_round_s": round(parallel, 3),
                    "speedup": round(sequential / parallel, 2),
                    "target": round(0.8 * n, 1),
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="N=2 only, short replies")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.tiny)), indent=2))


if __name__ == "__main__":
    main()
