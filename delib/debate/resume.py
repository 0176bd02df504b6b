"""Going on with a run that died: which request to run again, and where to pick up.

The checkpoint holds counters (turns and events the graph had finished); ``turns.jsonl`` holds
the records, and is always at least as far along (nodes write a record before they return).
``reconcile`` makes the two agree before the graph goes on:

- records up to the checkpoint are kept;
- turns finished after it are handed back to the graph, which reuses them when it comes to
  speak them again (no second model call);
- events recorded after it are dropped: the steps that wrote them run again;
- a turn cut off mid-reply (an in-flight file left behind) is discarded and recorded;
- a half-written last line is cut off and recorded.

Nothing is written until every check has passed, so a resume that fails leaves the run folder
as it was.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from delib.archive.folder_store import FolderStore
from delib.archive.run_folder import FINISHED
from delib.archive.store import open_store
from delib.debate.prepare import RunRequest, request_from_dict
from delib.errors import InputError
from delib.models.config import Overrides
from delib.records import Event, Record, Turn, make_event

# Events written by resume itself: not counted by the graph, kept across resumes.
RESUME_EVENTS = ("resumed", "turn_discarded", "truncated_line_dropped")
# Request fields that choose the endpoint; a resume may change them.
ENDPOINT_FIELDS = ("base_url", "endpoint", "api_key_env", "gguf", "model", "system_message")


def resume_request(
    archive: Any, wanted: str, changes: dict[str, Any] | None = None
) -> tuple[RunRequest, Path | str]:
    """The killed run's own request, with a new endpoint if ``changes`` gives one, and where
    the run is: its folder, or its id in a database archive. Refuses finished, running and
    unresumable runs."""
    store = open_store(archive)
    try:
        run_id = store.find(wanted)
        manifest = store.manifest(run_id)
        stop = manifest.get("stop_reason")
        if stop in FINISHED:
            raise InputError(
                f"run {run_id} finished (stop reason: {stop}); only a run that was killed, "
                "interrupted or failed can be resumed"
            )
        if store.running(run_id):
            raise InputError(f"run {run_id} is still running in another process")
        # A new run asks for its opening before its checkpoints are first written: a run
        # killed then has none, and nothing finished, and starts again from the beginning.
        if not manifest.get("request") or not (
            store.has_checkpoints(run_id) or not _finished_turns(store, run_id)
        ):
            raise InputError(
                f"run {run_id} has no checkpoints (it was made by an older delib); "
                "it cannot be resumed"
            )
        where: Path | str = store.folder(run_id) if isinstance(store, FolderStore) else run_id
        location = store
        if store is not archive:
            location = store.path if isinstance(store, FolderStore) else store.dsn
    finally:
        if store is not archive:
            store.close()
    request = request_from_dict(manifest["request"], location)
    changes = {k: v for k, v in (changes or {}).items() if v not in (None, {}, [])}
    chosen = {k: v for k, v in changes.items() if k in ENDPOINT_FIELDS}
    if chosen:
        current = dataclasses.asdict(request.overrides)
        if any(k in chosen for k in ("base_url", "endpoint", "gguf")):
            # A new endpoint: nothing of the old one's choice carries over.
            for key in ENDPOINT_FIELDS:
                current[key] = None
            current["persona_models"] = {}
        current.update(chosen)
        request.overrides = Overrides(**current)
    for key in ("ctx", "chat_format", "local_model"):
        if key in changes:
            setattr(request, key, changes[key])
    return request, where


def kept_records(store: Any, run_id: str) -> list[dict]:
    """A dead run's records as kept, without warning of a cut-off last line (``apply``
    records that as an event)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return store.records(run_id)


def _finished_turns(store: Any, run_id: str) -> bool:
    return any(r["type"] == "turn" for r in kept_records(store, run_id))


@dataclass
class Reconciled:
    """Where a resumed run picks up."""

    records: list[Record]  # turns.jsonl as it will be rewritten
    recovered: dict[int, Turn]  # finished turns the graph will reuse
    count: int  # turns the checkpoint has: the graph goes on after them
    endpoints: list[str]  # where it goes on
    fresh: bool  # no checkpoint yet: the graph starts from the beginning
    discarded: list[int] = field(default_factory=list)  # half-spoken turns (set by ``apply``)

    def summary(self) -> dict[str, Any]:
        """What the ``resumed`` event and the manifest's ``resumed`` entry say."""
        return {
            "after_turn": self.count,
            "recovered_turns": sorted(self.recovered),
            "discarded_turns": self.discarded,
            "endpoints": self.endpoints,
        }


def reconcile(
    run_id: str, records: list[Record], values: dict, has_checkpoint: bool, endpoints: list[str]
) -> Reconciled:
    """Work out the records to keep from the run's records and the checkpoint's counters.
    Reads only; ``apply`` writes."""
    if "turns" in values and "count" not in values:
        raise InputError(f"run {run_id} was checkpointed by an older delib; it cannot be resumed")
    count = values.get("count", 0)
    graph_events = values.get("events", 0)
    kept: list[Record] = []
    recovered: dict[int, Turn] = {}
    seen: set[int] = set()
    events = 0
    for record in records:
        if record["type"] == "turn":
            index = record["index"]
            if index < count and index not in seen:
                kept.append(record)
                seen.add(index)
            elif index >= count:
                recovered.setdefault(index, record)
        elif record["event"] in RESUME_EVENTS:
            kept.append(record)
        elif events < graph_events:
            kept.append(record)
            events += 1
    missing = sorted(set(range(count)) - seen)
    if missing:
        raise InputError(
            f"run {run_id}: its records lack turn {missing[0]}, which its checkpoint "
            "has; the folder was changed by hand and cannot be resumed"
        )
    return Reconciled(
        records=kept,
        recovered=recovered,
        count=count,
        endpoints=endpoints,
        fresh=not has_checkpoint,
    )


def apply(folder: Any, plan: Reconciled) -> None:
    """Rewrite the folder as ``plan`` says, recording what resume did."""
    added: list[Event] = []
    cut = folder.repair()
    if cut:
        added.append(make_event("truncated_line_dropped", bytes=cut))
    for entry in folder.take_inflight():
        index = entry.get("index")
        if index in plan.recovered or (index is not None and index < plan.count):
            continue
        plan.discarded.append(index)
        added.append(
            make_event(
                "turn_discarded",
                turn=index,
                speaker=entry.get("speaker"),
                kind=entry.get("kind"),
                partial_chars=entry.get("partial_chars", 0),
                reason="cut off mid-reply when the run died; spoken again",
            )
        )
    added.append(make_event("resumed", **plan.summary()))
    plan.records += added
    folder.rewrite(plan.records)


def history_entry(old: dict, plan: Reconciled, at: str) -> dict:
    """The manifest's entry for this resume (after ``apply``)."""
    return {
        "at": at,
        "previous_stop_reason": old.get("stop_reason"),
        "previous_error": old.get("error"),
        **plan.summary(),
    }
