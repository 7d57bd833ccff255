"""The operator dashboard in a real headless Chromium against a real server fed real traffic: what a person sees
with the tenant's key, and that without it (or with a wrong one) they see the refusal and no data.

Needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver) and selenium; skips
cleanly without them.
"""
import asyncio
import os
import re

import aiohttp
import pytest

from loadtests._server_proc import free_port, log_tail, start_server, wait_ready
from loadtests.dashboard_screenshot import browser_paths, open_browser, populate

from .conftest import make_tenants

_NO_BROWSER = "needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)"
if browser_paths() is None and os.environ.get("NUDGE_REQUIRE_BROWSER") == "1":  # .ci/run sets it
    raise RuntimeError(f"NUDGE_REQUIRE_BROWSER=1 but the dashboard test {_NO_BROWSER}")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(browser_paths() is None, reason=_NO_BROWSER)]
WAIT_S = 30


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A nudge server with a tenant whose users have carts, scores, signals and feedback; (base URL, key)."""
    tmp = tmp_path_factory.mktemp("dashboard")
    data_dir, log_path = tmp / "data", tmp / "server.log"
    key = make_tenants(data_dir)["acme"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # The sweep looks for idle carts every 0.3 s (populate makes carts count as abandoned after 1 s).
    proc = start_server(data_dir, port, log_path, signal_sweep_s="0.3")

    async def up():
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base, proc)
        return await populate(base, key)

    try:
        traffic = asyncio.run(up())
        assert traffic["signal_ids"] and traffic["feedback"], "the traffic made no signal to report on"
        yield base, key
    except BaseException:
        print(log_tail(log_path))
        raise
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def browser():
    if os.environ.get("NUDGE_REQUIRE_BROWSER") != "1":
        pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[test]')")
    driver = open_browser()
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, what):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, WAIT_S).until(condition)
    except TimeoutException:
        raise AssertionError(f"{what} did not appear within {WAIT_S} s; the page shows:\n"
                             f"{driver.find_element('tag name', 'body').text[:3000]}") from None


def _text(driver, css):
    return driver.find_element("css selector", css).text


def _bars(driver):
    return [b for b in driver.find_elements("css selector", "#histogram-chart rect.bar")
            if float(b.get_attribute("height")) > 0 and int(b.get_attribute("data-count")) > 0]


def _shows_no_data(driver):
    assert not driver.find_element("id", "panels").is_displayed()
    assert driver.find_elements("css selector", "#panels table, #panels svg") == []
    body = driver.find_element("tag name", "body").text
    assert "purchase" not in body and "offer_discount" not in body and "markov" not in body


def test_with_the_key_in_the_fragment_the_dashboard_shows_the_tenants_data(served, browser):
    base, key = served
    browser.get(f"{base}/dashboard#key={key}")
    _wait(browser, _bars, "the score histogram's bars")

    # The key left the address bar at once, into this tab's sessionStorage only.
    assert "#" not in browser.current_url and key not in browser.current_url
    assert browser.execute_script("return sessionStorage.getItem('nudge.dashboard.key')") == key
    assert browser.execute_script("return localStorage.length") == 0
    assert not browser.find_element("id", "auth-error").is_displayed()

    weights = _text(browser, "#panel-weights")
    assert re.search(r"^purchase 0\.\d+", weights, re.M), weights
    assert len(_bars(browser)) >= 1
    assert re.search(r"\d+ users scored of \d+ known", _text(browser, "#panel-histogram"))
    signals = _text(browser, "#panel-signals")
    assert "offer_discount" in signals, signals
    assert browser.find_elements("css selector", "#allocation-chart rect.alloc"), "no signals-over-time bars"
    uplift = _text(browser, "#uplift-figure")
    assert uplift == "not enough closed decisions yet" or re.fullmatch(r"[+−]?\d+\.\d pts", uplift), uplift
    assert "signalled" in _text(browser, "#panel-uplift") and "holdout" in _text(browser, "#panel-uplift")
    bandits = _text(browser, "#panel-bandits")
    assert "cart_abandon_risk → offer_discount" in bandits, bandits
    assert _text(browser, "#panel-model .big") == "markov"
    ingest = _text(browser, "#activity-ingest")
    assert re.search(r"^[1-9][\d,.]* /s$", ingest, re.M), ingest  # events accepted per second, not zero
    assert "p50" in ingest and "p99" in _text(browser, "#activity-score")
    assert re.search(r"^view\s", _text(browser, "#lift-table"), re.M)

    # It refreshes by itself: a new status stamp within a refresh period or two.
    stamp = _text(browser, "#status")
    _wait(browser, lambda d: _text(d, "#status") != stamp, "a refresh")

    # Nothing was refused by the Content-Security-Policy, and the script raised nothing.
    problems = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert problems == [], problems


def test_without_a_key_or_with_a_wrong_one_the_page_shows_the_refusal_and_no_data(served, browser):
    base, key = served
    browser.get(f"{base}/dashboard")
    browser.execute_script("sessionStorage.clear()")
    browser.get(f"{base}/dashboard")
    alert = _wait(browser, lambda d: d.find_element("id", "auth-error").is_displayed() and
                  d.find_element("id", "auth-error"), "the refusal")
    assert alert.text.startswith("Not authorized: no API key"), alert.text
    _shows_no_data(browser)

    browser.get(f"{base}/dashboard#key=not-{key}")
    _wait(browser, lambda d: "not valid" in _text(d, "#auth-error"), "the server's refusal of a wrong key")
    assert _text(browser, "#auth-error").startswith("Not authorized: the API key is not valid")
    assert browser.execute_script("return sessionStorage.getItem('nudge.dashboard.key')") is None
    _shows_no_data(browser)

    # Typing the right key into the form opens the data.
    browser.find_element("id", "key-input").send_keys(key)
    browser.find_element("id", "key-open").click()
    _wait(browser, _bars, "the data after typing the key")
    assert not browser.find_element("id", "auth-error").is_displayed()
    # And forgetting it takes every figure off the page.
    browser.find_element("id", "key-forget").click()
    _shows_no_data(browser)
    assert browser.execute_script("return sessionStorage.length") == 0
