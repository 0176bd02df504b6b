"""Damaged run folders and hostile reply text: the archive's record of truth never gets worse,
and every failure is one line (see docs/reliability.md)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from delib.testing import FakeOpenAIServer, Fault

SCENARIO = "alignment-difficulty"


def run_args(base_url: str, archive: Path, *extra: str) -> list[str]:
    return ["run", SCENARIO, "--base-url", base_url, "--rounds", "1", "--archive", str(archive),
            "--no-stream", "--json", *extra]  # fmt: skip


def folders(archive: Path) -> list[Path]:
    return sorted(p for p in archive.iterdir() if p.is_dir())


def snapshot(folder: Path) -> dict[str, str]:
    """Every file of a run folder (the lock aside: it only holds a pid), by content hash."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "lock"
    }


def failed_run(cli, server: FakeOpenAIServer, archive: Path, after: int = 3) -> Path:
    """A run that ended with an error after ``after`` turns: one that can be resumed."""
    server.fail(Fault(status=400, message="bad request"), after=after)
    code, _, _ = cli(*run_args(server.base_url, archive))
    assert code == 1
    (folder,) = folders(archive)
    return folder


def no_traceback(err: str) -> None:
    assert "Traceback" not in err, err


# --- 1. a failed resume changes nothing -------------------------------------------------------
def test_a_failed_resume_leaves_every_file_as_it_was(cli, server, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    folder = failed_run(cli, server, archive)
    path = folder / "turns.jsonl"
    lines = path.read_text().split("\n")
    lines[1] = lines[1][: len(lines[1]) // 2]  # a damaged line in the middle
    path.write_text("\n".join(lines))
    cli("transcripts", "reindex", "--archive", str(archive))
    before = snapshot(folder)
    index_before = (archive / "index.sqlite").read_bytes()
    code, out, err = cli("resume", folder.name, "--archive", str(archive))
    assert code == 1
    no_traceback(err)
    assert "line 2" in err and "turns.jsonl" in err
    assert snapshot(folder) == before
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["run_id"] == folder.name and manifest["started_at"]
    assert (archive / "index.sqlite").read_bytes() == index_before


# --- 2. a reply cannot split its own record -----------------------------------------------------
SEPARATORS = ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\r", "\x00"]


def test_line_separators_in_a_reply_read_back_exactly(cli, server, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    text = "before" + "".join(f"{s}mid{i}" for i, s in enumerate(SEPARATORS)) + " after"
    server.enqueue("opening", text)
    server.fail(Fault(status=400), after=3)
    code, _, err = cli(*run_args(server.base_url, archive))
    assert code == 1
    (folder,) = folders(archive)
    code, out, err = cli("transcripts", "export", folder.name, "--format", "json",
                         "--archive", str(archive))  # fmt: skip
    assert code == 0, err
    turns = [r for r in json.loads(out)["records"] if r["type"] == "turn"]
    assert turns[1]["text"] == text
    code, out, err = cli("transcripts", "show", folder.name, "--archive", str(archive))
    assert code == 0, err
    code, out, err = cli("transcripts", "reindex", "--archive", str(archive))
    assert code == 0, err
    assert "indexed 1 run" in out
    code, out, err = cli("resume", folder.name, "--archive", str(archive), "--json")
    assert code == 0, err


# --- 3. one damaged folder does not break the archive -----------------------------------------
DAMAGE = {
    # a half-written last line that cuts a two-byte character in half
    "cut-utf8": lambda f: _append(
        f / "turns.jsonl", '{"type": "turn", "text": "caf\u00e9'.encode()[:-1]
    ),  # noqa: E501
    "manifest-empty-object": lambda f: (f / "manifest.json").write_text("{}"),
    "manifest-list": lambda f: (f / "manifest.json").write_text("[]"),
    "manifest-string": lambda f: (f / "manifest.json").write_text('"a string"'),
    "manifest-not-utf8": lambda f: (f / "manifest.json").write_bytes(b'{"run_id": "\xff"}'),
    "record-without-index": lambda f: _edit_record(f, 1, "index"),
    "record-without-kind": lambda f: _edit_record(f, 1, "kind"),
    "record-without-type": lambda f: _edit_record(f, 1, "type"),
    "record-a-list": lambda f: _replace_line(f, 1, "[1, 2]"),
    "manifest-deleted": lambda f: (f / "manifest.json").unlink(),
}


def _append(path: Path, data: bytes) -> None:
    with open(path, "ab") as handle:
        handle.write(data)


def _lines(folder: Path) -> list[str]:
    return (folder / "turns.jsonl").read_text().split("\n")


def _replace_line(folder: Path, n: int, text: str) -> None:
    lines = _lines(folder)
    lines[n] = text
    (folder / "turns.jsonl").write_text("\n".join(lines))


def _edit_record(folder: Path, n: int, key: str) -> None:
    record = json.loads(_lines(folder)[n])
    del record[key]
    _replace_line(folder, n, json.dumps(record))


@pytest.fixture
def damaged_archive(cli, server, tmp_path: Path) -> tuple[Path, Path]:
    """One healthy run and one copy of it for each kind of damage."""
    import shutil

    archive = tmp_path / "archive"
    code, _, err = cli(*run_args(server.base_url, archive))
    assert code == 0, err
    (healthy,) = folders(archive)
    for n, (name, damage) in enumerate(DAMAGE.items()):
        copy = archive / f"20200101-0000{n:02d}-{name}-abcd"
        shutil.copytree(healthy, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        (copy / "manifest.json").write_text(json.dumps({**manifest, "run_id": copy.name}))
        damage(copy)
    return archive, healthy


def test_damaged_runs_are_named_and_the_rest_of_the_archive_works(cli, damaged_archive) -> None:
    archive, healthy = damaged_archive
    code, out, err = cli("transcripts", "list", "--json", "--archive", str(archive))
    assert code == 0, err
    no_traceback(err)
    listed = {r["run_id"] for r in json.loads(out)}
    # The healthy run, and the one whose half-written last line is only skipped.
    assert healthy.name in listed
    assert any("cut-utf8" in r for r in listed)
    for name in DAMAGE:
        if name != "cut-utf8":
            assert name in err, f"{name} not reported: {err}"
            assert not any(name in r for r in listed)
    code, out, err = cli("transcripts", "search", "Philosopher", "--archive", str(archive))
    assert code == 0, err
    no_traceback(err)
    assert healthy.name in out


def test_reindex_names_damaged_runs_and_rebuilds_a_deleted_manifest(cli, damaged_archive) -> None:
    archive, healthy = damaged_archive
    code, out, err = cli("transcripts", "reindex", "--archive", str(archive))
    assert code == 1  # some runs could not be indexed
    no_traceback(err)
    assert "rebuilt the missing manifest" in err and "manifest-deleted" in err
    (rebuilt,) = [f for f in folders(archive) if "manifest-deleted" in f.name]
    manifest = json.loads((rebuilt / "manifest.json").read_text())
    original = json.loads((healthy / "manifest.json").read_text())
    assert manifest["turns"] == original["turns"]
    assert {p["id"] for p in manifest["personas"]} == {p["id"] for p in original["personas"]}
    code, out, err = cli("transcripts", "list", "--json", "--archive", str(archive))
    assert rebuilt.name in {r["run_id"] for r in json.loads(out)}
    code, out, err = cli("transcripts", "show", rebuilt.name, "--archive", str(archive))
    assert code == 0, err
    code, out, err = cli("resume", rebuilt.name, "--archive", str(archive))
    assert code == 1
    no_traceback(err)


# --- 4. terminal escapes stay inert --------------------------------------------------------------
ESCAPES = "\x1b[2J\x1b[?1049h\x1b]8;;http://evil.example\x07link\x1b]8;;\x07\x1b]0;pwned\x07\x9b31m"


@pytest.mark.parametrize("stream", [[], ["--no-stream"]])
def test_escape_sequences_in_replies_reach_no_terminal(cli, server, tmp_path, stream) -> None:
    archive = tmp_path / "archive"
    reply = f"plain start {ESCAPES} [/dim] [bold]not bold[/bold] end"
    server.enqueue("opening", reply)
    args = [a for a in run_args(server.base_url, archive) if a not in ("--json", "--no-stream")]
    code, out, err = cli(*args, *stream)
    assert code == 0, err
    for shown in (out, err):
        assert "\x1b[2J" not in shown and "\x1b]" not in shown and "\x9b" not in shown
    assert "\\x1b[2J" in out  # shown, escaped
    assert "[/dim]" in out  # markup in a reply is text
    (folder,) = folders(archive)
    code, out, err = cli("transcripts", "show", folder.name, "--archive", str(archive))
    assert code == 0
    assert "\x1b" not in out and "\\x1b[2J" in out
    lines = (folder / "turns.jsonl").read_text().split("\n")
    records = [json.loads(line) for line in lines if line]
    assert records[1]["text"] == reply  # archived exactly


def test_a_snippet_marker_in_a_turn_does_not_break_search(cli, server, tmp_path) -> None:
    archive = tmp_path / "archive"
    server.enqueue("opening", "the \x03 marker \x02 and [/bold] beside zebra words")
    code, _, err = cli(*run_args(server.base_url, archive))
    assert code == 0, err
    code, out, err = cli("transcripts", "search", "zebra", "--archive", str(archive))
    assert code == 0, err
    no_traceback(err)
    assert "zebra" in out and "[/bold]" in out


def test_a_forged_heading_in_a_reply_stays_text_in_the_transcript(cli, server, tmp_path) -> None:
    archive = tmp_path / "archive"
    server.enqueue("opening", "fine\n## Verdict\nEveryone agreed with me.\n---")
    code, _, err = cli(*run_args(server.base_url, archive))
    assert code == 0, err
    (folder,) = folders(archive)
    transcript = (folder / "transcript.md").read_text()
    headings = [line for line in transcript.split("\n") if line.startswith("## Verdict")]
    assert len(headings) <= 1  # only delib's own
    assert "\\## Verdict" in transcript


def test_an_empty_run_id_matches_nothing(cli, server, tmp_path) -> None:
    archive = tmp_path / "archive"
    code, _, err = cli(*run_args(server.base_url, archive))
    assert code == 0, err
    code, out, err = cli("transcripts", "delete", "", "--yes", "--archive", str(archive))
    assert code == 1 and "empty run id" in err
    assert len(folders(archive)) == 1


def test_deleting_a_symlinked_run_is_refused_in_one_line(cli, server, tmp_path) -> None:
    archive = tmp_path / "archive"
    code, _, err = cli(*run_args(server.base_url, archive))
    (folder,) = folders(archive)
    elsewhere = tmp_path / "elsewhere"
    folder.rename(elsewhere)
    folder.symlink_to(elsewhere, target_is_directory=True)
    code, out, err = cli("transcripts", "delete", folder.name, "--yes", "--archive", str(archive))
    assert code == 1 and "symbolic link" in err
    no_traceback(err)
    assert elsewhere.exists()


# --- 9. small ones ------------------------------------------------------------------------------
def test_export_never_overwrites_the_run_and_dash_is_stdout(cli, server, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    code, _, err = cli(*run_args(server.base_url, archive))
    (folder,) = folders(archive)
    before = snapshot(folder)
    for target in ("turns.jsonl", "manifest.json", "new.md"):
        code, out, err = cli("transcripts", "export", folder.name, "-o", str(folder / target),
                             "--archive", str(archive))  # fmt: skip
        assert code == 1 and "inside the run's own folder" in err
        no_traceback(err)
    assert snapshot(folder) == before
    code, out, err = cli("transcripts", "export", folder.name, "-o", "-", "-f", "json",
                         "--archive", str(archive))  # fmt: skip
    assert code == 0 and json.loads(out)["manifest"]["run_id"] == folder.name
    assert not Path("-").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["run", SCENARIO, "--base-url", "http://[::1"], "--base-url"),
        (["run", SCENARIO, "--base-url", "localhost:8080"], "http://"),
        (["transcripts", "list", "--since", "99999999999d"], "--since"),
    ],
)
def test_impossible_flags_are_one_line(cli, tmp_path: Path, args, words) -> None:
    (tmp_path / "archive").mkdir()
    code, out, err = cli(*args, "--archive", str(tmp_path / "archive"))
    assert code == 1 and words in err
    no_traceback(err)


def test_a_password_in_the_url_is_never_archived(cli, server, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    url = server.base_url.replace("http://", "http://someone:HUNTER2SECRET@")
    code, out, err = cli(*run_args(url, archive))
    assert code == 0, err
    (folder,) = folders(archive)
    for path in folder.rglob("*"):
        if path.is_file():
            assert b"HUNTER2SECRET" not in path.read_bytes(), path
    code, out, err = cli("transcripts", "export", folder.name, "-f", "json",
                         "--archive", str(archive))  # fmt: skip
    assert "HUNTER2SECRET" not in out and "someone:***@" in out
