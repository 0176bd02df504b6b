"""``delib view``: the archive as web pages on 127.0.0.1, running debates updating live."""

from __future__ import annotations

import errno
import time
from typing import Annotated

import typer

from delib.cli.common import ArchiveOpt, err, open_archive, out
from delib.errors import InputError
from delib.text import safe
from delib.web.server import ViewServer

DEFAULT_PORT = 8770


def view(
    archive: ArchiveOpt = None,
    port: Annotated[
        int,
        typer.Option(
            min=0, max=65535, help=f"Port on 127.0.0.1 (default {DEFAULT_PORT}; 0: any free one)."
        ),  # fmt: skip
    ] = DEFAULT_PORT,
) -> None:
    """Serve the archive as web pages on 127.0.0.1: runs newest first with search, each run's
    transcript (updating live while it runs), each sweep's report. Ctrl-C stops it.

    Nothing is fetched from the network and nothing listens beyond this machine."""
    store = open_archive(archive)
    location = store.location
    store.close()
    try:
        server = ViewServer(location, port=port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise InputError(
                f"port {port} on 127.0.0.1 is in use: choose another with --port (0 picks a "
                "free one)"
            ) from None
        raise
    server.start()
    out.print(f"serving {safe(location)} at {server.url}  [dim](Ctrl-C stops)[/dim]",
              soft_wrap=True)  # fmt: skip
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        err.print("[dim]stopped[/dim]")
    finally:
        server.stop()
