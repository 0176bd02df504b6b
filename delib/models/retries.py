"""The retry policy: which failures are tried again, how long to wait, when to give up.

Built on tenacity, used by every call to a model (``with_retries``, async), by the archive's
PostgreSQL connections (``retrying``, the same settings in tenacity's synchronous loop) and by
every wait for something held elsewhere (``poll``). A first attempt that
succeeds never touches tenacity: the call is made directly, and only its failure enters the
retry loop, as the loop's first attempt, so the attempts are numbered and counted exactly as
if tenacity had made them all. What is retried is ``failures.is_retryable`` (connection
errors, timeouts, 408/409/429 and 5xx; never 400/401/404/422); the wait is the server's
``Retry-After`` when it gives a sensible one, else a back-off that doubles.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import openai
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    retry_if_exception_type,
    retry_if_result,
    stop_after_attempt,
    stop_after_delay,
    stop_never,
    wait_random_exponential,
)
from tenacity.wait import wait_base

from delib.models.failures import BadReply, Stalled, describe_error, is_retryable, retry_after

# What a call to a model can fail with that the policy looks at; anything else passes through.
FAILURES = (openai.OpenAIError, BadReply, Stalled)
# Longest wait honoured from a Retry-After header; a server asking for more is treated as down.
MAX_RETRY_AFTER = 60.0
# Back-off never waits longer than this between attempts.
MAX_BACKOFF = 30.0

RetryCallback = Callable[[int, str], None]


class GaveUp(Exception):
    """The call failed in a way a retry cannot mend, or used its attempts."""

    def __init__(self, error: BaseException, attempts: int) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts


class wait_retry_after(wait_base):  # noqa: N801 (named like tenacity's own strategies)
    """The server's ``Retry-After`` if it gave one up to ``MAX_RETRY_AFTER`` seconds, else
    ``base`` seconds doubling with each attempt, up to ``MAX_BACKOFF``."""

    def __init__(self, base: float) -> None:
        self.base = base

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        after = retry_after(exc) if exc is not None else None
        if after is not None and after <= MAX_RETRY_AFTER:
            return after
        return min(MAX_BACKOFF, self.base * 2 ** (retry_state.attempt_number - 1))


def _settings(
    retryable: Callable[[BaseException], bool],
    attempts: int,
    base_wait: float,
    on_retry: RetryCallback | None,
) -> dict[str, Any]:
    """What both loops share: which failures, how many attempts, how long between them."""

    def before_sleep(state: RetryCallState) -> None:
        if on_retry is not None and state.outcome is not None:
            wait = state.next_action.sleep if state.next_action is not None else 0.0
            said = describe_error(state.outcome.exception())
            on_retry(state.attempt_number, f"{said}; waiting {wait:.3g}s" if wait else said)

    return {
        "retry": retry_if_exception(retryable),
        "stop": stop_after_attempt(attempts),
        "wait": wait_retry_after(base_wait),
        "before_sleep": before_sleep,
        "reraise": True,
    }


def policy(
    attempts: int,
    base_wait: float,
    on_retry: RetryCallback | None = None,
    retryable: Callable[[BaseException], bool] = is_retryable,
) -> AsyncRetrying:
    """The retrying loop for ``attempts`` attempts in all; ``on_retry(attempt, error)`` is told
    of each failure that will be tried again, and how long it waits (the live view shows it).
    What is retried is a model call's transients unless ``retryable`` says otherwise."""
    return AsyncRetrying(**_settings(retryable, attempts, base_wait, on_retry))


def retrying(
    retryable: Callable[[BaseException], bool],
    attempts: int,
    base_wait: float,
    on_retry: RetryCallback | None = None,
) -> Retrying:
    """The same policy in tenacity's synchronous loop, for failures ``retryable`` picks (the
    archive's PostgreSQL transients: ``delib.archive.pgsession``)."""
    return Retrying(**_settings(retryable, attempts, base_wait, on_retry))


def poll(first_wait: float, max_wait: float, deadline: float | None = None) -> dict[str, Any]:
    """Settings for waiting on something another process holds (a lock, a slot): try again
    while the attempt returns false, with jittered waits from ``first_wait`` growing to
    ``max_wait``, until ``deadline`` seconds (None: for as long as it takes). For
    ``Retrying(**poll(...))`` or ``AsyncRetrying(**poll(...))``; the last result is returned
    when the deadline passes, so the caller says what it waited for."""
    return {
        "retry": retry_if_result(lambda got: not got),
        "wait": wait_random_exponential(multiplier=first_wait, max=max_wait),
        "stop": stop_never if deadline is None else stop_after_delay(deadline),
        "retry_error_callback": lambda state: state.outcome.result() if state.outcome else None,
    }


async def with_retries(
    call: Callable[[], Awaitable[Any]],
    attempts: int,
    base_wait: float,
    on_retry: RetryCallback | None = None,
) -> Any:
    """``call()``'s result, tried up to ``attempts`` times; ``GaveUp`` when it cannot be had."""
    try:
        return await call()
    except FAILURES as exc:
        if attempts <= 1 or not is_retryable(exc):
            raise GaveUp(exc, 1) from exc
        first: list[BaseException] = [exc]
    made = [1]

    async def attempt() -> Any:
        if first:  # the loop's first attempt is the call already made
            raise first.pop()
        made[0] += 1
        return await call()

    try:
        return await policy(attempts, base_wait, on_retry)(attempt)
    except FAILURES as exc:
        raise GaveUp(exc, made[0]) from exc


class Unusable(Exception):
    """A reply that came but cannot be used as it is (a verdict that does not parse): the
    caller asks again, differently (``until_usable``)."""


async def until_usable(attempt: Callable[[int], Awaitable[Any]], attempts: int) -> Any:
    """``attempt(n)`` for n = 1, 2, … until one returns instead of raising ``Unusable``, at most
    ``attempts`` times, with no wait (the server answered; the answer was the problem); the
    last ``Unusable`` if none is usable. The same tenacity loop as the model calls' policy."""
    async for tried in AsyncRetrying(
        retry=retry_if_exception_type(Unusable), stop=stop_after_attempt(attempts), reraise=True
    ):
        with tried:
            return await attempt(tried.retry_state.attempt_number)
    raise AssertionError("unreachable: tenacity returns or reraises")  # pragma: no cover
