"""A sweep of many cells against a fast loopback server (in its own process): cells per second
and peak memory at several concurrencies. Each concurrency runs in a fresh Python process so
peaks do not carry over.

    python -m bench.sweep [--tiny]
    python -m bench.sweep --cells N --concurrency C --base-url URL   # one measurement
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from bench.common import fake_server, in_fresh_process, peak_rss_mib, temp_archive
from delib.experiments.sweep import SweepSpec, expand
from delib.experiments.sweep_run import run_sweep

SCENARIOS = ["alignment-difficulty", "corrigibility"]


async def _one(cells: int, concurrency: int, base_url: str) -> dict:
    seeds = list(range(1, cells // len(SCENARIOS) + 1))
    spec = SweepSpec.model_validate(
        {
            "scenarios": SCENARIOS,
            "models": [{"base_url": base_url, "model": "test-model"}],
            "seeds": seeds,
            "rounds": 1,
            "token_budget": 10**9,
            "concurrency": concurrency,
        }
    )
    sweep = expand("bench", spec)
    baseline = peak_rss_mib()
    started = time.perf_counter()
    steps, progress = await run_sweep(sweep, temp_archive())
    wall = time.perf_counter() - started
    assert progress.done == len(sweep.cells) and progress.failed == 0, progress
    return {
        "cells": len(sweep.cells),
        "concurrency": concurrency,
        "wall_s": round(wall, 1),
        "cells_per_s": round(len(sweep.cells) / wall, 2),
        "baseline_mib": round(baseline, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def measure(tiny: bool = False) -> list[dict]:
    cells = 20 if tiny else 1000
    rows = []
    with fake_server() as base_url:
        for concurrency in (1, 8) if tiny else (1, 8, 32):
            args = ["--cells", cells, "--concurrency", concurrency, "--base-url", base_url]
            rows.append(in_fresh_process("bench.sweep", *args))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="20 cells (for the tests)")
    parser.add_argument("--cells", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--concurrency", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cells:
        print(json.dumps(asyncio.run(_one(args.cells, args.concurrency, args.base_url))))
    else:
        print(json.dumps(measure(args.tiny), indent=2))


if __name__ == "__main__":
    main()
