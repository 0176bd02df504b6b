"""Sweeps: the matrix and its keys, idempotent reruns, failures and retries, Ctrl-C and kill -9
mid-sweep, endpoint limits across the whole sweep; against loopback servers over real HTTP."""

from __future__ import annotations

import io
import json
import signal
import time
from pathlib import Path

import pytest

from delib.experiments.sweep import SweepSpec, expand, load, participant_order, runs_of
from delib.testing import FakeOpenAIServer
from tests.conftest import delib_process
from tests.test_html_browser import browser  # noqa: F401 (the fixture)
from tests.test_report import check_report_page


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def spec_text(*urls: str, seeds: str = "[1, 2]", extra: str = "") -> str:
    models = "\n".join(f'  - {{base_url: "{u}", model: test-model, label: m{i}}}'
                       for i, u in enumerate(urls))  # fmt: skip
    return f"scenarios: [corrigibility]\nmodels:\n{models}\nseeds: {seeds}\nrounds: 1\n{extra}"


def finished_runs(archive: Path, name: str) -> dict[str, list[dict]]:
    return {k: [m for _, m in v] for k, v in runs_of(archive, name).items()}


# --- the matrix -------------------------------------------------------------------------------
def test_the_issue_shape_expands_to_a_matrix_with_stable_keys():
    spec = SweepSpec.model_validate(
        {
            "scenarios": ["alignment-difficulty", "corrigibility"],
            "models": [
                {"base_url": "http://127.0.0.1:8001/v1", "model": "model-a"},
                {
                    "endpoint": "ollama",
                    "model": "qwen2.5:7b",
                    "personas": {"philosopher": "llama3.2:3b"},
                },
            ],  # fmt: skip
            "seeds": [1, 2],
            "protocols": ["round_robin", "simultaneous"],
            "rounds": 1,
        }
    )
    sweep = expand("s", spec)
    assert len(sweep.cells) == 2 * 2 * 2 * 2
    assert len({c.key for c in sweep.cells}) == 16
    # Adding a model or a seed keeps the keys of the cells that were there.
    more = spec.model_copy(update={"seeds": [1, 2, 3]})
    assert {c.key for c in sweep.cells} < {c.key for c in expand("s", more).cells}
    # A label is a name only; it does not change what runs.
    relabelled = spec.model_copy(
        update={"models": [m.model_copy(update={"label": "A"}) for m in spec.models]}
    )
    assert [c.key for c in expand("s", relabelled).cells] == [c.key for c in sweep.cells]


def test_shuffled_order_is_a_fixed_permutation_per_seed():
    panel = ["a", "b", "c", "d", "e"]
    assert participant_order(panel, 1) == participant_order(panel, 1)
    assert sorted(participant_order(panel, 2)) == panel
    assert len({tuple(participant_order(panel, s)) for s in range(10)}) > 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scenarios: [x]\nmodels: []\n", "models"),
        (
            "scenarios: [x]\nmodels:\n  - {model: m}\n",
            "exactly one of base_url, base_urls (a pool) and endpoint",
        ),
        ("scenarios: [x]\nmodels:\n  - {endpoint: e}\nseeds: [1]\nsneed: 2\n", "sneed"),
        ("scenarios: [x\n", "YAML syntax error"),
        ("scenarios: [x]\nmodels:\n  - {endpoint: embedded}\n", "delib local serve"),
    ],
)
def test_a_bad_sweep_file_is_one_line_naming_file_and_field(cli, text, expected):
    path = write(Path("bad.yaml"), text)
    code, out, err = cli("sweep", "run", str(path), "--archive", "arch")
    assert code == 1
    assert "bad.yaml" in err and expected in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


