"""A run in the PostgreSQL archive, open for writing, and the session locks around it.

``PgRun`` is what ``archive.RunFolder`` is for a folder: records appended (each committed
before ``append`` returns), the manifest, the in-flight turns, the run's lock and its LangGraph
checkpointer. ``Lease`` holds a sweep cell; ``Slots`` holds a place in a server's
``max_concurrency``. All three are session advisory locks, which PostgreSQL lets go of when
the session ends, so a killed worker frees everything it held (see ``delib.archive.pgstore``).
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Json, Jsonb

from delib.archive.index import HIT_END, HIT_START
from delib.archive.reading import record_problem
from delib.errors import InputError, StoreError
from delib.models.endpoints import Limits

CONNECT_TIMEOUT = 10  # seconds
CHECKPOINT_TABLES = ("checkpoint_writes", "checkpoint_blobs", "checkpoints")  # LangGraph's


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


def connect(dsn: str, **options: Any) -> psycopg.Connection:
    """An autocommit connection, or an InputError saying what to fix."""
    try:
        return psycopg.connect(
            dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT, row_factory=dict_row, **options
        )
    except psycopg.OperationalError as exc:
        reason = " ".join(str(exc).split())[:300]
        raise InputError(
            f"cannot reach the PostgreSQL archive {redact(dsn)}: {reason}; check the address "
            "in --archive or $DELIB_ARCHIVE and that the server is running"
        ) from None
    except psycopg.ProgrammingError as exc:
        raise InputError(f"--archive: not a PostgreSQL address ({exc})") from None


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


class Lease:
    """A sweep cell's lease: held until released, or until the holder's session ends."""

    def __init__(self, dsn: str, key: str) -> None:
        self.dsn, self.key = dsn, key

    def take(self) -> bool:
        return take(self.dsn, self.key)

    def release(self) -> None:
        let_go(self.dsn, self.key)


def _rows(run_id: str, first: int, records: list[dict]) -> list[tuple]:
    rows = []
    for seq, record in enumerate(records, first):
        problem = record_problem(record)
        if problem:
            raise InputError(f"run {run_id}: record {seq} is not a valid record ({problem})")
        is_turn = record["type"] == "turn"
        rows.append(
            (
                run_id,
                seq,
                Json(record),
                record["index"] if is_turn else None,
                _body(record["text"]) if is_turn else None,
            )  # fmt: skip
        )
    return rows


INSERT_RECORD = (
    "INSERT INTO delib_records (run_id, seq, record, turn_index, body) VALUES (%s, %s, %s, %s, %s)"
)


def _insert_records(conn: psycopg.Connection, run_id: str, first: int, records: list[dict]) -> None:
    rows = _rows(run_id, first, records)
    if len(rows) == 1:
        conn.execute(INSERT_RECORD, rows[0])
        return
    with conn.cursor() as cur:
        cur.executemany(
            INSERT_RECORD,
            rows,
        )


def _body(text: str) -> str:
    """A turn's text for the search column: PostgreSQL text holds no NUL; the snippet markers
    cannot occur in it (the record itself keeps them)."""
    return text.replace("\x00", " ").replace(HIT_START, " ").replace(HIT_END, " ")


def lost_error(dsn: str, run_id: str, exc: BaseException) -> StoreError:
    reason = " ".join(str(exc).split())[:300]
    return StoreError(
        f"lost the PostgreSQL archive {redact(dsn)} ({reason}); the finished turns of run "
        f"{run_id} are committed: 'delib resume {run_id}' goes on once the server is back"
    )


def _writes(method: Any) -> Any:
    """A write that fails on the database's side is one line (``StoreError``)."""

    def wrapper(self: PgRun, *args: Any) -> Any:
        try:
            return method(self, *args)
        except psycopg.Error as exc:
            raise lost_error(self.dsn, self.run_id, exc) from None

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


