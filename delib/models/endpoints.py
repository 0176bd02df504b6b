"""One call to a model: an ``AsyncOpenAI`` client per endpoint, with one retry layer.

What differs between OpenAI-compatible servers is handled here and nowhere else:

- only portable parameters are sent (``max_tokens``, never ``n``; ``seed`` only when asked);
- the openai client's own retries are off (``max_retries=0``) and timeouts are explicit; one
  retry policy (``retries``, on tenacity) retries connection errors, 408/409/429 and 5xx,
  honouring ``Retry-After``, and never retries 400/401/404/422;
- chat templates that reject a system message or demand strict alternation: the messages
  always alternate user/assistant, and on a template error the system text is folded into the
  first user message, once, and remembered for the endpoint;
- ``stream_options`` is dropped, once and for good, if a server rejects it;
- usage may be absent, or arrive in a final chunk without choices.
"""

from __future__ import annotations

import asyncio
import ssl
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import httpx
import httpx2
import openai
from openai import AsyncOpenAI

from delib.errors import AuthError, EndpointFailed, EndpointUnreachable, UnknownModel
from delib.models.config import Endpoint
from delib.models.failures import (
    BadReply,
    Stalled,
    describe_error,
    is_invalid_request,
    is_model_error,
    is_stream_options_error,
    is_template_error,
    message_of,
    status_of,
)
from delib.models.replies import MALFORMED, Reply, TokenCallback, read_stream, read_whole
from delib.models.retries import GaveUp, RetryCallback, with_retries
from delib.models.structured import REJECTION_MARKERS, next_dialect, response_format

# Timeout for listing models before a run; the listing is small.
MODELS_TIMEOUT = 15.0


@dataclass
class Prompt:
    """What one speaker is shown: system text plus alternating user/assistant messages.

    ``messages`` always starts with a user message and alternates strictly.
    """

    system: str
    messages: list[dict[str, str]]
    omitted: int = 0  # transcript turns folded into the rolling summary to fit the context
    summary_chars: int = 0  # size of that summary

    def render(self, fold_system: bool) -> list[dict[str, str]]:
        """The messages to send, with the system text native or folded into the first turn."""
        if not fold_system:
            return [{"role": "system", "content": self.system}, *self.messages]
        first, *rest = self.messages
        folded = {"role": "user", "content": f"{self.system}\n\n{first['content']}"}
        return [folded, *rest]

    def chars(self) -> int:
        return len(self.system) + sum(len(m["content"]) for m in self.messages)


@dataclass
class Adaptation:
    """Something the client changed about how it talks to an endpoint, for the archive."""

    endpoint: str
    what: str
    reason: str


# Set in the task of a request sent ahead of its step (``speaking.ask_ahead``): the event is
# set once the request is on the wire, so the step can let LangGraph's bookkeeping run while
# the model answers instead of in between (a connect, for one, yields to the event loop).
SENT: ContextVar[asyncio.Event | None] = ContextVar("delib_sent", default=None)


async def _mark_sent(request: Any) -> None:
    """A request hook: with ``SENT`` set, ask the HTTP stack to say when the body is sent
    (httpcore's ``trace`` request extension)."""
    sent = SENT.get()
    if sent is None:
        return

    async def trace(name: str, info: dict[str, Any]) -> None:
        if name.endswith("send_request_body.complete"):
            sent.set()

    request.extensions["trace"] = trace


HOOKS = {"request": [_mark_sent]}


_SSL_CONTEXT: ssl.SSLContext | None = None


