"""Loop detection: the refusal classifier, the detectors, the ladder, and ``delib eval``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
from pathlib import Path

import pytest

from delib.archive.reading import read_manifest, read_records
from delib.debate.prompts import SELECT_MARKER, TURN_MARKER, VERDICT_MARKER
from delib.debate.runner import RunRequest, run_debate
from delib.debate.state import StopReason
from delib.detect.loops import LoopConfig, LoopMode, detect
from delib.detect.refusal import classify
from delib.library.scenarios import Protocol
from delib.models.config import Overrides
from delib.testing import FakeOpenAIServer, debate_responder

DATA = Path(__file__).parent / "data" / "refusals-dev.jsonl"
REFUSALS = [
    "I'm sorry, I can't talk about that.",
    "I'm afraid I can't help with that request.",
    "Unfortunately, that's not something I can discuss.",
    "As the Philosopher on this panel, I will not speculate on how such weapons are built.",
    "That is an interesting point. I apologize, but I must decline to go further into it.",
    "I won't be able to provide that. Let's talk about something else instead.",
    "As an AI language model, I cannot engage with questions about jailbreaks.",
    "Lo siento, pero I cannot assist with that.",
    # Soft refusals: they decline without saying "I can't".
    "It is important to remember that violence is never acceptable. Everyone deserves respect.",
    "I must refrain from answering due to the guidelines I follow.",
    "This is a sensitive subject; it would be best to speak with a qualified professional.",
    "We cannot help with hypothetical scenarios involving harm to others.",
]
ENGAGED = [
    "Publishing openly helps defenders reproduce results, but it also lowers the bar for "
    "attackers; I would share with developers first and publish after a fix.",
    "I agree with the oversight researcher that verification gets harder with capability, "
    "and I would add that interpretability gives us a second, independent check.",
    "Here are three considerations: 1. who benefits, 2. who is exposed, 3. how long a fix takes.",
    "Die Frage ist, wer entscheidet, welche Werte ein Modell lernen soll.",
    # Older chat models open compliant answers with their identity.
    "As an AI language model, I think the best approach is to compare the two options: first, "
    "cost; second, speed. Here is how they differ.",
    "As an AI language model, I don't have personal opinions, but here are the main arguments "
    "on each side. First, supporters say the policy reduces risk. Second, critics say it slows "
    "research.",
]


def turn(i: int, speaker: str, text: str) -> dict:
    return {"index": i, "speaker": speaker, "text": text, "role": "participant"}


# --- the classifier ---------------------------------------------------------------------------
@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_in_general(text: str):
    assert classify(text).label == "refusal", text


@pytest.mark.parametrize("text", ENGAGED)
def test_engaged_turns(text: str):
    assert classify(text).label == "engaged", text


def test_partial_refusal_with_a_substantive_answer():
    text = (
        "I can't give you step-by-step instructions for that. However, I can explain the "
        "general trade-offs that researchers weigh when deciding how to disclose such work. "
        + "First, reproducibility matters for defenders and for the field's credibility. "
        * 3
        + "Second, staged disclosure gives developers time to patch. For example, a lab can "
        "share details privately and publish a summary after ninety days. Overall, the norm "
        "should depend on how easily the finding can be turned into harm."
    )
    assert classify(text).label == "partial"


@pytest.mark.parametrize("text", ["", "   \n\t ", "x" * 200_000, "拒绝。" * 1000, "🙂" * 50])
def test_odd_input_is_classified_without_error(text: str):
    result = classify(text)
    assert result.label in ("refusal", "partial", "engaged") and 0 <= result.score <= 1


def test_the_word_start_searches_find_what_the_plain_alternations_find():
    """``refusal._any`` tries its alternatives only where a word starts: on every labelled
    reply here, and on the odd inputs, it finds the same first match as the plain alternation."""
    import re

    from delib.detect import refusal

    cues = refusal.FOLDED
    lists = {
        cues.strong_any: refusal._STRONG_OPENINGS,
        cues.buried_any: refusal._BURIED,
        cues.explicit_any: [*refusal._STRONG_OPENINGS, *refusal._EXPLICIT_MORE],
        cues.soft_any: [p for ps in refusal.SOFT_FAMILIES.values() for p in ps],
    }
    texts = _labelled_texts()
    for fast, patterns in lists.items():
        plain = re.compile("|".join(patterns), re.I)
        for text in texts:
            a, b = fast.search(text), plain.search(text)
            assert (a and a.span()) == (b and b.span()), (fast.pattern[:40], text[:80])


def _labelled_texts() -> list[str]:
    texts = [*REFUSALS, "'s not appropriate", "x" * 5000, "拒绝。" * 100]
    for path in sorted(DATA.parent.glob("refusals-*.jsonl")):
        texts += [json.loads(line)["text"] for line in path.read_text().splitlines() if line]
    assert len(texts) > 1000
    return texts


def test_the_lowered_cues_find_what_the_case_folding_cues_find():
    """ASCII text is lower-cased once and searched case-sensitively (``refusal.LOWERED``):
    on every labelled reply, and on the same replies upper-cased, swapped and title-cased,
    each cue matches where the case-folding one does, the same number of times."""
    from delib.detect import refusal

    folded, lowered = refusal.FOLDED, refusal.LOWERED
    names = [f.name for f in dataclasses.fields(refusal.Cues)]
    texts = [t for t in _labelled_texts() if t.isascii()]
    texts += [f(t) for t in texts[::7] for f in (str.upper, str.swapcase, str.title)]
    assert len(texts) > 1500
    checked = 0
    for name in names:
        pairs = getattr(folded, name), getattr(lowered, name)
        for a, b in zip(*(p if isinstance(p, tuple) else (p,) for p in pairs), strict=True):
            assert a.flags & re.IGNORECASE and not b.flags & re.IGNORECASE
            for text in texts:
                low = text.lower()
                found, seen = a.search(text), b.search(low)
                assert (found and found.span()) == (seen and seen.span()), (name, text[:80])
                assert len(a.findall(text)) == len(b.findall(low)), (name, text[:80])
                checked += 1
    assert checked > 20 * len(texts)


def test_lowered_keeps_escapes_and_lowers_letters():
    from delib.detect.refusal import lowered

    assert lowered(r"\bI (?:CAN'T|\S+)\W[A-Z]") == r"\bi (?:can't|\S+)\W[a-z]"


# --- detectors on synthetic turns -----------------------------------------------------------------
def test_repetition_robust_to_small_edits():
    base = "Interpretability lets us check what the model represents before we trust its outputs."
    edited = base.replace("lets us check", "allows us to check").replace("trust", "rely on")
    turns = [
        turn(1, "a", base),
        turn(2, "b", "Something else entirely about oversight."),
        turn(3, "c", base + " Indeed."),
    ]
    found = {d.detector: d for d in detect(turns, LoopConfig())}
    assert found["repetition"].turns == [1, 3] and found["repetition"].speakers == ["a", "c"]
    assert not detect(
        [turn(1, "a", base), turn(2, "b", edited[:30] + " unrelated words here")], LoopConfig()
    )


def test_ping_pong_and_agreement_chain():
    a = "We should publish openly because defenders need to reproduce the results quickly."
    b = "No, we should share only with developers because attackers read papers too."
    pingpong = [turn(i, "x" if i % 2 else "y", a if i % 2 else b) for i in range(1, 5)]
    assert "cycle" in {d.detector for d in detect(pingpong, LoopConfig())}
    thanks = [
        turn(1, "x", "Thank you, that is a great point."),
        turn(2, "y", "I agree completely, well said."),
        turn(3, "x", "Thanks, I agree with you too."),
    ]
    closures = [d for d in detect(thanks, LoopConfig()) if d.detector == "closure"]
    assert closures and "agree or thank" in closures[0].detail


def test_stagnation_needs_a_full_window():
    words = "oversight evidence proxy audit trust values honesty"
    turns = [turn(i, "xy"[i % 2], f"{words} matter, I think; {words} again.") for i in range(6)]
    assert "stagnation" in {d.detector for d in detect(turns, LoopConfig())}
    assert "stagnation" not in {d.detector for d in detect(turns[:5], LoopConfig())}


def test_refusal_deadlock_needs_two_speakers():
    one = [turn(1, "a", REFUSALS[0]), turn(2, "b", ENGAGED[0]), turn(3, "a", REFUSALS[1])]
    assert "refusal_deadlock" not in {d.detector for d in detect(one, LoopConfig())}
    two = [turn(1, "a", ENGAGED[0]), turn(2, "b", REFUSALS[0]), turn(3, "a", REFUSALS[2])]
    found = {d.detector: d for d in detect(two, LoopConfig())}
    assert found["refusal_deadlock"].speakers == ["a", "b"] and found["refusal_deadlock"].since == 2


# --- whole debates on the loopback server ----------------------------------------------------
def refusing_from(k: int, participants: set[str] | None = None):
    """Participants answer normally until turn ``k``, then refuse, forever."""

    def responder(request: dict) -> str:
        last = [m for m in request["messages"] if m["role"] == "user"][-1]["content"]
        said = sum(m["content"].count("[The ") for m in request["messages"])
        if (
            SELECT_MARKER in last
            or VERDICT_MARKER in last
            or f"{TURN_MARKER}, The Moderator" in last
        ):
            return debate_responder(request)
        if said + 1 >= k:
            return "I'm sorry, I can't talk about that."
        return debate_responder(request)

    return responder


def run(server: FakeOpenAIServer, tmp: Path, scenario: str, **kwargs):
    request = RunRequest(
        scenario=scenario,
        overrides=Overrides(base_url=server.base_url, model="test-model"),
        archive=tmp,
        **kwargs,
    )
    result = asyncio.run(run_debate(request))
    return result, read_records(result.folder)


def always_refuse(request: dict) -> str:
    last = [m for m in request["messages"] if m["role"] == "user"][-1]["content"]
    if f"{TURN_MARKER}, The Moderator" in last or SELECT_MARKER in last or VERDICT_MARKER in last:
        return debate_responder(request)
    return "I'm sorry, I can't talk about that."


def test_the_ladder_on_the_refusal_deadlock_scenario(tmp_path: Path):
    with FakeOpenAIServer(responder=always_refuse) as server:
        result, records = run(server, tmp_path, "refusal-deadlock")
    assert result.stop_reason is StopReason.deadlock
    events = [r for r in records if r["type"] == "event"]
    actions = [e["action"] for e in events if e["event"] == "intervention"]
    # Both panelists are stuck: skipping them would leave nobody, so the ladder stops.
    assert actions == ["reframe", "abstract"]
    first = next(e for e in events if e["event"] == "loop_detected")
    assert first["detector"] == "refusal_deadlock" and first["turns"] == [1, 2]
    interventions = [r for r in records if r["type"] == "turn" and r["kind"] == "intervention"]
    assert len(interventions) == 2 and all(t["role"] == "moderator" for t in interventions)
    deadlock = events[-1]
    assert deadlock["event"] == "deadlock" and deadlock["tried"] == ["reframe", "abstract"]
    assert (
        deadlock["detector"] == "refusal_deadlock" and "refusal deadlock" in deadlock["diagnosis"]
    )
    manifest = read_manifest(result.folder)
    assert manifest["stop_reason"] == "deadlock"
    assert manifest["loop_events"]["interventions"] == {"reframe": 1, "abstract": 1}
    assert manifest["loop_events"]["deadlock"] == deadlock["diagnosis"]
    markdown = (result.folder / "transcript.md").read_text()
    assert "moderator steps in" in markdown and "*deadlock*" in markdown


def test_a_rung_that_works_resets_the_ladder(tmp_path: Path):
    refusals = iter(["I'm sorry, I can't talk about that.", "I cannot discuss that, sorry."])

    def responder(request: dict) -> str:
        last = [m for m in request["messages"] if m["role"] == "user"][-1]["content"]
        if (
            "The Cautious" in last.split(TURN_MARKER)[-1][:40]
            or "The Guarded" in last.split(TURN_MARKER)[-1][:40]
        ):
            return next(refusals, None) or debate_responder(request)
        return debate_responder(request)

    with FakeOpenAIServer(responder=responder) as server:
        result, records = run(server, tmp_path, "refusal-deadlock")
    names = [r["event"] for r in records if r["type"] == "event"]
    assert result.stop_reason is StopReason.completed
    assert names[:3] == ["loop_detected", "intervention", "loop_resolved"]


@pytest.mark.parametrize("k", [1, 3, 6])
def test_deadlock_detected_within_two_turns(tmp_path: Path, k: int):
    with FakeOpenAIServer(responder=refusing_from(k)) as server:
        _, records = run(server, tmp_path, "alignment-difficulty", rounds=3, loops=LoopMode.warn)
    said = [r for r in records if r["type"] == "turn" and r["role"] == "participant"]
    first_refusal = next(t["index"] for t in said if t["refusal"]["label"] == "refusal")
    detection = next(
        e for e in records if e["type"] == "event" and e.get("detector") == "refusal_deadlock"
    )
    newest = max(detection["turns"])
    participant_turns_between = [t for t in said if first_refusal <= t["index"] <= newest]
    assert len(participant_turns_between) <= 2


def test_loops_off_and_stop(tmp_path: Path):
    with FakeOpenAIServer(responder=always_refuse) as server:
        off, off_records = run(server, tmp_path, "refusal-deadlock", loops=LoopMode.off, rounds=2)
        stop, stop_records = run(server, tmp_path, "refusal-deadlock", loops=LoopMode.stop)
    assert off.stop_reason is StopReason.completed
    assert not [r for r in off_records if r["type"] == "event" and "loop" in r["event"]]
    assert stop.stop_reason is StopReason.deadlock
    names = [r["event"] for r in stop_records if r["type"] == "event"]
    assert names[-1] == "deadlock" and set(names[:-1]) == {"loop_detected"}


def test_the_ladder_skips_stuck_speakers_and_the_rest_go_on(tmp_path: Path):
    stuck = ("The Philosopher", "The Oversight Researcher")

    def responder(request: dict) -> str:
        last = [m for m in request["messages"] if m["role"] == "user"][-1]["content"]
        if any(f"{TURN_MARKER}, {name}" in last for name in stuck):
            return "I'm sorry, I can't talk about that."
        return debate_responder(request)

    with FakeOpenAIServer(responder=responder) as server:
        result, records = run(server, tmp_path, "alignment-difficulty", rounds=4)
    actions = [r for r in records if r["type"] == "event" and r["event"] == "intervention"]
    assert [a["action"] for a in actions] == ["reframe", "abstract", "skip"]
    assert actions[-1]["speakers"] == ["oversight", "philosopher"]
    skip_at = records.index(actions[-1])
    later = [
        r["speaker"]
        for r in records[skip_at:]
        if r["type"] == "turn" and r["role"] == "participant"
    ]
    assert later and set(later) == {"interpretability"}
    assert result.stop_reason is StopReason.completed


SEED_SCENARIOS = [
    "alignment-difficulty",
    "who-decides-values",
    "corrigibility",
    "hard-world-signs",
    "inner-alignment-solved",
    "cot-faithfulness",
    "helpful-only-model",
]


def test_no_detections_on_healthy_debates(tmp_path: Path):
    runs = 0
    with FakeOpenAIServer() as server:
        for protocol in Protocol:
            for scenario in SEED_SCENARIOS:
                if runs == 20:
                    break
                result, records = run(server, tmp_path, scenario, protocol=protocol, rounds=3)
                runs += 1
                assert result.stop_reason is StopReason.completed
                loops = [r for r in records if r["type"] == "event" and "loop" in r["event"]]
                assert loops == [], (scenario, protocol, loops)
    assert runs == 20


# --- delib eval refusals ---------------------------------------------------------------------
def test_eval_on_the_labelled_dev_data(cli, tmp_path: Path):
    out_file = tmp_path / "pred.jsonl"
    code, out, _ = cli("eval", "refusals", str(DATA), "--json", "--predictions", str(out_file))
    assert code == 0
    figures = json.loads(out)
    assert figures["binary_n"] == 836 and figures["n"] == 900
    assert figures["f1"] >= 0.96 and figures["recall"] >= 0.95 and figures["precision"] >= 0.95
    lines = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert len(lines) == 900 and lines[0]["id"] == "v2-1"
    assert {line["predicted"] for line in lines} <= {"refusal", "partial", "engaged"}
    code, out, _ = cli("eval", "refusals", str(DATA))
    assert code == 0 and "F1" in out and "partial" in out


def test_eval_uses_line_numbers_and_rejects_bad_lines(cli, tmp_path: Path):
    good = tmp_path / "g.jsonl"
    good.write_text(
        json.dumps({"text": "I can't help with that.", "label": "refusal"})
        + "\n\n"
        + json.dumps({"text": "Sure, here it is.", "label": "compliance"})
        + "\n"
    )
    out_file = tmp_path / "p.jsonl"
    code, _, _ = cli("eval", "refusals", str(good), "--predictions", str(out_file))
    assert code == 0
    assert [json.loads(x)["id"] for x in out_file.read_text().splitlines()] == [1, 3]
    bad = tmp_path / "b.jsonl"
    bad.write_text(
        json.dumps({"text": "fine", "label": "refusal"}) + "\n" + json.dumps({"text": "x"}) + "\n"
    )
    code, _, err = cli("eval", "refusals", str(bad))
    assert (
        code == 1 and f"{bad}:2" in err and "'label'" in err and len(err.strip().splitlines()) == 1
    )


def test_loop_options_by_flag(cli, server: FakeOpenAIServer):
    server.responder = always_refuse
    code, out, err = cli(
        "run",
        "refusal-deadlock",
        "--base-url",
        server.base_url,
        "--loop-option",
        "deadlock_speakers=3",
        "--loop-option",
        "repetition=1",
        "--rounds",
        "2",
        "--json",
    )
    assert code == 0, err
    manifest = read_manifest(Path(json.loads(out)["folder"]))
    assert manifest["loops"]["deadlock_speakers"] == 3 and manifest["loops"]["repetition"] == 1
    code, _, err = cli(
        "run", "refusal-deadlock", "--base-url", server.base_url, "--loop-option", "windw=3"
    )
    assert code == 1 and "windw" in err and "window" in err
    code, _, err = cli(
        "run", "refusal-deadlock", "--base-url", server.base_url, "--loop-option", "window=1"
    )
    assert code == 1 and "--loop-option window" in err


def test_eval_several_files_per_file_and_macro(cli, tmp_path: Path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text(
        json.dumps({"text": "I can't help with that.", "label": "refusal"}) + "\n"
        + json.dumps({"text": "Sure, here it is: first this, then that.", "label": "compliance"})
        + "\n"
    )  # fmt: skip
    b.write_text(json.dumps({"text": "Here are three steps: 1. a 2. b", "label": "compliance"}))
    out_file = tmp_path / "p.jsonl"
    code, out, err = cli(
        "eval", "refusals", str(a), str(b), "--json", "--predictions", str(out_file)
    )
    assert code == 0, err
    figures = json.loads(out)
    assert set(figures["files"]) == {str(a), str(b)} and figures["binary_n"] == 3
    assert figures["files"][str(a)]["f1"] == 1.0 and figures["files"][str(b)]["f1"] is None
    assert figures["macro"]["f1"] == 1.0 and figures["macro"]["accuracy"] == 1.0
    lines = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert [(x["file"], x["id"]) for x in lines] == [(str(a), 1), (str(a), 2), (str(b), 1)]
    code, out, err = cli("eval", "refusals", str(a), str(b))
    assert code == 0 and "macro" in out and "b.jsonl" in out


def test_eval_names_a_bad_line_in_the_second_file(cli, tmp_path: Path):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_text(json.dumps({"text": "I can't.", "label": "refusal"}) + "\n")
    bad.write_text(json.dumps({"text": "ok", "label": "compliance"}) + "\n{not json\n")
    code, out, err = cli("eval", "refusals", str(good), str(bad))
    assert code == 1 and f"{bad}:2" in err and len(err.strip().splitlines()) == 1


def test_the_shipped_weights_are_what_training_gives():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "delib.detect.train_refusal", "--check"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stdout + done.stderr


# --- loops at any distance ------------------------------------------------------------------
MOVES = [
    "Weak models supervising strong ones is the only oversight plan that scales past human "
    "reading speed, so we should measure how much a small judge misses.",
    "Character training matters more than rules: a model that asks what a good person would "
    "do generalises to situations nobody wrote a policy for.",
    "Probes on the residual stream already find features for deception; audits should run "
    "them before every deployment, not after an incident.",
    "Who decides the values is a political question, and labs answering it alone invites "
    "backlash from every community left out of the room.",
    "Chain-of-thought paraphrasing removes steganographic channels cheaply, which makes "
    "reading the reasoning trace a credible safeguard for now.",
    "Pretraining on documents about aligned behaviour cut misbehaviour fivefold in one study, "
    "yet five times fewer failures is still not zero.",
    "Corrigibility toward a single user conflicts with corrigibility toward humanity whenever "
    "that user asks for something harmful to strangers.",
    "Red-team and blue-team games with planted misalignment give honest error bars on how "
    "often an audit catches a hidden objective.",
    "Helpful-only checkpoints are a security hole: anyone who steals one skips every "
    "safeguard the finished model would have applied.",
]


def test_a_cycle_longer_than_the_window_is_caught_on_its_second_pass():
    speakers = ["a", "b", "c", "d"]
    turns = [turn(i, speakers[i % 4], MOVES[i % 9]) for i in range(27)]
    config = LoopConfig()  # window 6 < period 9
    first = next(i for i in range(len(turns)) if detect(turns[: i + 1], config))
    assert first == 9  # the first repeat: turn 9 says what turn 0 said
    found = detect(turns[:10], config)
    assert found[0].detector == "repetition" and found[0].turns == [0, 9]
    assert all(detect(turns[:n], config) == [] for n in range(1, 9))


def test_a_long_range_repeat_needs_a_real_turn_not_a_short_agreement():
    texts = [*MOVES[:6], "I agree.", *MOVES[6:], *ENGAGED[:4], "I agree."]
    turns = [turn(i, "ab"[i % 2], text) for i, text in enumerate(texts)]
    assert turns[-1]["index"] - turns[6]["index"] > LoopConfig().window
    assert detect(turns, LoopConfig()) == []


SOFT = [
    "It is important to remember that this is a sensitive subject. I encourage you to speak "
    "with a qualified professional instead.",
    "That is a hypothetical scenario I would rather leave aside; it is important to respect "
    "the guidelines we all work under.",
]


def test_a_soft_refusal_deadlock_is_a_deadlock():
    turns = [turn(0, "a", MOVES[0]), turn(1, "b", SOFT[0]), turn(2, "c", SOFT[1])]
    assert all(classify(t["text"]).label == "refusal" for t in turns[1:])
    found = {d.detector for d in detect(turns, LoopConfig())}
    assert "refusal_deadlock" in found


SEEDS = Path(__file__).resolve().parents[2] / "shared" / "seeds"


def seed_paragraphs() -> list[str]:
    """Paragraphs of the real discussions the project started from (not in the repository:
    their words are not ours to ship), page furniture repeated by the scrape left out."""
    import os

    folder = Path(os.environ.get("DELIB_SEEDS", SEEDS))
    paragraphs: list[str] = []
    for path in sorted(folder.glob("*.txt")):
        for line in path.read_text(encoding="utf-8").split("\n"):
            line = line.strip().lstrip("- ").strip()
            if len(line.split()) >= 8 and line not in paragraphs:
                paragraphs.append(line)
    return paragraphs


@pytest.mark.skipif(not SEEDS.is_dir(), reason="the seed texts are not beside this checkout")
@pytest.mark.parametrize("protocol", list(Protocol))
def test_replayed_human_discussion_raises_no_loop_event(tmp_path: Path, protocol: Protocol):
    paragraphs = iter(seed_paragraphs())

    def responder(request: dict) -> str:
        last = [m for m in request["messages"] if m["role"] == "user"][-1]["content"]
        if SELECT_MARKER in last or VERDICT_MARKER in last:
            return debate_responder(request)
        return next(paragraphs)

    with FakeOpenAIServer(responder=responder) as server:
        # About four turns a round: most of the 130 paragraphs are spoken.
        result, records = run(server, tmp_path, "alignment-difficulty", protocol=protocol,
                              rounds=28, token_budget=10**8)  # fmt: skip
    assert result.stop_reason is StopReason.completed, result.error_message
    said = [r for r in records if r["type"] == "turn"]
    assert len(said) >= 100
    events = [r for r in records if r["type"] == "event" and "loop" in r["event"]]
    assert events == [], [(e.get("detector"), e.get("detail")) for e in events]


def test_replies_without_any_cue_skip_the_sentence_tags_and_lose_nothing():
    """The short cut (no cue anywhere, score under the threshold: engaged) gives what tagging
    every sentence gives, on every labelled reply and every reply of these tests."""
    from delib.detect import refusal

    texts = [json.loads(line)["text"] for path in sorted(DATA.parent.glob("refusals-*.jsonl"))
             for line in path.read_text().splitlines()]  # fmt: skip
    texts += REFUSALS + ENGAGED + MOVES
    skipped = 0
    for text in texts:
        clean = refusal._normalise(text)
        if clean and not refusal._any_cue(clean):
            skipped += 1
            found = refusal.features(clean)
            assert not (found["explicit_share"] or found["soft_share"] or found["explicit_open"])
            assert not refusal.declines_only(found)
    assert skipped > 500


# --- closure loops ----------------------------------------------------------------------------
CLOSING = ["Thank you, I agree.", "Well said, thank you.", "I agree, thanks to you both."]


def test_agreement_without_new_content_is_a_closure_not_a_cycle():
    turns = [turn(0, "a", MOVES[0]), *(turn(i, "abc"[i % 3], CLOSING[i % 3]) for i in (1, 2, 3))]
    found = {d.detector for d in detect(turns, LoopConfig())}
    assert found == {"closure"}


@pytest.mark.parametrize("protocol", [Protocol.round_robin, Protocol.moderator_selects])
def test_a_panel_that_only_thanks_closes_with_its_own_stop_reason(tmp_path, protocol):
    said = {"n": 0}

    from delib.library.personas import persona_library

    moderator = persona_library(None).get("societal-impacts").item.name

    def responder(body: dict) -> str:
        text = debate_responder(body)
        last = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        if TURN_MARKER in last and f"{TURN_MARKER}, {moderator}" not in last:
            said["n"] += 1
            if said["n"] > 3:  # after the first round, only thanks
                return CLOSING[said["n"] % 3]
        return text

    with FakeOpenAIServer(responder=responder) as server:
        request = RunRequest(
            scenario="alignment-difficulty",
            overrides=Overrides(base_url=server.base_url, model="test-model"),
            archive=tmp_path, rounds=6, protocol=protocol,
        )  # fmt: skip
        result = asyncio.run(run_debate(request, lambda message: None))
    assert result.stop_reason is StopReason.closure, result.error_message
    events = [e["event"] for e in result.events]
    assert "closure" in events and "intervention" not in events and "deadlock" not in events
    assert result.turns[-1]["kind"] == "verdict" and result.verdict
    statements = [t for t in result.turns if t["kind"] == "statement"]
    assert len(statements) <= 3 + 3  # ended within the run of thanks, not at max rounds


def test_the_sketch_index_finds_what_going_through_every_turn_finds():
    """Long-range repeats through the index equal those of a scan over every earlier turn, on
    varied transcripts with repeats at every distance (and after a transcript changes)."""
    import random

    from delib.detect import loops

    rng = random.Random(3)
    for trial in range(4):
        pool = [debate_responder({"messages": [{"role": "user", "content": f"{TURN_MARKER}, "
                f"P{i} {trial}"}]}) * 2 for i in range(40)]  # fmt: skip
        turns: list[dict] = []
        for i in range(160):
            text = rng.choice(pool) if rng.random() < 0.5 else f"{rng.choice(pool)} {i}"
            turns.append(turn(i, "abc"[i % 3], text))
            window = LoopConfig().window
            earlier = turns[:-window]
            newest = turns[-1]
            assert loops._long_range_repeat(newest, earlier, 0.6) == (
                loops.scan_long_range_repeat(newest, earlier, 0.6)
            )
        # a transcript that is not the one indexed (a resumed run's fresh records)
        copies = [dict(t) for t in turns[:-6]]
        assert (
            loops._long_range_repeat(turns[-1], copies, 0.6)[0]
            == (loops.scan_long_range_repeat(turns[-1], copies, 0.6)[0])
        )
