"""Train the refusal model: ``python -m delib.detect.train_refusal`` (needs the ``train`` extra).

Reads the labelled files (``tests/data/refusals-*.jsonl`` by default; ``../shared/data`` holds
the same three sources), splits them into sources (a file, or a file's models where it holds
several), and fits a logistic regression (scikit-learn's liblinear: deterministic, no BLAS) over
what ``ngrams`` reads of each reply: hashed word and character n-grams weighed by inverse
document frequency and scaled to unit length. With ``--context``, also the engagement features,
measured against the row's ``prompt`` (and ``context_turns``; a quarter of the rows, chosen by a
hash of their text, are shown without context so that the model also knows replies with none).
The shipped model is trained without them: held out source by source they cost 0.03 of macro
F1 (docs/loop-detection.md). Each source weighs the same in all, and so do the two classes;
partial refusals are left out; the threshold is chosen by leave-one-source-out among the
training sources.

It writes ``delib/detect/refusal_model.bin`` and ``refusal_model.json`` (``learned`` reads
them); run again on the same files with the same scikit-learn, it writes the same bytes
(``--check`` says whether the committed files are current). ``leave_one_out`` is the honest
measure (``python -m bench.refusals``): for each source, train on the others, test on it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import zlib
from pathlib import Path

from delib.detect import ngrams
from delib.detect.learned import IDF2_STEP, META_FILE, MODEL_FILE, W_STEP, Model
from delib.detect.refusal import classify
from delib.detect.refusal_eval import GOLD_LABELS, binary_figures, context_of, read_labelled

DATA_DIR = Path(__file__).resolve().parents[2] / "tests" / "data"
C = 4.0  # inverse regularisation strength
# The threshold is chosen, among these, by leave-one-source-out over the training sources
# themselves (``choose_threshold``): a model is surer of the sources it saw than of new ones.
THRESHOLDS = tuple(round(0.05 + 0.01 * i, 2) for i in range(91))
NO_CONTEXT_SHARE = 4  # one row in this many is trained without its context


def sources(files: list[Path]) -> dict[str, list[dict]]:
    """Labelled rows by source: ``file`` or ``file:model`` where a file holds several models."""
    found: dict[str, list[dict]] = {}
    for path in files:
        rows = read_labelled(path)
        models = sorted({str(r.get("model", "")) for r in rows})
        for row in rows:
            name = path.stem.removeprefix("refusals-")
            if len(models) > 1:
                name += ":" + str(row.get("model", "")).split(" ")[0]
            found.setdefault(name, []).append(row)
    return found


def _shown_context(row: dict) -> str | None:
    if zlib.crc32(row["text"].encode("utf-8")) % NO_CONTEXT_SHARE == 0:
        return None
    return context_of(row)


def _matrix(rows: list[dict], contexts: list[str | None], context: bool):
    import numpy as np
    import scipy.sparse as sp

    indices: list[int] = []
    starts = [0]
    dense = []
    for row, shown in zip(rows, contexts, strict=True):
        indices.extend(sorted(ngrams.buckets(row["text"])))
        starts.append(len(indices))
        if context:
            found = ngrams.engagement(row["text"], shown)
            dense.append([found[name] for name in ngrams.ENGAGEMENT])
    shape = (len(rows), ngrams.BUCKETS)
    present = sp.csr_matrix((np.ones(len(indices)), indices, starts), shape=shape)
    columns = len(ngrams.ENGAGEMENT) if context else 0
    return present, np.array(dense, dtype=float).reshape(len(rows), columns)


def fit(by_source: dict[str, list[dict]], context: bool = False) -> tuple[bytes, dict]:
    """The model's two files (weights as bytes, and its description) from these sources, its
    threshold chosen by leave-one-source-out among them (0.5 from a single source)."""
    blob, meta = _fit_once(by_source, context)
    if len(by_source) > 1:
        meta["threshold"] = choose_threshold(by_source, context)
    return blob, meta


def choose_threshold(by_source: dict[str, list[dict]], context: bool = False) -> float:
    """The threshold with the best macro F1 over the sources (each scored by a model trained
    on the others); sources without refusals count by accuracy (1 - false alarms)."""
    scored: dict[str, list[tuple[bool, float]]] = {}
    for held in sorted(by_source):
        blob, meta = _fit_once({k: v for k, v in by_source.items() if k != held}, context)
        model = Model.from_bytes(blob, meta)
        scored[held] = [
            (r["label"] == "refusal", model.score(r["text"], context_of(r)))
            for r in by_source[held]
            if r["label"] != "partial"
        ]

    def macro_f1(threshold: float) -> float:
        values = []
        for pairs in scored.values():
            tp = sum(1 for gold, s in pairs if gold and s >= threshold)
            fp = sum(1 for gold, s in pairs if not gold and s >= threshold)
            positives = sum(1 for gold, _ in pairs if gold)
            if positives:
                values.append(2 * tp / (positives + tp + fp))
            else:
                values.append(1 - fp / max(len(pairs), 1))
        return sum(values) / len(values)

    best = max(THRESHOLDS, key=lambda t: (round(macro_f1(t), 6), -abs(t - 0.5)))
    return best


def _fit_once(by_source: dict[str, list[dict]], context: bool) -> tuple[bytes, dict]:
    import numpy as np
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    rows, weights = [], []
    for name in sorted(by_source):
        kept = [r for r in by_source[name] if r["label"] != "partial"]
        rows += kept
        weights += [1.0 / len(kept)] * len(kept)
    present, dense = _matrix(rows, [_shown_context(r) for r in rows], context)
    df = np.asarray(present.sum(axis=0)).ravel()
    # Python's log, not numpy's: numpy picks a vectorised log by CPU, and the weights are
    # to come out byte for byte the same on any machine.
    idf = np.array([math.log((1 + len(rows)) / (1 + int(d))) + 1.0 for d in df])
    x = present.multiply(idf).tocsr()
    lengths = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    x = sp.diags(1.0 / np.where(lengths > 0, lengths, 1.0)) @ x
    y = np.array([1 if r["label"] == "refusal" else 0 for r in rows])
    sample = np.array(weights) / (math.fsum(weights) / len(weights))  # fsum: same on any CPU
    sample *= np.where(y == 1, len(y) / (2 * y.sum()), len(y) / (2 * (len(y) - y.sum())))
    model = LogisticRegression(solver="liblinear", C=C, tol=1e-6, max_iter=1000)
    model.fit(sp.hstack([x, sp.csr_matrix(dense)]).tocsr(), y, sample_weight=sample)
    coef = model.coef_.ravel()
    n = ngrams.BUCKETS
    w = np.clip(np.rint(coef[:n] * idf / W_STEP), -32768, 32767).astype("<i2")
    idf2 = np.clip(np.rint(idf**2 / IDF2_STEP), 0, 65535).astype("<u2")
    meta = {
        "kind": "hashed word and character n-grams, idf, unit length; engagement; logistic",
        "buckets": n,
        "word_ngrams": list(ngrams.WORD_NGRAMS),
        "char_ngrams": list(ngrams.CHAR_NGRAMS),
        "char_span": ngrams.CHAR_SPAN,
        "dense": {
            name: round(float(v), 6)
            for name, v in zip(ngrams.ENGAGEMENT if context else (), coef[n:], strict=True)
        },
        "bias": round(float(model.intercept_[0]), 6),
        "threshold": 0.5,
        "C": C,
        "trained_on": {name: len(by_source[name]) for name in sorted(by_source)},
    }
    return w.tobytes() + idf2.tobytes(), meta


def figures(model: Model, rows: list[dict]) -> dict:
    """Binary figures (full refusal vs. compliance, partial apart) of a model's labels, as
    ``classify`` gives them with each row's context."""
    return binary_figures(
        [
            (GOLD_LABELS[r["label"]], classify(r["text"], context_of(r), model=model).label)
            for r in rows
        ]
    )