def ssl_context() -> ssl.SSLContext:
    """The process's one verifying SSL context, as the openai client builds it (reading the CA
    bundle takes about 20 ms: once, not once per endpoint or per run)."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = httpx2.create_ssl_context()
    return _SSL_CONTEXT


def http_client(transport: httpx.AsyncBaseTransport | None = None) -> Any:
    """An HTTP client for the endpoints of a run (timeouts are set per request, from each
    endpoint's config); an in-process transport (``delib.testing.FakeTransport``) answers
    without a socket."""
    if transport is not None:
        return httpx.AsyncClient(transport=transport, event_hooks=HOOKS)
    return openai.DefaultAsyncHttpxClient(verify=ssl_context(), event_hooks=HOOKS)


class EndpointClient:
    """Talks to one endpoint; shared by every persona that uses it in a run. ``http`` is the
    run's HTTP client, shared with its other endpoints (and closed by its owner, ``Clients``);
    without one the client has one of its own."""

    def __init__(
        self,
        endpoint: Endpoint,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: Limits | None = None,
        http: Any = None,
    ) -> None:
        cfg = endpoint.config
        self.endpoint = endpoint
        self._owns_http = http is None
        self.client = AsyncOpenAI(
            base_url=cfg.base_url,
            api_key=endpoint.api_key,
            max_retries=0,
            timeout=openai.Timeout(cfg.timeout, connect=cfg.connect_timeout),
            default_headers=dict(cfg.headers) or None,
            http_client=http_client(transport) if http is None else http,
        )
        self.fold_system = cfg.system_message == "fold"
        self.stream_usage = True
        # The structured-output dialect in use ("off" once the server has rejected them all).
        self.structured = (
            "json_schema" if cfg.structured_output == "auto" else cfg.structured_output
        )
        self.adaptations: list[Adaptation] = []
        # Requests in flight to this server: shared with every other run of a sweep.
        self.semaphore = (limits or Limits()).semaphore(cfg.base_url, cfg.max_concurrency)
        self._models: list[str] | None = None

    @property
    def name(self) -> str:
        return self.endpoint.name

    async def close(self) -> None:
        if self._owns_http:
            await self.client.close()

    async def _with_retries(self, call, on_retry: RetryCallback | None = None):
        """``call()`` through the retry policy (``retries``); a failure as a ``DelibError``
        that says what to do."""
        config = self.endpoint.config
        try:
            return await with_retries(call, config.max_retries + 1, config.retry_wait, on_retry)
        except GaveUp as gave_up:
            raise await self._translate(gave_up.error, gave_up.attempts) from gave_up.error

    async def _translate(self, exc: BaseException, attempts: int) -> Exception:
        """Turn an openai exception into a DelibError that says what to do."""
        name, url = self.name, self.endpoint.config.base_url
        tries = f" after {attempts} attempt{'s' if attempts > 1 else ''}" if attempts > 1 else ""
        if isinstance(exc, Stalled):
            return EndpointUnreachable(
                f"endpoint '{name}' at {url} {exc}{tries}; raise '{exc.setting}' in "
                "delib.toml or check the server"
            )
        if isinstance(exc, BadReply):
            return EndpointFailed(f"endpoint '{name}' at {url} sent no usable reply{tries}: {exc}")
        if isinstance(exc, openai.APITimeoutError):
            return EndpointUnreachable(
                f"endpoint '{name}' at {url} did not answer within "
                f"{self.endpoint.config.timeout:g}s{tries}; raise 'timeout' in delib.toml "
                "or check the server"
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return EndpointUnreachable(
                f"cannot reach endpoint '{name}' at {url}{tries} ({describe_error(cause)}); "
                "is the server running, and is the URL right?"
            )
        status = status_of(exc)
        if status in (401, 403):
            key_hint = (
                f"check the key in {self.endpoint.api_key_env}"
                if self.endpoint.api_key_env
                else "set an API key: OPENAI_API_KEY for --base-url, or api_key_env in delib.toml"
            )
            return AuthError(
                f"endpoint '{name}' at {url} refused the request (HTTP {status}: "
                f"{message_of(exc)}); {key_hint}"
            )
        if is_model_error(exc):
            return UnknownModel(await self._unknown_model_text(message_of(exc)))
        if status == 404:
            return EndpointFailed(
                f"endpoint '{name}' answered 404 for {url}/chat/completions; "
                "the base URL usually ends in /v1"
            )
        return EndpointFailed(
            f"endpoint '{name}' at {url} failed{tries}: HTTP {status}: {message_of(exc)}"
        )

    async def _unknown_model_text(self, detail: str) -> str:
        offered = await self.list_models(quiet=True)
        listing = ", ".join(offered) if offered else "the server did not list its models"
        return (
            f"endpoint '{self.name}' at {self.endpoint.config.base_url} does not offer that "
            f"model ({detail}); offered: {listing}; pass --model or --persona-model ID=MODEL"
        )

    async def list_models(self, quiet: bool = False) -> list[str] | None:
        """Model ids from ``/v1/models``, or None if the server has no such listing."""
        if self._models is not None:
            return self._models

        async def call():
            try:
                page = await self.client.models.list(timeout=MODELS_TIMEOUT)
                return [str(m.id) for m in page.data]
            except MALFORMED:  # an HTML login page, a proxy's error page: no listing
                return None

        try:
            if quiet:
                self._models = await call()
            else:
                self._models = await self._with_retries(call)
        except (openai.OpenAIError, EndpointFailed, UnknownModel):  # no listing to be had
            return None
        return self._models

    async def check_model(self, model: str | None) -> str:
        """Make sure ``model`` is offered; with no model, use the server's only one."""
        offered = await self.list_models()
        if model is None:
            if offered and len(offered) == 1:
                return offered[0]
            listing = ", ".join(offered) if offered else "none listed"
            raise UnknownModel(
                f"no model chosen for endpoint '{self.name}' ({self.endpoint.config.base_url}); "
                f"offered: {listing}; pass --model, or set 'model' for the endpoint in delib.toml"
            )
        if offered is not None and model not in offered and f"{model}:latest" not in offered:
            # (Ollama lists "name:latest" but answers to plain "name".)
            raise UnknownModel(
                f"endpoint '{self.name}' at {self.endpoint.config.base_url} does not offer "
                f"model '{model}'; offered: {', '.join(offered) or 'none'}; "
                "pass --model or --persona-model ID=MODEL"
            )
        return model

    async def complete(
        self,
        prompt: Prompt,
        *,
        model: str,
        temperature: float,
        max_tokens: int,
        seed: int | None = None,
        stream: bool = True,
        on_token: TokenCallback | None = None,
        on_retry: RetryCallback | None = None,
        schema: tuple[str, dict[str, Any]] | None = None,
    ) -> Reply:
        """One chat completion, streamed or not, with retries and layout fallbacks; with
        ``schema`` (a name and a JSON schema), in the server's structured-output dialect."""
        async with self.semaphore:
            for _ in range(5):  # as sent, then each fallback once: stream_options, the system
                # message, and up to two structured-output dialects
                params: dict[str, Any] = {
                    "model": model,
                    "messages": prompt.render(self.fold_system),
                    "temperature": temperature,
                    "max_tokens": max_tokens,
                }
                if seed is not None:
                    params["seed"] = seed
                if schema is not None and self.structured != "off":
                    params["response_format"] = response_format(self.structured, *schema)
                call = self._streamed(params, on_token) if stream else self._whole(params)
                try:
                    return await self._with_retries(call, on_retry)
                except (EndpointFailed, UnknownModel) as err:
                    cause = err.__cause__
                    if "response_format" in params and is_format_error(cause):
                        rejected, self.structured = (
                            self.structured,
                            next_dialect(self.structured, self.endpoint.config.structured_output),
                        )
                        self._adapt(
                            f"structured output {rejected} rejected; now {self.structured}",
                            message_of(cause),
                        )
                        continue
                    if stream and self.stream_usage and is_stream_options_error(cause):
                        self.stream_usage = False
                        self._adapt("stream_options off", message_of(cause))
                        continue
                    if not self.fold_system and is_template_error(cause):
                        if self.endpoint.config.system_message == "native":
                            raise
                        self.fold_system = True
                        self._adapt(
                            "system message folded into first user message", message_of(cause)
                        )
                        continue
                    raise
            raise AssertionError("unreachable")  # pragma: no cover

    def _adapt(self, what: str, reason: str) -> None:
        self.adaptations.append(Adaptation(self.name, what, reason))

    def _whole(self, params: dict[str, Any]):
        return lambda: read_whole(self.client, params, self.endpoint.config.timeout)

    def _streamed(self, params: dict[str, Any], on_token: TokenCallback | None):
        cfg = self.endpoint.config
        extra: dict[str, Any] = {"stream": True}
        if self.stream_usage:
            extra["stream_options"] = {"include_usage": True}
        idle = cfg.idle_timeout or cfg.timeout
        return lambda: read_stream(self.client, {**params, **extra}, cfg.timeout, idle, on_token)


def is_format_error(exc: BaseException | None) -> bool:
    """A 400/422 (or a request-validation 500) about the response format: the server does not
    take that dialect."""
    if exc is None or (status_of(exc) not in (400, 422) and not is_invalid_request(exc)):
        return False
    text = message_of(exc).lower()
    return any(marker in text for marker in REJECTION_MARKERS)


class Limits:
    """How many requests may be in flight to each server (by base URL), however many runs
    share it: one ``Limits`` for a whole sweep keeps its endpoints' ``max_concurrency``."""

    def __init__(self) -> None:
        self._by_url: dict[str, asyncio.Semaphore] = {}

    def semaphore(self, base_url: str, limit: int) -> asyncio.Semaphore:
        key = base_url.rstrip("/")
        if key not in self._by_url:
            self._by_url[key] = asyncio.Semaphore(limit)
        return self._by_url[key]


@dataclass
class Clients:
    """One EndpointClient per endpoint name, shared by the personas of a run."""

    by_name: dict[str, EndpointClient] = field(default_factory=dict)
    transport: httpx.AsyncBaseTransport | None = None  # in-process, for tests; None: HTTP
    limits: Limits = field(default_factory=Limits)
    http: Any = None  # the HTTP client every endpoint of the run shares (made on first use)

    def get(self, endpoint: Endpoint) -> EndpointClient:
        if endpoint.name not in self.by_name:
            if self.http is None:
                self.http = http_client(self.transport)
            self.by_name[endpoint.name] = EndpointClient(
                endpoint, self.transport, self.limits, self.http
            )
        return self.by_name[endpoint.name]

    def adaptations(self) -> list[Adaptation]:
        return [a for client in self.by_name.values() for a in client.adaptations]

    async def close(self) -> None:
        for client in self.by_name.values():
            await client.close()
        if self.http is not None:
            await self.http.aclose()
            self.http = None
