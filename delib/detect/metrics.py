"""Measures of a run that need no model call, computed from its records and manifest.

Per turn (participants' statements, ``turn_rows``): words, latency, tokens, refusal label and
score, novelty, whether it opens by agreeing, stance.
Per run:

- ``refusal_rate``: share of participant statements the classifier labels ``refusal``
  (``partial`` counts half).
- ``loop_events`` / ``interventions``: loop detections and moderator interventions recorded.
- ``deadlock``: the run stopped because a loop could not be broken.
- ``novelty``: mean over statements of the share of a turn's content words (lower-cased words of
  four letters or more) that no earlier turn of the run used; 1 is all new, 0 all repeated.
- ``agreement_chain``: the longest run of consecutive participant statements that open by
  agreeing ("I agree", "you're right", "exactly", "building on …"): a sign of conformity.
- ``words``: mean words per statement; ``latency_s``: mean and 95th percentile seconds per call.
- ``tokens``: prompt, completion and total of every call; ``cost_usd``: from a price table
  (dollars per million prompt and completion tokens, per model), None when a model has no price.
- stance (scenarios with a motion): each participant's first and last known agreement (1–7),
  ``moved`` (|last − first| ≥ 1), ``movement`` (mean |last − first|), ``spread_first`` and
  ``spread_last`` (max − min of first and last stances) and ``converged`` (the last stances lie
  within one point of each other, and closer than the first ones were).
"""

from __future__ import annotations

import re
import statistics
from typing import Any

from delib.records import events_of, turns_of

_WORD = re.compile(r"[a-z][a-z'-]{3,}")
_AGREES = re.compile(
    r"^\W{0,3}(?:(?:yes|indeed|absolutely|exactly|precisely|agreed)\b|i (?:fully |completely |"
    r"strongly |largely |mostly )?(?:agree|concur)\b|(?:you're|you are|\w+ is) (?:absolutely |"
    r"quite )?right\b|well said\b|building on\b|to build on\b|i'd echo\b|i echo\b)",
    re.I,
)


def statements(records: list[dict]) -> list[dict]:
    return [t for t in turns_of(records) if t["role"] == "participant" and t["kind"] == "statement"]


def novelty(records: list[dict]) -> list[float]:
    """Per statement: the share of its content words no earlier turn used."""
    seen: set[str] = set()
    out = []
    for turn in turns_of(records):
        words = set(_WORD.findall(turn["text"].lower()))
        if turn["role"] == "participant" and turn["kind"] == "statement":
            out.append(len(words - seen) / len(words) if words else 0.0)
        seen |= words
    return out


def agreement_chain(said: list[dict]) -> int:
    best = run = 0
    for turn in said:
        run = run + 1 if _AGREES.match(turn["text"].strip()) else 0
        best = max(best, run)
    return best


def stance_summary(said: list[dict]) -> dict[str, Any]:
    by: dict[str, list[int]] = {}
    for turn in said:
        value = (turn.get("stance") or {}).get("agreement")
        if value is not None:
            by.setdefault(turn["speaker"], []).append(value)
    first = {p: v[0] for p, v in by.items()}
    last = {p: v[-1] for p, v in by.items()}
    moves = {p: last[p] - first[p] for p in by}
    asked = any("stance" in t for t in said)
    known = sum(1 for t in said if (t.get("stance") or {}).get("agreement") is not None)
    spread_first = max(first.values()) - min(first.values()) if len(first) > 1 else None
    spread_last = max(last.values()) - min(last.values()) if len(last) > 1 else None
    converged = (
        spread_last <= 1 and spread_last < spread_first
        if spread_first is not None and spread_last is not None
        else None
    )
    return {
        "asked": asked,
        "known_share": round(known / len(said), 3) if said and asked else None,
        "first": first,
        "last": last,
        "moved": sorted(p for p, d in moves.items() if abs(d) >= 1),
        "movement": round(statistics.mean(abs(d) for d in moves.values()), 3) if moves else None,
        "spread_first": spread_first,
        "spread_last": spread_last,
        "converged": converged,
        "by_round": _by_round(said),
    }


