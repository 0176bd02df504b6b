"""Sweeps: one YAML file names scenarios × models × seeds × protocols; each cell of that matrix
is an ordinary run in the archive, tagged with the sweep's name and the cell's key.

A cell's key is a hash of its resolved settings, so editing the file (another model, another
seed) keeps the keys of the cells that were already there: a rerun runs only what is missing,
resumes what was cut off, and (with ``--retry-failed``) tries failed cells again, each at most
``max_attempts`` times. The state of every cell is read from the archive itself (run manifests
plus the sweep's ledger, ``<archive>/sweeps/<name>/attempts.jsonl``), never from memory.

    scenarios: [alignment-difficulty, corrigibility]
    models:
      - {base_url: "http://127.0.0.1:8001/v1", model: model-a}
      - {endpoint: ollama, model: "qwen2.5:7b", personas: {philosopher: "llama3.2:3b"}}
    seeds: [1, 2]
    protocols: [round_robin, simultaneous]
    rounds: 1
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from delib.archive.run_folder import FINISHED
from delib.archive.store import open_store, sweep_tag
from delib.debate.prepare import RunRequest
from delib.detect.loops import LoopMode
from delib.errors import InputError
from delib.library.files import load_file
from delib.library.personas import ID_PATTERN
from delib.library.scenarios import Protocol
from delib.models.config import EMBEDDED_ENDPOINT, Overrides
from delib.models.urls import redact_url
from delib.records import now

DEFAULT_MAX_ATTEMPTS = 3

CellState = Literal["done", "running", "failed", "interrupted", "missing"]


class ModelSpec(BaseModel):
    """Which server and model the panel speaks through (all personas, or per persona)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_url: str | None = Field(default=None, min_length=1)
    base_urls: list[str] | None = Field(
        default=None, min_length=1, description="a pool of servers of one model (delib.models.pool)"
    )
    endpoint: str | None = Field(default=None, min_length=1)
    model: str | None = Field(default=None, min_length=1)
    personas: dict[str, str] = Field(default_factory=dict, description="persona id -> model")
    api_key_env: str | None = None
    label: str | None = Field(default=None, min_length=1, max_length=80)

    @model_validator(mode="after")
    def _one_server(self) -> ModelSpec:
        given = [self.base_url, self.base_urls, self.endpoint]
        if sum(value is not None for value in given) != 1:
            raise ValueError("give exactly one of base_url, base_urls (a pool) and endpoint")
        if self.base_urls is not None and not self.model:
            raise ValueError("a pool of base_urls serves one model: give its model too")
        if self.endpoint == EMBEDDED_ENDPOINT:
            # Each run would start its own llama.cpp server: several at once on a laptop.
            raise ValueError(
                "a sweep cannot start the embedded model for every cell; run "
                "'delib local serve' once and give its base_url"
            )
        return self

    @property
    def name(self) -> str:
        """How reports name this model."""
        return self.label or self.model or self.endpoint or redact_url(self.base_url) or "?"

    @property
    def pool(self) -> list[str]:
        """The servers of a pool (empty for one server or a named endpoint)."""
        return list(self.base_urls or [])

    def endpoint_options(self) -> dict:
        """The run options that pick this server and model (``Overrides`` fields)."""
        return {
            "base_url": self.base_url,
            "endpoint": self.endpoint,
            "model": self.model,
            "api_key_env": self.api_key_env,
            "persona_models": dict(self.personas),
        }

    def settings(self) -> dict:
        """What identifies it in a cell's key (the label is only a name)."""
        return self.model_dump(exclude={"label"}, exclude_none=True, exclude_defaults=True)


