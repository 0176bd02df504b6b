"""Human seats (``--human PERSONA``, ``delib.run(human=...)``): the graph pauses with
LangGraph's ``interrupt()`` at the seat's turn, the person's reply is recorded as theirs, the
detectors watch it like any other, and a run killed while it waits resumes at the seat."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import delib_process
from test_loops import always_refuse

import delib
from delib.archive.reading import read_manifest, read_records
from delib.debate.seats import Seat
from delib.testing import FakeOpenAIServer

SCENARIO = "alignment-difficulty"  # moderator societal-impacts; philosopher, oversight, interp.
LINES = [
    "Speaking for myself: character training shapes dispositions, not just outputs.",
    "I still hold that honesty has to come before helpfulness when they pull apart.",
]


def turns(folder: Path) -> list[dict]:
    return [r for r in read_records(folder) if r["type"] == "turn"]


def only_run(archive: Path) -> Path:
    (folder,) = [p for p in archive.iterdir() if p.is_dir()]
    return folder


def run_args(server: FakeOpenAIServer, archive: Path, *extra: str) -> list[str]:
    return ["run", SCENARIO, "--base-url", server.base_url, "--rounds", "2", "--archive",
            str(archive), "--human", "philosopher", "--json", *extra]  # fmt: skip


def prompts_sent(server: FakeOpenAIServer) -> list[str]:
    return [json.dumps(r["body"]["messages"]) for r in server.chat_requests()]


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_a_person_speaks_for_a_participant_from_standard_input(
    server: FakeOpenAIServer, tmp_path: Path, stream: bool
):
    archive = tmp_path / "archive"
    extra = () if stream else ("--no-stream",)
    proc = delib_process(*run_args(server, archive, *extra), stdin=subprocess.PIPE)
    out, err = proc.communicate("\n".join(LINES) + "\n", timeout=120)
    assert proc.returncode == 0, err
    assert json.loads(out)["stop_reason"] == "completed"
    folder = only_run(archive)
    said = turns(folder)
    mine = [t for t in said if t["speaker"] == "philosopher"]
    assert [t["text"] for t in mine] == LINES
    assert all(t["human"] and t["model"] == "human" for t in mine)
    assert all(t["tokens"] == {"prompt": 0, "completion": 0, "estimated": False} for t in mine)
    assert not any(t.get("human") for t in said if t["speaker"] != "philosopher")
    # No model was asked to speak as the philosopher; the others heard what the person said.
    model_turns = [t for t in said if not t.get("human")]
    assert len(server.chat_requests()) == len(model_turns)
    assert all("philosopher" not in t["speaker"] for t in model_turns)
    assert any(LINES[0] in p for p in prompts_sent(server))
    manifest = read_manifest(folder)
    seat = next(p for p in manifest["personas"] if p["id"] == "philosopher")
    assert seat["seat"] == "human" and manifest["request"]["human"] == ["philosopher"]
    assert LINES[1] in (folder / "transcript.md").read_text()


def test_input_that_ends_early_stops_the_run_with_one_line_and_resume_goes_on(
    server: FakeOpenAIServer, tmp_path: Path
):
    archive = tmp_path / "archive"
    proc = delib_process(*run_args(server, archive), stdin=subprocess.PIPE)
    out, err = proc.communicate(LINES[0] + "\n", timeout=120)  # one reply of two
    assert proc.returncode == 1
    assert "Traceback" not in err
    assert "no reply for" in err and "delib resume" in err
    folder = only_run(archive)
    before = turns(folder)
    assert [t["text"] for t in before if t["speaker"] == "philosopher"] == [LINES[0]]
    proc = delib_process("resume", folder.name, "--archive", str(archive), "--json",
                         stdin=subprocess.PIPE)  # fmt: skip
    out, err = proc.communicate(LINES[1] + "\n", timeout=120)
    assert proc.returncode == 0, err
    after = turns(folder)
    assert after[: len(before)] == before
    assert [t["text"] for t in after if t["speaker"] == "philosopher"] == LINES
    assert [t["index"] for t in after] == list(range(len(after)))
    assert read_manifest(folder)["stop_reason"] == "completed"


def test_killed_while_a_person_is_typing_then_resumed_at_the_waiting_seat(
    server: FakeOpenAIServer, tmp_path: Path
):
    archive = tmp_path / "archive"
    proc = delib_process(*run_args(server, archive), stdin=subprocess.PIPE)
    # The opening is spoken, then the philosopher (first participant) is waited for.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        folders = [p for p in archive.iterdir() if p.is_dir()] if archive.exists() else []
        if folders and len(turns(folders[0])) == 1 and len(server.chat_requests()) == 1:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    time.sleep(0.5)  # the pause is checkpointed
    assert len(server.chat_requests()) == 1  # nobody spoke in the person's place
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    folder = only_run(archive)
    assert read_manifest(folder)["stop_reason"] is None
    proc = delib_process("resume", folder.name, "--archive", str(archive), "--json",
                         stdin=subprocess.PIPE)  # fmt: skip
    out, err = proc.communicate("\n".join(LINES) + "\n", timeout=120)
    assert proc.returncode == 0, err
    said = turns(folder)
    assert [t["index"] for t in said] == list(range(len(said)))
    assert [t["text"] for t in said if t["speaker"] == "philosopher"] == LINES
    assert said[1]["speaker"] == "philosopher"  # the seat that was waiting speaks first


def test_from_python_a_callback_sees_the_debate_so_far(server: FakeOpenAIServer, tmp_path: Path):
    seen: list[Seat] = []

    async def philosopher(seat: Seat) -> str:  # an async answerer
        seen.append(seat)
        return f"My reply in round {seat.round}, after {len(seat.turns)} turns."

    def oversight(seat: Seat) -> str:  # a plain one
        return "Debate between models helps only if the judge can follow it."

    result = delib.run(SCENARIO, base_url=server.base_url, rounds=2, archive=tmp_path,
                       human={"philosopher": philosopher, "oversight": oversight})  # fmt: skip
    assert result.stop_reason.value == "completed"
    assert [(s.seat, s.round) for s in seen] == [("philosopher", 1), ("philosopher", 2)]
    assert seen[0].turns[0]["kind"] == "opening" and seen[0].name
    said = {t["index"]: t for t in result.turns}
    for seat in seen:
        assert said[seat.index]["text"] == f"My reply in round {seat.round}, after " \
            f"{len(seat.turns)} turns."  # fmt: skip
    people = {t["speaker"] for t in result.turns if t.get("human")}
    assert people == {"philosopher", "oversight"}


def test_a_person_who_only_refuses_is_watched_like_a_model(tmp_path: Path):
    refusal = "I'm sorry, I can't talk about that."
    with FakeOpenAIServer(responder=always_refuse) as server:
        result = delib.run("refusal-deadlock", base_url=server.base_url, archive=tmp_path,
                           human={"cautious-assistant": lambda seat: refusal})  # fmt: skip
    mine = [t for t in result.turns if t["speaker"] == "cautious-assistant"]
    assert mine and all(t["refusal"]["label"] == "refusal" for t in mine)
    detected = [e for e in result.events if e["event"] == "loop_detected"]
    assert detected and detected[0]["detector"] == "refusal_deadlock"
    assert result.stop_reason.value == "deadlock"


@pytest.mark.parametrize(
    "seat, says",
    [("societal-impacts", "moderates this scenario"), ("nobody", "is not in this scenario")],
)
def test_a_seat_that_is_not_a_participant_is_one_clear_line(
    server: FakeOpenAIServer, tmp_path: Path, seat: str, says: str
):
    archive = tmp_path / "archive"
    proc = delib_process("run", SCENARIO, "--base-url", server.base_url, "--archive",
                         str(archive), "--human", seat, stdin=subprocess.DEVNULL)  # fmt: skip
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "Traceback" not in err
    assert f"--human {seat}: {says}" in err
    assert not archive.exists() or not list(archive.iterdir())  # no empty run left behind
    assert not server.chat_requests()


def test_a_human_seat_in_a_simultaneous_round_is_spoken_once_with_the_others(tmp_path: Path):
    """The models beside the seat answer while the graph waits for the person; resumed, the
    step does not ask them again (their writes were kept with the pause)."""
    with FakeOpenAIServer() as server:
        seat = {"philosopher": lambda seat: LINES[0]}
        result = delib.run("hard-world-signs", base_url=server.base_url, rounds=2,
                           archive=tmp_path, human=seat)  # fmt: skip
        requests = len(server.chat_requests())
    assert result.stop_reason.value == "completed"
    indices = [t["index"] for t in result.turns]
    assert sorted(indices) == list(range(len(indices)))  # no turn twice
    people = [t for t in result.turns if t.get("human")]
    assert len(people) == 2 and {t["round"] for t in people} == {1, 2}
    assert requests == len(result.turns) - len(people)
