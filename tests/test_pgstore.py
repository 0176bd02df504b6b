"""The archive in a real PostgreSQL server: runs written, read, searched, deleted, killed and
resumed from another process, copied to and from a folder archive, and one sweep shared by two
``sweep run`` processes. Models are reached over loopback HTTP through the real openai client."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from conftest import delib_process

from delib.archive.pgstore import PgStore
from delib.testing import FakeOpenAIServer, Fault

SCENARIO = "alignment-difficulty"


def run_args(base_url: str, archive: str, *extra: str) -> list[str]:
    return ["run", SCENARIO, "--base-url", base_url, "--rounds", "1", "--archive", archive,
            "--json", *extra]  # fmt: skip


def turn_indices(store: PgStore, run_id: str) -> list[int]:
    return [r["index"] for r in store.records(run_id) if r["type"] == "turn"]


def wait_for_turns(store: PgStore, proc, count: int) -> None:
    """Until the process's run has ``count`` finished turns in the database."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        ids = store.run_ids()
        if ids and len(turn_indices(store, ids[0])) >= count:
            return
        time.sleep(0.05)


def test_a_run_in_postgres_lists_shows_searches_exports_and_deletes(cli, server, pg):
    code, out, err = cli(*run_args(server.base_url, pg))
    assert code == 0, err
    summary = json.loads(out)
    assert summary["stop_reason"] == "completed" and summary["folder"] is None
    assert not list(Path.cwd().iterdir())  # nothing was written beside the database
    run_id = summary["run_id"]
    store = PgStore.connect(pg)
    records = store.records(run_id)
    assert turn_indices(store, run_id) == list(range(summary["turns"]))
    assert store.manifest(run_id)["stop_reason"] == "completed"
    assert not store.has_checkpoints(run_id)  # a finished run drops them, as a folder does

    code, out, err = cli("transcripts", "list", "--archive", pg, "--json")
    assert code == 0, err
    (row,) = json.loads(out)
    assert row["run_id"] == run_id and row["turns"] == summary["turns"]
    assert row["models"] == ["test-model"] and row["stop_reason"] == "completed"
    assert json.loads(cli("transcripts", "list", "--archive", pg, "--json",
                          "--stop-reason", "error")[1]) == []  # fmt: skip

    code, out, err = cli("transcripts", "show", run_id[:17], "--archive", pg)
    assert code == 0, err
    assert store.manifest(run_id)["scenario"]["title"] in out

    turn = next(r for r in records if r["type"] == "turn" and len(r["text"].split()) > 3)
    word = max((w.strip(".,;:!?\"'()") for w in turn["text"].split()), key=len)
    code, out, err = cli("transcripts", "search", word, "--archive", pg, "--json")
    assert code == 0, err
    hits = json.loads(out)
    assert any(h["run_id"] == run_id and h["index"] == turn["index"] for h in hits)
    assert all(word.lower()[:4] in h["snippet"].lower() for h in hits)

    code, out, err = cli("transcripts", "export", run_id, "--format", "json", "--archive", pg)
    assert code == 0, err
    exported = json.loads(out)
    assert exported["records"] == records

    code, out, err = cli("transcripts", "delete", run_id, "--yes", "--archive", pg)
    assert code == 0, err
    assert store.run_ids() == []
    store.close()


