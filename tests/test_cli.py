"""The delib command as a user meets it: runs, listings, and one-line errors."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
from conftest import delib_process

from delib.testing import FakeOpenAIServer, Fault

SECRET = "test-secret-value-never-archive-me"


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 1
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_run_json_summary(cli, server: FakeOpenAIServer, isolated: Path):
    code, out, err = cli(
        "run",
        "alignment-difficulty",
        "--base-url",
        server.base_url,
        "--model",
        "test-model",
        "--rounds",
        "1",
        "--no-stream",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["stop_reason"] == "completed"
    assert summary["turns"] == 5 and summary["tokens"]["total"] > 0
    folder = Path(summary["folder"])
    assert folder.parent == isolated / "transcripts"
    assert {p.name for p in folder.iterdir()} == {"turns.jsonl", "manifest.json", "transcript.md"}


def test_run_streams_with_speaker_names(cli, server: FakeOpenAIServer, tmp_path: Path):
    code, out, err = cli(
        "run",
        "cot-faithfulness",
        "--base-url",
        server.base_url,
        "--rounds",
        "1",
        "--archive",
        str(tmp_path / "a"),
    )
    assert code == 0, err
    assert "The Interpretability Researcher" in out and "The Value-Learning Skeptic" in out
    assert "stop reason: completed" in out and "Verdict" in out


def test_archive_from_environment(
    cli, server: FakeOpenAIServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DELIB_TRANSCRIPTS", str(tmp_path / "elsewhere"))
    code, out, _ = cli(
        "run", "alignment-difficulty", "--base-url", server.base_url, "--rounds", "1", "--json"
    )
    assert code == 0
    assert Path(json.loads(out)["folder"]).parent == tmp_path / "elsewhere"


def test_openai_env_vars_and_named_endpoints(
    cli, tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
):
    with FakeOpenAIServer(models=("m1", "m2"), require_api_key=SECRET) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        code, out, err = cli(
            "run",
            "alignment-difficulty",
            "--model",
            "m1",
            "--rounds",
            "1",
            "--persona-model",
            "oversight=m2",
            "--json",
        )
        assert code == 0, err
        manifest = json.loads((Path(json.loads(out)["folder"]) / "manifest.json").read_text())
        models = {p["id"]: p["model"] for p in manifest["personas"]}
        assert models["oversight"] == "m2" and models["philosopher"] == "m1"
        assert manifest["endpoints"][0]["name"] == "env"

        monkeypatch.delenv("OPENAI_BASE_URL")
        monkeypatch.delenv("OPENAI_API_KEY")
        monkeypatch.setenv("TEAM_KEY", SECRET)
        (isolated / "delib.toml").write_text(
            'default_endpoint = "team"\n[endpoints.team]\n'
            f'base_url = "{server.base_url}"\nmodel = "m2"\napi_key_env = "TEAM_KEY"\n'
            'headers = { "X-Team" = "alignment" }\n'
        )
        code, out, err = cli("run", "alignment-difficulty", "--rounds", "1", "--json")
        assert code == 0, err
        folder = Path(json.loads(out)["folder"])
        assert server.chat_requests()[-1]["headers"]["x-team"] == "alignment"
    for path in [*folder.iterdir(), *folder.parent.glob("*/*")]:
        assert SECRET not in path.read_text(), path
        assert 'alignment"' not in path.read_text() or path.name != "manifest.json"


def test_personas_and_scenarios_commands(cli):
    code, out, _ = cli("personas", "list")
    assert code == 0 and "philosopher" in out and "inner-alignment-skeptic" in out
    code, out, _ = cli("personas", "show", "oversight")
    assert code == 0 and "scalable-oversight" in out
    code, out, _ = cli("scenarios", "list")
    assert code == 0 and "alignment-difficulty" in out
    code, out, _ = cli("scenarios", "show", "inner-alignment-solved")
    assert code == 0 and "004_4b04207254bd80f5.txt" in out


def test_transcripts_list_and_show(cli, server: FakeOpenAIServer, tmp_path: Path):
    archive = str(tmp_path / "arch")
    code, out, _ = cli(
        "run",
        "helpful-only-model",
        "--base-url",
        server.base_url,
        "--rounds",
        "1",
        "--json",
        "--archive",
        archive,
    )
    run_id = json.loads(out)["run_id"]
    code, out, _ = cli("transcripts", "list", "--archive", archive)
    assert code == 0 and "helpful-only-model" in out and "completed" in out
    code, out, _ = cli("transcripts", "show", run_id[:20], "--archive", archive)
    assert code == 0 and "Should a helpful-only model ever exist?" in out and "## Verdict" in out


def test_help_is_clear(cli):
    code, out, _ = cli("run", "--help")
    assert code == 0
    for flag in (
        "--base-url",
        "--model",
        "--endpoint",
        "--persona-model",
        "--rounds",
        "--protocol",
        "--temperature",
        "--max-tokens",
        "--seed",
        "--no-stream",
        "--json",
        "--archive",
    ):
        assert flag in out


# --- errors a new user will hit ----------------------------------------------------------------
def test_unknown_scenario(cli):
    code, _, err = cli("run", "alignment-dificulty", "--base-url", "http://127.0.0.1:9/v1")
    assert_one_line_error(
        code, err, "unknown scenario 'alignment-dificulty'", "alignment-difficulty"
    )


def test_unknown_persona_in_scenario(cli, isolated: Path):
    (isolated / "scenarios").mkdir()
    (isolated / "scenarios" / "mine.yaml").write_text(
        "id: mine\ntitle: T\nquestion: Q\nsource_seed: x\nparticipants: [philosopher, ghost]\n"
    )
    code, _, err = cli("run", "mine", "--base-url", "http://127.0.0.1:9/v1")
    assert_one_line_error(code, err, "unknown persona 'ghost'", "mine.yaml", "philosopher")


def test_unknown_persona_show(cli):
    code, _, err = cli("personas", "show", "nobody")
    assert_one_line_error(code, err, "unknown persona 'nobody'", "oversight")


def test_broken_yaml(cli, isolated: Path):
    (isolated / "personas").mkdir()
    (isolated / "personas" / "bad.yaml").write_text("id: bad\nname: [oops\n")
    code, _, err = cli("personas", "list")
    assert_one_line_error(code, err, "bad.yaml", "YAML syntax error", "line")


def test_bad_field(cli, isolated: Path):
    (isolated / "scenarios").mkdir()
    (isolated / "scenarios" / "s.yaml").write_text(
        "id: s\ntitle: T\nquestion: Q\nsource_seed: x\nparticipants: [philosopher, oversight]\n"
        "rounds: lots\n"
    )
    code, _, err = cli("scenarios", "list")
    assert_one_line_error(code, err, "s.yaml", "field 'rounds'", "integer")


def test_no_endpoint_and_no_local_extra(cli, monkeypatch: pytest.MonkeyPatch, isolated: Path):
    # A None entry in sys.modules is how Python marks a module as absent.
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    code, _, err = cli("run", "alignment-difficulty")
    assert_one_line_error(code, err, "not installed", "pip install 'delib[local]'", "--base-url")
    assert not (isolated / "transcripts").exists()


def test_unreachable_endpoint(cli, isolated: Path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    code, _, err = cli("run", "alignment-difficulty", "--base-url", url, "--model", "m")
    assert_one_line_error(code, err, "cannot reach endpoint 'cli'", url)
    assert not (isolated / "transcripts").exists()  # nothing ran, nothing archived


def test_unknown_model(cli, server: FakeOpenAIServer):
    code, _, err = cli(
        "run", "alignment-difficulty", "--base-url", server.base_url, "--model", "gpt-9"
    )
    assert_one_line_error(code, err, "model 'gpt-9'", "offered: test-model")


def test_unknown_persona_model_target(cli, server: FakeOpenAIServer):
    code, _, err = cli(
        "run",
        "alignment-difficulty",
        "--base-url",
        server.base_url,
        "--persona-model",
        "ghost=test-model",
    )
    assert_one_line_error(code, err, "unknown persona 'ghost'", "--persona-model")


def test_missing_api_key(cli, isolated: Path):
    (isolated / "delib.toml").write_text(
        '[endpoints.hosted]\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "m"\n'
        'api_key_env = "HOSTED_API_KEY"\n'
    )
    code, _, err = cli("run", "alignment-difficulty", "--endpoint", "hosted")
    assert_one_line_error(code, err, "endpoint 'hosted' needs an API key", "HOSTED_API_KEY")


def test_unknown_endpoint_name(cli):
    code, _, err = cli("run", "alignment-difficulty", "--endpoint", "nowhere")
    assert_one_line_error(code, err, "unknown endpoint 'nowhere'", "delib.toml")


def test_broken_config_file(cli, isolated: Path):
    (isolated / "delib.toml").write_text("[endpoints.x]\nbase_url = \n")
    code, _, err = cli("run", "alignment-difficulty")
    assert_one_line_error(code, err, "delib.toml", "TOML syntax error")


def test_wrong_api_key(cli, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("OPENAI_API_KEY", "wrong-value")
    with FakeOpenAIServer(require_api_key=SECRET) as server:
        code, _, err = cli(
            "run", "alignment-difficulty", "--base-url", server.base_url, "--model", "test-model"
        )
    assert_one_line_error(code, err, "401", "OPENAI_API_KEY")
    assert "wrong-value" not in err


def test_server_failing_mid_run_keeps_turns(cli, isolated: Path):
    with FakeOpenAIServer() as server:
        (isolated / "delib.toml").write_text(
            f'[endpoints.flaky]\nbase_url = "{server.base_url}"\nmodel = "test-model"\n'
            "retry_wait = 0.01\nmax_retries = 2\n"
        )
        server.enqueue("Welcome, panel.", "First point.")
        server.fail(*[Fault(500, "model crashed")] * 3, after=2)
        code, out, err = cli("run", "alignment-difficulty", "--endpoint", "flaky", "--json")
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "HTTP 500" in lines[0] and "after 3 attempts" in lines[0]
    assert "Traceback" not in err
    summary = json.loads(out)
    assert summary["stop_reason"] == "error" and summary["turns"] == 2
    turns = (Path(summary["folder"]) / "turns.jsonl").read_text().splitlines()
    assert [json.loads(t)["text"] for t in turns] == ["Welcome, panel.", "First point."]


def test_real_process_exit_code_and_no_traceback(server: FakeOpenAIServer, isolated: Path):
    bad = delib_process("run", "nope", "--base-url", server.base_url)
    _, bad_err = bad.communicate(timeout=120)
    assert bad.returncode == 1 and "Traceback" not in bad_err
    assert bad_err.strip().startswith("error: unknown scenario 'nope'")
    good = delib_process(
        "run", "alignment-difficulty", "--base-url", server.base_url, "--rounds", "1", "--json"
    )
    good_out, good_err = good.communicate(timeout=120)
    assert good.returncode == 0, good_err
    assert json.loads(good_out)["stop_reason"] == "completed"


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_interrupt_keeps_turns_and_says_so(isolated: Path, sig: str):
    import signal
    import time

    with FakeOpenAIServer(delay=0.3) as server:
        archive = str(isolated / "a")
        proc = delib_process(
            "run",
            "alignment-difficulty",
            "--base-url",
            server.base_url,
            "--rounds",
            "3",
            "--archive",
            archive,
        )
        deadline = time.monotonic() + 60
        turns_file = None
        while time.monotonic() < deadline:
            found = list((isolated / "a").glob("*/turns.jsonl"))
            if found and len(found[0].read_text().splitlines()) >= 2:
                turns_file = found[0]
                break
            time.sleep(0.05)
        assert turns_file is not None, "the run never got going"
        proc.send_signal(getattr(signal, sig))
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    manifest = json.loads((turns_file.parent / "manifest.json").read_text())
    assert manifest["stop_reason"] == "interrupted"
    kept = turns_file.read_text().splitlines()
    assert len(kept) >= 2 and manifest["turns"] == len(kept)
    assert [json.loads(line)["index"] for line in kept] == list(range(len(kept)))
