"""The worker on its own: commands in, results, decisions and resolutions out, with no server and no storage."""
import dataclasses
import pickle

import numpy as np
import pytest

from core import Worker
from core import commands as c
from model import Engine, EventBatch, TenantConfig
from model.combiner import resolve

CFG = TenantConfig(holdout_share=0.0)
A = {name: i for i, name in enumerate(CFG.actions)}
T0 = 1_700_000_000.0
TENANT = 7


def events(rows, first_seq=1):
    """(user, action, ts) rows as a batch, and their log sequence numbers."""
    users, actions, ts = zip(*rows)
    batch = EventBatch.build(np.array(users, object), np.array([A[a] for a in actions], np.int32), np.array(ts))
    return batch, np.arange(first_seq, first_seq + len(rows), dtype=np.int64)


def opened(config=CFG, **kw):
    worker = Worker()
    assert worker.handle(c.Open(TENANT, config, **kw)).result.applied_seq == 0
    return worker


def test_worker_scores_in_request_order_with_what_it_applied():
    worker = opened()
    batch, seqs = events([("u1", "view", T0), ("u1", "add_to_cart", T0 + 5), ("u2", "view", T0 + 6)])
    applied = worker.handle(c.Apply(TENANT, batch, seqs, CFG, live=False)).result
    assert (applied.events, applied.applied_seq, applied.users) == (3, 3, 2)
    scored = worker.handle(c.Score(TENANT, ["u2", "nobody", "u1"], [None] * 3, T0 + 10)).result
    rows = pickle.loads(pickle.dumps(scored)).rows()  # as a worker process sends it
    assert [row["user_id"] for row in rows] == ["u2", "nobody", "u1"]
    assert rows[2]["score"] > rows[1]["score"]  # a cart counts; a stranger has the prior
    assert scored.by_model == 0 and scored.decided == []  # no Transformer served: the Markov chain predicted
    assert set(vars(scored)) == {"packed", "decided", "by_model"}  # no arrays cross the pipe


def test_worker_applies_each_logged_event_once():
    worker = opened()
    batch, seqs = events([("u1", "view", T0), ("u1", "view", T0 + 1)])
    assert worker.handle(c.Apply(TENANT, batch, seqs, CFG)).result.events == 2
    again = worker.handle(c.Apply(TENANT, batch, seqs, CFG)).result  # a replay overlapping what was applied
    assert (again.events, again.applied_seq) == (0, 2)


def test_engine_updates_run_joined_give_each_command_its_reply_and_the_same_state():
    rows = [(f"u{i % 3}", "add_to_cart" if i == 4 else "view", T0 + i) for i in range(9)]
    parts = [events(rows[i:i + 3], first_seq=i + 1) for i in range(0, 9, 3)]
    apart, joined = opened(), opened()
    for batch, seqs in parts:
        apart.handle(c.Apply(TENANT, batch, seqs, CFG))
    already, _ = events(rows[:3])  # the first part is in the log twice, as after a replay: applied once
    commands = [c.Apply(TENANT, already, parts[0][1], CFG)] + [c.Apply(TENANT, b, s, CFG) for b, s in parts]
    replies = joined.apply_joined(commands)
    assert [r.result.events for r in replies] == [3, 0, 3, 3]
    assert {r.result.applied_seq for r in replies} == {9} and {r.result.users for r in replies} == {3}
    seconds = [r.result.seconds for r in replies]
    assert all(s == seconds[0] for s in seconds) and seconds[0] > 0  # the update's time, shared by rows
    score = c.Score(TENANT, ["u0", "u1", "u2"], [None] * 3, T0 + 20)
    assert joined.handle(score).result.rows() == apart.handle(score).result.rows()
    assert joined.handle(c.Snapshot(TENANT)).result[1] == apart.handle(c.Snapshot(TENANT)).result[1] == 9


def test_joined_commands_share_one_update_and_meet_the_signal_policy_one_by_one_in_log_order(monkeypatch):
    """A conversion resolves the signals decided before it: each command's conversions and decisions are taken
    after those of the commands before it, and come back in its own reply."""
    worker = opened()
    updates, parts = [], []
    apply, signals = worker.shards[TENANT].engine.apply_observed, Worker._ingest_signals
    monkeypatch.setattr(worker.shards[TENANT].engine, "apply_observed",
                        lambda batch, seqs: updates.append(len(batch)) or apply(batch, seqs))

    def recorded(shard, batch, observed, part, now):
        parts.append(batch.take(part).user_ids.tolist())
        made = signals(shard, batch, observed, part, now)
        return made[0] + [f"decided {len(parts)}"], made[1]

    monkeypatch.setattr(Worker, "_ingest_signals", staticmethod(recorded))
    commands = [events([("u1", "view", T0), ("u2", "view", T0 + 1)], 1), events([("u1", "purchase", T0 + 2)], 3),
                events([("u2", "view", T0 + 3)], 4)]
    replies = worker.apply_joined([c.Apply(TENANT, b, s, CFG) for b, s in commands])
    assert updates == [4]
    assert parts == [["u1", "u2"], ["u1"], ["u2"]]
    assert [r.decisions[-1] for r in replies] == ["decided 1", "decided 2", "decided 3"]
    assert [r.result.events for r in replies] == [2, 1, 1]


