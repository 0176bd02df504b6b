"""What delib puts on the wire is what ``chat.completions.create`` would have sent.

``delib.models.replies.send`` posts the request body as it is, without the openai client's
request transform (about 0.4 ms a call). These tests hold that shortcut to account for every
kind of body delib sends: the same requests through both paths reach the loopback server with
the same JSON and the same headers (the API key as a bearer token included), and the
transform hands each body back unchanged, so an openai release that starts to change them
fails here.
"""

from __future__ import annotations

import asyncio
import json

import openai
import pytest
from openai._utils import async_maybe_transform
from openai.types.chat import completion_create_params

from delib.models.endpoints import Prompt, http_client
from delib.models.replies import send
from delib.models.structured import response_format, verdict_schema
from delib.testing import FakeOpenAIServer

PROMPT = Prompt(
    system="You are the moderator. Aligned to whom?",
    messages=[
        {"role": "user", "content": "Open the debate — “quotes”, é, 🙂, and a\nnew line."},
        {"role": "assistant", "content": "Opened."},
        {"role": "user", "content": "Go on."},
    ],
)
SCHEMA = ("verdict", verdict_schema(["ada", "ben"]))


def bodies() -> list[dict]:
    """Every shape of body ``EndpointClient.complete`` builds."""
    found = []
    for fold in (False, True):
        base = {
            "model": "test-model",
            "messages": PROMPT.render(fold),
            "temperature": 0.7,
            "max_tokens": 120,
        }
        found.append(base)
        found.append({**base, "seed": 7})
        for dialect in ("json_schema", "json_object"):
            found.append({**base, "response_format": response_format(dialect, *SCHEMA)})
        found.append({**base, "stream": True, "stream_options": {"include_usage": True}})
        found.append({**base, "stream": True, "seed": 3})
    return found


def _kind(body: dict):
    if body.get("stream"):
        return completion_create_params.CompletionCreateParamsStreaming
    return completion_create_params.CompletionCreateParamsNonStreaming


@pytest.mark.parametrize("body", bodies(), ids=lambda b: ",".join(sorted(b)))
def test_the_transform_hands_every_body_back_unchanged(body):
    transformed = asyncio.run(async_maybe_transform(body, _kind(body)))
    assert transformed == body
    assert json.dumps(transformed) == json.dumps(body)


async def _both_ways(base_url: str, body: dict) -> None:
    http = http_client()
    client = openai.AsyncOpenAI(
        base_url=base_url, api_key="sk-wire-test", max_retries=0, http_client=http
    )
    try:
        for way in ("create", "send"):
            if way == "create":
                reply = await client.chat.completions.create(**body)
            else:
                reply = await send(client, body)
            if body.get("stream"):
                async with reply:
                    async for _ in reply:
                        pass
    finally:
        await http.aclose()


@pytest.mark.parametrize("body", bodies(), ids=lambda b: ",".join(sorted(b)))
def test_send_puts_on_the_wire_what_create_does(body):
    with FakeOpenAIServer() as server:
        asyncio.run(_both_ways(server.base_url, body))
        created, sent = server.chat_requests()
    assert sent["body"] == created["body"] == body
    assert sent["headers"] == created["headers"]
    assert sent["headers"]["authorization"] == "Bearer sk-wire-test"
    assert sent["headers"]["content-length"] == created["headers"]["content-length"]
