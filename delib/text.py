"""Untrusted text made safe to write and to show: model replies, server messages, model ids,
YAML fields.

``clean`` makes any text writable as UTF-8 (a reply is stored with it). A reply is otherwise
archived exactly as received; only what reaches a terminal or a Markdown page is
changed, and only so that it cannot act: control characters (ESC and the rest of C0 and C1,
which carry clear-screen, alternate-screen, hyperlink and window-title sequences) are shown as
``\\x1b``-style escapes, rich markup is escaped, and Markdown structure at the start of a line
(headings, quotes, fences, rules) is shown literally.
"""

from __future__ import annotations

import re

from rich.markup import escape

_SURROGATE = re.compile(r"[\ud800-\udfff]")
# C0 controls except tab and newline, DEL, and C1 controls.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# What a line can start with to become structure on a Markdown page: a heading, a quote, a
# fence, an HTML block, or (a line of only these) a rule or a setext underline.
_MD_LINE = re.compile(r"^(\s{0,3})([#>`~<]|[-=*_](?=[\s\-=*_]*$))")


def clean(text: str) -> str:
    """Text that can be written as UTF-8: lone surrogates become U+FFFD."""
    if text.isascii():  # most chunks: no search needed
        return text
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def inert(text: str) -> str:
    """``text`` with control characters shown as escapes (``\\x1b``) and lone surrogates as
    U+FFFD, so that printing it cannot move the cursor, clear the screen or retitle the
    window."""
    return clean(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text))


def safe(value: object) -> str:
    """Any value, ready to go inside a rich markup string."""
    return escape(inert(str(value)))


def md_text(text: str) -> str:
    """Reply text for a Markdown page: control characters inert, and a line that would start
    a heading, quote, fence or rule shown literally (``\\#``)."""
    lines = inert(text).split("\n")
    return "\n".join(_MD_LINE.sub(lambda m: m.group(1) + "\\" + m.group(2), line) for line in lines)
