import numpy as np
import pytest

from model import EventBatch, TenantConfig
from model.replay import auc, conversion_labels
from server.codecs import JSON, MSGPACK, decode, encode
from server.errors import ApiError
from server.ratelimit import TokenBucket


def test_token_bucket_allows_bursts_then_asks_to_wait():
    now = [0.0]
    bucket = TokenBucket(rate_per_s=2.0, burst=3.0, clock=lambda: now[0])
    assert [bucket.take() for _ in range(3)] == [None, None, None]
    assert bucket.take() == 1.0
    now[0] += 0.5
    assert bucket.take() is None
    assert TokenBucket(0.0, 0.0).take() is None


def test_codecs_round_trip_and_reject_garbage():
    payload = {"a": [1, 2.5, "x", None], "b": {"c": True}}
    for fmt in (JSON, MSGPACK):
        assert decode(encode(payload, fmt), fmt) == payload
        with pytest.raises(ApiError) as info:
            decode(b"\xc1\xff{", fmt)
        assert info.value.code == "malformed_body"
    assert decode(encode({"x": float("nan")}, JSON), JSON) == {"x": None}
    assert encode(np.float32(0.5), JSON) == b"0.5"


def test_conversion_labels_and_censoring_on_a_toy_stream():
    cfg = TenantConfig()
    names = ["view", "purchase", "view", "view", "purchase"]
    b = EventBatch.build(["a", "a", "b", "a", "b"], [cfg.actions.index(n) for n in names], [0, 100, 150, 200, 1000])
    label, observed = conversion_labels(b, cfg.conversion_code, 300.0)
    assert label.tolist() == [True, False, False, False, False]
    assert observed.tolist() == [True, True, True, True, False]


def test_auc_matches_hand_computed_values():
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([False, False, True, True])) == 0.75
    assert auc(np.array([0.5, 0.5]), np.array([False, True])) == 0.5
    assert np.isnan(auc(np.array([0.5]), np.array([True])))


def test_each_worker_process_gets_its_share_of_the_cores_for_math_threads():
    from server.worker_process import threads_per_worker

    assert threads_per_worker(1, cores=2) == 1  # the server's process keeps a core
    assert threads_per_worker(1, cores=16) == 15
    assert threads_per_worker(8, cores=16) == 1
    assert threads_per_worker(4, cores=16) == 3
    assert threads_per_worker(32, cores=16) == 1


def test_a_worker_process_holds_its_thread_pools_to_its_share():
    import json
    import os
    import subprocess
    import sys

    probe = ("import numpy, json, os\n"
             "from threadpoolctl import threadpool_info\n"
             "from server.worker_process import limit_threads\n"
             "limit_threads(1)\n"
             "import torch\n"
             "print(json.dumps([[p['user_api'], p['num_threads']] for p in threadpool_info()] + "
             "[['torch', torch.get_num_threads()], ['omp', int(os.environ['OMP_NUM_THREADS'])]]))\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")})
    pools = json.loads(out.stdout.strip().splitlines()[-1])
    assert pools and all(threads == 1 for _, threads in pools), pools
