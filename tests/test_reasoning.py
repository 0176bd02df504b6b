"""Reasoning models and the reply shapes real servers send, through the loopback server,
streamed and whole: thinking kept apart from the answer, empty and tool-call-only replies as
events, cut turns marked (issue: reply shapes)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from test_debate import debate, turns_of
from test_endpoints import client_for, complete

from delib.archive.markdown import markdown
from delib.archive.reading import read_manifest, read_records
from delib.archive.run_folder import RunFolder
from delib.debate.prompts import TURN_MARKER
from delib.debate.speaking import EMPTY_NUDGE
from delib.debate.state import StopReason
from delib.library.personas import persona_library
from delib.models.config import Overrides
from delib.models.thinking import LiveFilter, split
from delib.testing import FakeOpenAIServer, Shaped, debate_responder

THOUGHT = "I'm sorry, I can't decide yet; let me weigh it. I cannot say, I won't say."
BOTH = pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])


def ask(server: FakeOpenAIServer, stream: bool):
    tokens: list[str] = []
    reply = complete(
        client_for(server.base_url), stream=stream, on_token=tokens.append if stream else None
    )
    return reply, "".join(tokens)


@BOTH
@pytest.mark.parametrize("chunk", [1, 3, 12])
def test_a_think_block_is_reasoning_not_text(stream: bool, chunk: int):
    with FakeOpenAIServer(chunk_chars=chunk) as server:
        server.enqueue(f"<think>{THOUGHT}</think>\n\nOversight has to scale with capability.")
        reply, shown = ask(server, stream)
    assert reply.text == "Oversight has to scale with capability."
    assert reply.reasoning == THOUGHT
    if stream:  # the live view never saw the thinking, split across chunks or not
        assert shown == reply.text


@BOTH
def test_a_think_block_left_open_at_the_cap_is_all_reasoning(stream: bool):
    with FakeOpenAIServer(chunk_chars=5) as server:
        server.enqueue(Shaped(content=f"<think>{THOUGHT} and on", finish="length"))
        reply, shown = ask(server, stream)
    assert reply.text == "" and reply.reasoning == f"{THOUGHT} and on"
    assert reply.finish_reason == "length" and shown == ""


@BOTH
@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_a_reasoning_field_is_kept_apart(stream: bool, field: str):
    with FakeOpenAIServer(chunk_chars=4) as server:
        server.enqueue(Shaped(content="Verification gets harder.", reasoning=THOUGHT, field=field))
        reply, shown = ask(server, stream)
    assert reply.text == "Verification gets harder." and reply.reasoning == THOUGHT
    if stream:
        assert shown == reply.text


@BOTH
def test_tool_calls_without_content_are_counted_not_text(stream: bool):
    with FakeOpenAIServer() as server:
        server.enqueue(Shaped(content=None, tool_calls=True, finish="tool_calls"))
        reply, _ = ask(server, stream)
    assert reply.text == "" and reply.tool_calls == 1 and reply.finish_reason == "tool_calls"


def test_split_and_the_live_filter_agree_on_odd_shapes():
    for content in (
        "plain answer, a < b and b > c",
        "<THINKING>upper case</THINKING>answer",
        "thought opened by the template</think>answer",
        "<think>one</think>middle<think>two</think>end",
        "<think>never closed",
    ):
        answer, _ = split(content)
        for size in (1, 2, 5):
            live = LiveFilter()
            shown = "".join(live.feed(content[i : i + size]) for i in range(0, len(content), size))
            shown += live.flush()
            if "</think>" in content and "<think>" not in content:
                continue  # opened in the template: only the record can be right, not the stream
            assert shown == answer.lstrip(), (content, size)


def thinking_responder(body: dict) -> str:
    return f"<think>{THOUGHT}</think>\n\n{debate_responder(body)}"


@BOTH
def test_a_debate_of_a_reasoning_model_sees_only_answers(stream: bool, tmp_path: Path):
    with FakeOpenAIServer(responder=thinking_responder, chunk_chars=7) as server:
        result, messages = debate(server, tmp_path, rounds=2, stream=stream)
        bodies = [h["body"] for h in server.chat_requests()]
    assert result.stop_reason is StopReason.completed, result.error_message
    records = read_records(result.folder)
    assert not [r for r in records if r["type"] == "event" and "loop" in r["event"]]
    turns = [r for r in records if r["type"] == "turn"]
    assert all(t["refusal"]["label"] == "engaged" for t in turns)
    assert all(t["reasoning"] == THOUGHT and "<think>" not in t["text"] for t in turns)
    assert all(t["reasoning_tokens"] > 0 for t in turns)
    sent = json.dumps(bodies)
    assert "<think>" not in sent and "decide yet" not in sent  # no prompt carries thinking
    assert read_manifest(result.folder)["verdict"]["valid"]
    tokens = "".join(m["text"] for m in messages if m["kind"] == "token")
    assert "decide yet" not in tokens
    page = markdown(read_manifest(result.folder), records)
    hidden = markdown(read_manifest(result.folder), records, reasoning=False)
    assert "<details><summary>reasoning</summary>" in page and "decide yet" in page
    assert "decide yet" not in hidden and "reasoning hidden" in hidden


MODERATOR = persona_library(None).get("societal-impacts").item.name


def participant_turn(body: dict) -> bool:
    last = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return TURN_MARKER in last and f"{TURN_MARKER}, {MODERATOR}" not in last


def empty_participants(times: int | None):
    """Participants think until their cap and answer nothing, ``times`` times (None: always)."""
    left = [times]

    def respond(body: dict):
        if participant_turn(body) and (left[0] is None or left[0] > 0):
            if left[0] is not None:
                left[0] -= 1
            return Shaped(content="<think>weighing, weighing", reasoning="hm", finish="length")
        return debate_responder(body)

    return respond


@BOTH
def test_an_empty_reply_is_asked_again_with_a_nudge_and_a_larger_cap(stream, tmp_path):
    with FakeOpenAIServer(responder=empty_participants(1)) as server:
        result, _ = debate(server, tmp_path, rounds=1, stream=stream)
        bodies = [h["body"] for h in server.chat_requests()]
    assert result.stop_reason is StopReason.completed, result.error_message
    events = [r for r in read_records(result.folder) if r["type"] == "event"]
    assert [e["then"] for e in events if e["event"] == "empty_reply"] == ["retry"]
    nudged = [b for b in bodies if EMPTY_NUDGE in b["messages"][-1]["content"]]
    assert len(nudged) == 1
    first = next(b for b in bodies if participant_turn(b))
    assert nudged[0]["max_tokens"] == 2 * first["max_tokens"]
    turns = turns_of(result.folder)
    assert all(t["text"] and "failed" not in t for t in turns)


@BOTH
def test_replies_that_stay_empty_end_the_run_with_their_own_reason(stream, tmp_path):
    with FakeOpenAIServer(responder=empty_participants(None)) as server:
        result, _ = debate(server, tmp_path, rounds=3, stream=stream)
    assert result.stop_reason is StopReason.empty_replies
    records = read_records(result.folder)
    failed = [r for r in records if r["type"] == "turn" and r.get("failed") == "empty_reply"]
    assert len(failed) == 2 and all(t["text"] == "" and t["reasoning"] for t in failed)
    thens = [r["then"] for r in records if r["type"] == "event" and r["event"] == "empty_reply"]
    assert thens == ["retry", "recorded as failed"] * 2
    stop = [r for r in records if r["type"] == "event" and r["event"] == "empty_replies"]
    assert len(stop) == 1 and "--max-tokens" in stop[0]["hint"]
    assert not [r for r in records if r["type"] == "event" and r["event"] == "loop_detected"]
    assert read_manifest(result.folder)["stop_reason"] == "empty_replies"


@BOTH
def test_a_turn_cut_at_max_tokens_is_marked(stream, tmp_path):
    # the scripted replies are longer than a 5-token cap: every turn is cut
    with FakeOpenAIServer() as server:
        cut, _ = debate(
            server, tmp_path / "cut", rounds=1, stream=stream,
            overrides=Overrides(base_url=server.base_url, model="test-model", max_tokens=5),
        )  # fmt: skip
    page = markdown(read_manifest(cut.folder), read_records(cut.folder))
    turns = turns_of(cut.folder)
    cut_turns = [t for t in turns if t["finish_reason"] == "length"]
    assert all(t in cut_turns for t in turns if t["kind"] == "statement")
    assert page.count("*(cut at max tokens)*") == len(cut_turns) > 1
    assert f"{len(cut_turns)} turns cut at max tokens." in page


def test_the_command_line_names_the_stop_hides_the_thinking_and_shows_it_on_request(
    cli, isolated: Path
):
    with FakeOpenAIServer(responder=thinking_responder) as server:
        code, out, err = cli(
            "run", "alignment-difficulty", "--base-url", server.base_url, "--model",
            "test-model", "--rounds", "1",
        )  # fmt: skip
    assert code == 0, err
    assert "decide yet" not in out and "thought for" in out
    run_id = next(p for p in (isolated / "transcripts").iterdir() if p.is_dir()).name
    code, shown, _ = cli("transcripts", "show", run_id)
    assert code == 0 and "decide yet" not in shown and "reasoning hidden" in shown
    code, shown, _ = cli("transcripts", "show", run_id, "--reasoning")
    assert code == 0 and "decide yet" in shown
    with FakeOpenAIServer(responder=empty_participants(None)) as server:
        code, out, err = cli(
            "run", "alignment-difficulty", "--base-url", server.base_url, "--model",
            "test-model", "--rounds", "2", "--no-stream",
        )  # fmt: skip
    assert code == 0, err
    assert "stop reason: empty_replies" in out and "hint:" in out and "--max-tokens" in out
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    "reply, word",
    [
        (Shaped(content="OK", reasoning="The user wants OK."), "reasoning field"),
        ("<think>The user wants one word.</think>OK", "<think> tags"),
        (Shaped(content="", finish="length"), "hidden thinking"),
    ],
)
def test_endpoints_check_says_the_model_reasons(cli, reply, word):
    def respond(body: dict):
        return reply if body.get("max_tokens", 1) > 1 else "OK"

    with FakeOpenAIServer(responder=respond) as server:
        code, out, err = cli("endpoints", "check", "--base-url", server.base_url, "--json")
    assert code == 0, err
    found = {f["check"]: f for f in json.loads(out)["findings"]}
    assert found["reasoning model"]["value"] is True and word in found["reasoning model"]["detail"]


def test_endpoints_check_sees_no_reasoning_in_a_plain_model(cli, server: FakeOpenAIServer):
    code, out, err = cli("endpoints", "check", "--base-url", server.base_url, "--json")
    found = {f["check"]: f for f in json.loads(out)["findings"]}
    assert found["reasoning model"]["value"] is False


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "600k"):
    """A tmpfs of ``size`` at ``folder`` where this machine lets the tests mount one (as root),
    else None: the caller then fills the disk at the write boundary instead."""
    folder.mkdir()
    mounted = (
        os.geteuid() == 0
        and shutil.which("mount") is not None
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
        ).returncode
        == 0
    )
    try:
        yield folder if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.mark.parametrize("simulated", [False, True], ids=["tmpfs", "simulated"])
def test_a_full_disk_mid_run_is_one_line_and_the_run_resumes(
    cli, isolated: Path, monkeypatch: pytest.MonkeyPatch, simulated: bool
):
    disk = isolated.parent / "disk"
    place = contextlib.nullcontext(None) if simulated else small_disk(disk)
    if simulated:
        disk.mkdir()
    with place as mounted, FakeOpenAIServer() as server:
        if mounted is None and not simulated:
            pytest.skip("this machine cannot mount a tmpfs here (the simulated case runs)")
        if simulated:  # the disk fills at the write boundary, after the fifth record
            written = {"n": 0}
            append = RunFolder.append

            def filling(self, record):
                written["n"] += 1
                if written["n"] > 5:
                    raise OSError(errno.ENOSPC, "No space left on device")
                append(self, record)

            monkeypatch.setattr(RunFolder, "append", filling)
        archive = disk / "archive"
        code, out, err = cli(
            "run", "alignment-difficulty", "--base-url", server.base_url, "--model",
            "test-model", "--rounds", "30", "--no-stream", "--archive", str(archive),
        )  # fmt: skip
        assert code == 1
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "is full" in lines[0] and str(archive) in lines[0]
        assert "Traceback" not in out + err
        run = next(p for p in archive.iterdir() if p.is_dir())
        kept = [r for r in read_records(run) if r["type"] == "turn"]
        assert kept and [t["index"] for t in kept] == list(range(len(kept)))
        # space freed: the run goes on from its last finished turn
        moved = isolated / "moved"
        shutil.copytree(archive, moved)
        monkeypatch.undo()
        code, out, err = cli(
            "resume", run.name, "--archive", str(moved), "--base-url", server.base_url
        )
    assert code == 0, err
    again = [r for r in read_records(moved / run.name) if r["type"] == "turn"]
    assert len(again) > len(kept) and again[: len(kept)] == kept


def field_responder(field: str):
    def respond(body: dict):
        return Shaped(content=debate_responder(body), reasoning=THOUGHT, field=field)

    return respond


@BOTH
@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_a_debate_whose_model_thinks_in_a_field_sees_only_answers(stream, field, tmp_path):
    with FakeOpenAIServer(responder=field_responder(field), chunk_chars=9) as server:
        result, messages = debate(server, tmp_path, rounds=1, stream=stream)
        sent = json.dumps([h["body"] for h in server.chat_requests()])
    assert result.stop_reason is StopReason.completed, result.error_message
    records = read_records(result.folder)
    assert not [r for r in records if r["type"] == "event"]
    turns = [r for r in records if r["type"] == "turn"]
    assert all(t["reasoning"] == THOUGHT and t["refusal"]["label"] == "engaged" for t in turns)
    assert "decide yet" not in sent
    assert "decide yet" not in "".join(m["text"] for m in messages if m["kind"] == "token")


@BOTH
def test_a_tool_call_instead_of_a_turn_is_asked_again(stream, tmp_path):
    left = [1]

    def respond(body: dict):
        if participant_turn(body) and left[0]:
            left[0] -= 1
            return Shaped(content=None, tool_calls=True, finish="tool_calls")
        return debate_responder(body)

    with FakeOpenAIServer(responder=respond) as server:
        result, _ = debate(server, tmp_path, rounds=1, stream=stream)
    assert result.stop_reason is StopReason.completed, result.error_message
    records = read_records(result.folder)
    empty = [r for r in records if r["type"] == "event" and r["event"] == "empty_reply"]
    assert len(empty) == 1 and empty[0]["tool_calls"] == 1 and empty[0]["then"] == "retry"
    assert all(t["text"] for t in records if t["type"] == "turn")


def test_endpoints_list_names_each_presets_reasoning_switch(cli):
    code, out, _ = cli("endpoints", "list")
    assert code == 0 and "reasoning-budget 0" in out and '"think": false' in out
