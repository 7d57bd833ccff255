import msgpack
import numpy as np
import pytest

from core.score_rows import RowPacker, packed_results, packed_rows, result_rows
from model.decisions import Prediction

ACTIONS = ("view", "search", "add_to_cart", "purchase")


def prediction(rng, n, width, dtype=np.float64, by_model=None):
    return Prediction(
        score=rng.random(n).astype(dtype),
        score_draw=rng.random(n),
        next_probs=rng.random((n, width)).astype(dtype),
        purchase_5m=rng.random(n).astype(dtype),
        purchase_60m=rng.random(n),
        by_model=rng.random(n) < 0.5 if by_model is None else np.full(n, by_model),
        users=np.arange(n),
    )


def signals(n):
    return [None if i % 3 else {"type": "discount", "value": np.float32(0.25), "id": f"s{i}", "n": np.int64(i)}
            for i in range(n)]


@pytest.mark.parametrize("n", [1, 2, 31, 32, 100, 1024])
@pytest.mark.parametrize("width", [len(ACTIONS), len(ACTIONS) + 1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_records_pack_the_same_bytes_as_a_dict_per_user(n, width, dtype):
    rng = np.random.default_rng(n * width)
    p = prediction(rng, n, width, dtype)
    user_ids = [("ü" * (i % 4)) + f"user-{i}" + "x" * (i % 40) for i in range(n)]
    expected = packed_rows(result_rows(ACTIONS, user_ids, p, signals(n)))
    assert RowPacker(ACTIONS).pack(user_ids, p, signals(n)) == expected
    assert packed_results(ACTIONS, user_ids, p, signals(n)) == expected


def test_rows_of_one_predictor_only_and_values_at_the_edges():
    rng = np.random.default_rng(7)
    for by_model, width in ((True, 5), (False, 5), (False, 4)):
        p = prediction(rng, 50, width, by_model=by_model)
        p.next_probs[0] = [0.0] * width
        p.score[:3] = [np.nan, np.inf, -0.0]
        user_ids = [f"u{i}" for i in range(50)]
        rows = RowPacker(ACTIONS).pack(user_ids, p, [None] * 50)
        assert rows == packed_rows(result_rows(ACTIONS, user_ids, p, [None] * 50))
        decoded = msgpack.unpackb(rows[0])
        assert decoded["predicted"]["predictor"] == ("transformer" if by_model else "markov")
        assert np.isnan(decoded["score"]) and decoded["signal"] is None
    assert RowPacker(ACTIONS).pack([], prediction(rng, 0, 4), []) == []
