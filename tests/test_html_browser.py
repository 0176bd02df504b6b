"""The HTML export in real headless Chromium: it loads with no console errors, fetches
nothing, and shows every turn, the loop events and the verdict.

Needs Debian's ``chromium`` and ``chromium-driver`` (``make test`` installs them). With
``DELIB_REQUIRE_BROWSER=1`` (as ``make test`` sets) a missing browser fails the test instead of
skipping it.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from delib.testing import FakeOpenAIServer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
REFUSAL = "I'm sorry, but I can't help with that request."


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} not found (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture
def browser():
    missing = _browser_missing()
    if missing:
        if os.environ.get("DELIB_REQUIRE_BROWSER"):
            pytest.fail(missing)
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_html_export_in_headless_chromium(browser, cli, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    with FakeOpenAIServer() as server:
        # Two refusals in a row: a loop event and a moderator intervention, shown inline.
        server.enqueue("Let us begin.", REFUSAL, REFUSAL)
        code, out, err = cli(
            "run", "alignment-difficulty", "--base-url", server.base_url, "--rounds", "2",
            "--json",
        )  # fmt: skip
    assert code == 0, err
    run_id = json.loads(out)["run_id"]
    page = tmp_path / "run.html"
    code, _, err = cli("transcripts", "export", run_id, "-f", "html", "-o", str(page))
    assert code == 0, err
    folder = Path("transcripts") / run_id
    records = [json.loads(line) for line in (folder / "turns.jsonl").read_text().splitlines()]
    turns = [r for r in records if r["type"] == "turn"]
    events = [r["event"] for r in records if r["type"] == "event"]
    assert "loop_detected" in events and "intervention" in events

    browser.get(page.as_uri())
    assert browser.title.startswith("How difficult is AI alignment?")
    shown = browser.find_elements(By.CSS_SELECTOR, "div.turn")
    assert [int(e.get_attribute("data-index")) for e in shown] == [t["index"] for t in turns]
    for element, turn in zip(shown, turns, strict=True):
        assert element.is_displayed()
        assert element.find_element(By.CSS_SELECTOR, ".text").text == turn["text"]
    # Speakers are told apart by colour: each participant has its own.
    colours = {
        e.get_attribute("data-speaker"): e.value_of_css_property("border-left-color") for e in shown
    }
    assert len(set(colours.values())) == len(colours)
    inline = browser.find_elements(By.CSS_SELECTOR, "div.event")
    marked = [e.get_attribute("data-event") for e in inline]
    assert marked == events
    assert browser.find_elements(By.CSS_SELECTOR, "div.turn.kind-intervention")
    assert "Verdict" in browser.find_element(By.CSS_SELECTOR, "div.verdict-box").text
    assert "tokens" in browser.find_element(By.TAG_NAME, "body").text
    # Nothing fetched, nothing complained about.
    resources = browser.execute_script("return performance.getEntriesByType('resource').length")
    assert resources == 0
    problems = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert problems == []
