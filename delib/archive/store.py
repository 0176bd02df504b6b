"""Where runs are kept: the store interface, and the registry of its implementations.

``open_store(location)`` takes ``--archive`` as given (or ``$DELIB_ARCHIVE``, or
``$DELIB_TRANSCRIPTS``, or ``./transcripts``). An address whose scheme an implementation
registered (``register``) opens that implementation; anything else is a folder, opened by the
one registered with ``register_folder``. ``delib.archive`` registers the two delib ships:
``folder_store.FolderStore`` and, for ``postgresql://``, ``pgstore.PgStore`` (imported only
when such an address is opened: it needs the ``cluster`` extra). This module imports neither.

Every store answers the same questions (``Store`` below) and hands out the same kind of run
handle to write with (``RunFolder`` or ``pgrun.PgRun``), so every command that reads or writes
runs works on any of them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from delib.archive.run_folder import ARCHIVE_ENV, DEFAULT_ARCHIVE
from delib.errors import InputError

STORE_ENV = "DELIB_ARCHIVE"  # takes precedence over DELIB_TRANSCRIPTS (a folder, historically)


class Store(Protocol):
    """What every archive answers. ``limits`` hands out each server's ``max_concurrency`` for
    the runs of this process (or, in a database, shared by every process); ``sweep_lock`` is
    held while one ``sweep run`` works on a sweep (a store whose cells are leased one by one
    returns a lock that holds nothing)."""

    kind: str
    location: str

    def close(self) -> None: ...
    def exists(self) -> bool: ...
    def require(self) -> Store: ...
    def find(self, wanted: str) -> str: ...
    def run_ids(self) -> list[str]: ...
    def manifest(self, run_id: str) -> dict: ...
    def records(self, run_id: str) -> list[dict]: ...
    def manifests(self) -> Iterator[tuple[str, dict]]: ...
    def sweep_manifests(self, name: str, cell: str | None = None) -> Iterator[tuple[str, dict]]: ...
    def sweep_runs(self, name: str, cell: str | None = None) -> list[dict]: ...
    def running(self, run_id: str) -> bool: ...
    def has_checkpoints(self, run_id: str) -> bool: ...
    def create_run(self, scenario_id: str) -> Any: ...
    def open_run(self, run_id: str) -> Any: ...
    def delete(self, run_id: str) -> None: ...
    def listing(self, **filters: Any) -> tuple[list[dict], list[str]]: ...
    def search(self, query: str, limit: int) -> tuple[list[Any], list[str]]: ...
    def import_run(self, manifest: dict, records: list[dict]) -> None: ...
    def save_sweep(self, name: str, data: dict) -> None: ...
    def sweep_record(self, name: str) -> dict | None: ...
    def sweep_names(self) -> list[str]: ...
    def note(self, name: str, entry: dict) -> None: ...
    def ledger(self, name: str, cell: str | None = None) -> list[dict]: ...
    def limits(self) -> Any: ...
    def sweep_lock(self, name: str) -> Any: ...


_BY_SCHEME: dict[str, Callable[[str], Store]] = {}
_FOLDER: list[Callable[[Path], Store]] = []


def register(schemes: tuple[str, ...], opener: Callable[[str], Store]) -> None:
    """Open addresses that start with one of ``schemes`` (``"postgresql://"``) with ``opener``."""
    for scheme in schemes:
        _BY_SCHEME[scheme] = opener


def register_folder(opener: Callable[[Path], Store]) -> None:
    """Open a folder (any location without a registered scheme) with ``opener``."""
    _FOLDER[:] = [opener]


def is_database(location: object) -> bool:
    return isinstance(location, str) and location.startswith(tuple(_BY_SCHEME))


def sweep_tag(manifest: dict) -> dict | None:
    """The sweep and cell a run belongs to (``manifest.sweep``), or None."""
    tag = manifest.get("sweep") or (manifest.get("request") or {}).get("sweep")
    return tag if isinstance(tag, dict) and isinstance(tag.get("cell"), str) else None


def location_of(flag: str | Path | None) -> str | Path:
    """``--archive`` if given, else the environment, else ``./transcripts``; a folder is made
    absolute, a database address is kept as written."""
    chosen: Any = flag
    if chosen is None or chosen == "":
        chosen = os.environ.get(STORE_ENV) or os.environ.get(ARCHIVE_ENV) or DEFAULT_ARCHIVE
    if isinstance(chosen, str) and is_database(chosen):
        return chosen
    return Path(chosen).expanduser().absolute()


def open_store(flag: str | Path | Store | None = None) -> Any:
    """The store ``flag`` names; a store passes through."""
    if flag is not None and not isinstance(flag, str | Path):
        return flag
    location = location_of(flag)
    if isinstance(location, str):
        scheme = next(s for s in _BY_SCHEME if location.startswith(s))
        return _BY_SCHEME[scheme](location)
    if not _FOLDER:
        raise InputError(f"{location}: no folder archive is registered (import delib.archive)")
    return _FOLDER[0](location)