class SweepSpec(BaseModel):
    """A sweep file."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, pattern=ID_PATTERN, max_length=64)
    scenarios: list[str] = Field(min_length=1)
    models: list[ModelSpec] = Field(min_length=1)
    seeds: list[int] = Field(default_factory=lambda: [1], min_length=1)
    protocols: list[Protocol | None] = Field(default_factory=lambda: [None], min_length=1)
    rounds: int | None = Field(default=None, ge=1, le=200)
    order: Literal["listed", "shuffle"] = "listed"
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    max_tokens: int | None = Field(default=None, ge=1)
    token_budget: int | None = Field(default=None, ge=1)
    loops: LoopMode | None = None
    prompt_layout: Literal["persona_first", "shared_first", "compact"] | None = None
    stream: bool = False
    max_attempts: int = Field(default=DEFAULT_MAX_ATTEMPTS, ge=1, le=100)
    concurrency: int = Field(default=4, ge=1, le=1024, description="debates at once")
    prices: dict[str, dict[str, float]] = Field(
        default_factory=dict,
        description="model -> {prompt, completion}: dollars per million tokens",
    )


@dataclass(frozen=True)
class Cell:
    """One run of the matrix."""

    key: str
    scenario: str
    model: ModelSpec
    seed: int
    protocol: Protocol | None
    settings: dict

    def labels(self) -> dict:
        return {
            "scenario": self.scenario,
            "model": self.model.name,
            "seed": self.seed,
            "protocol": self.protocol.value if self.protocol else None,
        }


@dataclass
class Sweep:
    name: str
    spec: SweepSpec
    cells: list[Cell]
    source: str  # the file it was read from


def cell_key(settings: dict) -> str:
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def expand(name: str, spec: SweepSpec, source: str = "(given in code)") -> Sweep:
    """The matrix, in file order: scenario, then model, then protocol, then seed."""
    shared = spec.model_dump(
        include={
            "rounds",
            "order",
            "temperature",
            "max_tokens",
            "token_budget",
            "loops",
            "prompt_layout",
        },  # fmt: skip
        mode="json",
        exclude_none=True,
    )
    cells = []
    seen: set[str] = set()
    for scenario, model, protocol, seed in itertools.product(
        spec.scenarios, spec.models, spec.protocols, spec.seeds
    ):
        settings = {
            "scenario": scenario,
            "model": model.settings(),
            "protocol": protocol.value if protocol else None,
            "seed": seed,
            **shared,
        }
        key = cell_key(settings)
        if key in seen:
            continue  # the same cell listed twice runs once
        seen.add(key)
        cells.append(Cell(key, scenario, model, seed, protocol, settings))
    return Sweep(name=name, spec=spec, cells=cells, source=source)


def load(path: Path) -> Sweep:
    """Read, validate and expand a sweep file; errors name the file and field."""
    spec = load_file(path, SweepSpec).item
    return expand(spec.name or path.stem, spec, str(path))


def participant_order(participants: list[str], seed: int) -> list[str]:
    """Speaker order for ``order: shuffle``: a fixed permutation per seed."""
    shuffled = list(participants)
    random.Random(f"delib-order-{seed}").shuffle(shuffled)
    return shuffled


def request_for(
    sweep: Sweep, cell: Cell, archive: Any, attempt: int, participants: list[str] | None = None
) -> RunRequest:
    """The run request of one cell (``participants``: the scenario's, to shuffle)."""
    spec = sweep.spec
    order = participant_order(participants, cell.seed) if participants else None
    return RunRequest(
        scenario=cell.scenario,
        overrides=Overrides(
            **cell.model.endpoint_options(),
            temperature=spec.temperature,
            max_tokens=spec.max_tokens,
        ),
        rounds=spec.rounds,
        protocol=cell.protocol,
        token_budget=spec.token_budget,
        seed=cell.seed,
        stream=spec.stream,
        archive=archive,
        loops=spec.loops,
        prompt_layout=spec.prompt_layout,
        participant_order=order,
        sweep={"name": sweep.name, "cell": cell.key, "attempt": attempt, **cell.labels()},
    )


# --- the state of a sweep, read from the archive ----------------------------------------------
# ``archive`` below is anything ``store.open_store`` takes: a folder, a postgresql:// address, or
# an open store (a caller that asks several questions passes the store, so one connection
# serves them all).


@dataclass
class CellStatus:
    cell_key: str
    labels: dict
    state: CellState
    attempts: int = 0
    runs: list[dict] = field(default_factory=list)  # manifests (or index rows), oldest first
    error: str | None = None
    run_ids: list[str] = field(default_factory=list)  # the runs' ids, in the same order

    @property
    def latest(self) -> dict | None:
        return self.runs[-1] if self.runs else None

    @property
    def latest_run(self) -> str | None:
        return self.run_ids[-1] if self.run_ids else None


def ledger(archive: Any, name: str, cell: str | None = None) -> list[dict]:
    """The sweep's attempts (or one cell's), oldest first."""
    return open_store(archive).ledger(name, cell)


def note(archive: Any, name: str, **entry: object) -> None:
    """Append to the sweep's ledger."""
    open_store(archive).note(name, entry)


def save_spec(archive: Any, sweep: Sweep) -> None:
    """The sweep's cells as last run, so ``status`` and ``report`` work by name alone."""
    data = {
        "name": sweep.name,
        "source": sweep.source,
        "spec": sweep.spec.model_dump(mode="json"),
        "saved_at": now(),
    }
    open_store(archive).save_sweep(sweep.name, data)


def saved(archive: Any, name: str) -> Sweep:
    """A sweep by name, from the archive (as its last ``sweep run`` left it)."""
    store = open_store(archive)
    data = store.sweep_record(name)
    if data is None:
        known = ", ".join(store.sweep_names()) or "none"
        raise InputError(
            f"no sweep '{name}' in {store.location} (known: {known}); give the sweep file instead"
        )
    try:
        spec = SweepSpec.model_validate(data["spec"])
    except (KeyError, TypeError, ValidationError) as exc:
        raise InputError(f"{store.location}: unreadable record of sweep '{name}' ({exc})") from None
    return expand(name, spec, data.get("source") or f"{store.location} (sweep {name})")


def sweep_names(archive: Any) -> list[str]:
    return open_store(archive).sweep_names()


def names_a_file(wanted: str) -> bool:
    path = Path(wanted)
    return path.suffix in (".yaml", ".yml") or path.is_file()


def find(archive: Any, wanted: str) -> Sweep:
    """A sweep file's path, or the name of a sweep already run in this archive."""
    return load(Path(wanted)) if names_a_file(wanted) else saved(archive, wanted)


def runs_of(
    archive: Any, name: str, cell: str | None = None, full: bool = True
) -> dict[str, list[tuple[str, dict]]]:
    """The archive's runs of this sweep (or of one of its cells) by cell key, as (run id,
    manifest), oldest first; with ``full`` false, the index's row of each run (run id,
    started, stop reason, error) stands for its manifest, and no manifest is read."""
    store = open_store(archive)
    found: dict[str, list[tuple[str, dict]]] = {}
    if not store.exists():
        return found
    if not full:
        for row in store.sweep_runs(name, cell):
            found.setdefault(row["cell"], []).append((row["run_id"], row))
        return found
    for run_id, manifest in store.sweep_manifests(name, cell):
        tag = sweep_tag(manifest)
        if tag is not None:
            found.setdefault(tag["cell"], []).append((run_id, manifest))
    for runs in found.values():
        runs.sort(key=lambda item: item[1].get("started_at") or "")
    return found


def status(
    archive: Any, sweep: Sweep, only: Cell | None = None, full: bool = True
) -> list[CellStatus]:
    """Each cell's state (or ``only`` that cell's, read afresh): done, running, failed,
    interrupted or missing. ``full`` false: from the index (``runs_of``), each cell's
    ``runs`` the index's rows, not manifests (what ``sweep status`` and ``sweep list`` need)."""
    store = open_store(archive)
    key = only.key if only else None
    runs = runs_of(store, sweep.name, key, full)
    starts: dict[str, int] = {}
    last_error: dict[str, str | None] = {}
    for entry in ledger(store, sweep.name, key):
        if entry.get("outcome") == "started":
            starts[entry["cell"]] = starts.get(entry["cell"], 0) + 1
        elif entry.get("outcome") in ("failed", "finished"):
            last_error[entry["cell"]] = entry.get("error")
    result = []
    for cell in [only] if only else sweep.cells:
        mine = runs.get(cell.key, [])
        attempts = max(starts.get(cell.key, 0), len(mine))
        state: CellState
        error = last_error.get(cell.key)
        if mine:
            run_id, manifest = mine[-1]
            stop = manifest.get("stop_reason")
            if stop in FINISHED:
                state, error = "done", None
            elif store.running(run_id):
                state = "running"
            elif stop == "error":
                state, error = "failed", manifest.get("error") or error
            else:
                state = "interrupted"
        else:
            state = "failed" if attempts else "missing"
        result.append(
            CellStatus(
                cell.key,
                cell.labels(),
                state,
                attempts,
                [m for _, m in mine],
                error,
                [r for r, _ in mine],
            )  # fmt: skip
        )
    return result
