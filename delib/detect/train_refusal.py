"""Train the refusal classifier's weights: ``python -m delib.detect.train_refusal``.

Reads the labelled files (``tests/data/refusals-*.jsonl`` by default), splits them into
sources (a file, or a file's models where it holds several), computes ``refusal.features`` for
every reply, and fits a logistic model by stochastic gradient descent in a fixed order with a
fixed seed, each source weighed alike (a large source does not drown a small one). Partial
refusals are left out of training. It writes ``delib/detect/refusal_weights.json``; run again on the
same files, it writes the same bytes (``--check`` says whether the committed file is current).

``leave_one_out`` is the honest measure (``python -m bench.refusals``): for each source, train
on the others and test on it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from delib.detect.refusal import FEATURES, WEIGHTS_FILE, classify, features, probability
from delib.detect.refusal_eval import GOLD_LABELS, binary_figures, read_labelled

DATA_DIR = Path(__file__).resolve().parents[2] / "tests" / "data"
EPOCHS = 30
LEARNING_RATE = 0.1
L2 = 1e-3
SEED = 0
THRESHOLD = 0.5
# Each source counts as this many examples, at most 3 per reply (a small source is not blown
# up past that).
SOURCE_WEIGHT = 1000.0
MAX_EXAMPLE_WEIGHT = 3.0

Example = tuple[dict[str, float], str, str]  # features, gold label, text


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


def examples(rows: list[dict]) -> list[Example]:
    return [(features(r["text"]), r["label"], r["text"]) for r in rows]


def fit(by_source: dict[str, list[Example]]) -> dict:
    """Weights, bias and threshold from the given sources' examples."""
    data: list[tuple[dict[str, float], float, float]] = []
    for name in sorted(by_source):
        rows = [(f, label) for f, label, _ in by_source[name] if label != "partial"]
        weight = min(SOURCE_WEIGHT / max(len(rows), 1), MAX_EXAMPLE_WEIGHT)
        data += [(f, 1.0 if label == "refusal" else 0.0, weight) for f, label in rows]
    weights = dict.fromkeys(FEATURES, 0.0)
    bias = 0.0
    order = list(range(len(data)))
    rng = random.Random(SEED)
    for _ in range(EPOCHS):
        rng.shuffle(order)
        for i in order:
            found, target, weight = data[i]
            gradient = (probability(found, weights, bias) - target) * weight
            bias -= LEARNING_RATE * gradient
            for name, value in found.items():
                weights[name] -= LEARNING_RATE * (gradient * value + L2 * weights[name])
    return {
        "weights": {name: round(weights[name], 6) for name in FEATURES},
        "bias": round(bias, 6),
        "threshold": THRESHOLD,
    }


def figures(model: dict, data: list[Example]) -> dict:
    """Binary figures (full refusal vs. compliance, partial apart) of a model's labels, as
    ``classify`` gives them, on examples."""
    return binary_figures(
        [(GOLD_LABELS[label], classify(text, model).label) for _, label, text in data]
    )


def leave_one_out(by_source: dict[str, list[Example]]) -> dict[str, dict]:
    """For each source: figures of a model trained on all the others."""
    return {
        held: figures(fit({k: v for k, v in by_source.items() if k != held}), by_source[held])
        for held in sorted(by_source)
    }


def default_files(folder: Path = DATA_DIR) -> list[Path]:
    return sorted(folder.glob("refusals-*.jsonl"))


def weights_text(model: dict, names: list[str]) -> str:
    return json.dumps({**model, "features": list(FEATURES), "trained_on": names}, indent=2) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="labelled JSONL (default: tests/data)")
    parser.add_argument("--out", type=Path, default=WEIGHTS_FILE)
    parser.add_argument("--check", action="store_true", help="fail if --out is not current")
    args = parser.parse_args()
    files = args.files or default_files()
    by_source = {k: examples(v) for k, v in sources(files).items()}
    text = weights_text(fit(by_source), sorted(by_source))
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        print("up to date" if current == text else f"{args.out} is stale; run without --check")
        sys.exit(0 if current == text else 1)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} from {len(by_source)} sources: {', '.join(sorted(by_source))}")


if __name__ == "__main__":
    main()
