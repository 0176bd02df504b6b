"""delib: multi-agent deliberation with archived, honest transcripts."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("delib")
except metadata.PackageNotFoundError:  # running from a source tree without install
    __version__ = "0.0.0+source"

from delib.errors import DelibError  # noqa: E402
from delib.graph import StopReason  # noqa: E402
from delib.run import RunRequest, RunResult, run_debate  # noqa: E402

__all__ = ["DelibError", "RunRequest", "RunResult", "StopReason", "__version__", "run_debate"]
