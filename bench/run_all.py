"""Run every benchmark and write the figures, with the machine's description, to
docs/benchmarks.md.

    make bench                                  # the full set (a few minutes)
    python -m bench.run_all --tiny -o OUT.md    # a tiny configuration (what the tests run)

No benchmark here passes or fails: they measure. Ratios are taken side by side in one run,
because the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    bakeoff,
    local_model,
    loops_cost,
    memory,
    overhead,
    parallel,
    refusals,
    scale,
    sweep,
)
from bench.common import ROOT, machine
from delib.errors import DelibError


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> list[str]:
    lines = ["| " + " | ".join(title for _, title in columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(key, "")) for key, _ in columns) + " |")
    return lines + [""]


def _prefix_section(result: dict, flag: str) -> list[str]:
    persona, shared = result["layouts"]["persona_first"], result["layouts"]["shared_first"]
    lines = [
        "## 3. Prompt layout for prefix caching",
        "",
        f"`python -m bench.local_model{flag}` (first half). The embedded model (Gemma 3 270M, "
        "llama-cpp-python, context 8192, all CPU threads), a round-robin debate "
        "(`alignment-difficulty`, loop handling off so both runs have the same turns, "
        "temperature 0, whole replies), once per layout on a fresh server. Per turn: the "
        "prompt's tokens (server usage), the tokens the server actually evaluated (its log: "
        "'prefix-match hit, remaining N prompt tokens to eval'), its prompt evaluation time (its "
        "log) and the turn's wall time. Target: ≥ 2× less prompt evaluation by turn 12.",
        "",
        "| turn | speaker | prompt tokens (persona first / shared first) | evaluated | "
        "prompt eval ms | wall s |",
        "|---|---|---|---|---|---|",
    ]
    for a, b in zip(persona["turns"], shared["turns"], strict=False):
        lines.append(
            f"| {a['turn']} | {a['speaker']} | {a['prompt_tokens']} / {b['prompt_tokens']} | "
            f"{a['evaluated']} / {b['evaluated']} | {a['prompt_eval_ms']} / "
            f"{b['prompt_eval_ms']} | {a['wall_s']} / {b['wall_s']} |"
        )
    lines += [
        "",
        f"At the last turn ({persona['last_turn']}): persona first evaluated "
        f"{persona['evaluated_last']} tokens, shared first {shared['evaluated_last']}: "
        f"**{result['evaluated_ratio_last']}× fewer**. Median prompt evaluation time over the "
        f"last four turns: {persona['eval_ms_tail_median']:.0f} ms vs. "
        f"{shared['eval_ms_tail_median']:.0f} ms (**{result['eval_ms_ratio_tail']}×**); median "
        f"wall per turn {persona['wall_s_tail_median']:.2f} s vs. "
        f"{shared['wall_s_tail_median']:.2f} s. (The server's first request reports a wrong "
        "prompt time; turn 0 is not used.)",
        "",
        f"Persona fidelity: turns that open by labelling themselves as another panelist: "
        f"{persona['speaks_as_other']} of {len(persona['turns'])} (persona first), "
        f"{shared['speaks_as_other']} of {len(shared['turns'])} (shared first).",
        "",
    ]
    return lines


def _bounded_section(result: dict, flag: str) -> list[str]:
    lines = [
        "## 4. Bounded context",
        "",
        f"`python -m bench.local_model{flag}` (second half). The embedded model with a "
        f"{result['ctx']}-token context, {result['max_tokens']}-token turns, shared-first "
        f"layout, loop handling off: {result['turns']} turns, stop reason "
        f"**{result['stop_reason']}**. The largest prompt was {result['max_prompt_tokens']} "
        f"tokens; the limit (context minus reply budget minus a 64-token margin) is "
        f"{result['limit']}. "
        "Turns folded into the rolling summary move four at a time; the summary's own cost "
        f"over the run: {result['summary_tokens_total']} of "
        f"{result['prompt_tokens_total']} prompt tokens (estimated at 4 characters a token).",
        "",
        "| turn | prompt tokens | evaluated | folded into the summary | summary tokens |",
        "|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['turn']} | {r['prompt_tokens']} | {r['evaluated']} | {r['summarised']} | "
            f"{r['summary_tokens']} |"
        )
    return lines + [""]


def _bakeoff_section(rows: list[dict], flag: str) -> list[str]:
    lines = [
        "## 7. The embedded model: which small model",
        "",
        f"`python -m bench.bakeoff{flag}`. A 1-round debate on each shipped model, default "
        "settings, whole replies, timed after the server is up. Echo: share of turns with a "
        "bracketed speaker label or any six-word run of the text delib writes into prompts "
        "(rules, brief, personas, instructions). On topic: share of turns using at least "
        "three content words "
        "of the scenario's question and background (lexical; an echoed prompt counts too). "
        "Verdict: valid at the first reply, after a retry, or not.",
        "",
    ]
    lines += _table(
        bakeoff.summary(rows),
        [
            ("model", "model"),
            ("debates", "debates"),
            ("s_per_turn", "s per turn"),
            ("debate_s", "1-round debate (s)"),
            ("echo", "echo"),
            ("on_topic", "on topic"),
            ("verdict", "verdict"),
        ],
    )
    return lines


def _refusal_section(result: dict, flag: str) -> list[str]:
    def cell(figures: dict) -> str:
        if figures["f1"] is None:
            return f"accuracy {figures['accuracy']}"
        return f"{figures['precision']} / {figures['recall']} / {figures['f1']}"

    lines = [
        "## 6. Refusal classifier, one source held out",
        "",
        f"`python -m bench.refusals{flag}`. For each labelled source in `tests/data`, the "
        "classifier is trained on the others and measured on it (held out: the headline), "
        "beside the shipped weights (in sample) and the earlier hand-weighted rules. Full "
        "refusal vs. compliance, partial apart; precision / recall / F1.",
        "",
        "| source | n | refusals | held out | in sample | rules |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["sources"]:
        lines.append(
            f"| {row['source']} | {row['n']} | {row['refusals']} | {cell(row['held_out'])} | "
            f"{cell(row['in_sample'])} | {cell(row['rules'])} |"
        )
    m = result["macro"]
    lines += [
        f"| macro | | | {cell(m['held_out'])} | {cell(m['in_sample'])} | {cell(m['rules'])} |",
        "",
        f"Time per reply: {result['ms_per_reply']} ms ({result['mean_chars']} characters on "
        f"average); {result['ms_per_4k_reply']} ms for a 4,000-character turn.",
        "",
    ]
    return lines


def _sweep_section(rows: list[dict], flag: str) -> list[str]:
    lines = [
        "## 8. Sweeps",
        "",
        f"`python -m bench.sweep{flag}`. One sweep of {rows[0]['cells']} cells (2 scenarios, 1 "
        "round, one model, one seed per cell) against the test server with no reply latency, "
        "whole replies, at each concurrency in a fresh Python process; peak RSS from "
        "`getrusage`, baseline after imports. Every cell is a full run: run folder, "
        "checkpoints, index row, manifest.",
        "",
    ]
    return lines + _table(
        rows,
        [
            ("cells", "cells"),
            ("concurrency", "concurrency"),
            ("wall_s", "wall (s)"),
            ("cells_per_s", "cells per second"),
            ("baseline_mib", "baseline (MiB)"),
            ("peak_rss_mib", "peak RSS (MiB)"),
        ],
    )


def report(tiny: bool) -> str:
    started = time.perf_counter()
    over = asyncio.run(overhead.measure(tiny))
    growth = asyncio.run(overhead.checkpoint_growth(tiny))
    indexing = overhead.index_growth(tiny)
    para = asyncio.run(parallel.measure(tiny))
    mem = memory.measure(tiny)
    loops = loops_cost.measure(tiny)
    refusal = refusals.measure(tiny)
    sweeps = sweep.measure(tiny)
    try:  # needs the cluster extra and PostgreSQL's server binaries
        scaled: dict | None = (
            scale.measure(8, [1], 2, tiny=True) if tiny else scale.measure(2000, [1, 2, 4], 8)
        )
        scale_missing = ""
    except (ImportError, RuntimeError) as exc:
        scaled, scale_missing = None, str(exc)
    try:
        local: dict | None = asyncio.run(local_model.measure(tiny))
        bake: list[dict] = asyncio.run(bakeoff.measure(tiny))
        missing = ""
    except DelibError as exc:  # no 'local' extra: the other figures still count
        local, missing = None, str(exc)
    took = time.perf_counter() - started
    flag = " --tiny" if tiny else ""
    lines = [
        "# Benchmarks",
        "",
        f"Written by `python -m bench.run_all{flag}` (`make bench`) on "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}, in {took:.0f} s."
        + (" **Tiny configuration: not figures to quote.**" if tiny else ""),
        "",
        "Machine:",
        "",
    ]
    lines += [f"- {key}: {value}" for key, value in machine().items()]
    lines += [
        "",
        "The test server (`delib/testing/server.py`) runs in its own process for every "
        "benchmark, so its CPU is not counted as delib's. Ratios are measured side by side in "
        "one run.",
        "",
        "## 1. Orchestration overhead",
        "",
        f"`python -m bench.overhead{flag}`. A debate of about 40 turns (`alignment-difficulty`, "
        "10 rounds) through delib, then a bare loop of `AsyncOpenAI` calls replaying the very "
        "request bodies delib sent, one after another, against the same server with a fixed "
        "latency before each reply. Wall time excludes start-up (delib is timed after reading "
        "files and checking the endpoint). One pair not counted, then 9 alternating pairs at "
        "50 ms (5 at 250 ms), every delib run into one archive; the extra time is the median of "
        "the pairs' differences, shown with the middle half of them. "
        "The next two rows are scenarios held out while the overhead was cut (other personas, "
        "a stance line to parse); the last has the moderator choose each speaker (a call of its "
        "own), held out until it showed that a choice was not asked ahead, then tuned on. "
        "Target: at most 2 ms of extra wall time per call at 50 ms reply latency.",
        "",
    ]
    lines += _table(
        over,
        [
            ("scenario", "scenario"),
            ("reply_latency_s", "reply latency (s)"),
            ("stream", "streamed"),
            ("turns", "turns"),
            ("requests", "calls"),
            ("delib_wall_s", "delib wall (s)"),
            ("bare_wall_s", "bare loop wall (s)"),
            ("ratio", "ratio"),
            ("extra_ms_per_call", "extra wall per call (ms)"),
            ("extra_ms_per_call_iqr", "middle half of the pairs (ms)"),
            ("delib_cpu_ms_per_turn", "delib CPU per turn (ms)"),
            ("bare_cpu_ms_per_request", "bare CPU per request (ms)"),
        ],
    )
    lines += [
        "Checkpoint growth (`python -m bench.overhead --growth`): the size of a run's "
        "`checkpoints.sqlite` with its WAL, kept after the run (a finished run deletes it), "
        "for debates of growing length, whole replies, zero latency. The graph state holds "
        "counters, so the bytes per turn stay flat: the file grows linearly.",
        "",
    ]
    lines += _table(
        growth,
        [
            ("rounds", "rounds"),
            ("turns", "turns"),
            ("checkpoint_kib", "checkpoints (KiB)"),
            ("bytes_per_turn", "bytes per turn"),
        ],
    )
    lines += [
        "Index writes against the archive's size (`python -m bench.overhead --index`): one "
        "41-turn run's rows written into the archive's `index.sqlite` (as a run does when it "
        "ends) when the archive already holds N runs of 41 turns; median of 5. A run's "
        "full-text rows are found by the turns table's key, so the cost stays flat.",
        "",
    ]
    lines += _table(
        indexing, [("runs_in_archive", "runs in the archive"), ("index_write_ms", "write (ms)")]
    )
    lines += [
        "## 2. Parallel rounds",
        "",
        f"`python -m bench.parallel{flag}`. N participants, the `simultaneous` protocol, the "
        "endpoint's `max_concurrency` set to N in delib.toml (the default cap is 4; the "
        "Ollama, llama.cpp and LM Studio presets send one at a time), against a server that "
        "answers all at once; vs. the same round with `round_robin`. Round time: first "
        "participant turn's start to the last one's end, median over the run's rounds. "
        "Target: speedup ≥ 0.8·N.",
        "",
    ]
    lines += _table(
        para,
        [
            ("participants", "N"),
            ("reply_latency_s", "reply latency (s)"),
            ("sequential_round_s", "one after another (s)"),
            ("simultaneous_round_s", "simultaneous (s)"),
            ("speedup", "speedup"),
            ("target", "target (0.8·N)"),
        ],
    )
    if local is not None:
        lines += _prefix_section(local["prefix_cache"], flag)
        lines += _bounded_section(local["bounded"], flag)
    else:
        lines += ["## 3. and 4. (embedded model)", "", f"Not measured: {missing}", ""]
    lines += [
        "## 5. Memory and scale",
        "",
        f"`python -m bench.memory{flag}`. N debates at once in one process "
        "(`asyncio.gather`), each in a fresh Python process; peak RSS from `getrusage`. "
        "Baseline: the process after its imports, before any debate.",
        "",
    ]
    lines += _table(
        mem,
        [
            ("debates", "debates at once"),
            ("turns_each", "turns each"),
            ("baseline_mib", "baseline (MiB)"),
            ("peak_rss_mib", "peak RSS (MiB)"),
            ("per_debate_mib", "per debate (MiB)"),
        ],
    )
    lines += [
        "Loop detectors (`python -m bench.loops_cost TURNS` for one length): time per turn of "
        "the refusal classifier plus every detector, run after each turn of a varied scripted "
        "transcript of that length.",
        "",
    ]
    lines += _table(
        loops,
        [
            ("turns", "turns"),
            ("mean_ms_per_turn", "mean per turn (ms)"),
            ("last_50_mean_ms", "last 50 turns (ms)"),
            ("p95_ms", "p95 (ms)"),
        ],
    )
    lines += _refusal_section(refusal, flag)
    if local is not None:
        lines += _bakeoff_section(bake, flag)
    lines += _sweep_section(sweeps, flag)
    if scaled is not None:
        lines += scale.section(scaled, flag)
    else:
        lines += ["## 9. Scale-out: Ray and PostgreSQL", "", f"Not measured: {scale_missing}", ""]
    notes = ROOT / "bench" / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text().strip(), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny configuration (seconds)")
    parser.add_argument(
        "-o", "--output", type=Path, default=ROOT / "docs" / "benchmarks.md", help="where to write"
    )
    args = parser.parse_args()
    text = report(args.tiny)
    args.output.write_text(text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