def leave_one_out(by_source: dict[str, list[dict]], context: bool = False) -> dict[str, dict]:
    """For each source: figures of a model trained on all the others (its threshold chosen
    among those others alone)."""
    found = {}
    for held in sorted(by_source):
        blob, meta = fit({k: v for k, v in by_source.items() if k != held}, context)
        found[held] = figures(Model.from_bytes(blob, meta), by_source[held])
    return found


def default_files(folder: Path = DATA_DIR) -> list[Path]:
    return sorted(folder.glob("refusals-*.jsonl"))


def meta_text(meta: dict, files: list[Path]) -> str:
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()[:16] for p in files}
    return json.dumps({**meta, "files": digests}, indent=2) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="labelled JSONL (default: tests/data)")
    parser.add_argument("--out", type=Path, default=MODEL_FILE, help="the weights file")
    parser.add_argument("--check", action="store_true", help="fail if the files are not current")
    parser.add_argument(
        "--context", action="store_true", help="add the engagement features (not shipped)"
    )
    args = parser.parse_args()
    try:
        import sklearn  # noqa: F401
    except ImportError:
        sys.exit("training needs the train extra: pip install 'delib[train]'")
    files = args.files or default_files()
    by_source = sources(files)
    blob, meta = fit(by_source, args.context)
    text = meta_text(meta, files)
    meta_out = args.out.with_suffix(".json") if args.out != MODEL_FILE else META_FILE
    if args.check:
        same = (
            args.out.exists()
            and args.out.read_bytes() == blob
            and meta_out.exists()
            and meta_out.read_text(encoding="utf-8") == text
        )
        print("up to date" if same else f"{args.out} is stale; run without --check")
        sys.exit(0 if same else 1)
    args.out.write_bytes(blob)
    meta_out.write_text(text, encoding="utf-8")
    size = math.ceil(len(blob) / 1024)
    print(f"wrote {args.out} ({size} KiB) and {meta_out.name} from {len(by_source)} sources: "
          f"{', '.join(sorted(by_source))}")  # fmt: skip


if __name__ == "__main__":
    main()
