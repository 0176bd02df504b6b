"""The SQLite index's schema, as the migrations that make it (``index.Index.migrate`` applies
the ones not yet applied; each is safe to run twice)."""

MIGRATIONS: tuple[str, ...] = (
    # 1: runs and turns, full-text search over turns
    """
    CREATE TABLE IF NOT EXISTS runs (
        run_id TEXT PRIMARY KEY,
        scenario TEXT NOT NULL,
        title TEXT,
        protocol TEXT,
        models TEXT NOT NULL DEFAULT '[]',     -- JSON list
        endpoints TEXT NOT NULL DEFAULT '[]',  -- JSON list
        started_at TEXT,
        ended_at TEXT,
        stop_reason TEXT,
        error TEXT,
        tokens INTEGER,
        turns INTEGER NOT NULL DEFAULT 0,
        events INTEGER NOT NULL DEFAULT 0,
        resumed INTEGER NOT NULL DEFAULT 0,
        stamp TEXT
    );
    CREATE INDEX IF NOT EXISTS runs_started ON runs (started_at);
    CREATE TABLE IF NOT EXISTS turns (
        run_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        round INTEGER,
        speaker TEXT,
        name TEXT,
        role TEXT,
        kind TEXT,
        text TEXT,
        PRIMARY KEY (run_id, idx)
    );
    CREATE VIRTUAL TABLE IF NOT EXISTS turns_fts USING fts5 (
        text, run_id UNINDEXED, idx UNINDEXED, tokenize = 'unicode61 remove_diacritics 2'
    );
    """,
    # 2: a turn's full-text row has the turn's rowid, so a run's rows are found through the
    # turns table's key; looking them up by the unindexed run_id scanned every row of the
    # archive, for every turn of every run written (rebuilt from the turns table)
    """
    DROP TABLE IF EXISTS turns_fts;
    CREATE VIRTUAL TABLE turns_fts USING fts5 (
        text, run_id UNINDEXED, idx UNINDEXED, tokenize = 'unicode61 remove_diacritics 2'
    );
    INSERT INTO turns_fts (rowid, text, run_id, idx)
        SELECT rowid, replace(replace(text, char(2), ' '), char(3), ' '), run_id, idx FROM turns;
    """,
    # 3: the sweep and cell a run belongs to, so that a sweep's status reads the index and
    # not every manifest (every run is indexed again once, to fill them in)
    # (the runs table is made again: it is rebuilt from the folders, and this keeps the
    # migration safe to run twice, which adding columns is not)
    """
    DROP TABLE IF EXISTS runs;
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        scenario TEXT NOT NULL,
        title TEXT,
        protocol TEXT,
        models TEXT NOT NULL DEFAULT '[]',
        endpoints TEXT NOT NULL DEFAULT '[]',
        started_at TEXT,
        ended_at TEXT,
        stop_reason TEXT,
        error TEXT,
        tokens INTEGER,
        turns INTEGER NOT NULL DEFAULT 0,
        events INTEGER NOT NULL DEFAULT 0,
        resumed INTEGER NOT NULL DEFAULT 0,
        stamp TEXT,
        sweep TEXT,
        cell TEXT
    );
    CREATE INDEX runs_started ON runs (started_at);
    CREATE INDEX runs_sweep ON runs (sweep, cell);
    """,
)
