"""The archive: the SQLite index and ``delib transcripts list/show/search/export/diff/delete/
reindex`` on an archive of a dozen real runs made over loopback."""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import sqlite3
from html.parser import HTMLParser
from pathlib import Path

import pytest
from conftest import delib_process

from delib.archive.index import INDEX_FILE, MIGRATIONS, Index, stamp
from delib.debate.runner import RunRequest, run_debate
from delib.models.config import Overrides
from delib.testing import FakeOpenAIServer, Fault

UNIQUE_WORD = "quillwort"
SCENARIOS = ("alignment-difficulty", "corrigibility", "hard-world-signs", "who-decides-values")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """Twelve finished runs (four scenarios, three protocols, two models) and one that failed;
    one turn in one run says a word no other turn says."""
    path = tmp_path_factory.mktemp("made") / "archive"
    runs = []
    with FakeOpenAIServer(models=("model-a", "model-b")) as fake:
        for i in range(12):
            if i == 5:
                fake.enqueue(f"The opening names the {UNIQUE_WORD} as its example.")
            request = RunRequest(
                scenario=SCENARIOS[i % 4],
                overrides=Overrides(base_url=fake.base_url, model=("model-a", "model-b")[i % 2]),
                rounds=1,
                archive=path,
                stream=i % 3 != 0,
            )
            runs.append(asyncio.run(run_debate(request)).run_id)
        fake.fail(Fault(status=400, message="gone"), after=2)
        request = RunRequest(
            scenario="alignment-difficulty",
            overrides=Overrides(base_url=fake.base_url, model="model-a"),
            archive=path,
        )
        failed = asyncio.run(run_debate(request)).run_id
    return {"path": path, "runs": runs, "failed": failed}


@pytest.fixture
def archive(made: dict, tmp_path: Path) -> Path:
    """A private copy of the made archive, so tests can change it."""
    copy = tmp_path / "archive"
    shutil.copytree(made["path"], copy)
    return copy


def listed(cli, archive: Path, *filters: str) -> list[dict]:
    code, out, err = cli("transcripts", "list", "--json", "--archive", str(archive), *filters)
    assert code == 0, err
    return json.loads(out)


