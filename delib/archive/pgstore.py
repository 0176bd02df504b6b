"""The archive in PostgreSQL: runs, their records, sweeps and checkpoints in one database.

``--archive postgresql://user@host/db`` (or ``$DELIB_ARCHIVE``) keeps everything a folder
archive keeps, so that runs started on one machine can be read, searched and resumed on another:

- ``delib_runs``: one row per run, its manifest as ``json`` (not ``jsonb``: keys keep their
  order, which transcripts render in);
- ``delib_records``: every turn and event in order, with a ``tsvector`` of the text (GIN index)
  for ``transcripts search``;
- ``delib_inflight``: the turns being spoken (their header; the text streams to the terminal,
  not the database), so a resume records a turn cut off mid-reply;
- ``delib_sweeps`` and ``delib_ledger``: what ``sweep run`` saves and its attempts;
- LangGraph's checkpoint tables (``langgraph-checkpoint-postgres``), thread id = run id.

A record is committed before ``append`` returns, as a ``turns.jsonl`` line is flushed. Who is
running what is held with session advisory locks: a run's lock, and a sweep cell's lease while
a worker has it. PostgreSQL drops a session's locks when its connection ends, so a worker that
is killed (``kill -9``, a lost machine once TCP keepalive notices) frees its runs and cells at
once, and no lease needs a timeout. Schema changes are numbered migrations recorded in
``delib_schema``, applied under an advisory lock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import psycopg
from psycopg.types.json import Json, Jsonb

from delib.archive.index import HIT_END, HIT_START, SNIPPET_TOKENS, Hit, _run_row
from delib.archive.pgrun import PgRun, _insert_records, delete_checkpoints
from delib.archive.pgschema import MIGRATIONS, SCHEMES
from delib.archive.pgsession import (
    Lease,
    NoLock,
    Slots,
    _lock_key,
    connect,
    holds,
    redact,
    transaction,
    wait_for_lock,
)
from delib.archive.reading import manifest_problem
from delib.archive.run_folder import new_run_id
from delib.errors import InputError, UnknownIdError
from delib.records import now

# The advisory locks taken while migrating ("delib"): delib's tables, then LangGraph's (another
# key: a process waiting for the first must not be waited for by one holding the second).
MIGRATE_LOCK = 0x64656C6962
MIGRATE_WAIT = 120.0  # seconds another process's migration is waited for


class PgStore:
    """A PostgreSQL archive. ``connect`` migrates the schema if needed."""

    kind = "postgresql"

    def __init__(self, dsn: str, conn: psycopg.Connection) -> None:
        self.dsn = dsn
        self.conn = conn
        self.location = redact(dsn)

    def __repr__(self) -> str:
        return f"PgStore({self.location!r})"

    @classmethod
    def connect(cls, dsn: str) -> PgStore:
        if not dsn.startswith(SCHEMES):
            raise InputError(f"--archive {dsn!r}: not a postgresql:// address")
        store = cls(dsn, connect(dsn))
        store.migrate()
        return store

    def close(self) -> None:
        self.conn.close()

    def migrate(self) -> int:
        """Apply the migrations not yet applied (also the checkpointer's); the version."""
        from langgraph.checkpoint.postgres import PostgresSaver

        if self._current(len(PostgresSaver.MIGRATIONS)):
            return len(MIGRATIONS)

        def work() -> None:
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
            self.conn.execute("CREATE TABLE IF NOT EXISTS delib_schema (version integer)")
            row = self.conn.execute("SELECT max(version) AS v FROM delib_schema").fetchone()
            version = (row and row["v"]) or 0
            for number in range(version, len(MIGRATIONS)):
                self.conn.execute(MIGRATIONS[number])
                self.conn.execute("INSERT INTO delib_schema VALUES (%s)", (number + 1,))

        transaction(self.conn, work)
        # LangGraph's own migrations build an index CONCURRENTLY, which waits for every other
        # transaction, a statement waiting for a lock included: they run outside a transaction,
        # under a session lock that others poll for instead of waiting on it.
        if not wait_for_lock(self.conn, MIGRATE_LOCK + 1, MIGRATE_WAIT):
            raise InputError(
                f"{self.location}: another process has been migrating for "
                f"{MIGRATE_WAIT / 60:g} minutes"
            )
        try:
            PostgresSaver(self.conn).setup()  # type: ignore[arg-type]
        finally:
            self.conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK + 1,))
        return len(MIGRATIONS)

    def _current(self, checkpoint_migrations: int) -> bool:
        """Whether both schemas are up to date (read without a lock: the common case)."""
        row = self.conn.execute(
            "SELECT to_regclass('delib_schema') IS NOT NULL AND "
            "to_regclass('checkpoint_migrations') IS NOT NULL AS present"
        ).fetchone()
        if not row["present"]:
            return False
        row = self.conn.execute(
            "SELECT (SELECT max(version) FROM delib_schema) AS ours, "
            "(SELECT max(v) FROM checkpoint_migrations) AS theirs"
        ).fetchone()
        return (row["ours"] or 0) >= len(MIGRATIONS) and (
            row["theirs"] is not None and row["theirs"] >= checkpoint_migrations - 1
        )

    # --- runs --------------------------------------------------------------------------------
    def exists(self) -> bool:
        return True

    def require(self) -> PgStore:
        return self

    def folder(self, run_id: str) -> None:
        return None

    def run_ids(self) -> list[str]:
        rows = self.conn.execute(
            "SELECT run_id FROM delib_runs ORDER BY run_id DESC"
        ).fetchall()  # fmt: skip
        return [r["run_id"] for r in rows]

    def find(self, wanted: str) -> str:
        if not wanted.strip():
            raise InputError("an empty run id matches nothing; see `delib transcripts list`")
        rows = self.conn.execute(
            "SELECT run_id FROM delib_runs WHERE run_id = %s OR starts_with(run_id, %s) "
            "ORDER BY run_id DESC LIMIT 6",
            (wanted, wanted),
        ).fetchall()
        names = [r["run_id"] for r in rows]
        if wanted in names:
            return wanted
        if len(names) == 1:
            return names[0]
        if names:
            raise InputError(
                f"run prefix '{wanted}' is ambiguous: {', '.join(names[:5])}; give more of the id"
            )
        raise UnknownIdError(
            "run",
            wanted,
            self.run_ids()[:5],
            hint=f"in {self.location}; see 'delib transcripts list'",
        )

    def manifest(self, run_id: str) -> dict:
        row = self.conn.execute(
            "SELECT manifest FROM delib_runs WHERE run_id = %s", (run_id,)
        ).fetchone()
        if row is None:
            raise InputError(f"no run {run_id} in {self.location}")
        manifest = row["manifest"]
        problem = "no manifest yet (the run died as it began)" if manifest is None else None
        problem = problem or manifest_problem(manifest)
        if problem:
            raise InputError(f"{self.location}: run {run_id} has no usable manifest ({problem})")
        return manifest

    def records(self, run_id: str) -> list[dict]:
        rows = self.conn.execute(
            "SELECT record FROM delib_records WHERE run_id = %s ORDER BY seq", (run_id,)
        ).fetchall()
        return [r["record"] for r in rows]

    def running(self, run_id: str) -> bool:
        key = _lock_key("run", run_id)
        return holds(self.dsn, key) or self._held(key)

    def _held(self, key: str) -> bool:
        """Whether another session holds this advisory lock (tried and let go at once)."""
        row = self.conn.execute(
            "SELECT pg_try_advisory_lock(hashtextextended(%s, 0)) AS got", (key,)
        ).fetchone()
        if row["got"]:
            self.conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
        return not row["got"]

    def has_checkpoints(self, run_id: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM checkpoints WHERE thread_id = %s LIMIT 1", (run_id,)
        ).fetchone()
        return row is not None

    def manifests(self) -> Iterator[tuple[str, dict]]:
        rows = self.conn.execute(
            "SELECT run_id, manifest FROM delib_runs WHERE manifest IS NOT NULL "
            "ORDER BY run_id DESC"
        ).fetchall()
        for row in rows:
            if manifest_problem(row["manifest"]) is None:
                yield row["run_id"], row["manifest"]

    def sweep_manifests(self, name: str, cell: str | None = None) -> Iterator[tuple[str, dict]]:
        """The manifests of one sweep's runs (or one cell's), found by the database."""
        rows = self.conn.execute(
            "SELECT run_id, manifest FROM delib_runs WHERE manifest -> 'sweep' ->> 'name' = %s "
            "AND (%s::text IS NULL OR manifest -> 'sweep' ->> 'cell' = %s) ORDER BY run_id DESC",
            (name, cell, cell),
        ).fetchall()
        for row in rows:
            if manifest_problem(row["manifest"]) is None:
                yield row["run_id"], row["manifest"]

    def sweep_runs(self, name: str, cell: str | None = None) -> list[dict]:
        """One sweep's runs (or one cell's), oldest first, without their manifests: run id,
        cell, started, stop reason, error."""
        rows = self.conn.execute(
            "SELECT run_id, manifest -> 'sweep' ->> 'cell' AS cell, manifest ->> 'started_at' "
            "AS started_at, manifest ->> 'stop_reason' AS stop_reason, manifest ->> 'error' AS "
            "error FROM delib_runs WHERE manifest -> 'sweep' ->> 'name' = %s AND (%s::text IS "
            "NULL OR manifest -> 'sweep' ->> 'cell' = %s) ORDER BY "
            "coalesce(manifest ->> 'started_at', ''), run_id",
            (name, cell, cell),
        ).fetchall()
        return [dict(row) for row in rows]

    def create_run(self, scenario_id: str) -> PgRun:
        for _ in range(5):
            run_id = new_run_id(scenario_id)
            row = self.conn.execute(
                "INSERT INTO delib_runs (run_id) VALUES (%s) ON CONFLICT DO NOTHING "
                "RETURNING run_id",
                (run_id,),
            ).fetchone()
            if row is not None:
                return PgRun(self.dsn, run_id)
        raise InputError(f"could not create a new run in {self.location}")  # pragma: no cover

    def open_run(self, run_id: str) -> PgRun:
        return PgRun(self.dsn, run_id)

    def delete(self, run_id: str) -> None:
        def work() -> None:
            delete_checkpoints(self.conn, run_id)
            self.conn.execute("DELETE FROM delib_runs WHERE run_id = %s", (run_id,))

        transaction(self.conn, work)

    def listing(
        self,
        scenario: str | None = None,
        model: str | None = None,
        stop_reason: str | None = None,
        since: str | None = None,
    ) -> tuple[list[dict], list[str]]:
        """Runs, newest first, as ``Index.runs`` gives them (the same filters)."""
        rows = self.conn.execute(
            "SELECT r.run_id, r.manifest, "
            "  (SELECT count(*) FROM delib_records d WHERE d.run_id = r.run_id "
            "   AND d.turn_index IS NOT NULL) AS turns, "
            "  (SELECT count(*) FROM delib_records d WHERE d.run_id = r.run_id "
            "   AND d.turn_index IS NULL) AS events "
            "FROM delib_runs r WHERE (%(s)s::text IS NULL OR r.scenario = %(s)s) "
            "AND (%(since)s::text IS NULL OR r.started_at >= %(since)s) "
            "ORDER BY r.started_at DESC NULLS LAST, r.run_id DESC",
            {"s": scenario, "since": since},
        ).fetchall()
        runs, problems = [], []
        for row in rows:
            manifest = row["manifest"]
            problem = (
                "no manifest yet" if manifest is None else manifest_problem(manifest)
            )  # fmt: skip
            if problem:
                problems.append(f"{self.location}: run {row['run_id']}: {problem}")
                continue
            item = _run_row({**manifest, "run_id": row["run_id"]}, None, None)
            item.update(turns=row["turns"], events=row["events"])
            item["models"] = json.loads(item["models"])
            item["endpoints"] = json.loads(item["endpoints"])
            item.pop("stamp", None)
            if model and model not in item["models"]:
                continue
            if stop_reason == "running" and item["stop_reason"] is not None:
                continue
            if stop_reason and stop_reason != "running" and item["stop_reason"] != stop_reason:
                continue
            runs.append(item)
        return runs, problems

    def search(self, query: str, limit: int) -> tuple[list[Hit], list[str]]:
        """Turns matching ``query`` (web-search syntax: words, "a phrase", or, -word)."""
        options = (
            f'StartSel="{HIT_START}", StopSel="{HIT_END}", '
            f"MaxWords={SNIPPET_TOKENS}, MinWords={SNIPPET_TOKENS // 2}, MaxFragments=1"
        )
        rows = self.conn.execute(
            "SELECT d.run_id, d.record, ts_headline('english', d.body, q, %s) AS snippet "
            "FROM delib_records d, websearch_to_tsquery('english', %s) q "
            "WHERE d.turn_index IS NOT NULL AND d.tsv @@ q "
            "ORDER BY ts_rank(d.tsv, q) DESC, d.run_id DESC, d.turn_index LIMIT %s",
            (options, query, limit),
        ).fetchall()
        hits = []
        for row in rows:
            turn = row["record"]
            hits.append(
                Hit(
                    row["run_id"],
                    turn["index"],
                    turn["speaker"],
                    turn.get("name") or "",
                    turn["round"],
                    row["snippet"],
                )  # fmt: skip
            )
        return hits, []

    def import_run(self, manifest: dict, records: list[dict]) -> None:
        """Add a copy of a run from another store (``archive copy``)."""
        run_id = manifest["run_id"]
        with self.conn.transaction():
            row = self.conn.execute(
                "INSERT INTO delib_runs (run_id, manifest) VALUES (%s, %s) "
                "ON CONFLICT DO NOTHING RETURNING run_id",
                (run_id, Json(manifest)),
            ).fetchone()
            if row is None:
                raise InputError(f"run {run_id} is already in {self.location}")
            _insert_records(self.conn, run_id, 0, records)

    # --- sweeps ------------------------------------------------------------------------------
    def save_sweep(self, name: str, data: dict) -> None:
        self.conn.execute(
            "INSERT INTO delib_sweeps VALUES (%s, %s) "
            "ON CONFLICT (name) DO UPDATE SET record = excluded.record",
            (name, Jsonb(data)),
        )

    def sweep_record(self, name: str) -> dict | None:
        row = self.conn.execute(
            "SELECT record FROM delib_sweeps WHERE name = %s", (name,)
        ).fetchone()
        return row["record"] if row else None

    def sweep_names(self) -> list[str]:
        rows = self.conn.execute("SELECT name FROM delib_sweeps ORDER BY name").fetchall()
        return [r["name"] for r in rows]

    def note(self, name: str, entry: dict) -> None:
        self.conn.execute(
            "INSERT INTO delib_ledger (name, entry) VALUES (%s, %s)",
            (name, Jsonb({"at": now(), **entry})),
        )

    def ledger(self, name: str, cell: str | None = None) -> list[dict]:
        rows = self.conn.execute(
            "SELECT entry FROM delib_ledger WHERE name = %s "
            "AND (%s::text IS NULL OR entry ->> 'cell' = %s) ORDER BY seq",
            (name, cell, cell),
        ).fetchall()
        return [r["entry"] for r in rows if isinstance(r["entry"].get("cell"), str)]

    def in_flight(self, name: str) -> int:
        """Cells of the sweep started and not yet ended, by the ledger: cheap, for a progress
        line (a start whose worker died is counted until the sweep is run again)."""
        row = self.conn.execute(
            "SELECT count(*) FILTER (WHERE entry ->> 'outcome' = 'started') - "
            "count(*) FILTER (WHERE entry ->> 'outcome' IN ('finished', 'failed')) AS n "
            "FROM delib_ledger WHERE name = %s",
            (name,),
        ).fetchone()
        return max(0, row["n"] or 0)

    def limits(self) -> Slots:
        """Each server's ``max_concurrency``, held across every process on this database."""
        return Slots(self.dsn)

    def sweep_lock(self, name: str) -> NoLock:
        """Several ``sweep run``s may share a sweep here: each cell is leased (``claim``)."""
        return NoLock()

    def claim(self, sweep: str, cell: str) -> Lease | None:
        """The lease of one sweep cell, or None if another worker holds it."""
        lease = Lease(self.dsn, _lock_key(f"cell:{sweep}", cell))
        return lease if lease.take() else None  # another worker (or coroutine) has it
