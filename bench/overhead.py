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
from pathlib import Path

from openai import AsyncOpenAI

from bench.common import (
    Stopwatch,
    fake_server,
    in_fresh_process,
    median,
    server_requests,
    temp_archive,
)
from delib.debate.runner import Run, RunRequest, run_debate
from delib.models.config import Overrides

SCENARIO = "alignment-difficulty"  # moderator + 3 participants: 4 turns a round after the first
# Not looked at while the overhead was cut: other personas, with a stance line to parse.
HELD_OUT = ("cot-faithfulness", "who-decides-values")
# The moderator choosing each speaker, a call of its own: held out until it showed that a
# choice was not asked ahead (2.2 ms a call), then tuned on.
CHOOSING = "corrigibility"
# Alternating pairs counted at 50 ms: single pairs differ by up to ±1.5 ms a call here (the
# host's noise, and delib's own garbage collections landing in one run and not another).
PAIRS = 9


def debate_request(
    base_url: str,
    rounds: int,
    stream: bool,
    archive: Path | None = None,
    scenario: str = SCENARIO,
) -> RunRequest:
    return RunRequest(
        scenario=scenario,
        overrides=Overrides(base_url=base_url, model="test-model"),
        rounds=rounds,
        token_budget=10**9,
        archive=archive or temp_archive(),
        stream=stream,
    )


async def delib_once(
    base_url: str,
    rounds: int,
    stream: bool,
    archive: Path | None = None,
    scenario: str = SCENARIO,
) -> tuple[Stopwatch, int, list]:
    run = Run(debate_request(base_url, rounds, stream, archive, scenario))
    watch = Stopwatch()
    try:
        async for message in run.stream():
            if message["kind"] == "ready":  # prepared: files read, endpoint and model checked
                server_requests(base_url, clear=True)  # only the debate's own requests
                watch.__enter__()
        watch.__exit__()
    finally:
        await run.aclose()
    assert run.result is not None
    return watch, len(run.result.turns), server_requests(base_url, clear=True)


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


async def measure_at(
    delay: float, rounds: int, repeats: int, stream: bool, scenario: str = SCENARIO
) -> dict:
    """``repeats`` alternating pairs after one pair not counted (first-use costs: the graph
    compiled, the archive's index created), every delib run into the same archive, as a user's
    runs go into ./transcripts. The extra time is the median of the pairs' differences."""
    archive = temp_archive()
    with fake_server(delay=delay) as base_url:
        walls, bare_walls, cpus, bare_cpus = [], [], [], []
        turns = requests = 0
        for n in range(repeats + 1):
            watch, turns, bodies = await delib_once(base_url, rounds, stream, archive, scenario)
            bare = await bare_once(base_url, bodies)
            if n == 0:
                continue
            walls.append(watch.wall)
            cpus.append(watch.cpu)
            requests = len(bodies)
            bare_walls.append(bare.wall)
            bare_cpus.append(bare.cpu)
    pairs = list(zip(walls, bare_walls, strict=True))
    ratio = median([w / b for w, b in pairs])
    per_call = [(w - b) / max(requests, 1) * 1000 for w, b in pairs]
    return {
        "scenario": scenario,
        "reply_latency_s": delay,
        "stream": stream,
        "turns": turns,
        "requests": requests,
        "delib_wall_s": round(median(walls), 3),
        "bare_wall_s": round(median(bare_walls), 3),
        "ratio": round(ratio, 3),
        "delib_cpu_ms_per_turn": round(median(cpus) / turns * 1000, 2),
        "bare_cpu_ms_per_request": round(median(bare_cpus) / max(requests, 1) * 1000, 2),
        "extra_ms_per_turn": round(median([w - b for w, b in pairs]) / turns * 1000, 2),
        "extra_ms_per_call": round(median([w - b for w, b in pairs]) / requests * 1000, 2),
        # the middle half of the pairs' differences: how far the machine's noise reaches
        "extra_ms_per_call_iqr": middle_half(per_call),
    }


def middle_half(values: list[float]) -> str:
    """The first to the third quartile of ``values``, as "a – b"."""
    ordered = sorted(values)
    return "{:.2f} – {:.2f}".format(*(quartile(ordered, q) for q in (0.25, 0.75)))


