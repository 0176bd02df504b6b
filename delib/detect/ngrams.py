"""What the learned refusal model reads of a reply: hashed word and character n-grams, and how
much the reply engages with what it answers.

Pure Python and deterministic (``zlib.crc32``, not Python's salted ``hash``), so the trainer
(``train_refusal``) and the runtime (``refusal``) see the same numbers for the same text. A
reply becomes a sparse vector: each n-gram counted once (presence), spread over
``BUCKETS`` hash buckets; the model weighs each bucket by its inverse document frequency,
scales the vector to unit length and adds a few dense engagement features (``engagement``).
"""

from __future__ import annotations

import math
import re
import zlib
from functools import lru_cache

BUCKETS = 1 << 18
# Word n-grams over the whole reply; character n-grams over its first CHAR_SPAN characters
# (where a reply says whether it will answer), for speed on long turns.
WORD_NGRAMS = (1, 2)
CHAR_NGRAMS = (3, 4, 5)
CHAR_SPAN = 1500

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_QUOTES = str.maketrans({"’": "'", "‘": "'", "“": '"', "”": '"'})

# Words too common to say what a text is about (for the engagement features only).
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself yourselves
    also may might must shall let us one get make like use used using way ways much many well
    please tell give know want need really thing things something anything everything""".split()
)


def words(text: str) -> list[str]:
    return _WORD.findall(text.translate(_QUOTES).lower())


def _bucket(gram: str) -> int:
    return zlib.crc32(gram.encode("utf-8")) & (BUCKETS - 1)


@lru_cache(maxsize=65536)
def _char_buckets(word: str) -> tuple[int, ...]:
    padded = f" {word} "
    return tuple(
        _bucket("c" + padded[i : i + n])
        for n in CHAR_NGRAMS
        for i in range(max(1, len(padded) - n + 1))
    )


@lru_cache(maxsize=65536)
def _word_bucket(word: str) -> int:
    return _bucket("w " + word)


@lru_cache(maxsize=65536)
def _pair_bucket(first: str, second: str) -> int:
    return _bucket(f"w {first} {second}")


def buckets(text: str) -> set[int]:
    """The hash buckets of the n-grams present in ``text``."""
    tokens = words(text)
    found = {_word_bucket(w) for w in tokens}
    if 2 in WORD_NGRAMS:
        found.update(map(_pair_bucket, tokens, tokens[1:]))
    for word in dict.fromkeys(words(text[:CHAR_SPAN])):
        found.update(_char_buckets(word))
    return found


def _stem(word: str) -> str:
    return word[:6]


def content_words(text: str) -> set[str]:
    return {_stem(w) for w in words(text) if len(w) > 2 and w not in STOPWORDS}


ENGAGEMENT = ("asked_covered", "asked_missing", "new_substance", "no_context")


def engagement(reply: str, context: str | None) -> dict[str, float]:
    """How much of what was asked the reply takes up, in [0, 1]: the share of the context's
    content words it uses (``asked_covered``), whether it uses none of them
    (``asked_missing``), how much it adds of its own (``new_substance``, log-scaled), and
    whether there was any context to compare with."""
    mine = content_words(reply)
    new = math.log1p(len(mine)) / math.log1p(200)
    asked = content_words(context or "")
    if not asked:
        return {"asked_covered": 0.0, "asked_missing": 0.0, "new_substance": min(new, 1.0),
                "no_context": 1.0}  # fmt: skip
    covered = len(asked & mine) / len(asked)
    fresh = math.log1p(len(mine - asked)) / math.log1p(200)
    return {
        "asked_covered": covered,
        "asked_missing": 1.0 if not (asked & mine) else 0.0,
        "new_substance": min(fresh, 1.0),
        "no_context": 0.0,
    }
