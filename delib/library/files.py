"""Finding and validating the YAML files people write: personas and scenarios.

Files are looked up in layers, later layers adding to or overriding earlier ones by id:

1. the files shipped inside the installed package (``delib/personas``, ``delib/scenarios``);
2. ``./personas`` and ``./scenarios`` in the working directory;
3. a folder given by flag (``--personas-dir``, ``--scenarios-dir``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Generic, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from delib.errors import FileFormatError, UnknownIdError

M = TypeVar("M", bound=BaseModel)

YAML_SUFFIXES = (".yaml", ".yml")
# A persona's prompt or a scenario's background is a few KiB; a file far larger is a mistake
# (and PyYAML, pure Python, would take seconds a megabyte to read it).
MAX_FILE_BYTES = 256 * 1024


def builtin_dir(kind: str) -> Path:
    """The folder of files shipped with delib for ``kind`` ("personas" or "scenarios").

    A wheel carries them inside the package; an editable install or a source checkout finds them
    at the top of the repository, beside the package.
    """
    packaged = Path(str(resources.files("delib"))) / kind
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / kind


def format_validation_error(path: str, error: ValidationError) -> FileFormatError:
    """Turn pydantic's error list into one FileFormatError naming the first bad field."""
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    reason = first["msg"]
    if first["type"] == "extra_forbidden":
        reason = "unknown field (check its spelling; see the documented fields)"
    elif first["type"] == "missing":
        reason = "required field is missing"
    more = len(error.errors()) - 1
    if more:
        reason += f" (and {more} more problem{'s' if more > 1 else ''})"
    return FileFormatError(path, reason, field)


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key given twice in one mapping (plain PyYAML keeps
    the last one without a word)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:  # an unhashable key: the mapping check below reports it
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
    return loader.construct_mapping(node, deep=True)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


def parse_yaml_text(text: str, path: str) -> dict:
    """Parse one YAML document that must be a mapping."""
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:
        raise FileFormatError(path, "nesting is too deep to be a persona or scenario") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise FileFormatError(path, f"YAML syntax error{where}: {problem}") from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise FileFormatError(path, f"expected a mapping of fields, found {kind}")
    bad_keys = [key for key in data if not isinstance(key, str)]
    if bad_keys:
        raise FileFormatError(path, f"field names must be text, found {bad_keys[0]!r}")
    return data


@dataclass(frozen=True)
class Loaded(Generic[M]):
    """A validated item together with where it came from."""

    item: M
    path: Path
    sha256: str


def load_file(path: Path, model: type[M]) -> Loaded[M]:
    """Read, parse and validate one YAML file."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise FileFormatError(
                str(path),
                f"file is {size / 1024:.0f} KiB; persona, scenario and sweep files are capped at "
                f"{MAX_FILE_BYTES // 1024} KiB",
            )
        raw = path.read_bytes()
        text = raw.decode("utf-8")
    except OSError as exc:
        raise FileFormatError(str(path), f"cannot read file: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise FileFormatError(str(path), "file is not UTF-8 text") from None
    data = parse_yaml_text(text, str(path))
    try:
        item = model.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(str(path), exc) from None
    return Loaded(item=item, path=path, sha256=hashlib.sha256(raw).hexdigest())


class Library(Generic[M]):
    """All items of one kind, by id, from the layered folders."""

    def __init__(self, kind: str, model: type[M], folders: list[Path]) -> None:
        self.kind = kind
        self.model = model
        self.folders = folders
        self._items: dict[str, Loaded[M]] | None = None

    def _load(self) -> dict[str, Loaded[M]]:
        if self._items is None:
            items: dict[str, Loaded[M]] = {}
            for folder in self.folders:
                if not folder.is_dir():
                    continue
                seen: dict[str, Path] = {}
                for path in sorted(folder.iterdir()):
                    if path.suffix in YAML_SUFFIXES and path.is_file():
                        loaded = load_file(path, self.model)
                        item_id = loaded.item.id  # type: ignore[attr-defined]
                        if item_id in seen:
                            raise FileFormatError(
                                str(path), f"id '{item_id}' is also used by {seen[item_id]}", "id"
                            )
                        seen[item_id] = path
                        items[item_id] = loaded
            self._items = items
        return self._items

    def ids(self) -> list[str]:
        return sorted(self._load())

    def get(self, item_id: str) -> Loaded[M]:
        items = self._load()
        if item_id not in items:
            raise UnknownIdError(self.kind.removesuffix("s"), item_id, sorted(items))
        return items[item_id]

    def all(self) -> list[Loaded[M]]:
        items = self._load()
        return [items[key] for key in sorted(items)]


def layered_folders(kind: str, extra: Path | None, cwd: Path | None = None) -> list[Path]:
    """The folders to read for ``kind``, lowest priority first."""
    cwd = cwd or Path.cwd()
    folders = [builtin_dir(kind)]
    local = cwd / kind
    if local.resolve() != folders[0].resolve():
        folders.append(local)
    if extra is not None:
        if not extra.is_dir():
            raise FileFormatError(str(extra), f"{kind} folder does not exist")
        folders.append(extra)
    return folders


def make_library(
    kind: str, model: type[M], extra: Path | None = None, cwd: Path | None = None
) -> Library[M]:
    return Library(kind, model, layered_folders(kind, extra, cwd))