# --- running ----------------------------------------------------------------------------------
def test_a_sweep_runs_every_cell_once_and_a_rerun_runs_nothing(cli, server):
    path = write(Path("s.yaml"), spec_text(server.base_url))
    code, out, err = cli("sweep", "run", str(path), "--archive", "arch")
    assert code == 0, err
    runs = finished_runs(Path("arch"), "s")
    assert len(runs) == 2 and all(len(v) == 1 for v in runs.values())
    manifest = next(iter(runs.values()))[0]
    assert manifest["sweep"]["name"] == "s" and manifest["stop_reason"] == "completed"
    asked = len(server.chat_requests())
    code, out, err = cli("sweep", "run", str(path), "--archive", "arch")
    assert code == 0 and "2 done" in out
    assert len(server.chat_requests()) == asked  # nothing was asked again
    assert all(len(v) == 1 for v in finished_runs(Path("arch"), "s").values())
    # One more seed in the file: only the new cell runs.
    write(path, spec_text(server.base_url, seeds="[1, 2, 3]"))
    code, out, err = cli("sweep", "run", str(path), "--archive", "arch", "--json")
    assert code == 0 and json.loads(out)["done"] == 3
    assert sum(len(v) for v in finished_runs(Path("arch"), "s").values()) == 3
    code, out, err = cli("sweep", "status", "s", "--archive", "arch", "--json")
    assert [c["state"] for c in json.loads(out)] == ["done"] * 3


def test_stances_are_parsed_stripped_and_recorded(cli, server):
    path = write(Path("s.yaml"), spec_text(server.base_url, seeds="[1]"))
    assert cli("sweep", "run", str(path), "--archive", "arch")[0] == 0
    folder = next(Path("arch").glob("*-corrigibility-*"))
    turns = [json.loads(line) for line in (folder / "turns.jsonl").read_text().splitlines()]
    statements = [t for t in turns if t.get("kind") == "statement"]
    assert statements and all("stance" in t for t in statements)
    for turn in statements:
        assert "STANCE:" not in turn["text"]
        stance = turn["stance"]
        if stance["status"] == "ok":
            assert 1 <= stance["agreement"] <= 7 and stance["line"].startswith("STANCE:")
        else:
            assert stance["agreement"] is None
    assert not [t for t in turns if t.get("role") == "moderator" and "stance" in t]


def test_failed_cells_are_retried_only_when_asked_and_at_most_max_attempts(cli, server):
    dead = "http://127.0.0.1:9/v1"  # nothing listens on the discard port
    path = write(Path("s.yaml"), spec_text(server.base_url, dead, seeds="[1]",
                                           extra="max_attempts: 2\n"))  # fmt: skip
    code, out, err = cli("sweep", "run", str(path), "--archive", "arch")
    assert code == 1
    assert "failed" in err and "127.0.0.1:9" in err and "Traceback" not in err
    code, out, _ = cli("sweep", "status", "s", "--archive", "arch", "--json")
    states = {c["model"]: c for c in json.loads(out)}
    assert states["m0"]["state"] == "done"
    assert states["m1"]["state"] == "failed" and states["m1"]["attempts"] == 1
    cli("sweep", "run", str(path), "--archive", "arch")  # without --retry-failed
    assert (
        json.loads(cli("sweep", "status", "s", "--archive", "arch", "--json")[1])[1]["attempts"]
        == 1
    )
    cli("sweep", "run", str(path), "--archive", "arch", "--retry-failed")
    cli("sweep", "run", str(path), "--archive", "arch", "--retry-failed")  # out of attempts
    cell = json.loads(cli("sweep", "status", "s", "--archive", "arch", "--json")[1])[1]
    assert cell["state"] == "failed" and cell["attempts"] == 2


def test_a_server_failing_mid_run_keeps_the_turns_and_marks_the_cell_failed(cli, server):
    from delib.testing import Fault

    server.fail(*[Fault(500, "boom")] * 20, after=3)
    path = write(Path("s.yaml"), spec_text(server.base_url, seeds="[1]"))
    code, out, err = cli("sweep", "run", str(path), "--archive", "arch")
    assert code == 1
    (runs,) = finished_runs(Path("arch"), "s").values()
    assert runs[0]["stop_reason"] == "error" and runs[0]["turns"] >= 2  # kept, not lost
    kept = runs[0]["turns"]
    server._faults.clear()  # the server recovers
    code, out, err = cli("sweep", "run", str(path), "--archive", "arch", "--retry-failed")
    assert code == 0, err
    (runs,) = finished_runs(Path("arch"), "s").values()
    assert len(runs) == 1 and runs[0]["stop_reason"] == "completed"  # resumed, not redone
    assert runs[0]["resumed"][0]["after_turn"] == kept


