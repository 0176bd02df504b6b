"""Connections to the PostgreSQL archive and the session locks held on them.

``connect`` opens a connection; ``session`` is a process's one shared session per database
and thread, on which every advisory lock is taken: a run's lock, a sweep cell's ``Lease``, a
place in a server's ``max_concurrency`` (``Slots``). PostgreSQL lets go of a session's locks
when the session ends, so a killed worker frees everything it held.

PostgreSQL's transients go through the project's retry policy (``delib.models.retries``, on
tenacity): a connection the server cannot take yet (refused or reset while it restarts,
"starting up", "shutting down", too many connections) is tried again for a few seconds; a
transaction the server rolled back to break a deadlock or a serialisation conflict runs again
(``transaction``); a lock or slot held elsewhere is polled for. A write on a session that was
lost mid-run is not retried: the session's locks went with it (``pgrun.lost_error``).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.rows import dict_row
from tenacity import AsyncRetrying, Retrying

from delib.errors import InputError
from delib.models.endpoints import Limits
from delib.models.retries import policy, poll, retrying

CONNECT_TIMEOUT = 10  # seconds
# A connection the server cannot take yet is tried this many times in all, waiting 0.25 s,
# then 0.5, 1 and 2 (under 4 s: a restart on loopback takes about one).
CONNECT_ATTEMPTS = 5
CONNECT_WAIT = 0.25
# A transaction rolled back by a deadlock or serialisation conflict runs this many times.
TRANSACTION_ATTEMPTS = 5
TRANSACTION_WAIT = 0.05
# What a server says when it cannot take a connection *yet*: starting up, shutting down,
# recovering, out of connection slots (libpq hands a failed connect over as text, without the
# SQLSTATE). Any other answer from the server (a wrong password, an unknown database) is final.
TRANSIENT_CONNECT = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "too many clients already",
    "remaining connection slots are reserved",
)
# What PostgreSQL rolls a transaction back for that running it again can mend.
TRANSIENT_TRANSACTION = frozenset({"40001", "40P01"})


def redact(dsn: str) -> str:
    """The address without its password (for messages and manifests)."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return dsn.split("@")[-1]
    user = info.get("user") or ""
    host = info.get("host") or "localhost"
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user + '@' if user else ''}{host}{port}/{info.get('dbname') or ''}"


def connect_transient(exc: BaseException) -> bool:
    """Whether a failed connect is worth another try: nothing answered (refused or reset
    while a server restarts; not a host name that does not resolve), or the server said
    "not now" (``TRANSIENT_CONNECT``)."""
    if not isinstance(exc, psycopg.OperationalError):
        return False
    text = " ".join(str(exc).split())
    if "FATAL:" in text or exc.sqlstate is not None:
        return any(phrase in text for phrase in TRANSIENT_CONNECT)
    return "translate host name" not in text


def connect(dsn: str, **options: Any) -> psycopg.Connection:
    """An autocommit connection, or an InputError saying what to fix; what the server cannot
    take yet is tried again (``CONNECT_ATTEMPTS``)."""
    retryer = retrying(connect_transient, CONNECT_ATTEMPTS, CONNECT_WAIT)
    try:
        return retryer(
            psycopg.connect,
            dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT, row_factory=dict_row, **options,
        )  # fmt: skip
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())[:300]
        tried = retryer.statistics.get("attempt_number", 1)
        tries = f" (after {tried} attempts)" if tried > 1 else ""
        raise InputError(
            f"cannot reach the PostgreSQL archive {redact(dsn)}{tries}: {reason}; check the "
            "address in --archive or $DELIB_ARCHIVE and that the server is running"
        ) from None
    except psycopg.ProgrammingError as exc:
        raise InputError(f"--archive: not a PostgreSQL address ({exc})") from None


async def connect_async(dsn: str, **options: Any) -> psycopg.AsyncConnection:
    """An async autocommit connection (the checkpointer's), with ``connect``'s retries."""
    async for tried in policy(CONNECT_ATTEMPTS, CONNECT_WAIT, retryable=connect_transient):
        with tried:
            return await psycopg.AsyncConnection.connect(
                dsn, autocommit=True, row_factory=dict_row, **options
            )
    raise AssertionError("unreachable: tenacity returns or reraises")  # pragma: no cover


def transaction_transient(exc: BaseException) -> bool:
    return isinstance(exc, psycopg.Error) and exc.sqlstate in TRANSIENT_TRANSACTION


