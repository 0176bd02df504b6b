"""The refusal classifier on data it was not trained on: leave one source out.

    python -m bench.refusals [--tiny]

Sources are the labelled files in ``tests/data`` (the XSTest file split by model). For each
source, the learned model is trained (``delib.detect.train_refusal``, the ``train`` extra) on
all the others and measured on it: the headline. Beside it, the in-sample figure (trained on
everything, as shipped) and the first, hand-weighted rules (``refusal.rule_score`` at 0.5).
Binary: full refusal vs. compliance, partial apart; F1 is undefined for a source without
refusals, where accuracy is shown. Also the classifier's time per reply, with and without the
context it answers.
"""

from __future__ import annotations

import argparse
import json
import time

from delib.detect.learned import shipped
from delib.detect.refusal import classify, rule_score
from delib.detect.refusal_eval import GOLD_LABELS, binary_figures, context_of, macro
from delib.detect.train_refusal import default_files, figures, leave_one_out, sources

TINY_ROWS = 60  # rows per source in the tiny configuration


def rules_only(rows: list[dict]) -> dict:
    pairs = [
        (GOLD_LABELS[r["label"]], "refusal" if rule_score(r["text"]) >= 0.5 else "engaged")
        for r in rows
    ]
    return binary_figures(pairs)


def per_reply_ms(rows: list[dict], with_context: bool) -> float:
    started = time.perf_counter()
    for r in rows:
        classify(r["text"], context_of(r) if with_context else None)
    return (time.perf_counter() - started) / len(rows) * 1000


def measure(tiny: bool = False) -> dict:
    by_source = {
        name: rows[:TINY_ROWS] if tiny else rows for name, rows in sources(default_files()).items()
    }
    held_out = leave_one_out(by_source)
    in_sample = {name: figures(shipped(), rows) for name, rows in by_source.items()}
    rules = {name: rules_only(rows) for name, rows in by_source.items()}
    timed = [r for rows in by_source.values() for r in rows][: 300 if tiny else 2000]
    long_reply = "A turn of a long debate says something about oversight, and why. " * 60
    started = time.perf_counter()
    for _ in range(20):
        classify(long_reply, "Is oversight of a stronger system possible at all?")
    per_long = (time.perf_counter() - started) / 20 * 1000
    rows = [
        {
            "source": name,
            "n": held_out[name]["binary_n"],
            "refusals": held_out[name]["positives"],
            "held_out": held_out[name],
            "in_sample": in_sample[name],
            "rules": rules[name],
        }
        for name in sorted(by_source)
    ]
    return {
        "sources": rows,
        "macro": {
            "held_out": macro(list(held_out.values())),
            "in_sample": macro(list(in_sample.values())),
            "rules": macro(list(rules.values())),
        },
        "ms_per_reply": round(per_reply_ms(timed, True), 3),
        "ms_per_reply_no_context": round(per_reply_ms(timed, False), 3),
        "mean_chars": round(sum(len(r["text"]) for r in timed) / len(timed)),
        "ms_per_4k_reply": round(per_long, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a few rows per source (the tests)")
    print(json.dumps(measure(parser.parse_args().tiny), indent=2))


if __name__ == "__main__":
    main()
