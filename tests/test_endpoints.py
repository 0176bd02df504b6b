"""One model call through the real openai client against the loopback server."""

from __future__ import annotations

import asyncio
import contextvars
import socket

import pytest

from delib.errors import AuthError, EndpointFailed, EndpointUnreachable, UnknownModel
from delib.models.config import Endpoint, EndpointConfig
from delib.models.endpoints import SENT, EndpointClient, Prompt
from delib.testing import FakeOpenAIServer, FakeTransport, Fault

PROMPT = Prompt(
    system="You are terse.",
    messages=[
        {"role": "user", "content": "Open."},
        {"role": "assistant", "content": "Opened."},
        {"role": "user", "content": "Go on."},
    ],
)


def client_for(url: str, key: str = "local", key_env: str | None = None, **cfg) -> EndpointClient:
    cfg.setdefault("retry_wait", 0.01)
    return EndpointClient(Endpoint("test", EndpointConfig(base_url=url, **cfg), key, key_env))


def complete(client: EndpointClient, **kwargs):
    async def go():
        try:
            return await client.complete(
                PROMPT,
                model=kwargs.pop("model", "test-model"),
                temperature=0.5,
                max_tokens=50,
                **kwargs,
            )
        finally:
            await client.close()

    return asyncio.run(go())


@pytest.mark.parametrize("stream", [True, False])
def test_reply_and_usage(server: FakeOpenAIServer, stream: bool):
    server.enqueue("hello from the model")
    tokens: list[str] = []
    reply = complete(client_for(server.base_url), stream=stream, on_token=tokens.append)
    assert reply.text == "hello from the model"
    assert reply.completion_tokens == 4 and reply.prompt_tokens > 0
    assert reply.finish_reason == "stop"
    assert ("".join(tokens) == reply.text) if stream else tokens == []
    body = server.chat_requests()[0]["body"]
    assert body["max_tokens"] == 50 and "max_completion_tokens" not in body and "n" not in body
    assert body["messages"][0] == {"role": "system", "content": "You are terse."}


@pytest.mark.parametrize("stream", [True, False])
def test_usage_absent(stream: bool):
    with FakeOpenAIServer(usage=False) as server:
        server.enqueue("no usage here")
        reply = complete(client_for(server.base_url), stream=stream)
    assert reply.text == "no usage here"
    assert not reply.usage_reported


def test_rate_limit_is_retried_honouring_retry_after(server: FakeOpenAIServer):
    server.fail(Fault(429, retry_after=0), Fault(503, retry_after=0))
    server.enqueue("third time lucky")
    retries: list[int] = []
    reply = complete(
        client_for(server.base_url, retry_wait=30), on_retry=lambda n, e: retries.append(n)
    )
    assert reply.text == "third time lucky"
    assert retries == [1, 2]
    assert len(server.chat_requests()) == 3


def test_server_that_keeps_failing(server: FakeOpenAIServer):
    server.fail(*[Fault(500, "boom")] * 5)
    with pytest.raises(EndpointFailed) as info:
        complete(client_for(server.base_url, max_retries=2))
    assert "after 3 attempts" in str(info.value) and "HTTP 500" in str(info.value)
    assert len(server.chat_requests()) == 3


@pytest.mark.parametrize("status", [400, 422])
def test_client_errors_are_not_retried(server: FakeOpenAIServer, status: int):
    server.fail(Fault(status, "bad request shape"))
    with pytest.raises(EndpointFailed, match="bad request shape"):
        complete(client_for(server.base_url))
    assert len(server.chat_requests()) == 1


def test_template_error_folds_system_once_and_remembers():
    with FakeOpenAIServer(reject_system=True, strict_alternation=True) as server:
        client = client_for(server.base_url)

        async def go():
            first = await client.complete(PROMPT, model="test-model", temperature=0, max_tokens=9)
            second = await client.complete(PROMPT, model="test-model", temperature=0, max_tokens=9)
            await client.close()
            return first, second

        first, second = asyncio.run(go())
        requests = server.chat_requests()
    assert first.text and second.text
    assert len(requests) == 3  # rejected once, then folded twice
    folded = requests[1]["body"]["messages"]
    assert [m["role"] for m in folded] == ["user", "assistant", "user"]
    assert folded[0]["content"].startswith("You are terse.")
    assert [a.what for a in client.adaptations] == ["system message folded into first user message"]


def test_native_mode_does_not_fall_back():
    with FakeOpenAIServer(reject_system=True) as server:
        with pytest.raises(EndpointFailed, match="System role not supported"):
            complete(client_for(server.base_url, system_message="native"))


def test_stream_options_rejected_then_dropped():
    with FakeOpenAIServer(reject_stream_options=True) as server:
        server.enqueue("fine")
        client = client_for(server.base_url)
        reply = complete(client)
        assert reply.text == "fine"
        assert "stream_options" not in server.chat_requests()[-1]["body"]


