"""The PostgreSQL archive's tables (``pgstore``), as numbered migrations: each is applied once,
in order, and recorded in ``delib_schema``."""

from __future__ import annotations

# The addresses this store opens (``delib.archive`` registers them with ``store``).
SCHEMES = ("postgresql://", "postgres://")

MIGRATIONS: tuple[str, ...] = (
    # 1: runs, records with full-text search, in-flight turns, sweeps and their ledger
    """
    CREATE TABLE IF NOT EXISTS delib_runs (
        run_id text PRIMARY KEY,
        manifest json,
        scenario text GENERATED ALWAYS AS (manifest #>> '{scenario,id}') STORED,
        started_at text GENERATED ALWAYS AS (manifest ->> 'started_at') STORED,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX IF NOT EXISTS delib_runs_started ON delib_runs (started_at);
    CREATE INDEX IF NOT EXISTS delib_runs_cell ON delib_runs
        ((manifest -> 'sweep' ->> 'name'), (manifest -> 'sweep' ->> 'cell'));
    CREATE TABLE IF NOT EXISTS delib_records (
        run_id text NOT NULL REFERENCES delib_runs ON DELETE CASCADE,
        seq integer NOT NULL,
        record json NOT NULL,
        turn_index integer,
        body text,
        tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', coalesce(body, ''))) STORED,
        PRIMARY KEY (run_id, seq)
    );
    CREATE INDEX IF NOT EXISTS delib_records_tsv ON delib_records USING gin (tsv);
    CREATE TABLE IF NOT EXISTS delib_inflight (
        run_id text NOT NULL REFERENCES delib_runs ON DELETE CASCADE,
        turn_index integer NOT NULL,
        header jsonb NOT NULL,
        PRIMARY KEY (run_id, turn_index)
    );
    CREATE TABLE IF NOT EXISTS delib_sweeps (name text PRIMARY KEY, record jsonb NOT NULL);
    CREATE TABLE IF NOT EXISTS delib_ledger (
        seq bigserial PRIMARY KEY,
        name text NOT NULL,
        entry jsonb NOT NULL
    );
    CREATE INDEX IF NOT EXISTS delib_ledger_cell ON delib_ledger (name, (entry ->> 'cell'), seq);
    """,
)
