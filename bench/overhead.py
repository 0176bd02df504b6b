"""Orchestration overhead: a 40-turn delib debate vs. a bare AsyncOpenAI loop sending the same
requests to the same server (which runs in its own process, with a fixed reply latency).

    python -m bench.overhead [--tiny]

Both are timed in-process after start-up (delib after ``prepare``: files read, endpoint and
model checked). The bare loop replays the exact request bodies delib sent, one after another,
streaming as delib did. Runs alternate delib/bare so that noise hits both alike; medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json

from openai import AsyncOpenAI

from bench.common import Stopwatch, fake_server, median, server_requests, temp_archive
from delib.config import Overrides
from delib.run import Run, RunRequest

SCENARIO = "alignment-difficulty"  # moderator + 3 participants: 4 turns a round after the first


async def delib_once(base_url: str, rounds: int, stream: bool) -> tuple[Stopwatch, int, list]:
    request = RunRequest(
        scenario=SCENARIO,
        overrides=Overrides(base_url=base_url, model="test-model"),
        rounds=rounds,
        token_budget=10**9,
        archive=temp_archive(),
        stream=stream,
    )
    run = Run(request)
    try:
        await run.prepare()
        server_requests(base_url, clear=True)  # only the debate's own requests
        with Stopwatch() as watch:
            result = await run.execute()
    finally:
        await run.close()
    return watch, result.turns, server_requests(base_url, clear=True)


async def bare_once(base_url: str, bodies: list[dict]) -> Stopwatch:
    client = AsyncOpenAI(base_url=base_url, api_key="sk-bench", max_retries=0)
    try:
        await client.models.list()  # a warm connection, as delib has after its checks
        with Stopwatch() as watch:
            for body in bodies:
                if body.get("stream"):
                    stream = await client.chat.completions.create(**body)
                    async for _ in stream:
                        pass
                else:
                    await client.chat.completions.create(**body)
    finally:
        await client.close()
    return watch


async def measure_at(delay: float, rounds: int, repeats: int, stream: bool) -> dict:
    with fake_server(delay=delay) as base_url:
        walls, bare_walls, cpus, bare_cpus = [], [], [], []
        turns = requests = 0
        for _ in range(repeats):
            watch, turns, bodies = await delib_once(base_url, rounds, stream)
            walls.append(watch.wall)
            cpus.append(watch.cpu)
            requests = len(bodies)
            bare = await bare_once(base_url, bodies)
            bare_walls.append(bare.wall)
            bare_cpus.append(bare.cpu)
    ratio = median([w / b for w, b in zip(walls, bare_walls, strict=True)])
    return {
        "reply_latency_s": delay,
        "stream": stream,
        "turns": turns,
        "requests": requests,
        "delib_wall_s": round(median(walls), 3),
        "bare_wall_s": round(median(bare_walls), 3),
        "ratio": round(ratio, 3),
        "delib_cpu_ms_per_turn": round(median(cpus) / turns * 1000, 2),
        "bare_cpu_ms_per_request": round(median(bare_cpus) / max(requests, 1) * 1000, 2),
        "extra_ms_per_turn": round((median(walls) - median(bare_walls)) / turns * 1000, 2),
    }


async def measure(tiny: bool = False) -> list[dict]:
    if tiny:
        return [await measure_at(0.0, 1, 1, True)]
    rows = []
    for delay in (0.05, 0.25):
        for stream in (True, False):
            rows.append(await measure_at(delay, 10, 3, stream))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="one short run (for the tests)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.tiny)), indent=2))


if __name__ == "__main__":
    main()
