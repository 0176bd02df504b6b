"""The retry policy (delib.models.retries, on tenacity): what is tried again, how long it waits,
how attempts are counted, and that a first attempt that succeeds never enters the loop."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest
from tenacity import AsyncRetrying, RetryCallState
from tenacity.wait import wait_base

from delib.models import retries
from delib.models.retries import GaveUp, wait_retry_after, with_retries


def status_error(status: int, retry_after: str | None = None) -> openai.APIStatusError:
    headers = {} if retry_after is None else {"Retry-After": retry_after}
    request = httpx.Request("POST", "http://127.0.0.1:1/v1/chat/completions")
    response = httpx.Response(status, headers=headers, request=request)
    return openai.APIStatusError(f"HTTP {status}", response=response, body=None)


def state_after(exc: BaseException, attempt: int) -> RetryCallState:
    state = RetryCallState(AsyncRetrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


def test_the_wait_is_a_tenacity_strategy_honouring_retry_after():
    wait = wait_retry_after(base=1.0)
    assert isinstance(wait, wait_base)
    assert wait(state_after(status_error(429, "7"), 1)) == 7.0
    # no header: doubling from the base, capped
    assert [wait(state_after(status_error(503), n)) for n in (1, 2, 3)] == [1.0, 2.0, 4.0]
    assert wait(state_after(status_error(503), 20)) == retries.MAX_BACKOFF
    # a server asking for longer than the cap is not believed: back-off instead
    assert wait(state_after(status_error(429, "3600"), 1)) == 1.0


def calls(*outcomes):
    """A call that fails or answers as scripted, counting how often it was made."""
    script = list(outcomes)
    made = []

    async def call():
        made.append(1)
        outcome = script.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    return call, made


def test_a_first_attempt_that_succeeds_never_builds_the_loop(monkeypatch):
    def no_loop(*args, **kwargs):
        raise AssertionError("the retry loop was built for a call that succeeded")

    monkeypatch.setattr(retries, "policy", no_loop)
    call, made = calls("answer")
    assert asyncio.run(with_retries(call, attempts=3, base_wait=0)) == "answer"
    assert made == [1]


def test_the_wait_is_told_before_it_is_waited():
    seen = []
    call, _ = calls(status_error(429, "0.01"), "answer")
    asyncio.run(with_retries(call, 2, 0, on_retry=lambda n, e: seen.append(e)))
    assert len(seen) == 1 and seen[0].endswith("waiting 0.01s") and "429" in seen[0]


def test_retries_are_numbered_and_counted_as_attempts():
    seen = []
    call, made = calls(status_error(503, "0"), status_error(429, "0"), "answer")
    result = asyncio.run(
        with_retries(call, attempts=4, base_wait=0, on_retry=lambda n, e: seen.append(n))
    )
    assert result == "answer" and len(made) == 3 and seen == [1, 2]


def test_giving_up_names_every_attempt_made():
    seen = []
    call, made = calls(*[status_error(500, "0")] * 3)
    with pytest.raises(GaveUp) as caught:
        asyncio.run(with_retries(call, 3, 0, on_retry=lambda n, e: seen.append(n)))
    assert caught.value.attempts == 3 and len(made) == 3 and seen == [1, 2]
    assert isinstance(caught.value.error, openai.APIStatusError)


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_a_request_a_retry_cannot_mend_is_not_tried_again(status: int):
    call, made = calls(status_error(status), "never")
    with pytest.raises(GaveUp) as caught:
        asyncio.run(with_retries(call, attempts=5, base_wait=0))
    assert caught.value.attempts == 1 and made == [1]


def test_a_failure_in_a_retry_that_cannot_be_mended_stops_there():
    call, made = calls(status_error(503, "0"), status_error(400), "never")
    with pytest.raises(GaveUp) as caught:
        asyncio.run(with_retries(call, attempts=5, base_wait=0))
    assert caught.value.attempts == 2 and len(made) == 2
    assert caught.value.error.status_code == 400


# --- a reply that came but cannot be used (the verdict asked again) --------------------------
def test_until_usable_asks_again_until_an_answer_can_be_used():
    seen: list[int] = []

    async def attempt(n: int) -> str:
        seen.append(n)
        if n < 2:
            raise retries.Unusable("not JSON")
        return f"usable at {n}"

    assert asyncio.run(retries.until_usable(attempt, 3)) == "usable at 2"
    assert seen == [1, 2]


def test_until_usable_gives_the_last_complaint_after_its_attempts():
    seen: list[int] = []

    async def attempt(n: int) -> str:
        seen.append(n)
        raise retries.Unusable(f"still not JSON ({n})")

    with pytest.raises(retries.Unusable, match=r"\(2\)"):
        asyncio.run(retries.until_usable(attempt, 2))
    assert seen == [1, 2]


def test_until_usable_lets_any_other_failure_through_at_once():
    seen: list[int] = []

    async def attempt(n: int) -> str:
        seen.append(n)
        raise GaveUp(status_error(400), 1)

    with pytest.raises(GaveUp):
        asyncio.run(retries.until_usable(attempt, 5))
    assert seen == [1]
