"""Intents, signals, cooldown, cap, holdout, feedback, attribution and stats through the real app."""
import asyncio
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
        "holdout_share": 0.0, "cooldown_s": 0.0, "daily_cap": 1000,
        "cart_idle_s": 5.0,  # the carts of these tests were filled seconds ago: abandoned already
        **extra,
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
    # The ingest already decided; the score answer shows that signal (one truth per user), not a new one.
    first = await signal_for(server.acme, "x", ["view", "add_to_cart"])
    assert first is not None
    again = (await server.acme.score("x")).body["results"][0]["signal"]
    assert again["signal_id"] == first["signal_id"]  # cooling down: no second signal
    await server.acme.call("PUT", "/v1/config", {"cooldown_s": 0.0, "daily_cap": 2})
    replies = [(await server.acme.score("x")).body["results"][0]["signal"]["signal_id"] for _ in range(3)]
    # One more decision (the cap is 2 a day, the ingest made one); then the answer keeps showing it.
    assert replies[0] != first["signal_id"] and replies[1] == replies[2] == replies[0]


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
    later = time.time() + 61  # as the sweeper does, and stats see, once the horizon has passed
    await server.runtime.expire_signals(state, later)
    stats = (await server.runtime.stats(state, now=later))["conversion"]
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
    # Still cooling down: no new signal, and the open one is what the answer shows, as before the restart.
    shown = (await again.acme.score("x")).body["results"][0]["signal"]
    assert shown is not None and after["signals"]["sent"] == 1
    assert (await again.acme.call("GET", "/v1/stats")).body["signals"]["sent"] == 1


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


async def test_stats_rates_cover_complete_cohorts_only_while_conversions_come_early(start):
    server = await start()
    await server.acme.call("PUT", "/v1/config", {**only("needs_help", 0.3, cooldown_s=3600.0), "holdout_share": 0.5,
                                                 "signal_horizon_s": 60.0})
    await crowd(server.acme, ["view", "help_view", "help_view", "help_view"])
    config = TenantConfig(holdout_share=0.5)

    async def wave(name, n, buyers_signalled, buyers_held):
        """n users decided on at once, some of whom convert right after; (signalled, held) user counts."""
        users = [f"{name}{i}" for i in range(n)]
        assert (await server.acme.events(
            [e for u in users for e in session(u, ["view", "help_view"], time.time() - 20)])).status == 200
        signalled = [u for u in users if not in_holdout(u, config)]
        held = [u for u in users if in_holdout(u, config)]
        buyers = signalled[:buyers_signalled] + held[:buyers_held]
        assert (await server.acme.events([{"user_id": u, "action": "purchase"} for u in buyers])).status == 200
        return len(signalled), len(held)

    n1, h1 = await wave("early", 40, 6, 2)
    assert n1 > 6 and h1 > 2
    # Right after: the conversions are closed, the misses still open. No horizon has closed: no rate yet, not 1.0.
    stats = (await server.acme.call("GET", "/v1/stats")).body["conversion"]
    assert stats["signalled"]["decisions"] == n1 and stats["holdout"]["decisions"] == h1
    assert stats["signalled"]["converted"] == 6 and stats["signalled"]["open"] == n1 - 6
    assert stats["signalled"]["conversion_rate"] is None and stats["holdout"]["conversion_rate"] is None
    assert stats["difference"] is None and stats["cohort"]["decisions"] == 0
    boundary = time.time()
    n2, h2 = await wave("late", 20, 20, 0)  # every signalled user of the second wave converts at once
    later = boundary + 60.0  # the first wave's horizons have closed, the second's have not
    state = await server.runtime.authenticate(server.acme.key)
    await server.runtime.expire_signals(state, later)
    stats = (await server.runtime.stats(state, now=later))["conversion"]
    signalled, holdout = stats["signalled"], stats["holdout"]
    assert stats["cohort"] == {"decided_before": later - 60.0, "decisions": n1 + h1}
    assert signalled["cohort"] == {"decisions": n1, "converted": 6}
    assert signalled["conversion_rate"] == 6 / n1  # over closed decisions it would be (6 + n2) / (n1 + n2)
    assert holdout["conversion_rate"] == 2 / h1 and holdout["withheld"] == h1 + h2
    assert signalled["converted"] == 6 + n2 and signalled["expired"] == n1 - 6 and signalled["open"] == 0
    assert holdout["open"] == h2
    assert stats["difference"] == 6 / n1 - 2 / h1
    lo, hi = stats["difference_ci95"]
    assert -1.0 <= lo < stats["difference"] < hi <= 1.0


