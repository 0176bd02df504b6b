"""A run's OpenTelemetry spans (the ``otel`` extra; imported only by ``tracing``).

One ``invoke_workflow`` span per run, an ``invoke_agent`` span per turn under it (started when
the turn's request is built, so a turn asked ahead is timed from its request), and a ``chat``
span per model call under its turn, with the GenAI semantic conventions' attributes. Parents
are passed explicitly, never through the current context: a run is an async generator, which
cannot keep a context attached across its yields.
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from delib import __version__

PROVIDER = "openai"  # every endpoint speaks the OpenAI chat API


def _configured(provider: Any) -> bool:
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


class RunTracer:
    """The spans of one run. ``create()`` picks the program's tracer provider if it has set
    one, else one of its own exporting over OTLP/HTTP as the ``OTEL_*`` variables say."""

    def __init__(self, provider: Any, own: bool) -> None:
        self.provider = provider
        self.own = own
        self.tracer = provider.get_tracer("delib", __version__)
        self.run: Any = None
        self.turns: dict[int, Any] = {}

    @classmethod
    def create(cls, exporter_set: bool) -> RunTracer | None:
        """``exporter_set``: an ``OTEL_EXPORTER_OTLP_*`` endpoint is set (``tracing``)."""
        provider = trace.get_tracer_provider()
        if _configured(provider):
            return cls(provider, own=False)
        if not exporter_set:
            return None
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        name = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "delib"}
        own = TracerProvider(resource=Resource.create(name))
        own.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        return cls(own, own=True)

    def _under(self, parent: Any) -> Any:
        return trace.set_span_in_context(parent) if parent is not None else None

    # --- the run ---------------------------------------------------------------------------------
    def run_started(self, scenario: str, protocol: str, run_id: str | None) -> None:
        self.run = self.tracer.start_span(
            f"invoke_workflow {scenario}",
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "invoke_workflow",
                "gen_ai.workflow.name": scenario,
                "delib.scenario": scenario,
                "delib.protocol": protocol,
                "delib.run_id": run_id or "",
            },
        )

    def run_ended(self, stop_reason: str, error: BaseException | str | None) -> None:
        for span in self.turns.values():  # asked ahead, never taken up
            span.end()
        self.turns.clear()
        if self.run is None:
            return
        self.run.set_attribute("delib.stop_reason", stop_reason)
        if error is not None:
            kind = type(error).__name__ if isinstance(error, BaseException) else "error"
            self.run.set_attribute("error.type", kind)
            self.run.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        self.run.end()
        self.run = None

    def close(self) -> None:
        if self.own:
            self.provider.shutdown()  # exports what is left
        else:
            flush = getattr(self.provider, "force_flush", None)
            if flush is not None:
                flush()

    # --- turns -----------------------------------------------------------------------------------
    def turn_started(self, index: int, speaker: Any, kind: str, round_no: int, role: str) -> None:
        old = self.turns.pop(index, None)
        if old is not None:  # spoken again (an empty reply retried, a choice asked again)
            old.end()
        self.turns[index] = self.tracer.start_span(
            f"invoke_agent {speaker.name}",
            context=self._under(self.run),
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": speaker.name,
                "gen_ai.agent.id": speaker.id,
                "delib.turn.index": index,
                "delib.turn.kind": kind,
                "delib.turn.round": round_no,
                "delib.turn.role": role,
            },
        )

    def turn_ended(self, turn: dict) -> None:
        span = self.turns.pop(turn["index"], None)
        if span is None:
            return
        span.set_attribute("delib.refusal", str(turn["refusal"]["label"]))
        if turn.get("human"):
            span.set_attribute("delib.turn.human", True)
        if turn.get("failed"):
            span.set_attribute("error.type", turn["failed"])
            span.set_status(Status(StatusCode.ERROR, turn["failed"]))
        span.end()

    # --- model calls -----------------------------------------------------------------------------
    def call_started(
        self, index: int, endpoint: Any, model: str, max_tokens: int, temperature: float | None
    ) -> Any:
        where = urlsplit(endpoint.config.base_url or "")
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": model,
            "gen_ai.request.max_tokens": max_tokens,
            "delib.endpoint": endpoint.name,
        }
        if temperature is not None:
            attributes["gen_ai.request.temperature"] = temperature
        if where.hostname:
            attributes["server.address"] = where.hostname
            attributes["server.port"] = where.port or (443 if where.scheme == "https" else 80)
        return self.tracer.start_span(
            f"chat {model}",
            context=self._under(self.turns.get(index, self.run)),
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )

    def call_ended(self, span: Any, reply: Any = None, error: BaseException | None = None) -> None:
        if reply is not None:
            if reply.model:
                span.set_attribute("gen_ai.response.model", reply.model)
            if reply.finish_reason:
                span.set_attribute("gen_ai.response.finish_reasons", [reply.finish_reason])
            if reply.prompt_tokens is not None:
                span.set_attribute("gen_ai.usage.input_tokens", reply.prompt_tokens)
            if reply.completion_tokens is not None:
                span.set_attribute("gen_ai.usage.output_tokens", reply.completion_tokens)
        if error is not None:
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
        span.end()
