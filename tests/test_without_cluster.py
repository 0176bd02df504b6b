"""Without the cluster extra (no psycopg, no LangGraph PostgreSQL saver, no Ray) everything on
one machine works as before, and asking for a database or Ray is one line saying what to
install. The missing packages are made unimportable in a real delib process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from delib.testing import FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[1]
BLOCK = """
import sys
BLOCKED = ("psycopg", "psycopg_pool", "ray", "langgraph.checkpoint.postgres")
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name in BLOCKED or name.startswith(tuple(b + "." for b in BLOCKED)):
            raise ImportError(f"No module named {name!r} (blocked by the test)")
sys.meta_path.insert(0, Blocker())
sys.argv = ["delib", *sys.argv[1:]]
from delib.cli import main
main()
"""


def delib(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DELIB_ARCHIVE", None)
    return subprocess.run([sys.executable, "-c", BLOCK, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip


def test_one_machine_needs_no_cluster_packages(tmp_path):
    with FakeOpenAIServer() as server:
        done = delib("run", "corrigibility", "--base-url", server.base_url, "--rounds", "1",
                     "--json", cwd=tmp_path)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["stop_reason"] == "completed"
        listed = delib("transcripts", "list", "--json", cwd=tmp_path)
        assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 1
        (tmp_path / "s.yaml").write_text(
            f'scenarios: [corrigibility]\nmodels:\n  - {{base_url: "{server.base_url}", '
            "model: test-model}\nrounds: 1\n"
        )
        swept = delib("sweep", "run", "s.yaml", cwd=tmp_path)
        assert swept.returncode == 0, swept.stderr

        database = delib("transcripts", "list", "--archive", "postgresql://x@127.0.0.1/db",
                         cwd=tmp_path)  # fmt: skip
        assert database.returncode == 1 and "Traceback" not in database.stderr
        assert "pip install 'delib[cluster]'" in database.stderr
        on_ray = delib("sweep", "run", "s.yaml", "--engine", "ray", cwd=tmp_path)
        assert on_ray.returncode == 1 and "Traceback" not in on_ray.stderr
        assert "--engine ray needs a PostgreSQL archive" in on_ray.stderr
