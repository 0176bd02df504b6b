"""The optional refusal judge (``--refusal-judge``): asked only about uncertain replies, its
answers cached by text, its cost in the manifest, a failing judge falling back to the local
label with an event. Both servers are real HTTP servers on loopback."""

from __future__ import annotations

import json
from pathlib import Path

from test_debate import debate, turns_of
from test_reasoning import participant_turn

from delib.archive.reading import read_manifest, read_records
from delib.debate.judge import BAND
from delib.debate.state import StopReason
from delib.detect.refusal import classify
from delib.models.config import Overrides
from delib.testing import FakeOpenAIServer, Fault, debate_responder

DEFLECTION = (
    "That is a question best left to qualified professionals and the scholarly literature; I "
    "would point you to your {}."
)
PLACES = ["local authorities", "regional regulators", "national experts", "university library"]


def deflecting(body: dict) -> str:
    """Participants politely change the subject: never a refusal in words."""
    if participant_turn(body):
        last = body["messages"][-1]["content"]
        return DEFLECTION.format(PLACES[len(last) % len(PLACES)])
    return debate_responder(body)


def test_the_deflections_are_uncertain_for_the_local_classifier():
    for place in PLACES:
        found = classify(DEFLECTION.format(place), "How difficult is AI alignment?")
        assert found.label == "engaged" and BAND[0] <= found.score < BAND[1]


def test_a_judge_turns_a_polite_deflection_deadlock_into_a_deadlock(tmp_path: Path):
    with (
        FakeOpenAIServer(responder=deflecting) as panel,
        FakeOpenAIServer(responder=lambda body: "REFUSAL", models=("judge-model",)) as judge,
    ):
        result, _ = debate(
            panel, tmp_path, rounds=4,
            overrides=Overrides(base_url=panel.base_url, model="test-model"),
            refusal_judge=judge.base_url,
        )  # fmt: skip
        asked = [h["body"] for h in judge.chat_requests()]
    records = read_records(result.folder)
    statements = [t for t in turns_of(result.folder) if t["kind"] == "statement"]
    assert statements and all(t["refusal"]["label"] == "refusal" for t in statements)
    assert all(t["refusal"]["local"] == "engaged" for t in statements)
    deadlocks = [r for r in records if r["type"] == "event" and r["event"] == "loop_detected"
                 and r["detector"] == "refusal_deadlock"]  # fmt: skip
    assert deadlocks and deadlocks[0]["turns"][-1] <= statements[1]["index"]
    # one request per distinct reply: the rest came from the cache
    texts = {t["text"] for t in statements}
    assert len(asked) == len(texts) < len(statements)
    assert {t["refusal"]["judge"] for t in statements} == {"judge", "cache"}
    assert all(body["model"] == "judge-model" and body["max_tokens"] <= 8 for body in asked)
    stats = read_manifest(result.folder)["refusal_judge"]
    assert stats["asked"] == len(texts) and stats["cached"] == len(statements) - len(texts)
    assert stats["tokens"]["prompt"] > 0 and stats["failed"] == 0
    assert result.stop_reason in (StopReason.deadlock, StopReason.completed)


def test_without_a_judge_the_deflections_pass(tmp_path: Path):
    with FakeOpenAIServer(responder=deflecting) as panel:
        result, _ = debate(panel, tmp_path, rounds=2)
    statements = [t for t in turns_of(result.folder) if t["kind"] == "statement"]
    assert all(t["refusal"]["label"] == "engaged" and "judge" not in t["refusal"]
               for t in statements)  # fmt: skip
    assert read_manifest(result.folder)["refusal_judge"] is None


def test_a_failing_judge_leaves_the_local_label_with_an_event(cli, isolated: Path):
    with FakeOpenAIServer(responder=deflecting) as panel, FakeOpenAIServer() as judge:
        judge.fail(*[Fault(500, message="judge down")] * 50)
        config = isolated.parent / "config"
        config.mkdir(exist_ok=True)
        (config / "delib.toml").write_text(
            f'refusal_judge = "judge"\n[endpoints.judge]\nbase_url = "{judge.base_url}"\n'
            'model = "test-model"\nmax_retries = 0\n'
        )
        code, out, err = cli(
            "run", "alignment-difficulty", "--base-url", panel.base_url, "--model",
            "test-model", "--rounds", "1", "--no-stream", "--json",
        )  # fmt: skip
    assert code == 0, err
    folder = Path(json.loads(out)["folder"])
    records = read_records(folder)
    failed = [r for r in records if r["type"] == "event" and r["event"] == "judge_failed"]
    statements = [r for r in records if r["type"] == "turn" and r["kind"] == "statement"]
    assert failed and all(e["kept"] == "engaged" and "judge down" in e["reason"] for e in failed)
    assert all(t["refusal"]["label"] == "engaged" for t in statements)
    assert read_manifest(folder)["refusal_judge"]["failed"] == len(failed)


def test_an_unknown_judge_is_one_line(cli, server: FakeOpenAIServer, isolated: Path):
    code, out, err = cli(
        "run", "alignment-difficulty", "--base-url", server.base_url, "--model", "test-model",
        "--refusal-judge", "nowhere",
    )  # fmt: skip
    assert code == 1 and "nowhere" in err and "Traceback" not in err
