"""Kill a real ``delib run`` process at different moments, resume it, and compare with a run
that was never interrupted: same turns, same order, no gaps, no repeats."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import delib_process

from delib.debate.prompts import VERDICT_MARKER
from delib.testing import FakeOpenAIServer, Fault

SCENARIO = "alignment-difficulty"
# Slow enough that each moment below lasts long enough to be caught by polling.
DELAY = 0.25  # before the first byte of every reply
CHUNK_DELAY = 0.02  # between streamed chunks


@pytest.fixture(scope="module")
def slow_server():
    with FakeOpenAIServer(delay=DELAY, chunk_delay=CHUNK_DELAY) as fake:
        yield fake


def run_args(base_url: str, archive: Path, *extra: str) -> list[str]:
    return ["run", SCENARIO, "--base-url", base_url, "--rounds", "2", "--archive", str(archive),
            "--json", *extra]  # fmt: skip


def records(folder: Path) -> list[dict]:
    path = folder / "turns.jsonl"
    if not path.exists():  # killed before the first turn was finished
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def turn_sequence(folder: Path) -> list[tuple]:
    return [
        (r["index"], r["round"], r["speaker"], r["kind"], r["text"])
        for r in records(folder)
        if r["type"] == "turn"
    ]


def only_run(archive: Path) -> Path:
    folders = [p for p in archive.iterdir() if p.is_dir()]
    assert len(folders) == 1, folders
    return folders[0]


def finish(proc, timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for(condition: Callable[[], bool], proc, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.communicate()}")
        time.sleep(0.005)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, slow_server: FakeOpenAIServer) -> tuple[list[tuple], dict]:
    """One run never interrupted, for every test here to compare with."""
    archive = tmp_path_factory.mktemp("baseline")
    code, out, err = finish(delib_process(*run_args(slow_server.base_url, archive)))
    assert code == 0, err
    folder = only_run(archive)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["stop_reason"] == "completed"
    return turn_sequence(folder), manifest["verdict"]


# --- the moments ----------------------------------------------------------------------------
def _inflight(archive: Path) -> list[Path]:
    return sorted(archive.glob("*/inflight/*.partial"))


def _turn_lines(archive: Path) -> int:
    files = list(archive.glob("*/turns.jsonl"))
    if not files:
        return 0
    return sum('"type": "turn"' in line for line in files[0].read_text().splitlines())


def during_opening(archive: Path, server: FakeOpenAIServer) -> bool:
    return any(p.name == "0.partial" for p in _inflight(archive))


def during_streaming(archive: Path, server: FakeOpenAIServer) -> bool:
    """Turn 3 is half streamed: its partial file holds some text, not all of it."""
    for path in _inflight(archive):
        if path.name == "3.partial":
            header, _, text = path.read_text().partition("\n")
            return len(text) > 20
    return False


def between_turns(archive: Path, server: FakeOpenAIServer) -> bool:
    """Turn 4 is finished and written; the next reply has not begun."""
    return _turn_lines(archive) >= 5


def during_verdict(archive: Path, server: FakeOpenAIServer) -> bool:
    """The verdict has been asked for and its in-flight record is open. (A request sent ahead
    reaches the server a moment before the record is opened; killed in that moment, there is
    no half-spoken turn to discard, which is a different case from this one.)"""
    asked = False
    for request in server.chat_requests():
        messages = request["body"].get("messages", [])
        if messages and VERDICT_MARKER in str(messages[-1].get("content")):
            asked = True
    if not asked:
        return False
    for path in _inflight(archive):
        try:
            header = json.loads(path.read_text().partition("\n")[0])
        except (OSError, ValueError):
            continue  # being written
        if header.get("kind") == "verdict":
            return True
    return False


MOMENTS = {
    "opening": during_opening,
    # A new run asks for its opening before it opens its checkpoints: killed in between, the
    # folder has no checkpoints.sqlite yet (made so here by removing it after the kill).
    "opening-before-checkpoints": during_opening,
    "streaming": during_streaming,
    "between-turns": between_turns,
    "verdict": during_verdict,
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_kill_9_then_resume_gives_the_uninterrupted_turns(
    moment: str, tmp_path: Path, slow_server: FakeOpenAIServer, baseline
) -> None:
    expected, verdict = baseline
    archive = tmp_path / "archive"
    slow_server.history.clear()  # the baseline's requests
    proc = delib_process(*run_args(slow_server.base_url, archive))
    wait_for(lambda: MOMENTS[moment](archive, slow_server), proc, moment)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    folder = only_run(archive)
    if moment == "opening-before-checkpoints":
        for path in folder.glob("checkpoints.sqlite*"):
            path.unlink()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["stop_reason"] is None  # it had no chance to say anything
    before = turn_sequence(folder)
    assert before == expected[: len(before)]

    code, out, err = finish(delib_process("resume", folder.name[:15], "--archive", str(archive),
                                          "--json"))  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["stop_reason"] == "completed"
    after = turn_sequence(folder)
    assert [t[0] for t in after] == list(range(len(expected)))  # no gap, no repeat
    assert after == expected
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["verdict"] == verdict
    assert len(manifest["resumed"]) == 1
    assert manifest["resumed"][0]["at"] >= manifest["started_at"]
    events = [r for r in records(folder) if r["type"] == "event"]
    assert [e["event"] for e in events if e["event"] == "resumed"] == ["resumed"]
    discarded = [e for e in events if e["event"] == "turn_discarded"]
    if moment in ("opening", "streaming", "verdict"):
        # The turn that was being spoken is dropped, recorded, and spoken again.
        cut = {"opening": 0, "streaming": 3, "verdict": len(expected) - 1}[moment]
        assert [e["turn"] for e in discarded] == [cut]
        assert manifest["resumed"][0]["discarded_turns"] == [cut]
    # A finished run keeps no checkpoints, no partial turns and no lock.
    assert sorted(p.name for p in folder.iterdir()) == [
        "manifest.json",
        "transcript.md",
        "turns.jsonl",
    ]


def test_resume_against_a_new_endpoint_after_the_first_went_away(
    tmp_path: Path, server: FakeOpenAIServer, baseline
) -> None:
    expected, _ = baseline
    archive = tmp_path / "archive"
    # The first server fails for good after four replies (400 is not retried).
    server.fail(Fault(status=400, message="model unloaded"), after=4)
    code, out, err = finish(delib_process(*run_args(server.base_url, archive, "--no-stream")))
    assert code == 1
    assert "model unloaded" in err and "delib resume" in err
    folder = only_run(archive)
    assert json.loads((folder / "manifest.json").read_text())["stop_reason"] == "error"
    assert len(turn_sequence(folder)) == 4
    with FakeOpenAIServer() as second:
        second_url = second.base_url
        code, out, err = finish(
            delib_process(
                "resume", folder.name, "--archive", str(archive), "--base-url", second_url, "--json"
            )  # fmt: skip
        )
        assert code == 0, err
        assert len(second.chat_requests()) > 0
    assert turn_sequence(folder) == expected
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["resumed"][0]["previous_stop_reason"] == "error"
    assert manifest["stop_reason"] == "completed"
    assert manifest["personas"][0]["endpoint"] == "cli"
    assert second_url in json.dumps(manifest["endpoints"])


def test_a_finished_run_cannot_be_resumed(cli, server: FakeOpenAIServer) -> None:
    code, out, _ = cli("run", SCENARIO, "--base-url", server.base_url, "--rounds", "1", "--json")
    assert code == 0
    run_id = json.loads(out)["run_id"]
    code, out, err = cli("resume", run_id)
    assert code == 1
    assert err.count("\n") == 1
    assert "finished (stop reason: completed)" in err
    assert "Traceback" not in err


def test_a_running_run_cannot_be_resumed_or_deleted(
    tmp_path: Path, slow_server: FakeOpenAIServer, cli
) -> None:
    archive = tmp_path / "archive"
    proc = delib_process(*run_args(slow_server.base_url, archive))
    try:
        wait_for(lambda: _turn_lines(archive) >= 2, proc, "two turns")
        folder = only_run(archive)
        # The index follows the run as it goes.
        code, out, _ = cli("transcripts", "list", "--json", "--archive", str(archive))
        [live] = json.loads(out)
        assert live["stop_reason"] is None and live["turns"] >= 2
        code, out, _ = cli("transcripts", "list", "--stop-reason", "running", "--json",
                           "--archive", str(archive))  # fmt: skip
        assert [r["run_id"] for r in json.loads(out)] == [folder.name]
        code, _, err = cli("resume", folder.name, "--archive", str(archive))
        assert code == 1 and "still running" in err
        code, _, err = cli("transcripts", "delete", folder.name, "--yes", "--archive",
                           str(archive))  # fmt: skip
        assert code == 1 and "is running" in err
        assert folder.exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        code, _, err = finish(proc)
    assert code == 130
    assert "delib resume" in err


def test_truncated_last_line_is_ignored_with_a_warning_and_cut_on_resume(
    tmp_path: Path, server: FakeOpenAIServer, cli
) -> None:
    archive = tmp_path / "archive"
    server.fail(Fault(status=400), after=3)
    code, _, _ = cli(*run_args(server.base_url, archive, "--no-stream"))
    assert code == 1
    folder = only_run(archive)
    with open(folder / "turns.jsonl", "a") as handle:
        handle.write('{"type": "turn", "index": 3, "text": "half writ')  # died mid-write
    code, out, err = cli("transcripts", "show", folder.name, "--archive", str(archive))
    assert code == 0
    assert "truncated last line" in err and "Traceback" not in err
    code, out, err = cli("resume", folder.name, "--archive", str(archive), "--json")
    assert code == 0, err
    events = [r["event"] for r in records(folder) if r["type"] == "event"]
    assert "truncated_line_dropped" in events
    assert [t[0] for t in turn_sequence(folder)] == list(range(len(turn_sequence(folder))))


def test_checkpoints_are_langgraph_sqlite_one_thread_per_run(
    tmp_path: Path, server: FakeOpenAIServer, cli
) -> None:
    archive = tmp_path / "archive"
    server.fail(Fault(status=400), after=2)
    cli(*run_args(server.base_url, archive, "--no-stream"))
    folder = only_run(archive)
    with sqlite3.connect(folder / "checkpoints.sqlite") as db:
        threads = {row[0] for row in db.execute("SELECT thread_id FROM checkpoints")}
    assert threads == {folder.name}


def test_kill_9_during_a_simultaneous_round(tmp_path: Path, slow_server: FakeOpenAIServer) -> None:
    """Three speakers streaming at once when the process dies: those finished are kept (or
    reused), the others are discarded and spoken again."""
    args = ["--protocol", "simultaneous"]
    code, _, err = finish(delib_process(*run_args(slow_server.base_url, tmp_path / "a", *args)))
    assert code == 0, err
    # Simultaneous turns are archived in the order they finish, which varies from run to run
    # (resumed or not); compared by index.
    expected = sorted(turn_sequence(only_run(tmp_path / "a")))
    archive = tmp_path / "b"
    proc = delib_process(*run_args(slow_server.base_url, archive, *args))
    wait_for(lambda: during_streaming(archive, slow_server), proc, "round 1 streaming")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    folder = only_run(archive)
    code, out, err = finish(delib_process("resume", folder.name, "--archive", str(archive)))
    assert code == 0, err
    assert "resuming" in out
    assert sorted(turn_sequence(folder)) == expected
    assert len(turn_sequence(folder)) == len(expected)  # no repeats
    discarded = [r for r in records(folder) if r.get("event") == "turn_discarded"]
    assert 3 in [e["turn"] for e in discarded]


def test_the_in_flight_file_of_a_finished_turn_is_dropped_without_a_trace(tmp_path: Path):
    """A finished turn's in-flight file goes a moment after the turn is written
    (``archive.AFTER_DELAY``): a run killed in between leaves both. Resume keeps the turn,
    drops the file and records nothing discarded; a turn that never finished is discarded."""
    from delib.archive.run_folder import RunFolder
    from delib.debate.resume import apply, reconcile

    folder = RunFolder.create(tmp_path, "s")
    folder.inflight_start(0, {"speaker": "m", "kind": "opening", "started_at": "t"})
    turn = {"type": "turn", "index": 0, "round": 0, "speaker": "m", "kind": "opening",
            "role": "moderator", "text": "Open.", "tokens": {"prompt": 1}}  # fmt: skip
    folder.add_turn(turn)  # outside an event loop the file goes at once: put it back
    (folder.path / "inflight" / "0.partial").write_text('{"index": 0, "speaker": "m"}\nOpen.')
    folder.inflight_start(1, {"speaker": "a", "kind": "statement", "started_at": "t"})
    folder.inflight_text(1, "half a")
    folder.close()  # the process dies here: both files stay

    plan = reconcile(folder.run_id, [turn], {"count": 1}, True, ["e"])
    apply(RunFolder(folder.path), plan)
    events = [r for r in records(folder.path) if r["type"] == "event"]
    assert [(e["event"], e.get("turn")) for e in events] == [
        ("turn_discarded", 1),
        ("resumed", None),
    ]
    assert not (folder.path / "inflight").exists()