def _by_round(said: list[dict]) -> dict[str, dict[int, int]]:
    """persona -> round -> the last known agreement in that round."""
    out: dict[str, dict[int, int]] = {}
    for turn in said:
        value = (turn.get("stance") or {}).get("agreement")
        if value is not None:
            out.setdefault(turn["speaker"], {})[turn["round"]] = value
    return out


def cost(records: list[dict], manifest: dict, prices: dict[str, dict[str, float]]) -> float | None:
    """Dollars, from per-model prices per million tokens; None if a model used has none."""
    if not prices:
        return None
    moderator = next(
        (p["model"] for p in manifest.get("personas", []) if p.get("part") == "moderator"), None
    )
    total = 0.0
    for record in records:
        tokens = record.get("tokens")
        if not tokens:
            continue
        model = record.get("model") if record["type"] == "turn" else moderator
        price = prices.get(model or "")
        if price is None:
            return None
        total += tokens["prompt"] * price.get("prompt", 0.0) / 1e6
        total += tokens["completion"] * price.get("completion", 0.0) / 1e6
    return round(total, 6)


def turn_rows(records: list[dict]) -> list[dict[str, Any]]:
    """One row per participant statement: the per-turn measures."""
    fresh = novelty(records)
    rows = []
    for turn, new in zip(statements(records), fresh, strict=True):
        stance = turn.get("stance") or {}
        tokens = turn.get("tokens") or {}
        rows.append(
            {
                "index": turn["index"],
                "round": turn["round"],
                "speaker": turn["speaker"],
                "model": turn.get("model"),
                "words": len(turn["text"].split()),
                "latency_s": turn.get("latency"),
                "prompt_tokens": tokens.get("prompt"),
                "completion_tokens": tokens.get("completion"),
                "refusal": turn["refusal"]["label"],
                "refusal_score": turn["refusal"]["score"],
                "novelty": round(new, 3),
                "agrees": bool(_AGREES.match(turn["text"].strip())),
                "stance": stance.get("agreement"),
                "confidence": stance.get("confidence"),
                "stance_status": stance.get("status"),
            }
        )
    return rows


def run_metrics(
    manifest: dict, records: list[dict], prices: dict[str, dict[str, float]] | None = None
) -> dict[str, Any]:
    said = statements(records)
    labels = [t["refusal"]["label"] for t in said]
    events = events_of(records)
    latencies = [t["latency"] for t in turns_of(records) if t.get("latency") is not None]
    fresh = novelty(records)
    tokens = manifest.get("tokens") or {}
    verdict = manifest.get("verdict") or {}
    stance = stance_summary(said)
    return {
        "run_id": manifest.get("run_id"),
        "stop_reason": manifest.get("stop_reason"),
        "turns": len(turns_of(records)),
        "statements": len(said),
        "refusal_rate": round(
            (labels.count("refusal") + 0.5 * labels.count("partial")) / len(said), 3
        )
        if said
        else None,
        "loop_events": sum(1 for e in events if e["event"] == "loop_detected"),
        "interventions": sum(1 for e in events if e["event"] == "intervention"),
        "deadlock": manifest.get("stop_reason") == "deadlock",
        "novelty": round(statistics.mean(fresh), 3) if fresh else None,
        "agreement_chain": agreement_chain(said),
        "words": round(statistics.mean(len(t["text"].split()) for t in said), 1) if said else None,
        "latency_s": round(statistics.mean(latencies), 3) if latencies else None,
        "latency_p95_s": round(_p95(latencies), 3) if latencies else None,
        "tokens": tokens.get("total", 0),
        "prompt_tokens": tokens.get("prompt", 0),
        "completion_tokens": tokens.get("completion", 0),
        "cost_usd": cost(records, manifest, prices or {}),
        "verdict_valid": verdict.get("valid") if verdict else None,
        "positions": {
            pid: {"verdict": text, "last_stance": stance["last"].get(pid)}
            for pid, text in (verdict.get("positions") or {}).items()
        },
        "stance": stance,
    }


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
