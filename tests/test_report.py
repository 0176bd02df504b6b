"""Stance lines, run metrics, the sweep report (CSV, JSON, and HTML in headless Chromium) and
``delib compare``."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from delib.detect.metrics import agreement_chain, cost, novelty, run_metrics, stance_summary
from delib.detect.stance import split
from delib.testing import FakeOpenAIServer
from tests.test_html_browser import browser  # noqa: F401 (the fixture)


# --- stance lines -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "agreement", "confidence", "status"),
    [
        ("I agree.\nSTANCE: 5/7 CONFIDENCE: 0.8", 5, 0.8, "ok"),
        ("Hmm.\n**Stance:** 3 (confidence 70%)", 3, 0.7, "ok"),
        ("Point.\nStance: 6\n", 6, None, "ok"),
        ("No line here.", None, None, "missing"),
        ("x\nSTANCE: nine", None, None, "malformed"),
        ("x\nSTANCE: 4.5/7", None, None, "malformed"),
        ("x\nSTANCE: 9/7 CONFIDENCE: 0.9", None, None, "malformed"),
        ("x\nSTANCE: 2 CONFIDENCE: 3.5", 2, None, "ok"),  # an impossible confidence is unknown
        (
            "STANCE: 1/7 early on\nthen a long argument\nand more\nand more still",
            None,
            None,
            "missing",
        ),  # only a closing line counts  # fmt: skip
    ],
)
def test_stance_lines_are_read_or_recorded_unknown(text, agreement, confidence, status):
    rest, stance = split(text)
    assert (stance["agreement"], stance["confidence"], stance["status"]) == (
        agreement,
        confidence,
        status,
    )
    if status == "missing":
        assert rest == text
    else:
        assert "stance" not in rest.lower()


# --- metrics ----------------------------------------------------------------------------------
def turn(i: int, speaker: str, text: str, rnd: int = 1, stance: int | None = None, **extra):
    record = {
        "type": "turn", "index": i, "round": rnd, "speaker": speaker, "name": speaker,
        "role": "participant", "kind": "statement", "text": text,
        "refusal": {"label": extra.pop("label", "engaged"), "score": 0.0}, "model": "m",
        "tokens": {"prompt": 100, "completion": 10, "estimated": False}, "latency": 0.5,
    }  # fmt: skip
    if stance is not None:
        record["stance"] = {"agreement": stance, "confidence": None, "status": "ok"}
    return {**record, **extra}


def test_novelty_counts_content_words_no_earlier_turn_used():
    records = [turn(0, "a", "oversight scales poorly"), turn(1, "b", "oversight scales well")]
    assert novelty(records) == [1.0, pytest.approx(1 / 3)]


def test_agreement_chain_is_the_longest_run_of_agreeing_openings():
    said = [turn(0, "a", "No."), turn(1, "b", "I agree with that."),
            turn(2, "c", "Exactly, and more."), turn(3, "a", "You're right."),
            turn(4, "b", "But consider…"), turn(5, "c", "I agree.")]  # fmt: skip
    assert agreement_chain(said) == 3


def test_stance_movement_and_convergence():
    said = [turn(0, "a", "x", 1, 2), turn(1, "b", "x", 1, 6), turn(2, "a", "x", 2, 4),
            turn(3, "b", "x", 2, 5)]  # fmt: skip
    s = stance_summary(said)
    assert s["first"] == {"a": 2, "b": 6} and s["last"] == {"a": 4, "b": 5}
    assert s["moved"] == ["a", "b"] and s["movement"] == 1.5
    assert (s["spread_first"], s["spread_last"], s["converged"]) == (4, 1, True)
    assert s["by_round"] == {"a": {1: 2, 2: 4}, "b": {1: 6, 2: 5}}
    unknown = stance_summary([turn(0, "a", "x")])
    assert unknown["asked"] is False and unknown["converged"] is None


def test_cost_needs_a_price_for_every_model_used():
    records = [turn(0, "a", "x")]
    manifest = {"personas": []}
    assert cost(records, manifest, {"m": {"prompt": 1.0, "completion": 2.0}}) == pytest.approx(
        (100 * 1.0 + 10 * 2.0) / 1e6
    )
    assert cost(records, manifest, {"other": {"prompt": 1.0}}) is None
    assert cost(records, manifest, {}) is None


def test_refusal_rate_counts_partial_as_half():
    records = [turn(0, "a", "x", label="refusal"), turn(1, "b", "y", label="partial"),
               turn(2, "c", "z"), turn(3, "a", "w")]  # fmt: skip
    metrics = run_metrics({"stop_reason": "completed"}, records)
    assert metrics["refusal_rate"] == 0.375 and metrics["statements"] == 4


# --- the report -------------------------------------------------------------------------------
REFUSAL = "I'm sorry, but I can't help with that request."


def _sweep_with_two_models(cli, refusing: FakeOpenAIServer, engaging: FakeOpenAIServer):
    refusing.responder = lambda body: REFUSAL if "STANCE: <1-" in json.dumps(body) else (
        '{"summary": "s", "agreements": [], "disagreements": [], "open_questions": [], '
        '"positions": {}}' if "verdict" in json.dumps(body).lower() else "Welcome.")  # fmt: skip
    Path("s.yaml").write_text(
        "scenarios: [corrigibility]\nmodels:\n"
        f'  - {{base_url: "{refusing.base_url}", model: test-model, label: refuser}}\n'
        f'  - {{base_url: "{engaging.base_url}", model: test-model, label: engager}}\n'
        "seeds: [1]\nrounds: 2\nloops: warn\n"
        "prices: {test-model: {prompt: 1.0, completion: 2.0}}\n"
    )
    code, out, err = cli("sweep", "run", "s.yaml", "--archive", "arch")
    assert code == 0, err


def test_csv_and_json_reports_have_a_row_per_cell(cli):
    with FakeOpenAIServer() as refusing, FakeOpenAIServer() as engaging:
        _sweep_with_two_models(cli, refusing, engaging)
    code, out, err = cli("sweep", "report", "s", "--archive", "arch", "--format", "csv")
    assert code == 0, err
    import pandas as pd

    frame = pd.read_csv(io.StringIO(out))
    assert len(frame) == 2 and frame["run_id"].notna().all()  # one row per run, for pandas
    rows = list(csv.DictReader(io.StringIO(out)))
    by_model = {r["model"]: r for r in rows}
    assert set(by_model) == {"refuser", "engager"}
    assert float(by_model["refuser"]["refusal_rate"]) == 1.0
    assert float(by_model["engager"]["refusal_rate"]) == 0.0
    assert float(by_model["engager"]["cost_usd"]) > 0
    assert by_model["refuser"]["differs"] == "True"  # the same cell ended otherwise elsewhere
    code, out, err = cli("sweep", "report", "s", "--archive", "arch", "--format", "csv",
                         "--per-turn")  # fmt: skip
    assert code == 0, err
    turns = pd.read_csv(io.StringIO(out))
    assert (
        set(turns["model"]) == {"test-model"} and len(turns) == 2 * 2 * 3
    )  # 2 runs × 2 rounds × 3
    assert set(turns["refusal"]) == {"refusal", "engaged"}
    assert turns["novelty"].between(0, 1).all()
    code, out, _ = cli("sweep", "report", "s", "--archive", "arch", "--format", "json")
    data = json.loads(out)
    engager = next(r for r in data if r["model"] == "engager")
    assert engager["stance_by_round"]  # stances by persona and round, for pandas
    # Comparing a sweep with itself: nothing differs.
    code, out, err = cli("compare", "s", "s", "--archive", "arch", "--format", "json")
    assert code == 0, err
    assert not any(r["differs"] for r in json.loads(out))
    # Two runs of the sweep: metrics, stance paths and verdicts side by side.
    refuser, engager = by_model["refuser"]["run_id"], by_model["engager"]["run_id"]
    code, out, err = cli("compare", refuser, engager, "--archive", "arch", "--format", "json")
    assert code == 0, err
    result = json.loads(out)
    rates = {m["metric"]: (m["a"], m["b"]) for m in result["metrics"]}
    assert rates["refusal_rate"] == (1.0, 0.0)
    assert result["stance"] and all(p["a"] == {} for p in result["stance"].values())
    assert any(p["b"] for p in result["stance"].values())  # the engager's stances by round
    code, out, err = cli("compare", refuser, engager, "--archive", "arch")
    assert code == 0 and "refusal_rate" in out and "stance by round" in out
    code, out, err = cli("compare", refuser, engager, "--archive", "arch", "-f", "html",
                         "-o", "cmp.html")  # fmt: skip
    assert code == 0 and "Stance by round" in Path("cmp.html").read_text()
    code, out, err = cli("compare", refuser, "s", "--archive", "arch")
    assert code == 1 and "two runs or two sweeps" in err


def test_html_report_in_headless_chromium(browser, cli, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    with FakeOpenAIServer() as refusing, FakeOpenAIServer() as engaging:
        _sweep_with_two_models(cli, refusing, engaging)
    page = tmp_path / "out" / "report.html"
    page.parent.mkdir()
    code, out, err = cli("sweep", "report", "s", "--archive", "arch", "-o", str(page))
    assert code == 0, err
    check_report_page(browser, page, cells=2)
    # The refuser and the engager ended the same cell differently: both rows are marked.
    assert len(browser.find_elements(By.CSS_SELECTOR, "#matrix tbody tr.differs")) == 2


def check_report_page(browser, page: Path, cells: int) -> None:  # noqa: F811
    """The report renders in Chromium: charts with data, sorting, the filter, working links,
    nothing fetched, a clean console."""
    from selenium.webdriver.common.by import By

    browser.get(page.as_uri())
    assert browser.title == "delib sweep s"
    charts = browser.find_elements(By.CSS_SELECTOR, "figure.chart")
    assert (
        len(charts) == 4
    )  # stance over rounds (corrigibility), refusals+deadlocks, tokens, latency
    for chart in charts:
        assert int(chart.get_attribute("data-points")) > 0, chart.text
        svg = chart.find_element(By.TAG_NAME, "svg")
        assert svg.size["width"] > 100 and svg.size["height"] > 50
    rows = browser.find_elements(By.CSS_SELECTOR, "#matrix tbody tr")
    assert len(rows) == cells
    # Sorting by a column reorders the rows; the filter keeps only cells that differ.
    header = browser.find_elements(By.CSS_SELECTOR, "#matrix th")[1]  # model
    header.click()
    first = browser.find_element(By.CSS_SELECTOR, "#matrix tbody tr td:nth-child(2)").text
    header.click()
    assert browser.find_element(By.CSS_SELECTOR, "#matrix tbody tr td:nth-child(2)").text != first
    differing = len(browser.find_elements(By.CSS_SELECTOR, "#matrix tbody tr.differs"))
    browser.find_element(By.ID, "differs").click()
    shown = [r for r in browser.find_elements(By.CSS_SELECTOR, "#matrix tbody tr")
             if r.is_displayed()]  # fmt: skip
    assert len(shown) == differing
    assert browser.find_element(By.ID, "shown").text == str(differing)
    # Every cell links to its transcript, written beside the report.
    links = browser.find_elements(By.CSS_SELECTOR, "#matrix a")
    assert len(links) == cells
    for link in links:
        assert Path(link.get_attribute("href").removeprefix("file://")).exists()
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    problems = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert problems == []
