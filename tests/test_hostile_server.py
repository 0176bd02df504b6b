"""A hostile or broken server: every answer becomes a reply or one DelibError, never a traceback,
and an incomplete reply is never taken for a finished one (see docs/reliability.md)."""

from __future__ import annotations

import json
import time

import pytest
from test_endpoints import client_for, complete

from delib.errors import DelibError, EndpointFailed
from delib.testing import FakeOpenAIServer, Fault


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    body = {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n".encode()


COMPLETION = json.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "test-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}
        ],
    }
).encode()

SSE = "text/event-stream"
HOSTILE = {
    "plain-text-200": Fault(200, body=b"oops, not json", content_type="text/plain"),
    "html-200": Fault(200, body=b"<html><body>Gateway</body></html>", content_type="text/html"),
    "truncated-json": Fault(200, body=COMPLETION[: len(COMPLETION) // 2]),
    "json-array": Fault(200, body=b"[1, 2, 3]"),
    "empty-choices": Fault(200, body=COMPLETION.replace(b'"choices": [', b'"choices": [], "x": [')),
    "null-choices": Fault(200, body=b'{"id": "x", "object": "chat.completion", "choices": null}'),
    "sse-garbage": Fault(200, events=[b"data: {not json at all\n\n"], content_type=SSE),
    "sse-not-utf8": Fault(200, events=[b"data: \xff\xfe\xfd\n\n"], content_type=SSE),
    "sse-no-done": Fault(200, events=[chunk("half a reply")], content_type=SSE),
    "sse-error-midway": Fault(
        200,
        events=[chunk("starting"), b'data: {"error": {"message": "overloaded [/x]"}}\n\n'],
        content_type=SSE,
    ),
    "json-for-a-stream": Fault(200, body=COMPLETION),
}


CASES = [
    pytest.param(name, stream, id=f"{name}-{'stream' if stream else 'whole'}")
    for name in HOSTILE
    for stream in (True, False)
    if stream or name != "json-for-a-stream"  # a JSON body is the answer to a whole request
]


@pytest.mark.parametrize("name, stream", CASES)
def test_a_hostile_answer_is_retried_then_one_error(
    server: FakeOpenAIServer, name: str, stream: bool
) -> None:
    fault = HOSTILE[name]
    server.fail(fault, fault, fault)  # every attempt (max_retries=2)
    with pytest.raises(EndpointFailed) as caught:
        complete(client_for(server.base_url, max_retries=2), stream=stream)
    message = str(caught.value)
    assert "\n" not in message and "HTTP None" not in message
    assert "after 3 attempts" in message, message
    assert len(server.chat_requests()) == 3


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_a_hostile_answer_once_then_a_good_one_is_a_reply(server, stream: bool) -> None:
    server.fail(HOSTILE["sse-no-done" if stream else "truncated-json"])
    server.enqueue("the real reply")
    reply = complete(client_for(server.base_url), stream=stream)
    assert reply.text == "the real reply"
    assert len(server.chat_requests()) == 2


def test_a_400_is_sent_once_and_reported_so(server) -> None:
    server.fail(Fault(400, message="bad [/dim] request"))
    with pytest.raises(EndpointFailed) as caught:
        complete(client_for(server.base_url))
    assert "attempts" not in str(caught.value) and "HTTP 400" in str(caught.value)
    assert len(server.chat_requests()) == 1


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
def test_lone_surrogates_become_replacement_characters(server, stream: bool) -> None:
    server.enqueue("a\ud800b\udfffc")
    reply = complete(client_for(server.base_url), stream=stream)
    assert reply.text == "a\ufffdb\ufffdc"
    reply.text.encode("utf-8")


def test_a_models_listing_in_html_is_no_listing() -> None:
    import asyncio

    with FakeOpenAIServer(models_body=b"<html>login</html>") as server:
        client = client_for(server.base_url)

        async def go():
            try:
                return await client.list_models()
            finally:
                await client.close()

        assert asyncio.run(go()) is None


def test_a_trickling_stream_hits_the_total_timeout() -> None:
    with FakeOpenAIServer(chunk_delay=0.3, chunk_chars=2) as server:
        server.enqueue("a reply long enough to trickle for several seconds at two characters")
        started = time.monotonic()
        with pytest.raises(DelibError) as caught:
            complete(client_for(server.base_url, timeout=1.0, max_retries=0))
        assert time.monotonic() - started < 5
    assert "1s" in str(caught.value) and "timeout" in str(caught.value)


def test_a_stalled_stream_hits_the_idle_timeout(server) -> None:
    stalled = Fault(200, events=[chunk("a start"), chunk(" and then")], chunk_delay=3.0,
                    content_type="text/event-stream")  # fmt: skip
    server.fail(stalled)
    started = time.monotonic()
    with pytest.raises(DelibError) as caught:
        complete(client_for(server.base_url, idle_timeout=0.5, max_retries=0))
    assert time.monotonic() - started < 2.5
    assert "idle_timeout" in str(caught.value)


# --- through the CLI: one line, finished turns kept ------------------------------------------
def toml_for(server: FakeOpenAIServer) -> None:
    from pathlib import Path

    Path("delib.toml").write_text(
        f'[endpoints.hostile]\nbase_url = "{server.base_url}"\nmodel = "{server.models[0]}"\n'
        "retry_wait = 0.01\nmax_retries = 1\n"
    )


def run_hostile(cli, archive, *extra: str) -> tuple[int, str, str]:
    return cli("run", "alignment-difficulty", "--endpoint", "hostile", "--rounds", "1",
               "--archive", str(archive), *extra)  # fmt: skip


@pytest.mark.parametrize("name", ["html-200", "sse-no-done", "sse-garbage", "sse-error-midway"])
def test_a_server_turning_hostile_midway_ends_the_run_with_an_error(
    cli, server, tmp_path, name
) -> None:
    toml_for(server)
    server.fail(HOSTILE[name], HOSTILE[name], after=3)
    archive = tmp_path / "archive"
    code, out, err = run_hostile(cli, archive)
    assert code == 1
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "after 2 attempts" in errors[0], err
    (folder,) = [p for p in archive.iterdir() if p.is_dir()]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["stop_reason"] == "error" and manifest["turns"] == 3
    records = [json.loads(x) for x in (folder / "turns.jsonl").read_text().split("\n") if x]
    assert [r["index"] for r in records if r["type"] == "turn"] == [0, 1, 2]


def test_markup_in_a_model_id_and_a_server_error_is_text(cli, tmp_path) -> None:
    model = "[/dim]odd[bold]model[/x]"
    with FakeOpenAIServer(models=(model,)) as server:
        toml_for(server)
        server.fail(Fault(400, message="rejected [/x] because [red]reasons"), after=2)
        code, out, err = run_hostile(cli, tmp_path / "archive", "--no-stream")
    assert code == 1
    assert "Traceback" not in err and "MarkupError" not in err
    assert model in out  # the header names the model, as text
    assert "rejected [/x] because [red]reasons" in err


@pytest.mark.parametrize("stream", [[], ["--no-stream"]], ids=["stream", "whole"])
def test_a_reply_far_past_max_tokens_is_counted_whole_and_stored_capped(
    cli, server, tmp_path, stream
) -> None:
    from delib.models.replies import MIN_KEPT_CHARS

    huge = "x" * 2_000_000  # one "word": the fake server's max_tokens cut does not touch it
    server.chunk_chars = 100_000
    server.enqueue(huge)
    toml_for(server)
    code, out, err = run_hostile(cli, tmp_path / "archive", "--max-tokens", "50", "--json", *stream)
    assert code == 0, err
    (folder,) = [p for p in (tmp_path / "archive").iterdir() if p.is_dir()]
    opening = json.loads((folder / "turns.jsonl").read_text().split("\n")[0])
    assert len(opening["text"]) == MIN_KEPT_CHARS
    assert opening["truncated"] == {"received_chars": len(huge), "kept_chars": MIN_KEPT_CHARS}
    assert opening["tokens"]["completion"] >= len(huge) // 4 and opening["tokens"]["estimated"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["tokens"]["completion"] >= len(huge) // 4


def test_a_turn_cut_off_mid_stream_ends_its_line_before_the_error(cli, server, tmp_path) -> None:
    """With --json the live view is on stderr, next to the error: the half-streamed turn's line
    is ended (and marked cut off), so the error line starts a line of its own."""
    toml_for(server)
    server.fail(*[HOSTILE["sse-no-done"]] * 2, after=3)
    code, out, err = run_hostile(cli, tmp_path / "archive", "--json")
    assert code == 1 and json.loads(out)["turns"] == 3
    lines = err.splitlines()
    errors = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(errors) == 1 and "after 2 attempts" in lines[errors[0]], err
    assert lines[errors[0] - 1].endswith("half a reply … (cut off)"), err
