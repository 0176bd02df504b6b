"""LangGraph Studio: ``langgraph dev`` (langgraph-cli[inmem]) serves the debate graph named in
``langgraph.json``; through the LangGraph server's own HTTP API a thread is made, one round is
run against the loopback model server, and the turns are read back from the thread's state.

With ``DELIB_REQUIRE_STUDIO=1`` (``make test`` sets it) a missing langgraph-cli fails the test
instead of skipping it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from delib.models.local import free_port
from delib.testing import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]


def call(base: str, method: str, path: str, body: dict | None = None, timeout: float = 120):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request, timeout=timeout) as response:
        raw = response.read().decode()
    return json.loads(raw) if raw.startswith(("{", "[")) else raw


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    binary = shutil.which("langgraph")
    if binary is None:
        message = "langgraph-cli is not installed (pip install -e '.[studio]')"
        if os.environ.get("DELIB_REQUIRE_STUDIO"):
            pytest.fail(message)
        pytest.skip(message)
    work = tmp_path_factory.mktemp("studio")  # langgraph dev keeps its state in the cwd
    port = free_port()
    env = {**os.environ, "LANGGRAPH_CLI_NO_ANALYTICS": "1", "LANGSMITH_TRACING": "false",
           "LANGCHAIN_TRACING_V2": "false", "DELIB_CONFIG_DIR": str(work / "config"),
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    proc = subprocess.Popen(
        [binary, "dev", "--config", str(ROOT / "langgraph.json"), "--host", "127.0.0.1",
         "--port", str(port), "--no-browser", "--no-reload"],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if call(base, "GET", "/ok", timeout=2).get("ok"):
                break
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc, signal.SIGKILL)
            pytest.fail(f"langgraph dev did not start: {proc.communicate()[0][-3000:]}")
        time.sleep(0.3)
    try:
        yield base
    finally:
        _stop(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            _stop(proc, signal.SIGKILL)


def _stop(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def test_langgraph_dev_draws_the_debate_graph(studio: str):
    (assistant,) = [a for a in call(studio, "POST", "/assistants/search", {"graph_id": "debate"})
                    if a["graph_id"] == "debate"]  # fmt: skip
    drawn = call(studio, "GET", f"/assistants/{assistant['assistant_id']}/graph")
    names = {node["id"] for node in drawn["nodes"]}
    assert {"open", "turn", "select", "speak", "watch", "interject", "close"} <= names
    schemas = call(studio, "GET", f"/assistants/{assistant['assistant_id']}/schemas")
    assert "scenario" in json.dumps(schemas["context_schema"])


@pytest.mark.parametrize("scenario", ["alignment-difficulty", "hard-world-signs"])
def test_a_thread_runs_a_round_against_the_loopback_model(studio: str, scenario: str):
    with FakeOpenAIServer() as server:
        thread = call(studio, "POST", "/threads", {})["thread_id"]
        context = {"scenario": scenario, "base_url": server.base_url, "model": "test-model",
                   "rounds": 1}  # fmt: skip
        final = call(studio, "POST", f"/threads/{thread}/runs/wait",
                     {"assistant_id": "debate", "input": {}, "context": context})  # fmt: skip
        requests = len(server.chat_requests())
    assert "__error__" not in final, final
    assert final["stop_reason"] == "completed" and final["verdict"]["valid"]
    state = call(studio, "GET", f"/threads/{thread}/state")
    turns = [r for r in state["values"]["transcript"] if r["type"] == "turn"]
    assert [t["index"] for t in turns] == list(range(len(turns)))
    assert turns[0]["kind"] == "opening" and turns[-1]["kind"] == "verdict"
    assert len({t["speaker"] for t in turns if t["role"] == "participant"}) >= 2
    assert all(t["model"] == "test-model" and t["text"] for t in turns)
    # Every turn came from the loopback server (the moderator's choices too, where it picks).
    assert requests >= len(turns)
    assert final["count"] == len(turns)
