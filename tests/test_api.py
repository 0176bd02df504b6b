"""The Python API (``delib.run``/``arun``/``resume``) and the in-process fake: no socket here
except where a test says so."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

import delib
from delib.archive.reading import read_manifest, read_records
from delib.debate.prompts import SELECT_MARKER, TURN_MARKER, VERDICT_MARKER
from delib.errors import EndpointFailed, SettingError, UnknownIdError
from delib.testing import FakeOpenAIServer, FakeTransport, Fault, debate_responder

README = Path(__file__).resolve().parents[1] / "README.md"
FAKE_URL = "http://fake.invalid/v1"  # never resolved: the transport answers in process


def fake(**kwargs) -> tuple[FakeOpenAIServer, FakeTransport]:
    server = FakeOpenAIServer(**kwargs)
    return server, FakeTransport(server)


def one_round(archive: Path, transport: FakeTransport) -> delib.RunResult:
    """alignment-difficulty, one round, against the in-process fake."""
    return delib.run(
        "alignment-difficulty",
        base_url=FAKE_URL,
        model="test-model",
        rounds=1,
        archive=archive,
        transport=transport,
    )


def test_readme_python_example_runs(tmp_path: Path):
    """The README's Python block, run as it stands against a loopback server."""
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no Python example"
    with FakeOpenAIServer() as server:
        code = blocks[0].replace("http://localhost:8080/v1", server.base_url)
        namespace: dict = {}
        exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102
    result = namespace["result"]
    assert result.stop_reason is delib.StopReason.completed
    assert result.verdict and result.verdict["valid"]
    assert len(result.turns) == 4 and result.folder.is_dir()  # opening, 2 speakers, verdict


def test_a_debate_in_process_with_a_scenario_and_personas_built_in_code(tmp_path: Path):
    server, transport = fake()
    people = [
        delib.Persona(id=pid, name=pid.title(), role=f"the {pid}", prompt=f"You are the {pid}.")
        for pid in ("chair", "optimist", "pessimist")
    ]
    scenario = delib.Scenario(
        id="coffee",
        title="Is coffee good for research?",
        question="Does coffee help alignment research?",
        source_seed="(in code)",
        moderator="chair",
        participants=["optimist", "pessimist"],
        rounds=2,
    )
    messages: list[dict] = []
    result = delib.run(
        scenario,
        personas=people,
        base_url=FAKE_URL,
        model="test-model",
        archive=tmp_path,
        transport=transport,
        on_message=messages.append,
    )
    result.raise_for_error()
    assert result.stop_reason is delib.StopReason.completed
    assert [t["speaker"] for t in result.turns] == [
        "chair", "optimist", "pessimist", "chair", "optimist", "pessimist", "chair",
    ]  # fmt: skip
    assert set(result.verdict["positions"]) == {"optimist", "pessimist"}
    manifest = read_manifest(result.folder)
    assert manifest["schema_version"] == delib.records.SCHEMA_VERSION
    assert manifest["scenario"]["path"] == "(given in code)"
    assert manifest["request"]["scenario_inline"]["id"] == "coffee"
    assert [r["index"] for r in read_records(result.folder) if r["type"] == "turn"] == list(
        range(7)
    )
    kinds = {m["kind"] for m in messages}
    assert {"notice", "ready", "turn_start", "token", "turn", "result"} - kinds <= {"notice"}
    assert len(server.chat_requests()) == 7


def test_speaker_picking_and_verdict_retry_in_process(tmp_path: Path):
    """moderator_selects: the moderator names the last candidate; the first verdict is not
    JSON and the retry is."""
    verdicts = {"n": 0}

    def responder(request: dict) -> str:
        text = request["messages"][-1]["content"]
        if VERDICT_MARKER in text or "not valid" in text.lower():
            verdicts["n"] += 1
            if verdicts["n"] == 1:
                return "The panel talked a lot."
        return debate_responder(request)

    server, transport = fake(responder=responder)
    result = asyncio.run(
        delib.arun(
            "alignment-difficulty",
            base_url=FAKE_URL,
            model="test-model",
            protocol=delib.Protocol.moderator_selects,
            rounds=1,
            archive=tmp_path,
            transport=transport,
        )
    )
    assert result.stop_reason is delib.StopReason.completed
    order = [t["speaker"] for t in result.turns if t["kind"] == "statement"]
    assert order == ["interpretability", "oversight", "philosopher"]  # always the last listed
    picks = [e for e in result.events if e["event"] == "speaker_selected"]
    assert [p["speaker"] for p in picks] == ["interpretability", "oversight"]
    assert [e["event"] for e in result.events if e["event"].startswith("verdict")] == [
        "verdict_retry",
        "verdict_retry_ok",
    ]
    assert result.verdict["valid"] and result.verdict["retried"]
    assert sum(SELECT_MARKER in r["body"]["messages"][-1]["content"] for r in
               server.chat_requests()) == 2  # fmt: skip


def test_a_failure_mid_run_is_an_exception_object_and_keeps_finished_turns(tmp_path: Path):
    server, transport = fake()
    server.fail(Fault(status=400, message="bad request"), after=3)
    result = one_round(tmp_path, transport)
    assert result.stop_reason is delib.StopReason.error
    assert isinstance(result.error, EndpointFailed)
    assert "HTTP 400" in result.error_message
    assert len(result.turns) == 3
    with pytest.raises(EndpointFailed):
        result.raise_for_error()


def test_bad_input_raises_before_any_run_folder(tmp_path: Path):
    _, transport = fake()
    with pytest.raises(UnknownIdError, match="unknown scenario 'nope'"):
        delib.run("nope", base_url=FAKE_URL, archive=tmp_path / "runs", transport=transport)
    with pytest.raises(SettingError) as info:
        delib.run(
            "alignment-difficulty",
            base_url=FAKE_URL,
            model="test-model",
            loop_options={"windw": "3"},
            archive=tmp_path / "runs",
            transport=transport,
        )
    assert info.value.setting == "loop_options" and info.value.key == "windw"
    with pytest.raises(TypeError, match="unknown run option"):
        delib.run("alignment-difficulty", colour="red")
    assert not (tmp_path / "runs").exists()


def test_run_refuses_a_running_event_loop_and_says_what_to_use():
    async def inside() -> None:
        with pytest.raises(RuntimeError, match="await delib.arun"):
            delib.run("alignment-difficulty")

    asyncio.run(inside())


def test_resume_through_the_api_goes_on_from_the_last_turn(tmp_path: Path):
    """A run that failed at its fourth call goes on against a working server."""
    broken, transport = fake()
    broken.fail(Fault(status=400, message="overloaded"), after=3)
    first = one_round(tmp_path, transport)
    assert first.stop_reason is delib.StopReason.error and len(first.turns) == 3
    good, transport = fake()
    done = delib.resume(first.run_id, archive=tmp_path, transport=transport)
    assert done.stop_reason is delib.StopReason.completed
    assert [t["index"] for t in done.turns] == list(range(5))
    assert done.turns[:3] == first.turns  # kept, not spoken again
    assert len(good.chat_requests()) == 2  # turn 3 and the verdict
    assert any(e["event"] == "resumed" for e in done.events)
    assert TURN_MARKER in good.chat_requests()[0]["body"]["messages"][-1]["content"]
