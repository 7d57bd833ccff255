"""A screenshot of the operator dashboard for the docs, from a real server fed real traffic.

    python -m loadtests.dashboard_screenshot [--out docs/figures/dashboard.png] [--no-horizon]

Starts ``nudge serve`` on a temporary data dir, sends events (carts that go idle, so that signals go out),
scores users and reports outcomes, waits out a one-minute signal horizon so that the uplift has a closed
cohort (``--no-horizon`` skips that wait), then opens ``/dashboard`` in headless Chromium (Debian's ``chromium``
and ``chromium-driver``, driven by Selenium) and saves a PNG. ``tests/integration/test_dashboard.py`` uses the
same traffic and browser.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import random
import shutil
import tempfile
import time
from pathlib import Path

import aiohttp

from server.storage import Store

from ._server_proc import ROOT, free_port, log_tail, start_server, wait_ready

ACTIONS = ["view", "view", "view", "search", "favorite", "help_view"]


def browser_paths() -> tuple[str, str] | None:
    """Debian's chromium and its matching chromedriver, or None where either is missing."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    return (chromium, driver) if chromium and driver else None


def open_browser(width: int = 1280, height: int = 900):
    """A headless Chromium under Selenium, with the browser console kept (CSP violations are logged there)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = browser_paths()
    options = webdriver.ChromeOptions()
    # Both paths given, so Selenium Manager never looks for (or downloads) a browser or driver.
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--force-device-scale-factor=1", "--lang=en-US"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


async def _call(session: aiohttp.ClientSession, method: str, url: str, body=None) -> dict:
    async with session.request(method, url, json=body) as r:
        answer = await r.json(content_type=None)
        if r.status != 200:
            raise RuntimeError(f"{method} {url}: HTTP {r.status} {answer}")
        return answer


async def populate(base: str, key: str, users: int = 80, seed: int = 7) -> dict:
    """Real traffic for a tenant: sessions, carts left idle, purchases, scores and feedback on the signals.

    The server must run with a short signal sweep (``NUDGE_SIGNAL_SWEEP_S``); carts count as abandoned after 1 s.
    Returns the signal ids the scores answered with and the feedback sent.
    """
    rng = random.Random(seed)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
        await _call(s, "PUT", f"{base}/v1/config", {"cart_idle_s": 1})
        ids = [f"shopper-{i}" for i in range(users)]
        for round_ in range(3):
            now = time.time()
            events = []
            for uid in ids:
                for j in range(rng.randint(1, 4)):
                    events.append({"user_id": uid, "action": rng.choice(ACTIONS), "ts": now - 20 + j,
                                   "item_id": f"i{rng.randrange(40)}", "category": f"c{rng.randrange(6)}",
                                   "context": {"device": rng.choice(["desktop", "mobile"])}})
                if rng.random() < 0.5:
                    events.append({"user_id": uid, "action": "add_to_cart", "ts": now - 10,
                                   "item_id": f"i{rng.randrange(40)}"})
                    if rng.random() < 0.35:
                        events.append({"user_id": uid, "action": "purchase", "ts": now - 5})
            await _call(s, "POST", f"{base}/v1/events", {"events": events})
            await _call(s, "POST", f"{base}/v1/score", {"users": [{"user_id": u} for u in rng.sample(ids, 30)]})
            await asyncio.sleep(0.2 if round_ < 2 else 0.0)
        await asyncio.sleep(2.0)  # the carts go idle and the sweeper decides for them
        scored = await _call(s, "POST", f"{base}/v1/score", {"users": [{"user_id": u} for u in ids]})
        signal_ids = [r["signal"]["signal_id"] for r in scored["results"] if r["signal"]]
        feedback = []
        for sid in signal_ids:
            feedback += [{"signal_id": sid, "outcome": step} for step in ("received", "handled", "shown")]
            ending = rng.choice(["clicked", "converted", "dismissed", None])
            if ending:
                feedback.append({"signal_id": sid, "outcome": ending})
        if feedback:
            await _call(s, "POST", f"{base}/v1/feedback", {"feedback": feedback})
        return {"signal_ids": signal_ids, "feedback": len(feedback)}


def full_page_png(driver, max_height: int = 4000) -> bytes:
    """The whole page as a PNG: the window is made as tall as the page first."""
    width = driver.get_window_size()["width"]
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(max_height, height + 140))  # + the window's own frame, headless or not
    time.sleep(0.3)
    return driver.get_screenshot_as_png()


def shrink_png(png: bytes, colors: int = 128) -> bytes:
    """The same picture in an adaptive palette: a dashboard's flat colours lose nothing visible, the file ~3x."""
    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=colors).save(out, format="PNG", optimize=True)
    return out.getvalue()


async def _serve_and_populate(data_dir: Path, port: int, log_path: Path, wait_horizon: bool):
    store = Store(data_dir)
    try:
        key = store.create_tenant("acme")[1]
    finally:
        store.close()
    proc = start_server(data_dir, port, log_path, signal_sweep_s="0.3")
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            await wait_ready(session, base, proc)
        if wait_horizon:
            async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {key}"}) as s:
                await _call(s, "PUT", f"{base}/v1/config", {"signal_horizon_s": 60})
        await populate(base, key)
        if wait_horizon:
            await asyncio.sleep(62)
            # Activity after the wait, so the last minute's rates have something in them.
            await populate(base, key, users=40, seed=8)
    except BaseException:
        proc.terminate()
        raise
    return proc, base, key


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "figures" / "dashboard.png")
    parser.add_argument("--no-horizon", action="store_true", help="do not wait a signal horizon for the uplift")
    args = parser.parse_args()
    if browser_paths() is None:
        raise SystemExit("needs Debian's chromium and chromium-driver: apt-get install -y chromium chromium-driver")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        proc, base, key = asyncio.run(_serve_and_populate(tmp_path / "data", free_port(), tmp_path / "server.log",
                                                          not args.no_horizon))
        driver = None
        try:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support.ui import WebDriverWait

            driver = open_browser()
            driver.get(f"{base}/dashboard#key={key}")
            WebDriverWait(driver, 30).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#histogram-chart rect.bar"))
            png = shrink_png(full_page_png(driver))
        except Exception:
            print(log_tail(tmp_path / "server.log"))
            raise
        finally:
            if driver is not None:
                driver.quit()
            proc.terminate()
            proc.wait(30)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"wrote {args.out} ({len(png) / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
