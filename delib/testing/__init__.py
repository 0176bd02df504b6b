"""A scripted OpenAI-compatible chat server on loopback, for tests and benchmarks.

``python -m delib.testing --port 8089`` runs one by hand (see ``delib.testing.server``).
"""

from delib.testing.server import (
    Answer,
    FakeOpenAIServer,
    FakeTransport,
    Fault,
    Shaped,
    answer,
    debate_responder,
)

__all__ = [
    "Answer",
    "Fault",
    "FakeOpenAIServer",
    "FakeTransport",
    "Shaped",
    "answer",
    "debate_responder",
]