def quartile(ordered: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks of a sorted list."""
    at = (len(ordered) - 1) * q
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


async def measure(tiny: bool = False) -> list[dict]:
    if tiny:
        return [await measure_at(0.0, 1, 1, True)]
    rows = []
    for delay in (0.05, 0.25):  # 9 pairs at 50 ms, where the target is; 5 at 250 ms
        for stream in (True, False):
            rows.append(await measure_at(delay, 10, PAIRS if delay < 0.1 else 5, stream))
    for scenario in (*HELD_OUT, CHOOSING):
        rows.append(await measure_at(0.05, 10, PAIRS, True, scenario))
    return rows


async def checkpoint_growth(tiny: bool = False) -> list[dict]:
    """Size of a run's checkpoints.sqlite (with its WAL) after debates of growing length:
    linear in the number of turns when each checkpoint holds counters, not the turn list. A
    finished run deletes its checkpoints; here they are kept to be measured."""
    from pathlib import Path

    from delib.archive import run_folder as archive

    archive.RunFolder.drop_checkpoints = lambda self: None
    rows = []
    with fake_server() as base_url:
        for rounds in (2, 4) if tiny else (5, 10, 20, 40):
            result = await run_debate(debate_request(base_url, rounds, stream=False))
            path = result.folder / archive.CHECKPOINT_FILE
            size = sum(
                Path(f"{path}{suffix}").stat().st_size
                for suffix in ("", "-wal")
                if Path(f"{path}{suffix}").exists()
            )
            turns = len(result.turns)
            rows.append(
                {
                    "rounds": rounds,
                    "turns": turns,
                    "checkpoint_kib": round(size / 1024, 1),
                    "bytes_per_turn": round(size / turns),
                }
            )
    return rows


def index_growth(
    tiny: bool = False, sizes: tuple[int, ...] = (0, 250, 500, 1000, 2000)
) -> list[dict]:
    """What writing one 41-turn run's index rows costs (as a run does when it ends) in an
    archive that already holds N runs: flat when a run's rows are found by key, linear in N
    when they are looked for by scanning."""
    import time

    from delib.archive.index import Index

    archive = temp_archive()
    turns = [
        {"type": "turn", "index": i, "round": 1 + i // 4, "speaker": f"p{i % 4}", "name": "P",
         "role": "participant", "kind": "statement", "text": f"turn {i} " + "words " * 50,
         "tokens": {"prompt": 1, "completion": 1}}
        for i in range(41)
    ]  # fmt: skip
    rows, held = [], 0
    with Index.open(archive) as index:
        for size in (0, 50, 100) if tiny else sizes:
            while held < size:
                run_id = f"filler-{held:05d}"
                (archive / run_id).mkdir()
                index.replace_turns(archive / run_id, _manifest(run_id), turns)
                held += 1
            (archive / "measured").mkdir(exist_ok=True)
            times = []
            for _ in range(5):
                started = time.perf_counter()
                index.replace_turns(archive / "measured", _manifest("measured"), turns)
                times.append((time.perf_counter() - started) * 1000)
            rows.append({"runs_in_archive": size, "index_write_ms": round(median(times), 2)})
    return rows


def _manifest(run_id: str) -> dict:
    return {"run_id": run_id, "scenario": {"id": SCENARIO}, "personas": []}


PARTS = ("inflight", "checkpoints", "index", "fsync", "loops")


def switch_off(parts: set[str]) -> None:
    """Replace parts of delib's archiving with no-ops, to see what each costs (never in a
    real run: these are what make a run resumable and searchable)."""
    from contextlib import asynccontextmanager

    from langgraph.checkpoint.memory import InMemorySaver

    import delib.archive.run_folder as archive
    import delib.debate.nodes as nodes
    import delib.debate.recorder as record
    import delib.debate.runner as runner
    import delib.debate.speaking as speaking
    from delib.detect.refusal import Classification

    if "inflight" in parts:
        for name in ("inflight_start", "inflight_text", "inflight_done"):
            setattr(archive.RunFolder, name, lambda *a: None)
    if "checkpoints" in parts:

        @asynccontextmanager
        async def memory(folder):
            yield InMemorySaver()

        runner.checkpoints = memory
    if "index" in parts:
        record.Index.open = classmethod(lambda cls, archive: None)
    if "fsync" in parts:
        archive.FSYNC_EACH_RECORD = False
    if "loops" in parts:
        nodes.detect = lambda turns, config: []
        speaking.classify = lambda text: Classification("engaged", 0.0)


async def parts_cost(repeats: int = 3) -> list[dict]:
    """CPU per turn of a 41-turn debate at zero latency with parts switched off, one set per
    fresh process (``--off``), side by side."""
    rows = []
    for off in ("", *PARTS, ",".join(PARTS)):
        rows.append(in_fresh_process("bench.overhead", "--off", off or "none",
                                     "--repeats", repeats))  # fmt: skip
    return rows


async def one_setting(off: str, repeats: int) -> dict:
    parts = set() if off == "none" else set(off.split(","))
    switch_off(parts)
    with fake_server() as base_url:
        await delib_once(base_url, 1, True)  # warm up
        cpus, walls = [], []
        for _ in range(repeats):
            watch, turns, _ = await delib_once(base_url, 10, True)
            cpus.append(watch.cpu / turns * 1000)
            walls.append(watch.wall / turns * 1000)
    return {
        "switched_off": off,
        "cpu_ms_per_turn": round(median(cpus), 2),
        "wall_ms_per_turn": round(median(walls), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="one short run (for the tests)")
    parser.add_argument(
        "--parts", action="store_true", help="what each part of archiving costs per turn"
    )
    parser.add_argument(
        "--growth", action="store_true", help="checkpoint file size against run length"
    )
    parser.add_argument(
        "--index", action="store_true", help="a run's index write against the archive's size"
    )
    parser.add_argument("--off", help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.off:
        print(json.dumps(asyncio.run(one_setting(args.off, args.repeats))))
    elif args.index:
        print(json.dumps(index_growth(args.tiny), indent=2))
    elif args.growth:
        print(json.dumps(asyncio.run(checkpoint_growth(args.tiny)), indent=2))
    elif args.parts:
        print(json.dumps(asyncio.run(parts_cost(args.repeats)), indent=2))
    else:
        print(json.dumps(asyncio.run(measure(args.tiny)), indent=2))


if __name__ == "__main__":
    main()