async def test_stats_funnel_counts_received_and_handled_feedback_per_signal_type(start):
    server = await start()
    await server.acme.call("PUT", "/v1/config", only("needs_help", 0.3))
    await crowd(server.acme, ["view", "help_view", "help_view", "help_view"])
    a = (await signal_for(server.acme, "a", ["view", "help_view"]))["signal_id"]
    b = (await signal_for(server.acme, "b", ["view", "help_view"]))["signal_id"]
    await server.acme.call("PUT", "/v1/config", {"cooldown_s": 3600.0})  # no more decisions for a and b
    # One report per step, as the third party's systems learn them; a retried report counts once.
    for reports in ([(a, "received"), (b, "received")], [(a, "received"), (a, "handled")], [(a, "shown")],
                    [(b, "handled"), (b, "clicked")], [(b, "converted")], [(b, "dismissed")]):
        reply = await server.acme.call("POST", "/v1/feedback", {"feedback": [
            {"signal_id": sid, "outcome": outcome} for sid, outcome in reports]})
        assert reply.status == 200 and reply.body == {"accepted": len(reports)}
    # a's purchase is attributed to both of a's signals (ingest and score each decided once); b's by report.
    assert (await server.acme.events([{"user_id": "a", "action": "purchase"}])).status == 200
    stats = (await server.acme.call("GET", "/v1/stats")).body
    steps = {"sent": 4, "received": 2, "handled": 2, "shown": 1, "clicked": 1, "converted": 3, "dismissed": 1}
    assert stats["funnel"] == {**steps, "by_type": {"proactive_support": steps}}
    assert stats["feedback"] == {"received": 3, "handled": 2, "shown": 1, "clicked": 1, "converted": 1,
                                 "dismissed": 1}


async def test_an_abandoned_cart_gets_its_discount_when_the_user_goes_quiet_not_at_the_add(start):
    server = await start(signal_sweep_s=0.2)
    await server.acme.call("PUT", "/v1/config", only("cart_abandon_risk", 0.4, cart_idle_s=1.0, cooldown_s=3600.0))
    now = time.time()
    assert (await server.acme.events([{"user_id": "q", "action": "view", "ts": now - 0.5},
                                      {"user_id": "q", "action": "add_to_cart", "ts": now}])).status == 200
    assert (await server.acme.call("GET", "/v1/signals")).body["signals"] == []  # not at the moment of the add
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        signals = (await server.acme.call("GET", "/v1/signals")).body["signals"]
        if signals:
            break
        await asyncio.sleep(0.2)
    assert [(s["user_id"], s["type"]) for s in signals] == [("q", "offer_discount")]
    shown = (await server.acme.score("q")).body["results"][0]["signal"]
    assert shown["signal_id"] == signals[0]["signal_id"]  # the score answer shows the signal the sweep sent


async def test_bandits_route_shows_allocation_and_its_history(start):
    server = await start()
    await server.acme.call("PUT", "/v1/config", only("cart_abandon_risk", 0.4, discount_tiers_pct=[5, 10],
                                                     bandit_min_outcomes=10))
    users = [f"b{i}" for i in range(12)]
    events = [e for u in users for e in session(u, ["view", "add_to_cart"], time.time() - 20)]
    assert (await server.acme.events(events)).status == 200
    body = (await server.acme.call("GET", "/v1/bandits")).body
    cart = body["bandits"]["cart_abandon_risk"]
    assert cart["variants"] == ["5", "10"] and cart["allocation"] == "even" and cart["min_outcomes"] == 10
    sent = {a["variant"]: a["signals"] for a in body["allocations"] if a["intent"] == "cart_abandon_risk"}
    assert sum(sent.values()) == 12 and set(sent) <= {"5", "10"} and body["period_s"] == 3600.0
