"""Benchmarks on the embedded model (needs the 'local' extra): the prompt layout for prefix
caching, and a long debate in a small context.

    python -m bench.local_model [--tiny]

llama-cpp-python's server logs, for every request, how much of the prompt matched the previous
one ("prefix-match hit, remaining N prompt tokens to eval") and how long the prompt took
("prompt eval time = X ms / N tokens"). Those lines are read from the server's log after every
turn. Replies are not streamed, so the server's own token usage is recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
from pathlib import Path

import yaml

from bench.common import ROOT, median, temp_archive
from delib.debate.runner import Run, RunRequest
from delib.detect.loops import LoopMode
from delib.models.config import Overrides

HIT = re.compile(r"(\d+) prefix-match hit, remaining (\d+) prompt tokens to eval")
EVAL = re.compile(r"prompt eval time =\s+([\d.]+) ms /\s+(\d+) tokens")


class LogReader:
    """New lines of the local server's log since the last read."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.offset = 0

    def take(self) -> str:
        path = self.run.local.log_path if self.run.local else None
        if path is None or not path.exists():
            return ""
        with path.open(encoding="utf-8", errors="replace") as handle:
            handle.seek(self.offset)
            text = handle.read()
            self.offset = handle.tell()
        return text


def _scenarios() -> Path:
    """alignment-difficulty with a short verdict: the figures are about turns, and a long
    verdict from the small model would only add minutes."""
    data = yaml.safe_load((ROOT / "scenarios" / "alignment-difficulty.yaml").read_text())
    data.setdefault("limits", {})["verdict_tokens"] = 32
    folder = Path(tempfile.mkdtemp(prefix="delib-bench-scenarios-"))
    (folder / "alignment-difficulty.yaml").write_text(yaml.safe_dump(data))
    return folder


async def debate(layout: str, rounds: int, max_tokens: int, ctx: int) -> tuple[list[dict], dict]:
    """One round-robin debate on the embedded model; per-turn prompt figures."""
    request = RunRequest(
        scenarios_dir=_scenarios(),
        scenario="alignment-difficulty",
        overrides=Overrides(max_tokens=max_tokens, temperature=0.0),
        rounds=rounds,
        token_budget=10**9,
        seed=0,
        stream=False,
        archive=temp_archive(),
        ctx=ctx,
        loops=LoopMode.off,
        prompt_layout=layout,
    )
    run = Run(request)
    rows: list[dict] = []
    log = LogReader(run)
    try:

        def on_chunk(chunk: dict) -> None:
            if chunk["kind"] == "ready":
                log.take()  # start-up lines
            if chunk["kind"] != "turn":
                return
            turn = chunk["turn"]
            text = log.take()
            hit = HIT.search(text)
            timing = EVAL.findall(text)
            prompt = turn["tokens"]["prompt"]
            rows.append(
                {
                    "turn": turn["index"],
                    "kind": turn["kind"],
                    "speaker": turn["speaker"],
                    "prompt_tokens": prompt,
                    "evaluated": int(hit.group(2)) if hit else prompt,
                    "prompt_eval_ms": float(timing[-1][0]) if timing else None,
                    "wall_s": turn["latency"],
                    "summarised": turn.get("omitted_turns", 0),
                    "summary_tokens": turn.get("summary_tokens", 0),
                    "text": turn["text"],
                }
            )

        async for message in run.stream():
            on_chunk(message)
    finally:
        await run.aclose()
    assert run.result is not None
    return rows, run.result.summary()


def _speaks_as_other(row: dict, names: dict[str, str]) -> bool:
    """A turn that opens by labelling itself as someone else ("[The Philosopher] ...")."""
    head = row["text"][:80].lower()
    return any(
        pid != row["speaker"] and (head.startswith(f"[{n.lower()}") or head.startswith(n.lower()))
        for pid, n in names.items()
    )


NAMES = {
    "societal-impacts": "The Moderator",
    "philosopher": "The Philosopher",
    "oversight": "The Oversight Researcher",
    "interpretability": "The Interpretability Researcher",
}


async def prefix_cache(tiny: bool) -> dict:
    rounds, max_tokens = (1, 8) if tiny else (3, 48)
    result: dict = {"layouts": {}}
    for layout in ("persona_first", "shared_first"):
        rows, summary = await debate(layout, rounds, max_tokens, 8192)
        turns = [r for r in rows if r["kind"] != "verdict"]
        last = turns[-1]
        tail = turns[-4:]
        result["layouts"][layout] = {
            "turns": turns,
            "stop_reason": summary["stop_reason"],
            "last_turn": last["turn"],
            "evaluated_last": last["evaluated"],
            "prompt_tokens_last": last["prompt_tokens"],
            "eval_ms_last": last["prompt_eval_ms"],
            "evaluated_tail_median": median([r["evaluated"] for r in tail]),
            "eval_ms_tail_median": median([r["prompt_eval_ms"] or 0 for r in tail]),
            "wall_s_tail_median": median([r["wall_s"] for r in tail]),
            "speaks_as_other": sum(_speaks_as_other(r, NAMES) for r in turns),
        }
    a, b = result["layouts"]["persona_first"], result["layouts"]["shared_first"]
    result["evaluated_ratio_last"] = round(a["evaluated_last"] / max(b["evaluated_last"], 1), 2)
    result["eval_ms_ratio_tail"] = round(
        a["eval_ms_tail_median"] / max(b["eval_ms_tail_median"], 1e-9), 2
    )
    return result


async def bounded(tiny: bool) -> dict:
    rounds, max_tokens, ctx = (1, 8, 1024) if tiny else (15, 48, 2048)
    rows, summary = await debate("shared_first", rounds, max_tokens, ctx)
    return {
        "ctx": ctx,
        "max_tokens": max_tokens,
        "stop_reason": summary["stop_reason"],
        "turns": len(rows),
        "rows": rows,
        "max_prompt_tokens": max(r["prompt_tokens"] for r in rows),
        "limit": ctx - max_tokens - 64,  # routing.CONTEXT_MARGIN
        "summary_tokens_total": sum(r["summary_tokens"] for r in rows),
        "prompt_tokens_total": sum(r["prompt_tokens"] for r in rows),
    }


async def measure(tiny: bool = False) -> dict:
    return {"prefix_cache": await prefix_cache(tiny), "bounded": await bounded(tiny)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="short debates with short turns")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.tiny)), indent=2))


if __name__ == "__main__":
    main()