def test_worker_recodes_events_committed_under_an_older_config_and_skips_what_it_lacks():
    newer = dataclasses.replace(CFG, actions=(*CFG.actions, "wishlist"))
    worker = opened()
    batch, seqs = events([("u1", "view", T0)])
    recoded = EventBatch.build(batch.user_ids, np.array([newer.actions.index("view")], np.int32), batch.ts)
    assert worker.handle(c.Apply(TENANT, recoded, seqs, newer)).result.events == 1
    wish = EventBatch.build(batch.user_ids, np.array([newer.actions.index("wishlist")], np.int32), batch.ts + 1)
    assert worker.handle(c.Apply(TENANT, wish, seqs + 1, newer)).result.events == 0


def test_worker_decides_for_an_idle_cart_and_feedback_resolves_it_once():
    worker = opened()
    batch, seqs = events([("u1", "add_to_cart", T0)])
    worker.handle(c.Apply(TENANT, batch, seqs, CFG, live=False))
    idle = worker.handle(c.DecideIdle(TENANT, T0, T0 + CFG.cart_idle_s + 1))
    assert [d.user_id for d in idle.decisions] == ["u1"] and not idle.resolutions
    signal_id = idle.decisions[0].signal_id
    first = worker.handle(c.Feedback(TENANT, [(signal_id, T0 + 2000), (signal_id, T0 + 2001)]))
    assert [(r.signal_id, r.converted) for r in first.resolutions] == [(signal_id, True)]
    assert worker.handle(c.Feedback(TENANT, [(signal_id, T0 + 2002)])).resolutions == []


def test_worker_snapshot_opens_to_the_same_scores():
    worker = opened()
    batch, seqs = events([(f"u{i % 5}", ("view", "add_to_cart", "search")[i % 3], T0 + i) for i in range(40)])
    worker.handle(c.Apply(TENANT, batch, seqs, CFG, live=False))
    capture, applied_seq, settings = worker.handle(c.Snapshot(TENANT)).result
    capture = resolve(capture)  # what the snapshot writer does, off the worker's thread
    assert applied_seq == 40 and settings == CFG.engine_dict()
    restarted = Worker()
    assert restarted.handle(c.Open(TENANT, CFG, capture, erased=("u3",))).result.applied_seq == 40
    users = [f"u{i}" for i in range(5)]
    before = worker.handle(c.PosteriorScores(TENANT, users, T0 + 60)).result
    after = restarted.handle(c.PosteriorScores(TENANT, users, T0 + 60)).result
    np.testing.assert_allclose(np.delete(after, 3), np.delete(before, 3))
    assert restarted.handle(c.View(TENANT, "u3", T0 + 60)).result is None  # erased since the snapshot


def test_worker_open_reports_a_snapshot_it_cannot_use():
    stale = resolve(Engine(CFG).capture())
    del stale["tables.alpha"]
    assert Worker().handle(c.Open(TENANT, CFG, stale)).result.problem
    broken = {**resolve(Engine(CFG).capture()), "scalars": np.zeros(2)}
    assert Worker().handle(c.Open(TENANT, CFG, broken)).result.unreadable


def test_worker_swap_forgets_users_erased_while_the_engine_was_rebuilt():
    worker = opened()
    batch, seqs = events([("keep", "view", T0), ("gone", "view", T0 + 1)])
    worker.handle(c.Apply(TENANT, batch, seqs, CFG, live=False))
    wider = dataclasses.replace(CFG, window_size=CFG.window_size + 1)
    rebuilt = Engine(wider)
    rebuilt.apply(batch, seqs)  # read from the log before the erasure deleted the user's events
    worker.handle(c.Rebuilding(TENANT, started=True))
    assert worker.handle(c.Erase(TENANT, "gone")).result is True
    worker.handle(c.Swap(TENANT, rebuilt, wider))
    assert worker.shards[TENANT].engine is rebuilt and rebuilt.config == wider
    assert worker.handle(c.View(TENANT, "gone", T0 + 2)).result is None
    assert worker.handle(c.View(TENANT, "keep", T0 + 2)).result["user_id"] == "keep"


def test_worker_counts_new_users_only_past_the_limit():
    worker = opened()
    batch, seqs = events([("a", "view", T0), ("b", "view", T0)])
    worker.handle(c.Apply(TENANT, batch, seqs, CFG, live=False))
    assert worker.handle(c.CountNewUsers(TENANT, ["a", "c", "c"], limit=3)).result is None
    assert worker.handle(c.CountNewUsers(TENANT, ["a", "c", "d"], limit=3)).result == (2, 2)


@pytest.mark.parametrize("command", [
    c.Open(TENANT, CFG), c.Apply(TENANT, *events([("u", "view", T0)]), CFG), c.Score(TENANT, ["u"], [None], T0),
    c.Feedback(TENANT, [("s", T0)]), c.Erase(TENANT, "u"), c.Reconfigure(TENANT, CFG), c.Snapshot(TENANT),
    c.ServeModel(TENANT, None), c.DecideIdle(TENANT, T0, T0 + 1),
])
def test_commands_are_frozen_data_that_travel_between_processes(command):
    with pytest.raises(dataclasses.FrozenInstanceError):
        command.tenant_id = 1
    assert type(pickle.loads(pickle.dumps(command))) is type(command)
