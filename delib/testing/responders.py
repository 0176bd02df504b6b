"""Replies the test server makes up for delib's prompts: turns, speaker choices, verdicts.

Deterministic for a given request (seeded by its text) and varied across a long debate, as
real panel turns are, so the loop detectors see a healthy discussion.
"""

from __future__ import annotations

import json
import random
import re
import time
import zlib
from typing import Any

from delib.debate.prompts import SELECT_MARKER, TURN_MARKER, VERDICT_MARKER

# Enough words that replies drawn from them stay varied over a long debate (a healthy debate
# for the loop detectors), as real panel turns do.
_WORDS = (
    "oversight evidence proxy pointer feature circuit audit character uncertainty values "
    "verification capability trust incentive deployment society benchmark training reward "
    "generalisation interpretability honesty deception robustness transparency governance "
    "humility experiment calibration disagreement precedent threshold sycophancy scheming "
    "monitoring sandbagging elicitation debate amplification constitution preference pluralism "
    "legitimacy accountability regulator laboratory compute scaling emergence probe steering "
    "dictionary superposition activation attribution faithfulness reasoning transcript agent "
    "autonomy corrigibility shutdown goal mesa optimiser objective specification gaming "
    "distribution shift red-teaming evaluation forecasting timeline takeoff coordination treaty "
    "liability insurance audit-trail provenance watermark consent stakeholder minority culture "
    "tradeoff caution ambition curiosity stewardship fallibility revision counterexample anecdote "
    "metric survey dataset annotation rubric critique rebuttal synthesis consensus dissent"
).split()
_OPENERS = (
    "{who} argues that",
    "{who} doubts that",
    "In {who}'s view,",
    "{who} would add that",
    "Against the last point, {who} holds that",
    "{who} asks whether",
)


def _last_user(request: dict) -> str:
    for message in reversed(request.get("messages", [])):
        if message.get("role") == "user":
            return str(message.get("content", ""))
    return ""


def debate_responder(request: dict) -> str:
    """Plausible, varied replies for delib's prompts: turns, speaker choices and verdicts."""
    text = _last_user(request)
    all_text = json.dumps(request.get("messages", []))
    rng = random.Random(zlib.crc32(all_text.encode()))
    if SELECT_MARKER in text:
        ids = re.findall(r"^- ([a-z0-9][a-z0-9_-]*):", text, flags=re.M)
        return ids[-1] if ids else "nobody"
    if VERDICT_MARKER in text:
        tail = text[text.find('"positions"') :]
        positions = dict.fromkeys(re.findall(r'"([a-z0-9][a-z0-9_-]*)": "\.\.\."', tail), "")
        for pid in positions:
            positions[pid] = f"{pid} holds that {' '.join(rng.sample(_WORDS, 4))} matter most."
        verdict = {
            "summary": "The panel weighed " + ", ".join(rng.sample(_WORDS, 3)) + ".",
            "agreements": ["Verification gets harder as capability grows."],
            "disagreements": ["Whether character training generalises."],
            "open_questions": ["What evidence would change minds?"],
            "positions": positions,
        }
        return json.dumps(verdict)
    match = re.search(rf"{TURN_MARKER}, ([^.(]+)", text)
    who = match.group(1).strip() if match else "Speaker"
    sentences = []
    for _ in range(rng.randint(2, 3)):
        opener = rng.choice(_OPENERS).format(who=who)
        a, b, c, d, e = rng.sample(_WORDS, 5)
        sentences.append(f"{opener} {a} and {b} shape {c}, while {d} limits {e}.")
    said = " ".join(sentences)
    if "STANCE: <1-" in text:  # a scenario with a motion: a stance line, mostly
        model = str(request.get("model", ""))
        pick = random.Random(zlib.crc32(f"{model}{all_text}".encode()))
        if pick.random() < 0.9:
            said += f"\nSTANCE: {pick.randint(2, 6)}/7 CONFIDENCE: {pick.choice((0.5, 0.7, 0.9))}"
    return said


def conform(reply: str, schema: dict | None, invalid: bool) -> str:
    """A reply as a server with structured output gives it: JSON that fits ``schema``, built
    around the made-up reply; with ``invalid``, as a server that claims the format and
    ignores it."""
    if invalid:
        return "Sure! Here is my answer, not in JSON."
    try:
        json.loads(reply)
        return reply
    except json.JSONDecodeError:
        return json.dumps(_instance(schema or {}, reply))


def _instance(schema: dict, reply: str):
    if "enum" in schema:  # the value the reply names, else the first
        return next((v for v in schema["enum"] if str(v) in reply), schema["enum"][0])
    kind = schema.get("type")
    if kind == "object":
        return {k: _instance(v, reply) for k, v in schema.get("properties", {}).items()}
    return {"array": [], "boolean": True, "integer": 0, "number": 0}.get(kind, reply.strip())


def sse_events(
    reply: str,
    model: str,
    finish: str,
    usage: dict | None,
    chunk_chars: int,
    body: dict,
    shape: Any = None,
) -> list[bytes]:
    """A streamed reply as server-sent events: the text in chunks of ``chunk_chars``, the
    finish reason, the usage if there is one and the request asked for it, then ``[DONE]``.
    A ``fake_api.Shaped`` reply streams its reasoning field first, and its tool call in two
    deltas instead of content."""

    def event(choices: list[dict], extra: dict | None = None) -> bytes:
        chunk = {
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            **(extra or {}),
        }
        return f"data: {json.dumps(chunk)}\n\n".encode()

    step = max(1, chunk_chars)
    pieces = [reply[i : i + step] for i in range(0, len(reply), step)] or [""]
    events = []
    if shape is not None and shape.reasoning:
        for i in range(0, len(shape.reasoning), step):
            delta = {shape.field: shape.reasoning[i : i + step], "content": None}
            events.append(event([{"index": 0, "delta": delta, "finish_reason": None}]))
    if shape is not None and (shape.tool_calls or shape.content is None):
        pieces = []
    if shape is not None and shape.tool_calls:
        call = {"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "look_up", "arguments": ""}}  # fmt: skip
        rest = {"index": 0, "function": {"arguments": '{"q": "oversight"}'}}
        for part in (call, rest):
            delta = {"role": "assistant", "content": None, "tool_calls": [part]}
            events.append(event([{"index": 0, "delta": delta, "finish_reason": None}]))
    for i, piece in enumerate(pieces):
        delta = {"content": piece} if i else {"role": "assistant", "content": piece}
        events.append(event([{"index": 0, "delta": delta, "finish_reason": None}]))
    events.append(event([{"index": 0, "delta": {}, "finish_reason": finish}]))
    if usage is not None and (body.get("stream_options") or {}).get("include_usage"):
        events.append(event([], {"usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events
