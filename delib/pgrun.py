"""A run in the PostgreSQL archive, open for writing, and the session locks around it.

``PgRun`` is what ``archive.RunFolder`` is for a folder: records appended (each committed
before ``append`` returns), the manifest, the in-flight turns, the run's lock and its LangGraph
checkpointer. ``Lease`` holds a sweep cell; ``Slots`` holds a place in a server's
``max_concurrency``. All three are session advisory locks, which PostgreSQL lets go of when
the session ends, so a killed worker frees everything it held (see ``delib.pgstore``).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Json, Jsonb

from delib.archive import record_problem
from delib.endpoints import Limits
from delib.errors import InputError
from delib.index import HIT_END, HIT_START

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


class Lease:
    """A session advisory lock on its own connection: held until released or the holder dies."""

    def __init__(self, dsn: str, key: str) -> None:
        self.conn = connect(dsn)
        self.key = key

    def take(self) -> bool:
        row = self.conn.execute(
            "SELECT pg_try_advisory_lock(hashtextextended(%s, 0)) AS got", (self.key,)
        ).fetchone()
        if not row["got"]:
            self.conn.close()
        return bool(row["got"])

    def release(self) -> None:
        if not self.conn.closed:
            self.conn.close()  # ending the session lets go of its locks


def _insert_records(conn: psycopg.Connection, run_id: str, first: int, records: list[dict]) -> None:
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
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO delib_records (run_id, seq, record, turn_index, body) "
            "VALUES (%s, %s, %s, %s, %s)",
            rows,
        )


def _body(text: str) -> str:
    """A turn's text for the search column: PostgreSQL text holds no NUL; the snippet markers
    cannot occur in it (the record itself keeps them)."""
    return text.replace("\x00", " ").replace(HIT_START, " ").replace(HIT_END, " ")


class PgRun:
    """One run in the database, open for writing: what ``RunFolder`` is for a folder."""

    def __init__(self, dsn: str, run_id: str) -> None:
        self.dsn = dsn
        self.run_id = run_id
        self.path = None
        self.conn = connect(dsn)
        row = self.conn.execute(
            "SELECT coalesce(max(seq) + 1, 0) AS n FROM delib_records WHERE run_id = %s",
            (run_id,),
        ).fetchone()
        self._next = row["n"]
        self._locked = False

    def lock(self) -> None:
        key = _lock_key("run", self.run_id)
        row = self.conn.execute(
            "SELECT pg_try_advisory_lock(hashtextextended(%s, 0)) AS got", (key,)
        ).fetchone()
        if not row["got"]:
            raise InputError(
                f"run {self.run_id} is running in another process; wait for it or stop it first"
            )
        self._locked = True

    def repair(self) -> int:
        return 0  # a record is one committed row: nothing can be half-written

    def rewrite(self, records: list[dict]) -> None:
        with self.conn.transaction():
            self.conn.execute("DELETE FROM delib_records WHERE run_id = %s", (self.run_id,))
            _insert_records(self.conn, self.run_id, 0, records)
        self._next = len(records)

    def inflight_start(self, index: int, header: dict) -> None:
        self.conn.execute(
            "INSERT INTO delib_inflight VALUES (%s, %s, %s) "
            "ON CONFLICT (run_id, turn_index) DO UPDATE SET header = excluded.header",
            (self.run_id, index, Jsonb({"index": index, **header})),
        )

    def inflight_text(self, index: int, text: str) -> None:
        pass  # streamed text goes to the terminal; the database keeps finished turns

    def inflight_done(self, index: int) -> None:
        self.conn.execute(
            "DELETE FROM delib_inflight WHERE run_id = %s AND turn_index = %s",
            (self.run_id, index),
        )

    def take_inflight(self) -> list[dict]:
        rows = self.conn.execute(
            "DELETE FROM delib_inflight WHERE run_id = %s RETURNING header", (self.run_id,)
        ).fetchall()
        found = [{**r["header"], "partial_chars": 0} for r in rows]
        return sorted(found, key=lambda e: e.get("index", -1))

    def append(self, record: dict) -> None:
        """Add one turn or event; committed when this returns."""
        _insert_records(self.conn, self.run_id, self._next, [record])
        self._next += 1

    def add_turn(self, record: dict) -> None:
        """A finished turn and the end of its in-flight row, in one round trip."""
        with self.conn.transaction():
            self.append(record)
            self.inflight_done(record["index"])

    def sync(self) -> None:
        pass  # every record is committed as it is appended

    def write_manifest(self, manifest: dict) -> None:
        self.conn.execute(
            "UPDATE delib_runs SET manifest = %s WHERE run_id = %s",
            (Json(manifest), self.run_id),
        )

    def write_transcript(self, text: str) -> None:
        pass  # rendered from the records when asked (transcripts show, export)

    def close_turns(self) -> None:
        pass

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
        self.conn.close()  # ends the session: the run's lock is let go


_POOLS: dict[str, Any] = {}
_SHARED: dict[int, Any] = {}
SHARED_SAVER = False  # one saver for every run of a process (measured, not used)
POOL_SIZE: int | None = None  # connections in the checkpoint pool (None: one per debate at once)


@asynccontextmanager
async def checkpoint_pool(dsn: str, size: int) -> AsyncIterator[None]:
    """A connection pool for the checkpoints of every run this process starts meanwhile."""
    from psycopg_pool import AsyncConnectionPool

    pool = AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=max(1, POOL_SIZE or size),
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
        self.conn = connect(dsn)
        self.held: set[str] = set()  # this session's slots (a session's locks nest: skip them)

    def semaphore(self, base_url: str, limit: int) -> Any:
        return _Slot(self, base_url.rstrip("/"), limit)

    def close(self) -> None:
        self.conn.close()


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
