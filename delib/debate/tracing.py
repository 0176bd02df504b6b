"""OpenTelemetry traces of a run, when asked for: nothing of OpenTelemetry is imported otherwise.

A run is traced when the standard exporter variables are set (``OTEL_EXPORTER_OTLP_ENDPOINT``
or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; delib then exports over OTLP/HTTP, the ``otel``
extra), when the program running delib has set a global tracer provider of its own
(OpenTelemetry already imported, its provider configured), or when one is given in code
(``delib.run(..., tracer_provider=...)``): delib's spans then go wherever that provider sends
them. ``OTEL_SDK_DISABLED=true`` turns the first two off.

The spans follow OpenTelemetry's GenAI semantic conventions (``debate.otel``): the run as
``invoke_workflow``, each turn as ``invoke_agent`` with ``gen_ai.agent.name``, each model call
as ``chat`` with ``gen_ai.request.model``, token counts and ``error.type``. No text of the
debate and no key goes into a span.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def exporter_set() -> bool:
    """An OTLP endpoint is set in the environment."""
    return any(os.environ.get(name) for name in ENDPOINT_VARIABLES)


def wanted() -> bool:
    """Whether this run is to be traced, decided without importing OpenTelemetry."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if exporter_set():
        return True
    # The program may have set a global provider of its own. OpenTelemetry is looked at only
    # if something has imported it already (LangSmith, under LangGraph, does when installed).
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return False
    return not isinstance(api.get_tracer_provider(), api.ProxyTracerProvider)


def tracer_for_run(notify: Callable[[str], None], provider: Any = None) -> Any | None:
    """The run's tracer (``debate.otel.RunTracer``), or None when the run is not traced.
    ``provider``: a tracer provider given in code (``delib.run(..., tracer_provider=...)``)."""
    if provider is not None:
        from delib.debate.otel import RunTracer

        return RunTracer(provider, own=False)
    if not wanted():
        return None
    try:
        from delib.debate.otel import RunTracer
    except ImportError:
        if exporter_set():
            notify(
                "OTEL_EXPORTER_OTLP_* is set but the otel extra is not installed; no traces: "
                "pip install 'delib[otel]'"
            )
        return None
    return RunTracer.create(exporter_set())
