"""The routes behind the dashboard, through the real app: GET /v1/activity, GET /v1/scores/histogram, and the
static page itself (served to anyone, holding no data, with a CSP and nothing from elsewhere)."""
import re
import time
from importlib.resources import files

import pytest

import server.runtime

NOW = time.time


def view(uid, action="view"):
    return {"user_id": uid, "action": action, "ts": NOW() - 10}


async def test_activity_counts_a_tenants_answered_ingests_and_scores_only(start):
    s = await start()
    assert (await s.acme.events([view("a"), view("b"), view("a", "add_to_cart")])).status == 200
    assert (await s.acme.events([view("c")])).status == 200
    assert (await s.acme.events([{"user_id": "d", "action": "teleport"}])).status == 400  # refused: not counted
    assert (await s.acme.score("a", "b", "nobody")).status == 200
    assert (await s.acme.score("c")).status == 200

    r = await s.acme.call("GET", "/v1/activity")
    assert r.status == 200
    ingest, score = r.body["ingest"], r.body["score"]
    assert r.body["window_s"] == 60
    assert (ingest["requests"], ingest["events"]) == (2, 4)
    assert (score["requests"], score["users"]) == (2, 4)
    assert ingest["events_per_s"] == pytest.approx(4 / 60) and score["requests_per_s"] == pytest.approx(2 / 60)
    assert sum(ingest["events_per_second"]) == 4 and len(ingest["events_per_second"]) == 60
    assert sum(score["users_per_second"]) == 4
    for kind in (ingest, score):
        p = kind["latency_ms"]
        assert 0 < p["p50"] <= p["p95"] <= p["p99"] < 30_000, p

    other = (await s.globex.call("GET", "/v1/activity")).body  # another tenant's key sees none of it
    assert (other["ingest"]["requests"], other["score"]["requests"]) == (0, 0)
    assert other["ingest"]["latency_ms"] == {"p50": None, "p95": None, "p99": None}
    assert (await s.acme.call("GET", "/v1/activity", key=None)).status == 401


async def test_score_histogram_spreads_the_known_users_scores_over_equal_bins(start):
    s = await start()
    users = [f"h{i}" for i in range(30)]
    events = [view(u, "add_to_cart" if i % 3 == 0 else "view") for i, u in enumerate(users)]
    assert (await s.acme.events(events)).status == 200

    r = await s.acme.call("GET", "/v1/scores/histogram?bins=10")
    assert r.status == 200, r.body
    h = r.body
    assert (h["bins"], h["users"], h["scored"], h["score_kind"]) == (10, 30, 30, "posterior_mean")
    assert len(h["counts"]) == 10 and sum(h["counts"]) == 30
    assert h["edges"] == pytest.approx([i / 10 for i in range(11)])
    # The same scores GET /v1/users/{id} gives, counted into their bins.
    scores = [(await s.acme.call("GET", f"/v1/users/{u}")).body["score"] for u in users]
    assert h["mean"] == pytest.approx(sum(scores) / len(scores), abs=1e-3)
    carts = min(scores[i] for i in range(0, 30, 3))
    assert carts > max(scores[i] for i in range(30) if i % 3), "a cart should score above a view"
    assert sum(h["counts"][int(carts * 10):]) >= 10

    assert len((await s.acme.call("GET", "/v1/scores/histogram")).body["counts"]) == 20  # the default
    empty = (await s.globex.call("GET", "/v1/scores/histogram")).body
    assert (empty["users"], empty["scored"], sum(empty["counts"]), empty["mean"]) == (0, 0, 0, None)


@pytest.mark.parametrize("query", ["bins=0", "bins=101", "bins=x", "bins=1.5", "bins=", "bins=-3", "bins=%D9%A1",
                                   "bins=20&x=1"])
async def test_score_histogram_refuses_bad_queries(start, query):
    s = await start()
    r = await s.acme.call("GET", f"/v1/scores/histogram?{query}")
    assert r.status == 400 and r.body["error"]["code"] == "invalid_request", r.body
    assert r.body["error"]["details"][0]["field"] in ("bins", "x")


async def test_score_histogram_samples_beyond_its_cap_in_small_device_turns(start, monkeypatch):
    monkeypatch.setattr(server.runtime, "HISTOGRAM_MAX_USERS", 10)
    monkeypatch.setattr(server.runtime, "_HISTOGRAM_CHUNK", 4)
    s = await start()
    assert (await s.acme.events([view(f"s{i}") for i in range(35)])).status == 200
    turns = []
    command = s.runtime.command

    async def counted(c):
        turns.append(c)
        return await command(c)

    monkeypatch.setattr(s.runtime, "command", counted)
    h = (await s.acme.call("GET", "/v1/scores/histogram?bins=5")).body
    assert (h["users"], h["scored"], sum(h["counts"])) == (35, 9, 9)  # every 4th user of 35
    assert [len(getattr(c, "user_ids", ())) for c in turns] == [0, 4, 4, 1]  # the sample, then 4 + 4 + 1 users


async def test_the_dashboard_page_is_public_static_and_loads_nothing_from_elsewhere(start):
    s = await start()
    static = files("server") / "static" / "dashboard"
    page = await s.acme.call("GET", "/dashboard", key=None)
    assert page.status == 200 and page.headers["Content-Type"].startswith("text/html")
    assert page.body == (static / "index.html").read_text()  # the same bytes for everyone: no data in it
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    # No inline script or style to allow, and every file it loads is this server's.
    assert re.findall(r"<script\b[^>]*>", page.body) == ['<script src="/dashboard/dashboard.js" defer>']
    assert "<style" not in page.body and " style=" not in page.body
    assert set(re.findall(r'(?:src|href)="([^"]*)"', page.body)) == {
        "/dashboard/dashboard.js", "/dashboard/dashboard.css", "/dashboard/favicon.svg"}
    for name, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css"),
                       ("favicon.svg", "image/svg+xml")):
        r = await s.acme.call("GET", f"/dashboard/{name}", key=None)
        assert r.status == 200 and r.headers["Content-Type"].startswith(kind)
        assert "Content-Security-Policy" in r.headers
        assert not re.search(r"(?:url\(|import\s|https?://(?!www\.w3\.org/2000/svg))", r.body), name
        # Where the key goes: only into this tab's sessionStorage and the Authorization header.
        assert "localStorage" not in r.body and "document.cookie" not in r.body
    for path in ("/dashboard/nope.js", "/dashboard/index.html", "/dashboard/..%2Fapp.py", "/dashboard/%2e%2e"):
        r = await s.acme.call("GET", path, key=None)
        assert r.status == 404 and r.body["error"]["code"] == "not_found", path