class PgRun:
    """One run in the database, open for writing: what ``RunFolder`` is for a folder."""

    def __init__(self, dsn: str, run_id: str) -> None:
        self.dsn = dsn
        self.run_id = run_id
        self.path = None
        self.conn = session(dsn)
        row = self.conn.execute(
            "SELECT coalesce(max(seq) + 1, 0) AS n FROM delib_records WHERE run_id = %s",
            (run_id,),
        ).fetchone()
        self._next = row["n"]
        self._locked = False

    def lock(self) -> None:
        if not take(self.dsn, _lock_key("run", self.run_id)):
            raise InputError(
                f"run {self.run_id} is running in another process; wait for it or stop it first"
            )
        self._locked = True

    def repair(self) -> int:
        return 0  # a record is one committed row: nothing can be half-written

    @_writes
    def rewrite(self, records: list[dict]) -> None:
        with self.conn.transaction():
            self.conn.execute("DELETE FROM delib_records WHERE run_id = %s", (self.run_id,))
            _insert_records(self.conn, self.run_id, 0, records)
        self._next = len(records)

    @_writes
    def inflight_start(self, index: int, header: dict) -> None:
        self.conn.execute(
            "INSERT INTO delib_inflight VALUES (%s, %s, %s) "
            "ON CONFLICT (run_id, turn_index) DO UPDATE SET header = excluded.header",
            (self.run_id, index, Jsonb({"index": index, **header})),
        )

    def inflight_text(self, index: int, text: str) -> None:
        pass  # streamed text goes to the terminal; the database keeps finished turns

    @_writes
    def inflight_done(self, index: int) -> None:
        self.conn.execute(
            "DELETE FROM delib_inflight WHERE run_id = %s AND turn_index = %s",
            (self.run_id, index),
        )

    @_writes
    def take_inflight(self) -> list[dict]:
        rows = self.conn.execute(
            "DELETE FROM delib_inflight WHERE run_id = %s RETURNING header", (self.run_id,)
        ).fetchall()
        found = [{**r["header"], "partial_chars": 0} for r in rows]
        return sorted(found, key=lambda e: e.get("index", -1))

    @_writes
    def append(self, record: dict) -> None:
        """Add one turn or event; committed when this returns."""
        _insert_records(self.conn, self.run_id, self._next, [record])
        self._next += 1

    @_writes
    def add_turn(self, record: dict) -> None:
        """A finished turn and the end of its in-flight row: one statement, one round trip."""
        (row,) = _rows(self.run_id, self._next, [record])
        self.conn.execute(
            "WITH done AS (DELETE FROM delib_inflight WHERE run_id = %s AND turn_index = %s) "
            + INSERT_RECORD,
            (self.run_id, record["index"], *row),
        )
        self._next += 1

    def sync(self) -> None:
        pass  # every record is committed as it is appended

    @_writes
    def write_manifest(self, manifest: dict) -> None:
        self.conn.execute(
            "UPDATE delib_runs SET manifest = %s WHERE run_id = %s",
            (Json(manifest), self.run_id),
        )

    def write_transcript(self, text: str) -> None:
        pass  # rendered from the records when asked (transcripts show, export)

    def close_turns(self) -> None:
        pass

    @_writes
    def drop_checkpoints(self) -> None:
        with self.conn.transaction():
            for table in CHECKPOINT_TABLES:
                self.conn.execute(f"DELETE FROM {table} WHERE thread_id = %s", (self.run_id,))

    @asynccontextmanager
    async def checkpointer(self) -> AsyncIterator[Any]:
        """LangGraph's async PostgreSQL saver for this run, on the process's pool if one is
        open (``checkpoint_pool``), else on a connection of its own. One saver per run: the
        saver serialises its calls with a lock of its own, which would queue every run of a
        worker behind one another if they shared it (``SHARED_SAVER``, for the benchmark)."""
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        pool = _POOLS.get(self.dsn)
        if pool is not None:
            if SHARED_SAVER:
                yield _SHARED.setdefault(id(pool), AsyncPostgresSaver(pool))  # type: ignore[arg-type]
            else:
                yield AsyncPostgresSaver(pool)  # type: ignore[arg-type]
            return
        conn = await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, prepare_threshold=0, row_factory=dict_row
        )
        try:
            yield AsyncPostgresSaver(conn)  # type: ignore[arg-type]
        finally:
            await conn.close()

    def close(self) -> None:
        if self._locked:
            self._locked = False
            let_go(self.dsn, _lock_key("run", self.run_id))


_POOLS: dict[str, Any] = {}
_SHARED: dict[int, Any] = {}
SHARED_SAVER = False  # one saver for every run of a process (measured, not used)
POOL_SIZE: int | None = None  # connections in the checkpoint pool (None: see POOL_MAX)
POOL_MAX = 4  # debates at once share at most this many (1 or 16 measured alike: benchmarks)


@asynccontextmanager
async def checkpoint_pool(dsn: str, size: int) -> AsyncIterator[None]:
    """A connection pool for the checkpoints of every run this process starts meanwhile."""
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=max(1, POOL_SIZE or min(size, POOL_MAX)),
        open=False,
        kwargs={"autocommit": True, "prepare_threshold": 0, "row_factory": dict_row},
    )
    await pool.open(wait=True, timeout=CONNECT_TIMEOUT)
    _POOLS[dsn] = pool
    try:
        yield
    finally:
        _POOLS.pop(dsn, None)
        await pool.close()


class Slots(Limits):
    """Each server's ``max_concurrency``, held across every process that shares the database
    (the workers of a Ray cluster, several ``sweep run``s): a request takes one of the
    server's numbered slots, an advisory lock, and gives it back when its reply is done. A
    killed worker's slots are freed with its session; none leaks."""

    POLL = 0.01  # seconds between tries while every slot is taken (doubling, up to 0.2)

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

    async def __aenter__(self) -> None:
        wait = Slots.POLL
        while True:
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
                    return
            await asyncio.sleep(wait * (0.5 + random.random()))
            wait = min(wait * 2, 0.2)

    async def __aexit__(self, *exc: object) -> None:
        key = self.taken.pop()
        self.slots.held.discard(key)
        if not self.slots.conn.closed:
            self.slots.conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
