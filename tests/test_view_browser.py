"""``delib view`` in real headless Chromium: the runs newest first with search, a transcript
with every text escaped, a sweep's report with its cells linked, and a running debate that
grows in the open page (server-sent events) without a reload. Nothing is fetched from anywhere
but the view itself."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import delib_process
from test_report import _sweep_with_two_models

from delib.debate.prompts import SELECT_MARKER, VERDICT_MARKER
from delib.testing import FakeOpenAIServer, debate_responder
from delib.web.server import ViewServer
from tests.test_html_browser import browser  # noqa: F401 (the fixture)

MARKUP = "<script>window.hacked = 1</script><b>not bold</b> & <i>not italic</i>"


def marked_up(body: dict) -> str:
    """The debate's replies, with markup in every one but the verdict and speaker choices."""
    reply = debate_responder(body)
    last = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
    return reply if VERDICT_MARKER in last or SELECT_MARKER in last else f"{MARKUP} {reply}"


def clean_console(browser) -> None:  # noqa: F811
    problems = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
    assert problems == []


def only_here(browser, base: str) -> None:  # noqa: F811
    """Every resource the page loaded came from the view itself."""
    names = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
    )
    assert all(name.startswith(base) for name in names), names


def test_runs_search_and_an_escaped_transcript(browser, cli, tmp_path: Path):  # noqa: F811
    from selenium.webdriver.common.by import By

    archive = tmp_path / "arch"
    with FakeOpenAIServer(responder=marked_up) as server:
        for _ in range(2):
            code, out, err = cli("run", "alignment-difficulty", "--base-url", server.base_url,
                                 "--rounds", "1", "--archive", str(archive), "--json")  # fmt: skip
            assert code == 0, err
    view = ViewServer(str(archive)).start()
    try:
        browser.get(view.url)
        assert browser.title == "delib archive"
        rows = browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")
        started = [r.find_elements(By.TAG_NAME, "td")[2].text for r in rows]
        assert len(rows) == 2 and started == sorted(started, reverse=True)  # newest first
        # Search every turn; a hit links to its turn in the transcript.
        box = browser.find_element(By.ID, "q")
        box.send_keys("not italic")
        box.submit()
        hits = browser.find_elements(By.CSS_SELECTOR, ".hit a")
        assert hits and "?q=not+italic" in browser.current_url
        assert browser.find_elements(By.CSS_SELECTOR, ".hit mark")
        hits[0].click()
        assert "/runs/" in browser.current_url and "#turn-" in browser.current_url
        # The markup in the replies is text on the page, never markup.
        texts = browser.find_elements(By.CSS_SELECTOR, ".turn.participant .text")
        assert texts and all(MARKUP in t.text for t in texts)
        assert not browser.find_elements(By.CSS_SELECTOR, ".turn .text b, .turn .text script")
        assert browser.execute_script("return window.hacked === undefined")
        assert browser.find_element(By.CSS_SELECTOR, ".verdict-box").text
        browser.find_element(By.LINK_TEXT, "← all runs").click()
        assert browser.title == "delib archive"
        only_here(browser, view.url)
        clean_console(browser)
    finally:
        view.stop()


def test_a_sweeps_report_links_its_cells_to_their_transcripts(browser, cli):  # noqa: F811
    from selenium.webdriver.common.by import By

    with FakeOpenAIServer() as refusing, FakeOpenAIServer() as engaging:
        _sweep_with_two_models(cli, refusing, engaging)
    view = ViewServer("arch").start()
    try:
        browser.get(view.url)
        browser.find_element(By.LINK_TEXT, "s").click()
        assert browser.title == "delib sweep s"
        assert len(browser.find_elements(By.CSS_SELECTOR, "#matrix tbody tr")) == 2
        charts = browser.find_elements(By.CSS_SELECTOR, "figure.chart")
        assert charts and all(int(c.get_attribute("data-points")) > 0 for c in charts)
        links = browser.find_elements(By.CSS_SELECTOR, "#matrix a")
        assert len(links) == 2
        links[0].click()
        assert "/runs/" in browser.current_url
        assert browser.find_elements(By.CSS_SELECTOR, ".turn")
        only_here(browser, view.url)
        clean_console(browser)
    finally:
        view.stop()


def test_a_running_debate_grows_in_the_open_page(browser, tmp_path: Path):  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    archive = tmp_path / "arch"
    with FakeOpenAIServer(delay=0.6) as server:
        proc = delib_process("run", "alignment-difficulty", "--base-url", server.base_url,
                             "--rounds", "2", "--archive", str(archive), "--json",
                             stdin=subprocess.DEVNULL)  # fmt: skip
        view = ViewServer(str(archive)).start()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the opening is finished
                files = list(archive.glob("*/turns.jsonl")) if archive.exists() else []
                if files and files[0].read_text().count('"type": "turn"') >= 1:
                    break
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.05)
            browser.get(view.url)
            running = browser.find_element(By.CSS_SELECTOR, "#runs td.running")
            assert running.text == "running"
            browser.find_element(By.CSS_SELECTOR, "#runs a").click()
            assert browser.find_element(By.ID, "state").text.startswith("running")
            before = len(browser.find_elements(By.CSS_SELECTOR, ".turn"))
            browser.execute_script("window.sameDocument = true")
            WebDriverWait(browser, 30, poll_frequency=0.05).until(
                lambda b: len(b.find_elements(By.CSS_SELECTOR, "#live .turn")) >= 1
            )
            # A new turn is on the page, and it is still the same document: no reload.
            assert browser.execute_script("return window.sameDocument === true")
            new = browser.find_elements(By.CSS_SELECTOR, "#live .turn")[0]
            assert int(new.get_attribute("data-index")) >= before
            assert new.find_element(By.CSS_SELECTOR, ".who").text
            # When the run ends the page shows it whole, verdict included.
            WebDriverWait(browser, 60, poll_frequency=0.2).until(
                lambda b: b.find_elements(By.CSS_SELECTOR, ".verdict-box")
            )
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            turns = json.loads(out)["turns"]
            assert len(browser.find_elements(By.CSS_SELECTOR, ".turn")) == turns
            only_here(browser, view.url)
            clean_console(browser)
        finally:
            view.stop()
            if proc.poll() is None:
                proc.kill()


def test_the_view_command_says_where_and_a_busy_port_is_one_line(tmp_path: Path):
    archive = tmp_path / "arch"
    archive.mkdir()
    with ViewServer(str(archive)) as busy:
        port = busy.server_address[1]
        proc = delib_process("view", "--archive", str(archive), "--port", str(port))
        out, err = proc.communicate(timeout=30)
    assert proc.returncode != 0 and "Traceback" not in err
    assert f"port {port} on 127.0.0.1 is in use" in err


@pytest.mark.parametrize("path", ["runs/nope", "sweeps/nope", "elsewhere"])
def test_unknown_pages_are_404(tmp_path: Path, path: str):
    import urllib.error
    import urllib.request

    view = ViewServer(str(tmp_path)).start()
    try:
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(view.url + path, timeout=10)
        assert caught.value.code == 404
    finally:
        view.stop()
