"""A pool of servers for one model: a sweep model with ``base_urls: [...]``.

Each debate is pinned to one server of the pool for its whole life (its turns share a prefix,
so the server's prefix cache keeps hitting), chosen when it starts (or resumes):

- **healthy**: a server that does not answer ``GET /models`` within a few seconds is left out
  for a while (``DOWN_FOR``), then tried again; an answer is trusted for ``FRESH_FOR``;
- **least outstanding**: among the healthy ones, the server with the fewest debates pinned to
  it. In a database archive the count is the cluster's: a pin is a shared advisory lock keyed
  by the server, so ``pg_locks`` counts them, and a killed worker's pins vanish with its
  session; in a folder archive it is this process's count.

A debate resumed after its server went away is pinned afresh (and says so in its manifest's
endpoints, as any resume against another endpoint does).
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from delib.errors import EndpointUnreachable
from delib.models.urls import redact_url

FRESH_FOR = 15.0  # seconds a healthy answer is trusted
DOWN_FOR = 10.0  # seconds a server that did not answer is left out
CHECK_TIMEOUT = 3.0  # seconds for GET /models


def _key(url: str) -> int:
    """A server's advisory lock class: a signed 32-bit hash of its URL."""
    value = zlib.crc32(url.rstrip("/").encode())
    return value - 2**32 if value >= 2**31 else value


class ServerPool:
    """Picks and pins servers for the debates of one process (see the module docstring)."""

    def __init__(self, conn: Any = None) -> None:
        self.conn = conn  # a database connection for cluster-wide counts and pins, or None
        self.local: dict[str, int] = {}
        self.checked: dict[str, tuple[float, bool]] = {}  # url -> (when, healthy)
        self._lock = asyncio.Lock()

    async def healthy(self, url: str, api_key: str | None = None) -> bool:
        when, ok = self.checked.get(url, (0.0, False))
        age = time.monotonic() - when
        if (ok and age < FRESH_FOR) or (not ok and when and age < DOWN_FOR):
            return ok
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        try:
            async with httpx.AsyncClient(timeout=CHECK_TIMEOUT) as client:
                response = await client.get(url.rstrip("/") + "/models", headers=headers)
            ok = response.status_code < 500
        except httpx.HTTPError:
            ok = False
        self.checked[url] = (time.monotonic(), ok)
        return ok

    def outstanding(self, urls: list[str]) -> dict[str, int]:
        """Debates pinned to each server: the cluster's (database) or this process's."""
        if self.conn is None:
            return {u: self.local.get(u, 0) for u in urls}
        rows = self.conn.execute(
            "SELECT classid::int AS k, count(*) AS n FROM pg_locks "
            "WHERE locktype = 'advisory' AND objsubid = 2 AND classid::int = ANY(%s) "
            "GROUP BY classid",
            ([_key(u) for u in urls],),
        ).fetchall()
        by_key = {r["k"]: r["n"] for r in rows}
        return {u: by_key.get(_key(u), 0) for u in urls}

    @asynccontextmanager
    async def pinned(
        self, urls: list[str], api_key: str | None = None, prefer: str | None = None
    ) -> AsyncIterator[str]:
        """The server a debate speaks to, held for it until the block ends. ``prefer``: the
        server it spoke to before (a resume), if still healthy."""
        async with self._lock:  # one choice at a time in this process
            healthy = [u for u in urls if await self.healthy(u, api_key)]
            if not healthy:
                names = ", ".join(redact_url(u) or u for u in urls)
                raise EndpointUnreachable(
                    f"no server of the pool answers GET /models ({names}); start one, "
                    "or check the sweep's base_urls"
                )
            if prefer in healthy:
                chosen = prefer
            else:
                load = self.outstanding(healthy)
                least = min(load.values())
                chosen = random.choice([u for u in healthy if load[u] == least])
            pin = random.randint(1, 2**31 - 1)
            if self.conn is not None:
                self.conn.execute(
                    "SELECT pg_advisory_lock_shared(%s, %s)", (_key(chosen), pin)
                )  # fmt: skip
            self.local[chosen] = self.local.get(chosen, 0) + 1
        try:
            yield chosen
        finally:
            self.local[chosen] -= 1
            if self.conn is not None and not self.conn.closed:
                self.conn.execute("SELECT pg_advisory_unlock_shared(%s, %s)", (_key(chosen), pin))
