"""OpenTelemetry traces (the ``otel`` extra): spans after the GenAI semantic conventions, into
the SDK's in-memory exporter and, through the CLI, over OTLP/HTTP to a receiver on loopback;
delib's tracing never imported when no trace is asked for, and a run without the extra goes
on untraced. (With the extra installed, LangSmith, under LangGraph, imports OpenTelemetry's API
on its own; that is not delib's doing.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import delib_process

import delib
from delib.testing import FakeOpenAIServer, Fault

pytest.importorskip("opentelemetry.sdk")
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (  # noqa: E402
    InMemorySpanExporter,
)

SCENARIO = "alignment-difficulty"
KEY = "sk-test-a-key-that-must-never-be-exported"


def traced(server: FakeOpenAIServer, tmp_path: Path, **options):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    result = delib.run(SCENARIO, base_url=server.base_url, archive=tmp_path,
                       tracer_provider=provider, **options)  # fmt: skip
    return result, exporter.get_finished_spans()


def by_operation(spans, name: str) -> list:
    return [s for s in spans if s.attributes.get("gen_ai.operation.name") == name]


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_spans_of_a_run_follow_the_genai_conventions(
    server: FakeOpenAIServer, tmp_path: Path, stream: bool
):
    result, spans = traced(server, tmp_path, rounds=1, stream=stream, model="test-model")
    (run,) = by_operation(spans, "invoke_workflow")
    agents = by_operation(spans, "invoke_agent")
    chats = by_operation(spans, "chat")
    assert run.name == f"invoke_workflow {SCENARIO}" and run.parent is None
    assert run.attributes["delib.run_id"] == result.run_id
    assert run.attributes["delib.stop_reason"] == "completed"
    # One agent span per turn, named for its persona, under the run.
    assert len(agents) == len(result.turns)
    names = {t["name"] for t in result.turns}
    assert {s.attributes["gen_ai.agent.name"] for s in agents} == names
    assert all(s.parent.span_id == run.context.span_id for s in agents)
    assert sorted(s.attributes["delib.turn.index"] for s in agents) == [
        t["index"] for t in result.turns
    ]
    # One chat span per model call (turns, and the moderator's choices where it picks), each
    # with the model and the tokens the server reported, under its turn.
    assert len(chats) == len(server.chat_requests())
    agent_ids = {s.context.span_id for s in agents}
    turn_chats = [c for c in chats if c.parent.span_id in agent_ids]
    assert len(turn_chats) == len(result.turns)
    for chat in chats:
        assert chat.name == "chat test-model"
        assert chat.attributes["gen_ai.request.model"] == "test-model"
        assert chat.attributes["gen_ai.provider.name"] == "openai"
        assert chat.attributes["server.address"] == "127.0.0.1"
        assert chat.attributes["gen_ai.usage.output_tokens"] > 0
        assert chat.attributes["gen_ai.usage.input_tokens"] > 0
        assert "error.type" not in chat.attributes
        assert chat.start_time >= run.start_time and chat.end_time <= run.end_time
    said = sum(t["tokens"]["completion"] for t in result.turns)
    assert sum(c.attributes["gen_ai.usage.output_tokens"] for c in turn_chats) == said


def test_a_failing_call_is_an_error_span_and_the_run_says_why(
    server: FakeOpenAIServer, tmp_path: Path
):
    server.fail(Fault(status=400, message="model unloaded"), after=3)
    result, spans = traced(server, tmp_path, rounds=1)
    assert result.stop_reason.value == "error"
    failed = [s for s in by_operation(spans, "chat") if "error.type" in s.attributes]
    assert len(failed) == 1 and failed[0].status.status_code.name == "ERROR"
    (run,) = by_operation(spans, "invoke_workflow")
    assert run.attributes["delib.stop_reason"] == "error" and "error.type" in run.attributes
    # Every span was ended, the failed turn's included.
    assert all(s.end_time is not None for s in spans)


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP trace receiver on loopback: keeps what is posted to /v1/traces."""

    def __init__(self) -> None:
        self.posts: list[bytes] = []
        super().__init__(("127.0.0.1", 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/v1/traces":
            self.server.posts.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_the_cli_exports_over_otlp_http_to_the_standard_variables(tmp_path: Path):
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    receiver = Receiver()
    env_before = dict(os.environ)
    try:
        os.environ.update(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_SERVICE_NAME="panel",
                          DELIB_TEST_KEY=KEY)  # fmt: skip
        with FakeOpenAIServer(require_api_key=KEY) as server:
            proc = delib_process("run", SCENARIO, "--base-url", server.base_url, "--rounds", "1",
                                 "--api-key-env", "DELIB_TEST_KEY", "--archive",
                                 str(tmp_path), "--json")  # fmt: skip
            out, err = proc.communicate(timeout=120)
    finally:
        os.environ.clear()
        os.environ.update(env_before)
        receiver.shutdown()
    assert proc.returncode == 0, err
    assert receiver.posts, "no spans arrived"
    assert not any(KEY.encode() in post for post in receiver.posts)
    spans, services = [], set()
    for post in receiver.posts:
        request = ExportTraceServiceRequest.FromString(post)
        for resource in request.resource_spans:
            for attr in resource.resource.attributes:
                if attr.key == "service.name":
                    services.add(attr.value.string_value)
            for scope in resource.scope_spans:
                assert scope.scope.name == "delib"
                spans.extend(scope.spans)
    assert services == {"panel"}
    names = [s.name for s in spans]
    assert names.count(f"invoke_workflow {SCENARIO}") == 1
    turns = json.loads(out)["turns"]
    assert sum(n.startswith("invoke_agent ") for n in names) == turns
    assert sum(n.startswith("chat ") for n in names) >= turns


SCRIPT = """
import sys, json
{block}
import delib
result = delib.run("alignment-difficulty", base_url=sys.argv[1], archive=sys.argv[2], rounds=1)
print(json.dumps({{"stop": result.stop_reason.value, "traced": "delib.debate.otel" in sys.modules,
                   "otel": sorted(m for m, v in sys.modules.items()
                            if m.startswith("opentelemetry") and v is not None)}}))
"""


@pytest.mark.parametrize("block", ["", "sys.modules['opentelemetry'] = None"],
                         ids=["not-asked", "extra-missing"])  # fmt: skip
def test_nothing_of_opentelemetry_is_imported_unless_asked(
    server: FakeOpenAIServer, tmp_path: Path, block: str
):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if block:  # asked for, with the extra unimportable: the run goes on without traces
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(block=block), server.base_url, str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert found["stop"] == "completed" and not found["traced"]
    if block:
        assert found["otel"] == []