def test_endpoint_limits_hold_across_the_whole_sweep(cli, tmp_path):
    config = tmp_path / "config"
    config.mkdir(exist_ok=True)
    with FakeOpenAIServer(delay=0.05) as slow:
        (config / "delib.toml").write_text(
            f'[endpoints.one-at-a-time]\nbase_url = "{slow.base_url}"\nmax_concurrency = 1\n'
        )
        models = "  - {endpoint: one-at-a-time, model: test-model}\n"
        path = write(Path("s.yaml"), f"scenarios: [corrigibility]\nmodels:\n{models}"
                     "seeds: [1, 2, 3, 4]\nrounds: 1\nprotocols: [simultaneous]\n")  # fmt: skip
        code, out, err = cli("sweep", "run", str(path), "--archive", "arch", "--concurrency", "4")
        assert code == 0, err
        assert slow.most_in_flight == 1
    with FakeOpenAIServer(delay=0.05) as wide:
        path = write(Path("w.yaml"), spec_text(wide.base_url, seeds="[1, 2, 3, 4]"))
        assert cli("sweep", "run", str(path), "--archive", "arch", "--concurrency", "4")[0] == 0
        assert 1 < wide.most_in_flight <= 4  # the default max_concurrency of an endpoint


def _turn_lines(archive: Path) -> int:
    return sum(f.read_text().count('"type": "turn"') for f in archive.glob("*/turns.jsonl"))


def _stop_midway(path: Path, archive: Path, sig: signal.Signals, after_turns: int) -> None:
    proc = delib_process("sweep", "run", str(path), "--archive", str(archive),
                         "--concurrency", "4")  # fmt: skip
    deadline = time.monotonic() + 60
    while _turn_lines(archive) < after_turns and time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else -9)


def _finish_and_check(path: Path, archive: Path, cells: int) -> None:
    before = finished_runs(archive, "s")
    unfinished = sum(1 for runs in before.values() if runs[-1]["stop_reason"] != "completed")
    assert unfinished or len(before) < cells  # it really was stopped midway
    rerun = delib_process("sweep", "run", str(path), "--archive", str(archive), "--json")
    out, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert json.loads(out)["done"] == cells
    after = finished_runs(archive, "s")
    assert len(after) == cells
    assert sum(len(runs) for runs in after.values()) == cells  # cut-off runs resumed, not redone
    assert all(runs[0]["stop_reason"] == "completed" for runs in after.values())
    assert len(list(archive.glob("*-*-*/manifest.json"))) == cells
    for folder in archive.glob("*/turns.jsonl"):
        turns = [json.loads(x) for x in folder.read_text().splitlines()]
        indices = [t["index"] for t in turns if t["type"] == "turn"]
        assert sorted(indices) == list(range(len(indices)))  # contiguous, no duplicates


def test_sigkill_midway_then_rerun_gives_exactly_sixteen_runs(tmp_path, browser, cli):  # noqa: F811
    """2 scenarios × 2 models (two servers) × 2 seeds × 2 protocols, killed with SIGKILL; then
    its report in Chromium and its CSV in pandas."""
    with FakeOpenAIServer(delay=0.1) as one, FakeOpenAIServer(delay=0.1) as two:
        path = write(tmp_path / "s.yaml", (
            "scenarios: [alignment-difficulty, corrigibility]\nmodels:\n"
            f'  - {{base_url: "{one.base_url}", model: test-model, label: a}}\n'
            f'  - {{base_url: "{two.base_url}", model: test-model, label: b}}\n'
            "seeds: [1, 2]\nprotocols: [round_robin, simultaneous]\nrounds: 1\n"
        ))  # fmt: skip
        archive = tmp_path / "arch"
        _stop_midway(path, archive, signal.SIGKILL, after_turns=12)
        _finish_and_check(path, archive, 16)
    import pandas as pd

    code, out, err = cli("sweep", "report", "s", "--archive", str(archive), "--format", "csv")
    assert code == 0, err
    frame = pd.read_csv(io.StringIO(out))
    assert len(frame) == 16 and frame["run_id"].is_unique and set(frame["state"]) == {"done"}
    page = tmp_path / "report.html"
    code, out, err = cli("sweep", "report", "s", "--archive", str(archive), "-o", str(page))
    assert code == 0, err
    check_report_page(browser, page, cells=16)


