"""Intents, signals, cooldown, cap, holdout, feedback, attribution and stats through the real app."""
import time

from model import TenantConfig
from model.config import INTENTS
from model.signals import in_holdout

NOW = time.time()
SIGNAL_KEYS = {"signal_id", "user_id", "type", "payload", "score", "intent", "created_at", "variant"}


def only(intent, threshold, **extra):
    """A config under which one intent, at one threshold, is the only one that can fire."""
    return {
        "policy": {i: (TenantConfig().policy[i] if i == intent else "none") for i in INTENTS},
        "thresholds": {intent: threshold},
        "holdout_share": 0.0, "cooldown_s": 0.0, "daily_cap": 1000, **extra,
    }


def session(user, names, start, step=5.0, **fields):
    return [{"user_id": user, "action": a, "ts": start + i * step, **fields} for i, a in enumerate(names)]


async def crowd(api, names, n=30, start=NOW - 6000, **fields):
    events = []
    for u in range(n):
        events += session(f"crowd{u}", names, start + u * 10, **fields)
    assert (await api.events(events)).status == 200


async def signal_for(api, user, names, state=None, **fields):
    assert (await api.events(session(user, names, time.time() - 20, **fields))).status == 200
    body = {"users": [{"user_id": user, **({"state": state} if state else {})}]}
    reply = await api.call("POST", "/v1/score", body)
    assert reply.status == 200
    return reply.body["results"][0]["signal"]


async def test_signal_needs_help_offers_support_on_the_query(start):
    server = await start()
    await server.acme.call("PUT", "/v1/config", only("needs_help", 0.3))
    await crowd(server.acme, ["view", "help_view", "help_view", "help_view"])
    signal = await signal_for(server.acme, "x", ["view", "help_view"], state={"query": "returns policy"})
    assert set(signal) == SIGNAL_KEYS
    assert signal["intent"] == "needs_help" and signal["type"] == "proactive_support"
    assert signal["payload"] == {"channel": "chat", "topic": "returns policy"} and signal["user_id"] == "x"


async def test_signal_information_seeking_recommends_content(start):
    server = await start()
    await server.acme.call("PUT", "/v1/config", only(
        "information_seeking", 0.4, content_map={"shoes": ["size-guide"], "default": ["faq"]}))
    await crowd(server.acme, ["search", "search", "search", "view"])
    signal = await signal_for(server.acme, "x", ["search", "search"], category="shoes")
    assert signal["type"] == "recommend_content" and signal["payload"] == {"content_ids": ["size-guide"]}


async def test_signal_form_intent_starts_a_workflow_with_fields(start):
    server = await start()
    await server.acme.call("PUT", "/v1/config", only("form_intent", 0.4, workflow="prefill_quote"))
    await crowd(server.acme, ["view", "form_start", "form_start", "form_start"])
    signal = await signal_for(server.acme, "x", ["view", "form_start"], state={"page": "/quote"}, category="insurance")
    assert signal["type"] == "automated_workflow"
    assert signal["payload"] == {"workflow": "prefill_quote", "fields": {"category": "insurance", "page": "/quote"}}


async def test_signal_cart_abandon_risk_offers_a_discount_tier(start):
    server = await start()
    await server.acme.call("PUT", "/v1/config", only(
        "cart_abandon_risk", 0.4, discount_tiers_pct=[5, 10], discount_codes={"5": "FIVE", "10": "TEN"}))
    signal = await signal_for(server.acme, "x", ["view", "add_to_cart"])
    assert signal["type"] == "offer_discount" and signal["variant"] in ("5", "10")
    assert signal["payload"] == {"discount_pct": float(signal["variant"]), "code": {"5": "FIVE", "10": "TEN"}[signal["variant"]]}
    # A purchase closes the cart: no more risk to act on.
    assert await signal_for(server.acme, "y", ["view", "add_to_cart", "purchase"]) is None