def test_unknown_model_lists_offered(server: FakeOpenAIServer):
    with pytest.raises(UnknownModel) as info:
        complete(client_for(server.base_url), model="gpt-nonexistent")
    assert "test-model" in str(info.value)


def test_check_model_preflight():
    with FakeOpenAIServer(models=("alpha", "beta")) as server:

        def check(model):
            client = client_for(server.base_url)

            async def go():
                try:
                    return await client.check_model(model)
                finally:
                    await client.close()

            return asyncio.run(go())

        assert check("beta") == "beta"
        with pytest.raises(UnknownModel, match="alpha, beta"):
            check("gamma")
        with pytest.raises(UnknownModel, match="pass --model"):
            check(None)
        server.models = ("llama3.2:latest",)
        assert check("llama3.2") == "llama3.2"  # Ollama lists the implicit tag
        assert check(None) == "llama3.2:latest"  # the only model on offer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_endpoint():
    url = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(EndpointUnreachable) as info:
        complete(client_for(url, max_retries=1))
    assert url in str(info.value) and "is the server running" in str(info.value)


def test_slow_server_times_out():
    with FakeOpenAIServer(delay=2.0) as server:
        with pytest.raises(EndpointUnreachable, match="did not answer within 0.3s"):
            complete(client_for(server.base_url, timeout=0.3, max_retries=0), stream=False)


def test_wrong_key_names_the_variable():
    with FakeOpenAIServer(require_api_key="right-key") as server:
        with pytest.raises(AuthError) as info:
            complete(client_for(server.base_url, key="wrong-key", key_env="MY_KEY"))
        assert "MY_KEY" in str(info.value) and "401" in str(info.value)
        assert "wrong-key" not in str(info.value)
        server.enqueue("welcome")
        assert complete(client_for(server.base_url, key="right-key")).text == "welcome"


def test_extra_headers_and_seed_are_sent(server: FakeOpenAIServer):
    complete(client_for(server.base_url, headers={"X-Team": "research"}), seed=7)
    request = server.chat_requests()[0]
    assert request["headers"]["x-team"] == "research"
    assert request["body"]["seed"] == 7


def test_concurrency_cap_per_endpoint():
    with FakeOpenAIServer(delay=0.2) as server:
        client = client_for(server.base_url, max_concurrency=1)

        async def go():
            started = asyncio.get_running_loop().time()
            await asyncio.gather(
                *[
                    client.complete(PROMPT, model="test-model", temperature=0, max_tokens=5)
                    for _ in range(3)
                ]
            )
            await client.close()
            return asyncio.get_running_loop().time() - started

        # three 0.2 s replies one at a time cannot take less than 0.6 s
        assert asyncio.run(go()) >= 0.6


@pytest.mark.parametrize("stream", [True, False])
def test_a_request_asked_ahead_says_when_it_is_on_the_wire(server: FakeOpenAIServer, stream: bool):
    """What lets a step return while the model answers (``speaking.ask_ahead``): with
    ``SENT`` set, the event is set once the request has been sent, long before a reply that
    takes 2 s; without it, nothing is traced."""
    server.delay = 2.0
    server.enqueue("late reply")

    async def go():
        client = client_for(server.base_url)
        sent = asyncio.Event()
        context = contextvars.copy_context()
        context.run(SENT.set, sent)
        call = client.complete(
            PROMPT, model="test-model", temperature=0.5, max_tokens=50, stream=stream
        )
        task = asyncio.get_running_loop().create_task(call, context=context)
        try:
            await asyncio.wait_for(sent.wait(), timeout=1.5)
            assert not task.done()  # sent, not answered
            for _ in range(100):  # the server has it (its thread records it a moment later)
                if server.chat_requests():
                    break
                await asyncio.sleep(0.01)
            assert server.chat_requests() and not task.done()
            return (await task).text
        finally:
            task.cancel()
            await client.close()

    assert asyncio.run(go()) == "late reply"
    assert SENT.get() is None


def test_a_request_asked_ahead_in_process_completes_without_a_trace():
    """The in-process transport traces nothing: ``until_sent`` then waits for the reply itself
    (the step loses the overlap, not the turn)."""
    fake = FakeTransport()
    fake.fake.enqueue("in-process reply")

    async def go():
        client = EndpointClient(
            Endpoint("test", EndpointConfig(base_url="http://fake/v1"), "local", None), fake
        )
        sent = asyncio.Event()
        context = contextvars.copy_context()
        context.run(SENT.set, sent)
        call = client.complete(PROMPT, model="test-model", temperature=0.5, max_tokens=50)
        task = asyncio.get_running_loop().create_task(call, context=context)
        try:
            reply = await task
            return reply.text, sent.is_set()
        finally:
            await client.close()

    assert asyncio.run(go()) == ("in-process reply", False)
