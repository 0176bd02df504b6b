"""What every command shares: the consoles, exit codes, option types and error wording."""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from delib.archive.folder_store import FolderStore
from delib.archive.store import open_store
from delib.errors import DelibError, InputError, SettingError
from delib.models.local_models import DEFAULT_LOCAL_MODEL, LOCAL_MODELS
from delib.text import safe

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)
DEBUG = {"on": bool(os.environ.get("DELIB_DEBUG"))}

# Exit codes: 1 for errors the user can fix, 130 after Ctrl-C (the shell convention).
EXIT_ERROR = 1
EXIT_INTERRUPTED = 130

ArchiveOpt = Annotated[
    str | None,
    typer.Option(
        "--archive",
        help="Archive: a folder, or a postgresql:// database (default $DELIB_ARCHIVE, "
        "$DELIB_TRANSCRIPTS or ./transcripts).",
    ),
]
PersonasDir = Annotated[
    Path | None, typer.Option("--personas-dir", help="Extra folder of persona YAML files.")
]
ScenariosDir = Annotated[
    Path | None, typer.Option("--scenarios-dir", help="Extra folder of scenario YAML files.")
]
GgufOpt = Annotated[
    Path | None,
    typer.Option(
        "--gguf",
        help="Serve this GGUF model file locally instead of a shipped small model "
        "(needs the 'local' extra).",
    ),
]
LocalModelOpt = Annotated[
    str | None,
    typer.Option(
        "--local-model",
        help=f"Which shipped small model the embedded server runs: "
        f"{', '.join(LOCAL_MODELS)} (default {DEFAULT_LOCAL_MODEL}); see 'delib endpoints list'.",
    ),
]
CtxOpt = Annotated[
    int, typer.Option("--ctx", min=256, help="Context size of the local server, in tokens.")
]
ChatFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--chat-format",
        help="llama-cpp-python chat format for the local server (e.g. gemma, chatml); "
        "default: the file's own template, else one for its model family.",
    ),
]


# How the CLI words a run setting that the library names in an error (SettingError.setting).
SETTING_FLAGS = {
    "base_url": "--base-url",
    "loop_options": "--loop-option",
    "persona_models": "--persona-model",
    "rounds": "--rounds",
    "refusal_judge": "--refusal-judge",
    "human": "--human",
}


def error_line(exc: DelibError) -> str:
    if isinstance(exc, SettingError) and exc.setting in SETTING_FLAGS:
        return f"{SETTING_FLAGS[exc.setting]} {exc.key}: {exc.reason}"
    return str(exc)


@contextmanager
def archive_store(archive: str | None, must_exist: bool = True) -> Iterator[Any]:
    """The archive (a folder or a database), closed afterwards; it must exist unless told."""
    store = open_store(archive)
    try:
        if must_exist:
            store.require()
        yield store
    finally:
        store.close()


def warn_skipped(problems: list[str]) -> None:
    for problem in problems:
        err.print(f"[yellow]warning:[/yellow] skipped {safe(problem)}", soft_wrap=True)


def open_archive(archive: str | None, create: bool = False) -> Any:
    """The archive (a folder or a database); it must exist unless ``create``. Closed when the
    command's process ends."""
    store = open_store(archive)
    atexit.register(store.close)
    if create and isinstance(store, FolderStore):
        try:
            store.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(
                f"cannot write to archive folder {store.path}: {exc.strerror}"
            ) from None
    return store.require()