def transaction(conn: psycopg.Connection, work: Callable[[], Any]) -> Any:
    """``work()`` in one transaction on ``conn``, run again when the server rolled it back for
    a deadlock or a serialisation conflict (the work must only touch the database)."""

    def attempt() -> Any:
        with conn.transaction():
            return work()

    return retrying(transaction_transient, TRANSACTION_ATTEMPTS, TRANSACTION_WAIT)(attempt)


def _lock_key(kind: str, name: str) -> str:
    return f"{kind}:{name}"


class NoLock:
    def release(self) -> None:
        pass


# One session per database and thread carries a process's records, run locks, cell leases,
# server slots and pool pins: a session holds any number of advisory locks, so a worker needs
# two connections (this and the store's) plus its checkpoint pool, however many debates it runs.
_SESSIONS: dict[tuple[str, int], psycopg.Connection] = {}
_HELD: set[tuple[str, str]] = set()  # (dsn, key): locks this process holds on its sessions


def session(dsn: str) -> psycopg.Connection:
    """This thread's shared session on the database (opened again if it was lost)."""
    key = (dsn, threading.get_ident())
    conn = _SESSIONS.get(key)
    if conn is None or conn.closed or conn.broken:
        conn = _SESSIONS[key] = connect(dsn)
    return conn


def holds(dsn: str, key: str) -> bool:
    """Whether this process holds the lock (the session's locks nest: never take one twice)."""
    return (dsn, key) in _HELD


def take(dsn: str, key: str) -> bool:
    """Take a session advisory lock if no one holds it."""
    if holds(dsn, key):
        return False
    row = (
        session(dsn)
        .execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0)) AS got", (key,))
        .fetchone()
    )
    if row["got"]:
        _HELD.add((dsn, key))
    return bool(row["got"])


def let_go(dsn: str, key: str) -> None:
    if (dsn, key) not in _HELD:
        return
    _HELD.discard((dsn, key))
    conn = _SESSIONS.get((dsn, threading.get_ident()))
    if conn is not None and not conn.closed and not conn.broken:
        conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))


def wait_for_lock(conn: psycopg.Connection, key: int, seconds: float) -> bool:
    """Take a session advisory lock on ``conn``, polling while another session holds it (a
    statement that waits on a lock would hold up what the holder waits for); False if it is
    still held after ``seconds``."""

    def took() -> bool:
        return conn.execute("SELECT pg_try_advisory_lock(%s) AS got", (key,)).fetchone()["got"]

    return bool(Retrying(**poll(0.05, 0.5, deadline=seconds))(took))


class Lease:
    """A sweep cell's lease: held until released, or until the holder's session ends."""

    def __init__(self, dsn: str, key: str) -> None:
        self.dsn, self.key = dsn, key

    def take(self) -> bool:
        return take(self.dsn, self.key)

    def release(self) -> None:
        let_go(self.dsn, self.key)


class Slots(Limits):
    """Each server's ``max_concurrency``, held across every process that shares the database
    (the workers of a Ray cluster, several ``sweep run``s): a request takes one of the
    server's numbered slots, an advisory lock, and gives it back when its reply is done. A
    killed worker's slots are freed with its session; none leaks."""

    POLL = 0.01  # seconds between tries while every slot is taken (growing, jittered, ...)
    MAX_WAIT = 0.2  # ... up to this

    def __init__(self, dsn: str) -> None:
        super().__init__()
        self.conn = session(dsn)
        self.held: set[str] = set()  # this session's slots (a session's locks nest: skip them)

    def semaphore(self, base_url: str, limit: int) -> Any:
        return _Slot(self, base_url.rstrip("/"), limit)

    def close(self) -> None:
        pass  # the session is the process's; every slot was given back as its reply ended


class _Slot:
    def __init__(self, slots: Slots, url: str, limit: int) -> None:
        self.slots, self.url, self.limit = slots, url, limit
        self.taken: list[str] = []

    def _try(self) -> bool:
        """Take a free slot if there is one (in random order, so waiters spread out)."""
        for number in random.sample(range(self.limit), self.limit):
            key = f"slot:{self.url}:{number}"
            if key in self.slots.held:
                continue
            row = self.slots.conn.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0)) AS got", (key,)
            ).fetchone()
            if row["got"]:
                self.slots.held.add(key)
                self.taken.append(key)
                return True
        return False

    async def __aenter__(self) -> None:
        if self._try():  # the common case: a slot is free, and tenacity is not involved
            return

        async def attempt() -> bool:
            return self._try()

        await AsyncRetrying(**poll(Slots.POLL, Slots.MAX_WAIT))(attempt)

    async def __aexit__(self, *exc: object) -> None:
        key = self.taken.pop()
        self.slots.held.discard(key)
        if not self.slots.conn.closed:
            self.slots.conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
