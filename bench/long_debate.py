"""Per-turn wall time of whole debates from 20 to 1,000 rounds at zero latency (a benchmark,
not a test): does a turn cost the same at round 500 as at round 20?

    python -m bench.long_debate [--repeats N] [ROUNDS ...]      # default: 3 × 20 100 500

Each debate runs in-process against the scripted server in its own process (no delay, whole
replies), with the loop detectors on in ``warn`` mode (they watch every turn, nothing stops the
run) and a token budget that never binds; the server's context is 8,192 tokens, as a local
server's would be, so prompts are trimmed to fit and a rolling summary stands for what is left
out. Time from the run being ready (files read, server checked) to its end, per turn; each
length runs ``--repeats`` times, the lengths in turn (a noisy host slows them alike), and the
median is kept; the ratio is to the first length given. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import fake_server
from delib.debate.prepare import RunRequest
from delib.debate.runner import Run
from delib.detect.loops import LoopMode
from delib.models.config import Overrides

CONTEXT = 8192


async def one(base_url: str, rounds: int, archive: Path) -> dict:
    config = archive / "config"
    config.mkdir(parents=True, exist_ok=True)
    os.environ["DELIB_CONFIG_DIR"] = str(config)
    (config / "delib.toml").write_text(
        f'[endpoints.bench]\nbase_url = "{base_url}"\nmodel = "test-model"\n'
        f"context_tokens = {CONTEXT}\n"
    )
    request = RunRequest(
        scenario="alignment-difficulty", overrides=Overrides(endpoint="bench"), rounds=rounds,
        token_budget=10**12, archive=archive / "runs", stream=False, loops=LoopMode.warn,
    )  # fmt: skip
    run = Run(request)
    started = None
    try:
        async for message in run.stream():
            if message["kind"] == "ready":
                started = time.perf_counter()
        seconds = time.perf_counter() - (started or time.perf_counter())
    finally:
        await run.aclose()
    result = run.result
    turns = len(result.turns)
    return {"rounds": rounds, "turns": turns, "stop_reason": result.stop_reason.value,
            "seconds": round(seconds, 2),
            "ms_per_turn": round(1000 * seconds / turns, 3)}  # fmt: skip


def main(lengths: list[int], repeats: int = 3) -> list[dict]:
    runs: dict[int, list[dict]] = {n: [] for n in range(len(lengths))}
    with fake_server() as url, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(one(url, 2, Path(tmp) / "warm"))  # imports, caches, the first connection
        for repeat in range(repeats):
            for n, rounds in enumerate(lengths):
                runs[n].append(asyncio.run(one(url, rounds, Path(tmp) / f"a{n}-{repeat}")))
    rows = []
    for n in range(len(lengths)):
        times = sorted(r["ms_per_turn"] for r in runs[n])
        row = dict(runs[n][0])
        row["ms_per_turn"] = statistics.median(times)
        row["ms_per_turn_each"] = times
        rows.append(row)
    base = rows[0]["ms_per_turn"]
    for row in rows:
        row["ratio"] = round(row["ms_per_turn"] / base, 2)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rounds", nargs="*", type=int, default=[20, 100, 500])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(main(args.rounds, args.repeats), indent=1))