def tree_hashes(archive: Path) -> dict[str, str]:
    return {
        str(p.relative_to(archive)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(archive.rglob("*"))
        if p.is_file() and not p.name.startswith(INDEX_FILE)
    }


# --- list ------------------------------------------------------------------------------------
def test_list_newest_first_with_filters(cli, archive: Path, made: dict) -> None:
    runs = listed(cli, archive)
    assert [r["run_id"] for r in runs] == [made["failed"], *reversed(made["runs"])]
    first = runs[-1]
    assert first["scenario"] == "alignment-difficulty"
    assert first["models"] == ["model-a"] and first["endpoints"] == ["cli"]
    assert first["turns"] == 5 and first["stop_reason"] == "completed"
    assert first["tokens"] > 0 and first["started_at"] and first["ended_at"]

    assert {r["scenario"] for r in listed(cli, archive, "--scenario", "corrigibility")} == {
        "corrigibility"
    }
    assert len(listed(cli, archive, "--scenario", "corrigibility")) == 3
    assert len(listed(cli, archive, "--model", "model-b")) == 6
    assert [r["run_id"] for r in listed(cli, archive, "--stop-reason", "error")] == [made["failed"]]
    assert len(listed(cli, archive, "--since", "1d")) == 13
    assert listed(cli, archive, "--since", "2999-01-01") == []
    code, out, err = cli("transcripts", "list", "--archive", str(archive))
    assert code == 0 and made["runs"][0] in out and "error" in out


def test_list_rejects_a_bad_since(cli, archive: Path) -> None:
    code, _, err = cli("transcripts", "list", "--since", "last tuesday", "--archive", str(archive))
    assert code == 1 and err.count("\n") == 1 and "--since" in err


# --- search ----------------------------------------------------------------------------------
def test_search_finds_the_one_turn_with_a_word(cli, archive: Path, made: dict) -> None:
    code, out, err = cli("transcripts", "search", UNIQUE_WORD, "--json", "--archive", str(archive))
    assert code == 0, err
    hits = json.loads(out)
    assert len(hits) == 1
    hit = hits[0]
    assert hit["run_id"] == made["runs"][5]
    assert hit["index"] == 0 and hit["speaker"] == "societal-impacts"
    assert UNIQUE_WORD in hit["snippet"]
    code, out, _ = cli("transcripts", "search", UNIQUE_WORD, "--archive", str(archive))
    assert code == 0 and made["runs"][5] in out and "turn 0" in out
    # Plain text with an apostrophe is not FTS syntax; it is searched as words.
    code, out, err = cli("transcripts", "search", "panel's oversight", "--archive", str(archive))
    assert "Traceback" not in err
    code, out, _ = cli("transcripts", "search", "nosuchwordanywhere", "--archive", str(archive))
    assert code == 1 and "no turn matches" in out


# --- show and export -------------------------------------------------------------------------
class _Turns(HTMLParser):
    """The text of every ``div.turn`` in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.turns: list[dict] = []
        self.in_text = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and "turn" in (attrs.get("class") or "").split():
            self.turns.append({"index": int(attrs["data-index"]), "text": ""})
        if tag == "p" and attrs.get("class") == "text" and self.turns:
            self.in_text = True

    def handle_endtag(self, tag):
        if tag == "p":
            self.in_text = False

    def handle_data(self, data):
        if self.in_text:
            self.turns[-1]["text"] += data


@pytest.mark.parametrize("fmt", ["md", "json", "html"])
def test_export_round_trips_every_turn(cli, archive: Path, made: dict, fmt: str) -> None:
    run_id = made["runs"][2]  # hard-world-signs: simultaneous
    folder = archive / run_id
    turns = [
        json.loads(line)
        for line in (folder / "turns.jsonl").read_text().splitlines()
        if '"type": "turn"' in line
    ]
    target = archive.parent / f"out.{fmt}"
    code, _, err = cli("transcripts", "export", run_id[:-1], "--format", fmt, "-o", str(target),
                       "--archive", str(archive))  # fmt: skip
    assert code == 0, err
    text = target.read_text()
    if fmt == "json":
        data = json.loads(text)
        assert data["manifest"]["run_id"] == run_id
        assert [r for r in data["records"] if r["type"] == "turn"] == turns
    elif fmt == "html":
        parser = _Turns()
        parser.feed(text)
        verdict_turn = [t["index"] for t in turns if t["kind"] == "verdict"]
        assert [t["index"] for t in parser.turns] == [t["index"] for t in turns]
        for seen, turn in zip(parser.turns, turns, strict=True):
            assert seen["text"] == turn["text"]
        assert verdict_turn and "Verdict" in text
        assert "http://" not in text and "https://" not in text and "<script" not in text
    else:
        for turn in turns:
            if turn["kind"] != "verdict":
                assert turn["text"] in text
    code, out, _ = cli("transcripts", "export", run_id, "--format", fmt, "--archive", str(archive))
    assert code == 0 and out == text


def test_show_prints_the_transcript(cli, archive: Path, made: dict) -> None:
    code, out, _ = cli("transcripts", "show", made["runs"][5], "--archive", str(archive))
    assert code == 0 and UNIQUE_WORD in out and "## Verdict" in out


# --- diff ------------------------------------------------------------------------------------
def test_diff_shows_settings_turns_and_verdicts(cli, archive: Path, made: dict) -> None:
    # Runs 0 and 4: same scenario and model, one streamed and one not; run 1 differs more.
    a, b = made["runs"][0], made["runs"][4]
    code, out, err = cli("transcripts", "diff", a, made["runs"][1], "--json",
                         "--archive", str(archive))  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    changed = {row["setting"] for row in result["settings"]}
    assert "scenario" in changed and "philosopher.model" in changed
    assert result["turns"][0]["a"]["speaker"] == "societal-impacts"
    assert result["verdicts"]["a"]["valid"] and result["verdicts"]["b"]["valid"]
    code, out, err = cli("transcripts", "diff", a, b, "--json", "--archive", str(archive))
    result = json.loads(out)
    assert [row["setting"] for row in result["settings"]] == ["generation.stream"]
    code, out, _ = cli("transcripts", "diff", a, b, "--archive", str(archive))
    assert code == 0 and "settings that differ" in out and "verdict B" in out


# --- delete and reindex ----------------------------------------------------------------------
def test_delete_asks_unless_yes(cli, archive: Path, made: dict) -> None:
    victim = made["runs"][3]
    before = tree_hashes(archive)
    code, _, err = cli("transcripts", "delete", victim, "--archive", str(archive))
    assert code == 1 and "--yes" in err
    assert tree_hashes(archive) == before
    code, out, _ = cli("transcripts", "delete", victim, "--yes", "--archive", str(archive))
    assert code == 0 and not (archive / victim).exists()
    assert victim not in [r["run_id"] for r in listed(cli, archive)]
    after = tree_hashes(archive)
    assert after == {k: v for k, v in before.items() if not k.startswith(victim)}


def test_the_index_follows_the_folders_and_reindex_rebuilds_it(
    cli, archive: Path, made: dict
) -> None:
    first = listed(cli, archive)
    # A folder removed by hand and one copied in by hand are both noticed.
    gone, back = made["runs"][0], made["runs"][1]
    shutil.rmtree(archive / gone)
    shutil.rmtree(archive / back)
    assert len(listed(cli, archive)) == 11
    shutil.copytree(made["path"] / back, archive / back)
    listed_now = [r["run_id"] for r in listed(cli, archive)]
    assert gone not in listed_now and back in listed_now and len(listed_now) == 12
    # Rebuilding from the folders alone gives the same index.
    (archive / INDEX_FILE).unlink()
    for suffix in ("-wal", "-shm"):
        (archive / f"{INDEX_FILE}{suffix}").unlink(missing_ok=True)
    code, out, _ = cli("transcripts", "reindex", "--archive", str(archive))
    assert code == 0 and "indexed 12 runs" in out
    assert listed(cli, archive) == [r for r in first if r["run_id"] != gone]
    with sqlite3.connect(archive / INDEX_FILE) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        turns = db.execute("SELECT COUNT(*) FROM turns").fetchone()[0]
        fts = db.execute("SELECT COUNT(*) FROM turns_fts").fetchone()[0]
    expected = sum(
        '"type": "turn"' in line
        for f in archive.glob("*/turns.jsonl")
        for line in f.read_text().splitlines()
    )
    assert turns == fts == expected


def test_migrations_are_safe_to_run_again(archive: Path) -> None:
    with Index.open(archive) as index:
        assert index.migrate() == len(MIGRATIONS)
        before = [(h.run_id, h.index) for h in index.search(UNIQUE_WORD)]
        for migration in MIGRATIONS:
            for statement in migration.split(";"):
                if statement.strip():
                    index.conn.execute(statement)  # every migration is idempotent
        assert index.migrate() == len(MIGRATIONS)
        assert [(h.run_id, h.index) for h in index.search(UNIQUE_WORD)] == before
        assert len(before) == 1


def test_runs_are_indexed_as_they_end_without_a_reader_catching_up(made: dict) -> None:
    """Each run wrote its own rows (its turns before the verdict while the verdict was being
    written, the rest at the end): the index matches the folders before any reader syncs."""
    archive = made["path"]
    with sqlite3.connect(archive / INDEX_FILE) as db:
        for run_id in [*made["runs"], made["failed"]]:
            folder = archive / run_id
            lines = (folder / "turns.jsonl").read_text().splitlines()
            indices = sorted(json.loads(x)["index"] for x in lines if '"type": "turn"' in x)
            rows = db.execute("SELECT idx FROM turns WHERE run_id = ? ORDER BY idx", (run_id,))
            assert [r[0] for r in rows] == indices
            row = db.execute("SELECT turns, stamp FROM runs WHERE run_id = ?", (run_id,))
            assert row.fetchone() == (len(indices), stamp(folder))
        fts, turns = fts_keys(db)
        assert fts == turns


def fts_keys(db: sqlite3.Connection) -> tuple[list, list]:
    """The full-text rows' (rowid, run, turn) and the turns' own, for comparison."""
    fts = db.execute("SELECT rowid, run_id, idx FROM turns_fts ORDER BY rowid").fetchall()
    turns = db.execute("SELECT rowid, run_id, idx FROM turns ORDER BY rowid").fetchall()
    return [tuple(r) for r in fts], [tuple(r) for r in turns]


def test_an_index_of_the_first_schema_is_upgraded(archive: Path, made: dict) -> None:
    """Full-text rows written by the first schema (numbered on their own, a marker character
    in one text) get their turn's rowid on the first open, and search finds the same turns."""
    with sqlite3.connect(archive / INDEX_FILE) as db:
        db.execute("UPDATE turns SET text = text || ' \x02marked\x03' WHERE idx = 1")
        db.execute("DROP TABLE turns_fts")
        for statement in MIGRATIONS[0].split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(
            "INSERT INTO turns_fts (text, run_id, idx) "
            "SELECT text, run_id, idx FROM turns ORDER BY run_id DESC, idx DESC"
        )
        db.execute("PRAGMA user_version = 1")
        fts, turns = fts_keys(db)
        assert fts != turns and len(fts) == len(turns)
    with Index.open(archive) as index:
        fts, turns = fts_keys(index.conn)
        assert fts == turns
        hits = index.search(UNIQUE_WORD)
        assert [(h.run_id, h.index) for h in hits] == [(made["runs"][5], 0)]
        marked = index.search("marked")
        second = index.conn.execute("SELECT COUNT(*) FROM turns WHERE idx = 1").fetchone()[0]
        assert len(marked) == second >= 12 and all(h.index == 1 for h in marked)
        texts = [r[0] for r in index.conn.execute("SELECT text FROM turns_fts")]
        assert not any("\x02" in t or "\x03" in t for t in texts)


def test_indexing_a_run_again_keeps_one_row_per_turn(archive: Path, made: dict) -> None:
    run_id = made["runs"][5]
    folder = archive / run_id
    manifest = json.loads((folder / "manifest.json").read_text())
    records = [json.loads(line) for line in (folder / "turns.jsonl").read_text().splitlines()]
    first = next(r for r in records if r["type"] == "turn")
    first["text"] = "The opening now names the sundew instead."
    with Index.open(archive) as index:
        index.replace_turns(folder, manifest, records)
        index.replace_turns(folder, manifest, records)
        fts, turns = fts_keys(index.conn)
        assert fts == turns
        assert index.search(UNIQUE_WORD) == []
        assert [(h.run_id, h.index) for h in index.search("sundew")] == [(run_id, 0)]


# --- bad input -------------------------------------------------------------------------------
def test_unknown_and_ambiguous_ids_and_missing_archive(cli, archive: Path, tmp_path: Path) -> None:
    before = tree_hashes(archive)
    for args, words in (
        (["show", "nosuchrun"], "unknown run"),
        (["show", "2026"], "ambiguous"),
        (["export", "2"], "ambiguous"),
        (["diff", "nosuchrun", "2026"], "unknown run"),
        (["delete", "nosuchrun", "--yes"], "unknown run"),
    ):
        code, out, err = cli("transcripts", *args, "--archive", str(archive))
        assert code == 1, args
        assert err.count("\n") == 1 and words in err.lower(), err
        assert "Traceback" not in err
    code, _, err = cli("resume", "nosuchrun", "--archive", str(archive))
    assert code == 1 and "unknown run" in err.lower()
    assert tree_hashes(archive) == before
    missing = tmp_path / "nowhere"
    for args in (["list"], ["search", "x"], ["show", "x"], ["reindex"]):
        code, _, err = cli("transcripts", *args, "--archive", str(missing))
        assert code == 1 and "does not exist" in err and err.count("\n") == 1
    assert not missing.exists()


def test_a_corrupt_manifest_is_one_line_and_touches_nothing_else(
    cli, archive: Path, made: dict
) -> None:
    bad = made["runs"][7]
    (archive / bad / "manifest.json").write_text('{"run_id": "half')
    before = tree_hashes(archive)
    for args in (["show", bad], ["export", bad, "-f", "html"]):
        code, out, err = cli("transcripts", *args, "--archive", str(archive))
        assert code == 1 and "corrupt manifest" in err and err.count("\n") == 1
    code, _, err = cli("resume", bad, "--archive", str(archive))
    assert code == 1 and "corrupt manifest" in err
    runs = listed(cli, archive)
    assert len(runs) == 12 and bad not in [r["run_id"] for r in runs]
    code, out, err = cli("transcripts", "reindex", "--archive", str(archive))
    assert code == 1 and "indexed 12 runs" in out and "corrupt manifest" in err
    assert tree_hashes(archive) == before


# --- several writers -------------------------------------------------------------------------
def test_two_runs_writing_to_one_archive_at_once(tmp_path: Path, cli) -> None:
    archive = tmp_path / "shared"
    with FakeOpenAIServer(chunk_delay=0.002) as fake:
        procs = [
            delib_process(
                "run", scenario, "--base-url", fake.base_url, "--archive", str(archive), "--json"
            )  # fmt: skip
            for scenario in ("alignment-difficulty", "hard-world-signs")
        ]
        results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    live = listed(cli, archive)
    assert {r["stop_reason"] for r in live} == {"completed"}
    for run in live:
        lines = (archive / run["run_id"] / "turns.jsonl").read_text().splitlines()
        assert all(json.loads(line) for line in lines)
        assert run["turns"] == sum('"type": "turn"' in line for line in lines)
    code, _, _ = cli("transcripts", "reindex", "--archive", str(archive))
    assert code == 0
    assert listed(cli, archive) == live
