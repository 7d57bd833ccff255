from model.signals import Decision, Resolution
from server.storage import Store


def decision(signal_id, user, created_at, withheld=False, variant="10"):
    return Decision(signal_id, user, "cart_abandon_risk", "offer_discount", variant, {"discount_pct": 10.0}, 0.5,
                    created_at, withheld)


def test_signal_log_reads_in_order_resolves_once_and_purges_but_keeps_bandit_evidence(tmp_path):
    store = Store(tmp_path)
    try:
        store.write_signals([(1, [decision("s1", "a", 100.0), decision("s2", "b", 200.0, withheld=True),
                                  decision("s3", "c", 300.0)], [])])
        store.write_signals([(2, [decision("other", "a", 100.0)], [])])
        rows = store.read_signals(1, 0, 10)
        assert [s["signal_id"] for _, s in rows] == ["s1", "s3"]  # withheld ones are never delivered
        assert store.read_signals(1, rows[0][0], 10)[0][1]["signal_id"] == "s3"
        # The same resolution twice (say, feedback and an attributed conversion) counts once.
        store.write_signals([(1, [], [Resolution("s1", True, 150.0), Resolution("s1", True, 151.0),
                                      Resolution("s2", False, 250.0)])])
        _, rewards = store.policy_rows(1, since=0.0)
        assert rewards == [("cart_abandon_risk", "10", 1.0, 0.0)]  # the withheld one teaches no arm
        assert store.purge_signals(before=250.0) == 3
        assert [s["signal_id"] for _, s in store.read_signals(1, 0, 10)] == ["s3"]
        assert store.policy_rows(1, since=0.0)[1] == rewards
    finally:
        store.close()
