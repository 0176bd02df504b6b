"""The learned refusal model at run time: committed weights, no training library, no model call.

``refusal_model.bin`` holds two arrays of ``ngrams.BUCKETS`` little-endian 16-bit integers: each
bucket's weight times its inverse document frequency, and its squared inverse document frequency
(for the vector's length), both in fixed steps (``W_STEP``, ``IDF2_STEP``). ``refusal_model.json``
holds the engagement features' weights (none in the shipped model), the bias, the threshold
and what the model was trained on. ``train_refusal`` writes both.

    z = bias + (sum of the present buckets' weight*idf) / sqrt(sum of their idf^2)
             + sum of engagement weight * feature
    score = 1 / (1 + exp(-z))
"""

from __future__ import annotations

import json
import math
import sys
from array import array
from dataclasses import dataclass
from functools import cache
from operator import itemgetter
from pathlib import Path

from delib.detect import ngrams

MODEL_FILE = Path(__file__).with_name("refusal_model.bin")
META_FILE = Path(__file__).with_name("refusal_model.json")
W_STEP = 1 / 2048  # weight*idf, in [-16, 16)
IDF2_STEP = 1 / 256  # idf^2, in [0, 128)


@dataclass(frozen=True)
class Model:
    weights: array  # weight * idf per bucket, in W_STEP units
    idf2: array  # idf^2 per bucket, in IDF2_STEP units
    dense: dict[str, float]  # engagement feature -> weight
    bias: float
    threshold: float

    @classmethod
    def from_bytes(cls, blob: bytes, meta: dict) -> Model:
        n = ngrams.BUCKETS
        if len(blob) != 4 * n:
            raise ValueError(f"model file has {len(blob)} bytes, expected {4 * n}")
        weights, idf2 = array("h", blob[: 2 * n]), array("H", blob[2 * n :])
        if sys.byteorder != "little":
            weights.byteswap()
            idf2.byteswap()
        return cls(
            weights=weights,
            idf2=idf2,
            dense=dict(meta["dense"]),
            bias=float(meta["bias"]),
            threshold=float(meta["threshold"]),
        )

    def score(self, text: str, context: str | None = None) -> float:
        """The probability that ``text`` refuses (answering ``context``, when given)."""
        found = ngrams.buckets(text)
        if len(found) > 1:  # the buckets' values looked up in C (itemgetter), then summed
            pick = itemgetter(*found)
            total = sum(pick(self.weights)) * W_STEP
            norm = math.sqrt(sum(pick(self.idf2)) * IDF2_STEP)
        elif found:
            (only,) = found
            total = self.weights[only] * W_STEP
            norm = math.sqrt(self.idf2[only] * IDF2_STEP)
        else:
            total, norm = 0.0, 1.0
        z = self.bias + (total / norm if norm else 0.0)
        if self.dense:  # a model trained with the engagement features
            for name, value in ngrams.engagement(text, context).items():
                z += self.dense.get(name, 0.0) * value
        return 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))


@cache
def shipped() -> Model:
    """The committed model."""
    meta = json.loads(META_FILE.read_text(encoding="utf-8"))
    return Model.from_bytes(MODEL_FILE.read_bytes(), meta)
