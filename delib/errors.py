"""Errors meant for the person running delib.

Every error says what was wrong, where (file, field, endpoint, model) and how to fix it. The
library raises them; only the CLI prints them, as one line.

    DelibError
    ├── InputError                 a file or flag the user wrote is wrong
    │   ├── FileFormatError        YAML/TOML syntax error or a bad field (file, field, reason)
    │   ├── SettingError           a run setting given by flag or in code (setting, key, reason)
    │   └── UnknownIdError         no persona / scenario / endpoint / run with that id
    └── EndpointError              talking to a model server went wrong
        ├── EndpointUnreachable    connection refused, DNS, timeouts after retries
        ├── MissingApiKey          the endpoint names an environment variable that is not set
        ├── AuthError              401/403 from the server
        ├── UnknownModel           the server does not offer that model
        └── EndpointFailed         a server that keeps failing, or a request it rejects
"""

from __future__ import annotations


class DelibError(Exception):
    """Base class for errors that the CLI turns into one line."""


class InputError(DelibError, ValueError):
    """Something the user wrote (a file, a flag) is wrong."""


class FileFormatError(InputError):
    """A persona, scenario or config file cannot be parsed or has a bad field."""

    def __init__(self, path: str, reason: str, field: str | None = None) -> None:
        self.path = path
        self.field = field
        self.reason = reason
        where = f"{path}: field '{field}'" if field else path
        super().__init__(f"{where}: {reason}")


class SettingError(InputError):
    """A run setting is wrong. ``setting`` is its name in ``RunRequest`` (e.g. ``loop_options``),
    so the CLI can word it as the flag that set it."""

    def __init__(self, setting: str, key: str, reason: str) -> None:
        self.setting = setting
        self.key = key
        self.reason = reason
        super().__init__(f"{setting} {key}: {reason}")


class UnknownIdError(InputError, KeyError):
    """No item of that kind has that id."""

    def __init__(self, kind: str, wanted: str, known: list[str], hint: str = "") -> None:
        self.kind = kind
        self.wanted = wanted
        self.known = known
        listing = ", ".join(known) if known else "none"
        message = f"unknown {kind} '{wanted}'; known: {listing}"
        if hint:
            message += f" ({hint})"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class EndpointError(DelibError, RuntimeError):
    """A model server could not be used."""


class EndpointUnreachable(EndpointError):
    """The server did not answer at all."""


class MissingApiKey(EndpointError):
    """The endpoint needs a key from an environment variable that is not set."""


class AuthError(EndpointError):
    """The server refused the credentials."""


class UnknownModel(EndpointError):
    """The server does not offer the requested model."""


class EndpointFailed(EndpointError):
    """The server answered with errors until retries ran out, or rejected the request."""


class StoreError(DelibError, RuntimeError):
    """The archive (a PostgreSQL database) could not be written mid-run."""


class DiskFull(StoreError):
    """The disk holding the archive filled up mid-run; the finished turns are on it."""


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc``, or an exception it was raised from or during, says the disk is full
    (``ENOSPC``/``EDQUOT``, or SQLite's "database or disk is full")."""
    import errno

    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "database or disk is full" in str(current):
            return True
        stack += [current.__cause__, current.__context__]
    return False