async def test_signal_purchase_likely_recommends_co_visited_items(start):
    server = await start()
    await server.acme.call("PUT", "/v1/config", only("purchase_likely", 0.3))
    events = []
    for u in range(40):  # sessions that buy within a minute, spread so the 5-minute horizon resolves
        t = NOW - 5000 + u * 60
        events += [{"user_id": f"b{u}", "action": "view", "ts": t, "item_id": "i1", "category": "c"},
                   {"user_id": f"b{u}", "action": "add_to_cart", "ts": t + 5, "item_id": "i2", "category": "c"},
                   {"user_id": f"b{u}", "action": "purchase", "ts": t + 10, "item_id": "i2", "category": "c"}]
    assert (await server.acme.events(events)).status == 200
    now = time.time()
    await server.acme.events([{"user_id": "x", "action": "view", "ts": now - 10, "item_id": "i1", "category": "c"},
                              {"user_id": "x", "action": "add_to_cart", "ts": now - 5, "item_id": "i1"}])
    reply = await server.acme.call("POST", "/v1/score", {"users": [{"user_id": "x"}]})
    result = reply.body["results"][0]
    assert result["predicted"]["purchase_5m"] >= 0.3
    assert result["signal"]["type"] == "recommend_product"
    assert result["signal"]["payload"] == {"item_ids": ["i2"], "source": "co_visitation"}


async def test_signal_cooldown_and_daily_cap_hold_across_score_calls(start):
    server = await start()
    await server.acme.call("PUT", "/v1/config", only("cart_abandon_risk", 0.4, cooldown_s=3600.0))
    first = await signal_for(server.acme, "x", ["view", "add_to_cart"])  # the ingest already decided once
    assert first is None
    await server.acme.call("PUT", "/v1/config", {"cooldown_s": 0.0, "daily_cap": 2})
    replies = [(await server.acme.score("x")).body["results"][0]["signal"] for _ in range(3)]
    assert [r is not None for r in replies] == [True, False, False]  # ingest + 1 = the cap of 2


async def test_signal_holdout_users_are_withheld_and_counted(start):
    server = await start()
    await server.acme.call("PUT", "/v1/config", {**only("cart_abandon_risk", 0.4), "holdout_share": 0.5})
    users = [f"h{i}" for i in range(40)]
    events = [e for u in users for e in session(u, ["view", "add_to_cart"], time.time() - 20)]
    assert (await server.acme.events(events)).status == 200
    await server.acme.call("PUT", "/v1/config", {"cooldown_s": 0.0})
    results = (await server.acme.score(*users)).body["results"]
    config = TenantConfig(holdout_share=0.5)
    held = [in_holdout(u, config) for u in users]
    assert 0 < sum(held) < len(users)
    assert [r["signal"] is None for r in results] == held
    stats = (await server.acme.call("GET", "/v1/stats")).body
    assert stats["signals"]["withheld"] == 2 * sum(held)  # ingest and score each decided once
    assert stats["signals"]["sent"] == 2 * (len(users) - sum(held))


async def test_feedback_and_attributed_conversions_close_signals_and_teach_the_bandit(start):
    server = await start()
    await server.acme.call("PUT", "/v1/config", only("cart_abandon_risk", 0.4, discount_tiers_pct=[10]))
    await signal_for(server.acme, "a", ["view", "add_to_cart"])
    await signal_for(server.acme, "b", ["view", "add_to_cart"])
    stats = (await server.acme.call("GET", "/v1/stats")).body
    assert stats["conversion"]["signalled"]["open"] == 4
    # a: a purchase event within the horizon is attributed to both of a's signals.
    assert (await server.acme.events([{"user_id": "a", "action": "purchase"}])).status == 200
    # b: the third party reports a conversion for one signal.
    signal = (await server.acme.score("b")).body["results"][0]["signal"]
    reply = await server.acme.call("POST", "/v1/feedback", {"feedback": [
        {"signal_id": signal["signal_id"], "outcome": "shown"},
        {"signal_id": signal["signal_id"], "outcome": "converted"}]})
    assert reply.status == 200 and reply.body == {"accepted": 2}
    stats = (await server.acme.call("GET", "/v1/stats")).body
    signalled = stats["conversion"]["signalled"]
    assert signalled["converted"] == 3 and signalled["resolved"] == 3
    assert stats["feedback"] == {"shown": 1, "converted": 1}
    assert stats["bandits"]["cart_abandon_risk"]["alpha"] == [4.0]
    assert stats["signals"]["sent_by_type"] == {"offer_discount": {"10": 5}}


