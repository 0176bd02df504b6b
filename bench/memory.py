"""Peak memory of 1, 10 and 50 debates running at once in one process, against the test server
(in its own process). Each count runs in a fresh Python process so peaks do not carry over.

    python -m bench.memory [--tiny]
    python -m bench.memory --debates N --base-url URL   # one measurement (used by the above)
"""

from __future__ import annotations

import argparse
import asyncio
import json

from bench.common import fake_server, in_fresh_process, peak_rss_mib, temp_archive
from delib.debate.runner import RunRequest, run_debate
from delib.models.config import Overrides


async def _debates(n: int, base_url: str, rounds: int) -> dict:
    archive = temp_archive()
    baseline = peak_rss_mib()  # after imports, before any debate
    requests = [
        RunRequest(
            scenario="alignment-difficulty",
            overrides=Overrides(base_url=base_url, model="test-model"),
            rounds=rounds,
            token_budget=10**9,
            archive=archive,
        )
        for _ in range(n)
    ]
    results = await asyncio.gather(*(run_debate(r) for r in requests))
    assert all(r.stop_reason.value == "completed" for r in results), results
    return {
        "debates": n,
        "turns_each": results[0].turns,
        "baseline_mib": round(baseline, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }


def measure(tiny: bool = False) -> list[dict]:
    counts = (1, 3) if tiny else (1, 10, 50)
    rounds = 1 if tiny else 3
    rows = []
    with fake_server(delay=0.05) as base_url:
        for n in counts:
            row = in_fresh_process("bench.memory", "--debates", n, "--base-url", base_url,
                                   "--rounds", rounds)  # fmt: skip
            row["per_debate_mib"] = round((row["peak_rss_mib"] - row["baseline_mib"]) / n, 2)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="1 and 3 debates of one round")
    parser.add_argument("--debates", type=int, help="measure this many in this process")
    parser.add_argument("--base-url")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.debates:
        print(json.dumps(asyncio.run(_debates(args.debates, args.base_url, args.rounds))))
    else:
        print(json.dumps(measure(args.tiny), indent=2))


if __name__ == "__main__":
    main()
