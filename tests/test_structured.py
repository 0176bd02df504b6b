"""Structured output: verdicts and speaker choices asked for in the server's JSON dialect,
with fallbacks for servers that have none or that ignore it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import delib
from delib.archive.reading import read_records
from delib.debate.prompts import SELECT_MARKER, VERDICT_MARKER
from delib.library.scenarios import Protocol
from delib.testing import FakeOpenAIServer, FakeTransport

FAKE_URL = "http://fake.invalid/v1"


def debate(tmp_path: Path, server: FakeOpenAIServer, **options) -> delib.RunResult:
    return delib.run(
        "alignment-difficulty",
        base_url=FAKE_URL,
        model="test-model",
        rounds=1,
        protocol=Protocol.moderator_selects,
        archive=tmp_path,
        transport=FakeTransport(server),
        **options,
    )


def asked(server: FakeOpenAIServer, marker: str) -> list[dict]:
    return [
        h["body"]
        for h in server.chat_requests()
        if marker in str(h["body"]["messages"][-1]["content"])
    ]


def events(result: delib.RunResult) -> list[str]:
    return [r["event"] for r in read_records(result.folder) if r["type"] == "event"]


def test_a_server_with_json_schema_gets_schemas_and_gives_a_valid_verdict_first_time(tmp_path):
    server = FakeOpenAIServer(structured="json_schema")
    result = debate(tmp_path, server)
    result.raise_for_error()
    (verdict_request,) = asked(server, VERDICT_MARKER)
    wanted = verdict_request["response_format"]
    assert wanted["type"] == "json_schema" and wanted["json_schema"]["strict"] is True
    positions = wanted["json_schema"]["schema"]["properties"]["positions"]
    assert positions["required"] == ["philosopher", "oversight", "interpretability"]
    choices = asked(server, SELECT_MARKER)
    assert choices and all(
        c["response_format"]["json_schema"]["schema"]["properties"]["speaker"]["enum"]
        for c in choices
    )
    assert result.verdict["valid"] and "verdict_retry" not in events(result)
    assert not [e for e in events(result) if e == "speaker_selected"] or all(
        not r.get("fallback")
        for r in read_records(result.folder)
        if r.get("event") == "speaker_selected"
    )


def test_the_embedded_dialect_json_object_with_a_schema(tmp_path):
    server = FakeOpenAIServer(structured="json_object")
    result = debate(tmp_path, server)
    result.raise_for_error()
    (verdict_request,) = asked(server, VERDICT_MARKER)
    assert verdict_request["response_format"]["type"] == "json_object"
    assert "positions" in verdict_request["response_format"]["schema"]["properties"]
    adaptations = result.manifest["adaptations"]
    assert any("json_schema rejected; now json_object" in a["what"] for a in adaptations)
    assert result.verdict["valid"]


def test_llama_cpp_python_rejecting_json_schema_with_a_500_steps_down_at_once(tmp_path):
    """llama-cpp-python's own server (``delib local serve``, ``--base-url`` to it) answers an
    unknown response_format with a 500 holding a validation error and a traceback: that is a
    rejection to step down from, not a failure to retry four times."""
    server = FakeOpenAIServer(structured="json_object", structured_status=500)
    result = debate(tmp_path, server)
    result.raise_for_error()
    sent = [h["body"].get("response_format", {}).get("type") for h in server.chat_requests()]
    assert sent.count("json_schema") == 1  # asked once, not retried
    (adaptation,) = result.manifest["adaptations"]
    assert adaptation["what"] == "structured output json_schema rejected; now json_object"
    assert "\n" not in adaptation["reason"] and "literal_error" in adaptation["reason"]
    assert result.verdict["valid"]


def test_a_server_without_structured_output_falls_back_to_validate_and_retry(tmp_path):
    server = FakeOpenAIServer(structured="none")
    result = debate(tmp_path, server)
    result.raise_for_error()
    whats = [a["what"] for a in result.manifest["adaptations"]]
    assert whats == [
        "structured output json_schema rejected; now json_object",
        "structured output json_object rejected; now off",
    ]
    later = [b for b in server.chat_requests()[-3:]]
    assert all("response_format" not in h["body"] for h in later)
    assert result.verdict["valid"]  # the fake's verdict is valid JSON without a schema too


def test_a_server_that_claims_it_and_ignores_it_goes_through_validate_and_retry(tmp_path):
    server = FakeOpenAIServer(structured="json_schema", structured_invalid=True)
    result = debate(tmp_path, server)
    assert result.stop_reason is delib.StopReason.completed
    names = events(result)
    assert "verdict_retry" in names and "verdict_malformed" in names
    assert result.verdict["valid"] is False
    fallbacks = [r for r in read_records(result.folder) if r.get("event") == "speaker_selected"]
    assert fallbacks and all(r["fallback"] for r in fallbacks)


@pytest.mark.parametrize(
    "structured, invalid, value, words",
    [
        ("json_schema", False, True, "json_schema"),
        ("json_object", False, True, "json_object"),
        ("none", False, False, "not supported"),
        (None, False, None, "did not fit"),  # a server that ignores response_format
        ("json_schema", True, None, "did not fit"),
    ],
)
def test_endpoints_check_reports_structured_output(cli, structured, invalid, value, words):
    with FakeOpenAIServer(structured=structured, structured_invalid=invalid) as server:
        code, out, err = cli("endpoints", "check", "--base-url", server.base_url, "--json")
    report = json.loads(out)
    (finding,) = [f for f in report["findings"] if f["check"] == "structured output"]
    assert finding["value"] is value and words in finding["detail"], finding
