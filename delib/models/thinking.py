"""A reasoning model's thinking, kept apart from its answer.

Reasoning models send their thinking in one of two places: inside the content, between
``<think>`` and ``</think>`` (or ``<thinking>`` tags; DeepSeek-R1 distills, QwQ, Qwen3 where the
server does not split it out), or in a field of its own beside the content
(``reasoning_content`` or ``reasoning``: vLLM, DeepSeek's API, llama.cpp with
``--reasoning-format``, Ollama). Either way the thinking is not the turn's text: no other
speaker, detector, parser or search sees it. ``split`` takes it out of a whole content string;
``LiveFilter`` does the same for a stream, chunk by chunk, so that the live view never shows it.

A block left open (the reply was cut at its token cap while thinking) holds everything after
its tag. A content that starts with thinking and a closing tag, the opening one having been
part of the prompt's template, is read the same way.
"""

from __future__ import annotations

import re

OPEN_TAGS = ("<think>", "<thinking>")
CLOSE_TAGS = ("</think>", "</thinking>")
_BLOCK = re.compile(r"<(think|thinking)>(.*?)(?:</\1>|\Z)", re.S | re.I)
_ORPHAN_CLOSE = re.compile(r"</(?:think|thinking)>", re.I)
_ANY_OPEN = re.compile(r"<(?:think|thinking)>", re.I)
FIELDS = ("reasoning_content", "reasoning")


def split(content: str) -> tuple[str, str]:
    """``(answer, thinking)`` of a content string; ``thinking`` is empty for most replies."""
    if "<" not in content:  # most replies: nothing to look for
        return content, ""
    thoughts: list[str] = []
    close = _ORPHAN_CLOSE.search(content)
    if close and not _ANY_OPEN.search(content, 0, close.start()):
        thoughts.append(content[: close.start()])
        content = content[close.end() :]

    def take(match: re.Match) -> str:
        thoughts.append(match.group(2))
        return ""

    answer = _BLOCK.sub(take, content)
    thinking = "\n\n".join(t.strip() for t in thoughts if t.strip())
    return (answer.lstrip() if thoughts else answer), thinking


def field_of(message: object) -> str:
    """The reasoning a message or delta carries in a field of its own ("" if none)."""
    extra = getattr(message, "model_extra", None) or {}
    for name in FIELDS:
        value = extra.get(name) if isinstance(extra, dict) else None
        if isinstance(value, str) and value:
            return value
    return ""


def _held(text: str, tags: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` could start one of ``tags``."""
    lowered = text[-12:].lower()
    for size in range(min(len(lowered), max(map(len, tags)) - 1), 0, -1):
        tail = lowered[-size:]
        if any(tag.startswith(tail) for tag in tags):
            return size
    return 0


class LiveFilter:
    """What of a streamed content to show as it arrives: the answer, not the thinking. A tag
    split across chunks is held back until the next chunk says what it is."""

    def __init__(self) -> None:
        self.inside = False
        self.pending = ""
        self.shown_any = False  # any answer text shown yet (blank lines after thinking are not)

    def feed(self, chunk: str) -> str:
        text = self.pending + chunk
        self.pending = ""
        shown: list[str] = []
        while text:
            tags = CLOSE_TAGS if self.inside else OPEN_TAGS
            lowered = text.lower()
            found = [(i, tag) for tag in tags if (i := lowered.find(tag)) >= 0]
            if found:
                at, tag = min(found)
                if not self.inside:
                    shown.append(self._answer(text[:at]))
                self.inside = not self.inside
                text = text[at + len(tag) :]
                continue
            keep = _held(text, tags)
            if not self.inside:
                shown.append(self._answer(text[: len(text) - keep]))
            self.pending = text[len(text) - keep :] if keep else ""
            break
        return "".join(shown)

    def _answer(self, text: str) -> str:
        if not self.shown_any:
            text = text.lstrip()
            self.shown_any = bool(text)
        return text

    def flush(self) -> str:
        """What is left at the end of the stream (a held ``<`` that started no tag)."""
        left, self.pending = ("" if self.inside else self.pending), ""
        return left


# How each preset server (``config.PRESETS``) switches a reasoning model's thinking off, or
# splits it out of the content (``delib endpoints list`` shows it; docs/endpoints.md has all).
REASONING_SWITCHES: dict[str, str] = {
    "ollama": 'request "think": false, or a model tag without thinking',
    "vllm": "--reasoning-parser NAME splits it out; Qwen3: enable_thinking=false",
    "llamacpp": "llama-server --reasoning-budget 0; --reasoning-format deepseek splits it out",
    "lmstudio": "the model's reasoning setting in LM Studio",
}
