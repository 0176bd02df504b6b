"""Endpoint URLs: whether one can be a base URL, and how to show one without its password."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be an endpoint's base URL, or None."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError as exc:
        return f"not a valid URL ({exc})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "expected an http:// or https:// URL with a host, e.g. http://localhost:8080/v1"
    return None


def redact_url(url: str | None) -> str | None:
    """``url`` with any password in it (``http://user:SECRET@host``) replaced by ``***``."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
