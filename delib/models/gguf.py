"""Reading the metadata of a GGUF model file: enough to check it and choose a chat format.

A GGUF file starts with the magic ``GGUF``, a version, tensor and key-value counts, and then the
key-value pairs. Only scalar strings and numbers are kept; arrays (the tokenizer's vocabulary)
are skipped without being decoded.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from delib.errors import FileFormatError

MAGIC = b"GGUF"
# value type -> struct format of one scalar; 8 (string) and 9 (array) are handled apart
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise EOFError
    return struct.unpack(fmt, data)[0]


def _string(f: BinaryIO) -> bytes:
    length = _read(f, "<Q")
    data = f.read(length)
    if len(data) != length:
        raise EOFError
    return data


def _skip_value(f: BinaryIO, vtype: int) -> None:
    if vtype == _STRING:
        f.seek(_read(f, "<Q"), 1)
    elif vtype == _ARRAY:
        item_type, count = _read(f, "<I"), _read(f, "<Q")
        if item_type in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[item_type]) * count, 1)
        else:
            for _ in range(count):
                _skip_value(f, item_type)
    elif vtype in _SCALARS:
        f.seek(struct.calcsize(_SCALARS[vtype]), 1)
    else:
        raise ValueError(f"unknown value type {vtype}")


def read_metadata(path: Path) -> dict[str, str | int | float | bool]:
    """Scalar metadata of a GGUF file; a FileFormatError naming the file if it is not one."""
    try:
        with path.open("rb") as f:
            if f.read(4) != MAGIC:
                raise FileFormatError(str(path), "not a GGUF model file (wrong magic bytes)")
            version = _read(f, "<I")
            if version < 2:
                raise FileFormatError(str(path), f"GGUF version {version} is too old")
            _read(f, "<Q")  # tensor count
            kv_count = _read(f, "<Q")
            metadata: dict[str, str | int | float | bool] = {}
            for _ in range(kv_count):
                key = _string(f).decode("utf-8", "replace")
                vtype = _read(f, "<I")
                if vtype == _STRING:
                    metadata[key] = _string(f).decode("utf-8", "replace")
                elif vtype in _SCALARS:
                    metadata[key] = _read(f, _SCALARS[vtype])
                else:
                    _skip_value(f, vtype)
            return metadata
    except FileFormatError:
        raise
    except FileNotFoundError:
        raise FileFormatError(str(path), "no such file") from None
    except IsADirectoryError:
        raise FileFormatError(str(path), "is a folder, not a GGUF model file") from None
    except OSError as exc:
        raise FileFormatError(str(path), f"cannot read file: {exc.strerror or exc}") from None
    except (EOFError, ValueError, struct.error):
        raise FileFormatError(str(path), "truncated or corrupt GGUF header") from None
