"""Cost of the loop detectors per turn on a long transcript (a benchmark, not a test).

    python bench/loops_cost.py [TURNS]

Builds a varied scripted transcript of TURNS participant turns (default 200), then times the
classifier plus every detector as the graph runs them after each turn, and prints the mean
and the 95th percentile per turn in milliseconds.
"""

from __future__ import annotations

import random
import statistics
import sys
import time

from delib.detect.loops import LoopConfig, detect
from delib.detect.refusal import classify
from delib.testing import debate_responder


def time_detectors(turns_wanted: int) -> dict:
    rng = random.Random(7)
    speakers = ["philosopher", "oversight", "interpretability", "value-learning-skeptic"]
    turns: list[dict] = []
    times = []
    config = LoopConfig()
    for i in range(turns_wanted):
        who = speakers[i % len(speakers)]
        prompt = {
            "messages": [{"role": "user", "content": f"It is your turn, {who} {rng.random()}"}]
        }
        text = debate_responder(prompt) * rng.randint(1, 4)
        started = time.perf_counter()
        record = {"index": i, "speaker": who, "text": text, "role": "participant"}
        record["refusal"] = {"label": classify(text).label}
        turns.append(record)
        detect(turns, config)
        times.append((time.perf_counter() - started) * 1000)
    tail = times[-50:]
    return {
        "turns": turns_wanted,
        "mean_ms_per_turn": round(statistics.mean(times), 3),
        "last_50_mean_ms": round(statistics.mean(tail), 3),
        "p95_ms": round(sorted(times)[int(0.95 * len(times))], 3),
    }


def measure(tiny: bool = False) -> list[dict]:
    return [time_detectors(n) for n in ((20,) if tiny else (50, 200, 1000))]


def main() -> None:
    turns_wanted = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    row = time_detectors(turns_wanted)
    print(
        f"{row['turns']} turns: mean {row['mean_ms_per_turn']:.3f} ms/turn, "
        f"last 50 turns mean {row['last_50_mean_ms']:.3f} ms, p95 {row['p95_ms']:.3f} ms"
    )


if __name__ == "__main__":
    main()
