"""What an OpenAI-compatible server's error means: retry it, adapt to it, or give up.

Pure functions over the ``openai`` client's exceptions, shared by ``endpoints`` (one model
call, with retries and fallbacks) and ``probe`` (``delib endpoints check``).
"""

from __future__ import annotations

import email.utils
import time

import openai

RETRYABLE_STATUS = frozenset({408, 409, 429})
# Phrases servers use when a chat template rejects the message layout (llama.cpp, vLLM,
# Ollama, LM Studio, transformers templates).
TEMPLATE_ERROR_MARKERS = (
    "system role",
    "system message",
    "roles must alternate",
    "conversation roles",
    "must alternate",
    "chat template",
    "developer role",
)


class BadReply(Exception):
    """An answer with status 200 that is no usable reply: not a chat completion, cut short
    (no finish reason, no ``[DONE]``), no choices, garbage events, or an error reported in the
    middle of a stream. Retried like a 5xx: servers that send these are usually restarting or
    overloaded."""


class Stalled(Exception):
    """A request that ran past a deadline: ``setting`` names the endpoint setting that set it."""

    def __init__(self, setting: str, seconds: float, what: str) -> None:
        super().__init__(f"{what} {seconds:g}s ({setting})")
        self.setting = setting
        self.seconds = seconds


def status_of(exc: BaseException) -> int | None:
    return exc.status_code if isinstance(exc, openai.APIStatusError) else None


# Characters of a server's error message kept in an error line.
MESSAGE_CHARS = 300


def message_of(exc: BaseException) -> str:
    """The server's error message on one line (servers send tracebacks too), shortened."""
    text = _message(exc)
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"


def _message(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        if isinstance(body, dict):
            inner = body.get("error", body)
            if isinstance(inner, dict) and inner.get("message"):
                return str(inner["message"])
            if isinstance(inner, str):
                return inner
        return exc.message
    return str(exc) or type(exc).__name__


def is_invalid_request(exc: BaseException) -> bool:
    """A 500 that is the server rejecting the request's fields (llama-cpp-python's server
    reports its request validation errors as 500): the same request will fail again."""
    if status_of(exc) != 500:
        return False
    text = message_of(exc).lower()
    return "validation error" in text and ("input should be" in text or "literal_error" in text)


def is_retryable(exc: BaseException) -> bool:
    """Connection problems, timeouts, unusable 200 answers, 408/409/429 and 5xx; never other
    4xx."""
    if isinstance(exc, openai.APIConnectionError | BadReply | Stalled):  # incl. APITimeoutError
        return True
    status = status_of(exc)
    if status is None or is_invalid_request(exc):
        return False
    return status in RETRYABLE_STATUS or status >= 500


def is_template_error(exc: BaseException) -> bool:
    if status_of(exc) not in (400, 422):
        return False
    text = message_of(exc).lower()
    return any(marker in text for marker in TEMPLATE_ERROR_MARKERS)


def is_stream_options_error(exc: BaseException) -> bool:
    return status_of(exc) in (400, 422) and "stream_options" in message_of(exc).lower()


def is_model_error(exc: BaseException) -> bool:
    status = status_of(exc)
    text = message_of(exc).lower()
    if status == 404:
        return "model" in text
    return status == 400 and "model" in text and ("not found" in text or "does not exist" in text)


def retry_after(exc: BaseException) -> float | None:
    if not isinstance(exc, openai.APIStatusError):
        return None
    value = exc.response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def describe_error(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    status = status_of(exc)
    if status is not None:
        return f"HTTP {status}: {message_of(exc)}"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
