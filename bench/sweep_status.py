"""``delib sweep status`` on an archive of many runs (a benchmark, not a test): from the index
against reading every manifest, side by side in one run.

    python -m bench.sweep_status [RUNS]      # default 1000

Builds a folder archive holding one sweep of RUNS cells (1 scenario × 1 model × RUNS seeds),
each with a finished run: copies of one real debate's manifest and records, tagged with their
cell and imported like ``archive copy`` does, so the index knows them. Then times, each a few
times over with the index already in step (what every call after the first finds), the whole
``delib sweep status`` command in-process: as it is now (``status(full=False)``: the index's
rows), with the manifests of the sweep's runs (``full=True``, what a report needs), and as it
was (every manifest in the archive read to find the sweep's). Prints JSON: median seconds.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import fake_server
from delib.archive.store import open_store, sweep_tag
from delib.debate.prepare import RunRequest
from delib.debate.runner import run_debate
from delib.experiments import sweep as sweeps
from delib.models.config import Overrides

REPEATS = 5


def build(archive: Path, runs: int) -> sweeps.Sweep:
    with fake_server() as url:
        request = RunRequest(scenario="alignment-difficulty", rounds=1, archive=archive / "seed",
                             overrides=Overrides(base_url=url, model="test-model"))  # fmt: skip
        result = asyncio.run(run_debate(request))
    manifest, records = result.manifest, result.turns + result.events
    spec = sweeps.SweepSpec(name="bench", scenarios=["alignment-difficulty"],
                            models=[sweeps.ModelSpec(base_url="http://127.0.0.1:9/v1")],
                            seeds=list(range(runs)))  # fmt: skip
    sweep = sweeps.expand("bench", spec)
    store = open_store(archive / "runs")
    store.path.mkdir(parents=True)
    for n, cell in enumerate(sweep.cells):
        tag = {"name": sweep.name, "cell": cell.key, "attempt": 1, **cell.labels()}
        copy = {**manifest, "run_id": f"{manifest['run_id']}-{n:05d}", "sweep": tag}
        store.import_run(copy, records)
    sweeps.save_spec(store, sweep)
    return sweep


def old_status(store, sweep: sweeps.Sweep) -> int:
    """How the sweep's runs were found before: every manifest read, the tag compared."""
    found = 0
    for _run_id, manifest in store.manifests():
        tag = sweep_tag(manifest)
        found += bool(tag and tag.get("name") == sweep.name)
    return found


def timed(call) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times), 4)


def main(runs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp)
        sweep = build(archive, runs)
        store = open_store(archive / "runs")
        store.listing()  # the index in step with the folders
        states = sweeps.status(store, sweep, full=False)
        assert sum(s.state == "done" for s in states) == runs, states[:3]
        assert [s.state for s in sweeps.status(store, sweep, full=True)] == [
            s.state for s in states
        ]
        index = timed(lambda: sweeps.status(store, sweep, full=False))
        manifests = timed(lambda: sweeps.status(store, sweep, full=True))
        every = timed(lambda: old_status(store, sweep))
    return {"runs": runs, "index_s": index, "sweep_manifests_s": manifests,
            "every_manifest_s": every, "speedup_vs_every": round(every / index, 1)}  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)))