def test_ctrl_c_midway_then_rerun_finishes_each_cell_once(tmp_path):
    with FakeOpenAIServer(delay=0.15) as slow:
        path = write(tmp_path / "s.yaml", spec_text(slow.base_url, seeds="[1, 2, 3, 4]"))
        archive = tmp_path / "arch"
        _stop_midway(path, archive, signal.SIGINT, after_turns=3)
        _finish_and_check(path, archive, 4)


def test_a_sweep_file_is_found_again_by_name(cli, server):
    path = write(Path("named.yaml"), "name: my-sweep\n" + spec_text(server.base_url))
    assert cli("sweep", "run", str(path), "--archive", "arch")[0] == 0
    assert load(path).name == "my-sweep"
    code, out, _ = cli("sweep", "list", "--archive", "arch")
    assert code == 0 and "my-sweep" in out
    code, out, err = cli("sweep", "status", "nope", "--archive", "arch")
    assert code == 1 and "no sweep 'nope'" in err and "my-sweep" in err


def test_the_shipped_example_sweep_is_valid():
    sweep = load(Path(__file__).resolve().parents[1] / "examples" / "sweep-local.yaml")
    assert sweep.name == "local-first" and len(sweep.cells) == 4
    assert sweep.spec.prompt_layout == "compact"


def test_a_pool_pins_each_debate_to_one_healthy_server_and_spreads_them(cli, tmp_path):
    """A model served by two live servers and one that is down: every cell runs, each debate
    on one server throughout, the dead one gets none, and both live ones get some."""
    with FakeOpenAIServer(delay=0.05) as one, FakeOpenAIServer(delay=0.05) as two:
        dead = "http://127.0.0.1:9/v1"  # the discard port: nothing answers
        path = write(tmp_path / "p.yaml", (
            "name: pooled\nscenarios: [alignment-difficulty]\nmodels:\n"
            f'  - {{base_urls: ["{one.base_url}", "{dead}", "{two.base_url}"], '
            "model: test-model}\nseeds: [1, 2, 3, 4, 5, 6, 7, 8]\nrounds: 1\n"
        ))  # fmt: skip
        code, out, err = cli("sweep", "run", str(path), "--archive", "arch", "--concurrency", "4")
        assert code == 0, err
        runs = [m for ms in finished_runs(Path("arch"), "pooled").values() for m in ms]
        assert len(runs) == 8 and all(m["stop_reason"] == "completed" for m in runs)
        used = [m["request"]["overrides"]["base_url"] for m in runs]
        assert set(used) == {one.base_url, two.base_url}  # both live ones, never the dead one
        for manifest in runs:  # pinned: every speaker of a debate on the same server
            assert len({e["base_url"] for e in manifest["endpoints"]}) == 1
        # Every chat request went to the server its debate was pinned to.
        chats = [len(s.chat_requests()) for s in (one, two)]
        turns = [sum(m["turns"] for m, u in zip(runs, used, strict=True) if u == s.base_url)
                 for s in (one, two)]  # fmt: skip
        assert all(c >= t for c, t in zip(chats, turns, strict=True))


def test_a_pool_with_no_live_server_fails_each_cell_in_one_line(cli, tmp_path):
    path = write(tmp_path / "p.yaml", (
        "name: dead\nscenarios: [alignment-difficulty]\nmodels:\n"
        '  - {base_urls: ["http://127.0.0.1:9/v1"], model: test-model}\nrounds: 1\n'
    ))  # fmt: skip
    code, out, err = cli("sweep", "run", str(path), "--archive", "arch")
    assert code == 1
    assert "no server of the pool answers GET /models" in err and "Traceback" not in err