async def test_feedback_is_refused_for_unknown_signals_and_bad_outcomes(start):
    server = await start()
    reply = await server.acme.call("POST", "/v1/feedback", {"feedback": [{"signal_id": "sig_nope", "outcome": "clicked"}]})
    assert reply.status == 400 and reply.body["error"]["code"] == "invalid_feedback"
    assert reply.body["error"]["details"] == [{"index": 0, "field": "signal_id", "reason": "unknown signal"}]
    reply = await server.acme.call("POST", "/v1/feedback", {"feedback": [{"signal_id": "s", "outcome": "liked"}]})
    assert reply.status == 400 and reply.body["error"]["details"][0]["field"] == "outcome"


async def test_signals_of_one_tenant_are_invisible_to_another(start):
    server = await start()
    await server.acme.call("PUT", "/v1/config", only("cart_abandon_risk", 0.4))
    await signal_for(server.acme, "a", ["view", "add_to_cart"])
    signal = (await server.acme.score("a")).body["results"][0]["signal"]
    reply = await server.globex.call("POST", "/v1/feedback", {"feedback": [{"signal_id": signal["signal_id"], "outcome": "converted"}]})
    assert reply.status == 400
    assert (await server.globex.call("GET", "/v1/stats")).body["signals"]["sent"] == 0


async def test_stats_report_the_uplift_with_an_interval(start):
    server = await start()
    await server.acme.call("PUT", "/v1/config", {**only("cart_abandon_risk", 0.4), "holdout_share": 0.5,
                                                 "signal_horizon_s": 60.0})
    users = [f"u{i}" for i in range(60)]
    events = [e for u in users for e in session(u, ["view", "add_to_cart"], time.time() - 20)]
    await server.acme.events(events)
    buyers = [u for u in users if not in_holdout(u, TenantConfig(holdout_share=0.5))][:20]
    await server.acme.events([{"user_id": u, "action": "purchase"} for u in buyers])
    state = await server.runtime.authenticate(server.acme.key)
    await server.runtime.expire_signals(state, time.time() + 61)  # as the sweeper does once the hour has passed
    stats = (await server.acme.call("GET", "/v1/stats")).body["conversion"]
    assert stats["signalled"]["converted"] == 20 and stats["holdout"]["converted"] == 0
    assert stats["signalled"]["open"] == stats["holdout"]["open"] == 0
    lo, hi = stats["difference_ci95"]
    assert lo < stats["difference"] < hi and lo > 0


async def test_signals_and_cooldowns_survive_a_restart(start, tmp_path):
    data_dir = tmp_path / "data"
    server = await start(data_dir)
    await server.acme.call("PUT", "/v1/config", only("cart_abandon_risk", 0.4, cooldown_s=3600.0))
    await signal_for(server.acme, "x", ["view", "add_to_cart"])
    before = (await server.acme.call("GET", "/v1/stats")).body
    await server.client.close()
    again = await start(data_dir)
    after = (await again.acme.call("GET", "/v1/stats")).body
    assert after["signals"] == before["signals"] and after["signals"]["sent"] == 1
    assert (await again.acme.score("x")).body["results"][0]["signal"] is None  # still cooling down


async def test_erasing_a_user_removes_their_signals(start):
    server = await start()
    await server.acme.call("PUT", "/v1/config", only("cart_abandon_risk", 0.4))
    await signal_for(server.acme, "x", ["view", "add_to_cart"])
    assert (await server.acme.call("GET", "/v1/stats")).body["signals"]["sent"] == 2
    assert (await server.acme.call("DELETE", "/v1/users/x")).status == 200
    assert (await server.acme.call("GET", "/v1/stats")).body["signals"]["sent"] == 0


async def test_a_resolution_lost_in_a_crash_is_recovered_from_the_event_log(start, tmp_path):
    import sqlite3

    data_dir = tmp_path / "data"
    server = await start(data_dir)
    await server.acme.call("PUT", "/v1/config", only("cart_abandon_risk", 0.4, cooldown_s=3600.0))
    await signal_for(server.acme, "x", ["view", "add_to_cart"])
    await server.acme.events([{"user_id": "x", "action": "purchase"}])
    assert (await server.acme.call("GET", "/v1/stats")).body["conversion"]["signalled"]["converted"] == 1
    await server.client.close()
    with sqlite3.connect(data_dir / "nudge.sqlite3") as db:  # as if the crash came before the resolution's write
        db.execute("UPDATE signals SET outcome = NULL, resolved_at = NULL")
    again = await start(data_dir)
    stats = (await again.acme.call("GET", "/v1/stats")).body["conversion"]["signalled"]
    assert stats["converted"] == 1 and stats["open"] == 0
