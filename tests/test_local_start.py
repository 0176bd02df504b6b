"""Starting the embedded server: the port race is retried (tenacity), a server that dies for
another reason is not. The server process here is a stand-in that says what llama.cpp's says
when its port is taken, then the loopback test server, so no model is loaded."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from delib.models.local import PORT_ATTEMPTS, LocalServer
from delib.models.local_models import LocalServerError, ModelFile, extra_installed

pytestmark = pytest.mark.skipif(
    not extra_installed(), reason="the llama.cpp server extra is not installed"
)
MODEL = ModelFile(Path("/nonexistent/model.gguf"), "stand-in", None)
TAKEN = "ERROR: [Errno 98] error while attempting to bind on address: address already in use"


class StandIn(LocalServer):
    """Fails like llama.cpp's server for its first ``failures`` starts, then serves."""

    def __init__(self, failures: int, message: str = TAKEN) -> None:
        super().__init__(MODEL, ready_timeout=30)
        self.failures, self.message, self.starts = failures, message, 0

    def command(self, port: int) -> list[str]:
        self.starts += 1
        if self.starts <= self.failures:
            return [sys.executable, "-c", f"import sys; print({self.message!r}); sys.exit(1)"]
        return [sys.executable, "-m", "delib.testing", "--port", str(port)]


def test_a_port_taken_meanwhile_is_tried_again_on_another():
    server = StandIn(failures=1)
    try:
        asyncio.run(server.start())
        assert server.starts == 2 and server.alive()
        assert any("was taken meanwhile" in note for note in server.notes)
    finally:
        server.stop()


def test_a_server_that_keeps_losing_the_race_stops_after_its_attempts():
    server = StandIn(failures=10)
    with pytest.raises(LocalServerError):
        asyncio.run(server.start())
    assert server.starts == PORT_ATTEMPTS
    assert not server.alive()


def test_a_server_that_dies_for_another_reason_is_not_started_again():
    server = StandIn(failures=10, message="error: the model file is not a GGUF file")
    with pytest.raises(LocalServerError) as raised:
        asyncio.run(server.start())
    assert server.starts == 1
    assert "not a GGUF file" in str(raised.value)
