"""A run in the PostgreSQL archive, open for writing.

``PgRun`` is what ``archive.RunFolder`` is for a folder: records appended (each committed
before ``append`` returns), the manifest, the in-flight turns, the run's lock and its LangGraph
checkpointer. Its connection is the process's shared session (``pgsession``), where the run's
lock is held; a write that fails there stops the run with every finished turn committed
(``lost_error``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Json, Jsonb

from delib.archive.index import HIT_END, HIT_START
from delib.archive.pgsession import (
    CONNECT_TIMEOUT,
    _lock_key,
    connect_async,
    let_go,
    redact,
    session,
    take,
    transaction,
)
from delib.archive.reading import record_problem
from delib.errors import InputError, StoreError

CHECKPOINT_TABLES = ("checkpoint_writes", "checkpoint_blobs", "checkpoints")  # LangGraph's


def delete_checkpoints(conn: psycopg.Connection, run_id: str) -> None:
    """A run's LangGraph checkpoints deleted (inside the caller's ``transaction``)."""
    for table in CHECKPOINT_TABLES:
        conn.execute(f"DELETE FROM {table} WHERE thread_id = %s", (run_id,))


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
        def work() -> None:
            self.conn.execute("DELETE FROM delib_records WHERE run_id = %s", (self.run_id,))
            _insert_records(self.conn, self.run_id, 0, records)

        transaction(self.conn, work)
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
        transaction(self.conn, lambda: delete_checkpoints(self.conn, self.run_id))

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
        conn = await connect_async(self.dsn, prepare_threshold=0)
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