def test_an_unreachable_database_is_one_line_without_the_password(cli):
    code, out, err = cli("transcripts", "list", "--archive",
                         "postgresql://someone:s3cret@127.0.0.1:1/nothing")  # fmt: skip
    assert code == 1
    assert "cannot reach the PostgreSQL archive postgresql://someone@127.0.0.1:1/nothing" in err
    assert "s3cret" not in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_kill_9_in_one_process_then_resume_in_another(pg):
    """A run killed mid-debate keeps every finished turn in the database; another process
    (another machine, as far as it can tell) resumes it from its PostgreSQL checkpoints."""
    with FakeOpenAIServer(delay=0.2, chunk_delay=0.01) as slow:
        proc = delib_process(*run_args(slow.base_url, pg, "--rounds", "2"))
        store = PgStore.connect(pg)
        wait_for_turns(store, proc, 3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        (run_id,) = store.run_ids()
        before = turn_indices(store, run_id)
        assert len(before) >= 3 and store.manifest(run_id)["stop_reason"] is None
        assert not store.running(run_id)  # the dead session's lock went with it
        assert store.has_checkpoints(run_id)

        resumed = delib_process("resume", run_id, "--archive", pg, "--json")
        out, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err
        assert json.loads(out)["stop_reason"] == "completed"
    after = turn_indices(store, run_id)
    assert after == list(range(len(after))) and after[: len(before)] == before
    manifest = store.manifest(run_id)
    assert manifest["stop_reason"] == "completed" and len(manifest["resumed"]) == 1
    assert not store.has_checkpoints(run_id)
    store.close()


def test_copy_folder_to_postgres_and_back_is_lossless_and_resumable(cli, server, pg, tmp_path):
    folder, back = tmp_path / "folder", tmp_path / "back"
    assert cli(*run_args(server.base_url, str(folder)))[0] == 0
    server.fail(*[Fault(500, "boom")] * 20, after=3)  # the second run dies mid-debate
    code, out, err = cli(*run_args(server.base_url, str(folder)))
    assert code == 1
    broken = json.loads(out)["run_id"]
    server._faults.clear()

    code, out, err = cli("archive", "copy", str(folder), pg)
    assert code == 0, err
    assert "copied 2 runs (1 with checkpoints)" in out
    assert cli("archive", "copy", str(folder), pg)[1].startswith("copied 0 runs")  # idempotent
    code, out, err = cli("archive", "copy", pg, str(back))
    assert code == 0, err

    from delib.archive.store import open_store

    a, b = open_store(folder), open_store(back)
    assert sorted(a.run_ids()) == sorted(b.run_ids())
    for run_id in a.run_ids():
        assert b.manifest(run_id) == a.manifest(run_id)
        assert b.records(run_id) == a.records(run_id)
        assert (back / run_id / "transcript.md").read_text() == (
            folder / run_id / "transcript.md"
        ).read_text()

    # The failed run resumes from the database copy, from its last finished turn.
    kept = len(a.records(broken))
    code, out, err = cli("resume", broken, "--archive", pg, "--json")
    assert code == 0, err
    store = PgStore.connect(pg)
    manifest = store.manifest(broken)
    assert manifest["stop_reason"] == "completed" and manifest["resumed"][0]["after_turn"] >= 2
    assert len(store.records(broken)) > kept
    assert turn_indices(store, broken) == list(range(manifest["turns"]))
    store.close()


def _sweep_file(path: Path, base_url: str, seeds: int) -> Path:
    path.write_text(
        "name: shared\nscenarios: [alignment-difficulty]\n"
        f'models:\n  - {{base_url: "{base_url}", model: test-model}}\n'
        f"seeds: [{', '.join(str(s) for s in range(1, seeds + 1))}]\n"
        "protocols: [round_robin]\nrounds: 1\n",
        encoding="utf-8",
    )
    return path


def test_two_sweep_runs_on_two_machines_split_the_cells_without_duplicates(pg, tmp_path):
    """Two ``sweep run`` processes of one file, each with its own working folder, against one
    database: every cell runs exactly once, and both take part."""
    with FakeOpenAIServer(delay=0.1) as slow:
        procs = []
        for machine in ("a", "b"):
            (tmp_path / machine).mkdir()
            path = _sweep_file(tmp_path / machine / "s.yaml", slow.base_url, seeds=12)
            args = ["sweep", "run", str(path), "--archive", pg, "--concurrency", "2"]
            procs.append(delib_process(*args, cwd=tmp_path / machine))
        outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    ran = [err.count("done ") for _, err in outputs]
    assert sum(ran) == 12 and all(ran), ran  # every cell once, and both machines took some
    store = PgStore.connect(pg)
    runs = list(store.sweep_manifests("shared"))
    assert len(runs) == 12
    assert len({m["sweep"]["cell"] for _, m in runs}) == 12
    assert all(m["stop_reason"] == "completed" for _, m in runs)
    store.close()


def test_sweep_status_and_report_read_the_database(cli, server, pg, tmp_path):
    path = _sweep_file(tmp_path / "s.yaml", server.base_url, seeds=2)
    assert cli("sweep", "run", str(path), "--archive", pg)[0] == 0
    code, out, err = cli("sweep", "status", "shared", "--archive", pg, "--json")
    assert code == 0, err
    assert [c["state"] for c in json.loads(out)] == ["done", "done"]
    code, out, err = cli("sweep", "report", "shared", "--archive", pg, "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert len(rows) == 2 and all(r["turns"] > 0 for r in rows)
    page = tmp_path / "r.html"
    assert cli("sweep", "report", "shared", "--archive", pg, "-o", str(page))[0] == 0
    assert len(list((tmp_path / "r-runs").glob("*.html"))) == 2
    assert cli("sweep", "run", str(path), "--archive", pg)[0] == 0  # a rerun runs nothing
    store = PgStore.connect(pg)
    assert len(list(store.sweep_manifests("shared"))) == 2
    store.close()


def test_many_processes_opening_a_new_database_at_once_migrate_it_once(pg):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    start = threading.Barrier(8)

    def open_and_count(number: int) -> int:
        start.wait()
        time.sleep(number * 0.015)  # staggered: some arrive while another is migrating
        store = PgStore.connect(pg)
        try:
            return store.conn.execute("SELECT count(*) AS n FROM delib_schema").fetchone()["n"]
        finally:
            store.close()

    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(open_and_count, range(8)))
    assert counts == [1] * 8  # one row per migration, written once


def test_the_database_going_away_mid_run_is_one_line_and_the_run_resumes(tmp_path):
    """PostgreSQL stops while a debate is being written: one error line, no traceback, exit 1;
    the finished turns are committed, and once the server is back the run resumes."""
    from delib.testing.pgtemp import TempPostgres, find_bin

    if find_bin() is None:
        pytest.skip("no PostgreSQL server binaries")
    with TempPostgres() as pg, FakeOpenAIServer(delay=0.2) as slow:
        proc = delib_process(*run_args(slow.base_url, pg.dsn, "--rounds", "2"))
        store = PgStore.connect(pg.dsn)
        wait_for_turns(store, proc, 2)
        store.close()
        pg.pause()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1, err
        assert "Traceback" not in err
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "lost the PostgreSQL archive" in lines[0], err
        assert "'delib resume" in lines[0]
        pg.unpause()
        store = PgStore.connect(pg.dsn)
        (run_id,) = store.run_ids()
        kept = turn_indices(store, run_id)
        assert len(kept) >= 2 and kept == list(range(len(kept)))
        resumed = delib_process("resume", run_id, "--archive", pg.dsn, "--json")
        out, err = resumed.communicate(timeout=120)
        assert resumed.returncode == 0, err
        after = turn_indices(store, run_id)
        assert after[: len(kept)] == kept and after == list(range(len(after)))
        assert store.manifest(run_id)["stop_reason"] == "completed"
        store.close()


def test_pool_pins_are_counted_across_processes_and_freed_with_the_session(pg, server):
    import asyncio

    from delib.archive.pgsession import connect
    from delib.models.pool import ServerPool

    PgStore.connect(pg).close()
    other = "http://127.0.0.1:9/v1"
    mine, theirs = ServerPool(connect(pg)), ServerPool(connect(pg))

    async def scenario() -> None:
        async with mine.pinned([server.base_url]) as url:
            assert url == server.base_url
            assert theirs.outstanding([server.base_url, other]) == {server.base_url: 1, other: 0}
            async with mine.pinned([server.base_url]):
                assert theirs.outstanding([server.base_url])[server.base_url] == 2
        assert theirs.outstanding([server.base_url])[server.base_url] == 0
        async with mine.pinned([server.base_url]):
            mine.conn.close()  # the worker dies: its pins go with its session
            deadline = time.monotonic() + 5  # as soon as the server has ended that session
            while theirs.outstanding([server.base_url])[server.base_url] and (
                time.monotonic() < deadline
            ):
                await asyncio.sleep(0.01)
            assert theirs.outstanding([server.base_url])[server.base_url] == 0

    asyncio.run(scenario())
    theirs.conn.close()


def test_delib_view_serves_a_database_archive(cli, server, pg, tmp_path):
    """The web view reads a postgresql:// archive as it reads a folder: the runs, a search,
    a transcript, the sweep's report with its cells linked, and a finished run's events."""
    import urllib.request

    from delib.web.server import ViewServer

    path = _sweep_file(tmp_path / "s.yaml", server.base_url, seeds=2)
    assert cli("sweep", "run", str(path), "--archive", pg)[0] == 0
    store = PgStore.connect(pg)
    run_ids = store.run_ids()
    store.close()
    view = ViewServer(pg).start()

    def page(path: str) -> str:
        with urllib.request.urlopen(view.url + path, timeout=30) as response:
            assert response.status == 200
            return response.read().decode()

    try:
        front = page("")
        assert all(f'data-run="{run_id}"' in front for run_id in run_ids)
        assert 'href="sweeps/shared"' in front
        assert "turn" in page("?q=alignment")
        transcript = page(f"runs/{run_ids[0]}")
        assert 'class="turn' in transcript and "verdict-box" in transcript
        assert "EventSource" not in transcript  # finished: nothing to follow
        report = page("sweeps/shared")
        assert report.count('href="../runs/') == 2
        events = page(f"runs/{run_ids[0]}/events?after=0")
        assert events.count("event: record") > 3 and "event: end" in events
    finally:
        view.stop()
