"""``delib endpoints check``: what an endpoint can do, found out with a few tiny requests.

The check lists the models, then sends one-token chat requests to learn whether a system
message is accepted (and whether it is really seen: a server that drops it silently reports the
same prompt size with and without it), whether roles must strictly alternate, whether the model
thinks before it answers (a reasoning model), and whether token usage is reported with and
without streaming. Nothing is retried: the report is about the
server as it answers now.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import openai

from delib.models import thinking
from delib.models.config import Endpoint
from delib.models.endpoints import EndpointClient
from delib.models.failures import (
    describe_error,
    is_model_error,
    is_stream_options_error,
    is_template_error,
)
from delib.models.structured import DIALECTS, response_format

PROBE_USER = "Reply with the single word OK."
# Long enough that a server which counts it shows a clearly bigger prompt.
PROBE_SYSTEM = (
    "You are a careful assistant taking part in a connectivity check. Answer as briefly as "
    "you can, with one word, and add nothing else to your answer."
)


@dataclass
class Finding:
    """One answer: ``value`` is the fact (None if it could not be told), ``ok`` whether it
    suits delib (True), costs something delib works around (None), or stops a run (False)."""

    check: str
    value: bool | None
    ok: bool | None
    detail: str


@dataclass
class Report:
    endpoint: str
    base_url: str
    model: str | None = None
    findings: list[Finding] = field(default_factory=list)

    def add(self, check: str, value: bool | None, detail: str, ok: bool | None = ...) -> None:
        self.findings.append(Finding(check, value, value if ok is ... else ok, detail))

    @property
    def usable(self) -> bool:
        """Reachable, with a model that exists and answers."""
        needed = {"reachable", "model", "chat"}
        return all(f.ok for f in self.findings if f.check in needed) and needed <= {
            f.check for f in self.findings
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "base_url": self.base_url,
            "model": self.model,
            "usable": self.usable,
            "findings": [asdict(f) for f in self.findings],
        }


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


async def check_endpoint(endpoint: Endpoint, model: str | None = None) -> Report:
    """Probe ``endpoint``; ``model`` defaults to the endpoint's, else the server's only one."""
    endpoint = Endpoint(
        endpoint.name,
        endpoint.config.model_copy(update={"max_retries": 0}),
        endpoint.api_key,
        endpoint.api_key_env,
    )
    report = Report(endpoint.name, endpoint.config.base_url)
    client = EndpointClient(endpoint)
    try:
        await _probe(client, report, model or endpoint.config.model)
    finally:
        await client.close()
    return report


async def _probe(client: EndpointClient, report: Report, model: str | None) -> None:
    api = client.client
    started = time.perf_counter()
    try:
        page = await api.models.list()
        offered: list[str] | None = [m.id for m in page.data]
        took = _ms(time.perf_counter() - started)
        report.add("reachable", True, f"/v1/models answered in {took}")
    except openai.APIConnectionError as exc:
        report.add("reachable", False, f"no answer: {describe_error(exc.__cause__ or exc)}")
        return
    except openai.APIStatusError as exc:
        if exc.status_code in (401, 403):
            report.add("reachable", False, f"refused: {describe_error(exc)}; check the API key")
            return
        offered = None
        report.add("reachable", True, f"but no model listing ({describe_error(exc)})")
    if offered is not None:
        report.add("models", True, ", ".join(offered) if offered else "none offered")
    if model is None:
        if offered and len(offered) == 1:
            model = offered[0]
            report.add("model", True, f"{model} (the only model offered)")
        else:
            report.add("model", False, "none chosen; pass --model")
            return
    elif offered is not None and model not in offered and f"{model}:latest" not in offered:
        report.add("model", False, f"'{model}' is not offered")
        return
    else:
        report.add("model", True, f"{model} is offered" if offered is not None else model)
    report.model = model

    async def chat(messages: list[dict], max_tokens: int = 1, **extra: Any):
        t0 = time.perf_counter()
        response = await api.chat.completions.create(
            model=model, messages=messages, max_tokens=max_tokens, temperature=0.0, **extra
        )
        return response, time.perf_counter() - t0

    user = {"role": "user", "content": PROBE_USER}
    try:
        plain, latency = await chat([user])
    except openai.OpenAIError as exc:
        ok_detail = "the model is unknown to the chat API" if is_model_error(exc) else ""
        report.add("chat", False, ok_detail or f"failed: {describe_error(exc)}")
        return
    report.add("chat", True, f"one-token reply in {_ms(latency)}")
    plain_prompt = plain.usage.prompt_tokens if plain.usage else None
    if plain.usage:
        report.add("usage (whole replies)", True, f"{plain_prompt} prompt tokens for the probe")
    else:
        report.add("usage (whole replies)", False, "not reported; tokens are estimated", ok=None)

    await _system_check(chat, user, plain_prompt, report)

    name = "strict alternation required"
    try:
        await chat([user, {"role": "assistant", "content": "OK"}, user, user])
        report.add(name, False, "repeated roles accepted", ok=True)
    except openai.OpenAIError as exc:
        if is_template_error(exc):
            report.add(name, True, "delib always alternates roles", ok=True)
        else:
            report.add(name, None, f"could not tell: {describe_error(exc)}", ok=True)

    await _reasoning_check(chat, user, report)
    await _stream_check(api, model, user, report)
    await _structured_check(api, model, client.endpoint.config.structured_output, report)


async def _system_check(chat, user: dict, plain_prompt: int | None, report: Report) -> None:
    name = "system message accepted"
    fold = 'use system_message = "fold"'
    try:
        response, _ = await chat([{"role": "system", "content": PROBE_SYSTEM}, user])
    except openai.OpenAIError as exc:
        if is_template_error(exc):
            detail = "rejected by the chat template; delib folds it into the first user message"
            report.add(name, False, detail, ok=None)
        else:
            report.add(name, None, f"could not tell: {describe_error(exc)}", ok=None)
        return
    if response.usage is None or plain_prompt is None:
        report.add(name, True, "whether it is used cannot be told: no usage reported", ok=None)
    elif response.usage.prompt_tokens <= plain_prompt:
        report.add(name, False, f"dropped silently (the prompt did not grow); {fold}", ok=None)
    else:
        grew = response.usage.prompt_tokens - plain_prompt
        report.add(name, True, f"and used (+{grew} prompt tokens)")


# Room for a reasoning model to show that it thinks before it answers "OK".
REASONING_PROBE_TOKENS = 48


async def _reasoning_check(chat, user: dict, report: Report) -> None:
    """Whether the model thinks before it answers, and where it puts the thinking."""
    name = "reasoning model"
    try:
        response, _ = await chat([user], max_tokens=REASONING_PROBE_TOKENS)
        choice = response.choices[0]
    except (openai.OpenAIError, IndexError, AttributeError) as exc:
        report.add(name, None, f"could not tell: {describe_error(exc)}", ok=True)
        return
    content = choice.message.content or ""
    details = getattr(response.usage, "completion_tokens_details", None)
    spent = getattr(details, "reasoning_tokens", None)
    if thinking.field_of(choice.message):
        where = "in a reasoning field"
    elif thinking.split(content)[1] or "</think" in content.lower():
        where = "in <think> tags inside the content"
    elif not content.strip() and choice.finish_reason == "length":
        where = f"all {REASONING_PROBE_TOKENS} probe tokens went to hidden thinking"
    elif spent:
        where = f"{spent} reasoning tokens reported"
    else:
        report.add(name, False, "no sign of thinking before the answer", ok=True)
        return
    report.add(
        name, True, f"thinks first ({where}); delib keeps the thinking apart from the turn, "
        "but it spends the reply cap: raise max_tokens, or switch reasoning off on the server",
        ok=None,
    )  # fmt: skip


async def _stream_check(api, model: str, user: dict, report: Report) -> None:
    name = "usage (streaming)"
    try:
        stream = await api.chat.completions.create(
            model=model,
            messages=[user],
            max_tokens=1,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
        )
    except openai.OpenAIError as exc:
        if is_stream_options_error(exc):
            report.add(name, False, "stream_options rejected; delib stops sending it", ok=None)
        else:
            report.add(name, None, f"streaming failed: {describe_error(exc)}", ok=False)
        return
    usage = None
    async with stream:
        async for chunk in stream:
            usage = chunk.usage or usage
    if usage is None:
        report.add(name, False, "not reported; delib estimates tokens from text length", ok=None)
    else:
        report.add(name, True, f"reported ({usage.prompt_tokens} prompt tokens)")


async def _structured_check(api, model: str, setting: str, report: Report) -> None:
    """Which structured-output dialect the server takes, and whether its replies fit."""
    name = "structured output"
    if setting == "off":
        report.add(name, None, "off for this endpoint (structured_output)", ok=None)
        return
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    tried = []
    for dialect in DIALECTS if setting == "auto" else (setting,):
        try:
            response = await api.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": 'Answer {"ok": true} in JSON.'}],
                max_tokens=24,
                temperature=0.0,
                response_format=response_format(dialect, "probe", schema),
            )
        except openai.OpenAIError as exc:
            tried.append(f"{dialect}: {describe_error(exc)}")
            continue
        text = (response.choices[0].message.content or "") if response.choices else ""
        try:
            fits = isinstance(json.loads(text).get("ok"), bool)
        except (ValueError, AttributeError):
            fits = False
        if fits:
            report.add(name, True, f"{dialect}: verdicts and speaker choices are constrained")
        else:
            detail = f"{dialect} accepted, but the reply did not fit ({text[:40]!r}); "
            report.add(name, None, detail + "delib validates and retries", ok=None)
        return
    report.add(name, False, "not supported (" + "; ".join(tried) + "); delib validates and "
               "retries", ok=None)  # fmt: skip
