"""delib: multi-agent deliberation with archived, honest transcripts.

    import delib
    result = delib.run("alignment-difficulty", base_url="http://localhost:8080/v1", rounds=1)
    print(result.stop_reason, result.verdict)

``arun``/``aresume`` are the same for code with an event loop (``await delib.arun(...)``).
"""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("delib")
except metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+source"

from delib.debate.prepare import RunRequest  # noqa: E402
from delib.debate.result import RunFailed, RunResult  # noqa: E402
from delib.debate.runner import (  # noqa: E402
    Run,
    aresume,
    arun,
    make_request,
    resume,
    run,
    run_debate,
)
from delib.debate.state import StopReason  # noqa: E402
from delib.detect.loops import LoopConfig, LoopMode  # noqa: E402
from delib.errors import DelibError  # noqa: E402
from delib.library.personas import Persona  # noqa: E402
from delib.library.scenarios import Limits, Protocol, Scenario  # noqa: E402
from delib.models.config import Overrides  # noqa: E402

__all__ = [
    "DelibError",
    "Limits",
    "LoopConfig",
    "LoopMode",
    "Overrides",
    "Persona",
    "Protocol",
    "Run",
    "RunFailed",
    "RunRequest",
    "RunResult",
    "Scenario",
    "StopReason",
    "__version__",
    "aresume",
    "arun",
    "make_request",
    "resume",
    "run",
    "run_debate",
]
