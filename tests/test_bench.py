"""The benchmark command runs, in a tiny configuration (its figures are not checked: they
are measurements, not pass/fail)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_runs_in_a_tiny_configuration(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DELIB_CONFIG_DIR", None)
    done = subprocess.run(
        [sys.executable, "-m", "bench.run_all", "--tiny", "-o", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    for heading in ("Orchestration overhead", "Parallel rounds", "Memory and scale", "cpu:"):
        assert heading in text
    if os.environ.get("DELIB_REQUIRE_EMBEDDED"):
        assert "Prompt layout for prefix caching" in text and "Bounded context" in text
    if os.environ.get("DELIB_REQUIRE_POSTGRES"):  # measured on Ray with PostgreSQL, not skipped
        assert "## 9. Scale-out: Ray and PostgreSQL" in text
        assert "## 9. Scale-out: Ray and PostgreSQL\n\nNot measured" not in text
    # Every table has rows of numbers.
    rows = [line for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) >= 5
    assert (
        not (ROOT / "docs" / "benchmarks.md").exists()
        or "Tiny" not in (ROOT / "docs" / "benchmarks.md").read_text()
    )


@pytest.mark.parametrize(
    "args",
    [("bench.long_debate", "--repeats", "1", "2", "6"), ("bench.sweep_status", "30")],
    ids=["long", "sweep"],
)
def test_the_scale_benchmarks_run_small(tmp_path: Path, args: tuple[str, ...]) -> None:
    """The long-debate and sweep-status benchmarks, at a size that takes seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DELIB_CONFIG_DIR", None)
    done = subprocess.run([sys.executable, "-m", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout)
    if args[0] == "bench.long_debate":
        assert [r["stop_reason"] for r in found] == ["completed", "completed"]
        assert found[1]["turns"] > found[0]["turns"]
    else:
        assert found["runs"] == 30 and found["index_s"] > 0
