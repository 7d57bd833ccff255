import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from .test_crash import free_port

ROOT = Path(__file__).resolve().parents[2]
TAOBAO = ROOT.parent / "shared" / "data" / "taobao-userbehavior-slice" / "UserBehavior_slice.csv"


def nudge(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "server.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=300, **kwargs)


def _ingest_once_ready(port: int, key: str) -> None:
    """Wait for the server to be ready, then send one event with ``key``: the key must work."""
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz") as r:
                if json.load(r)["ready"]:
                    break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/events", method="POST",
        data=json.dumps({"events": [{"user_id": "first", "action": "view"}]}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as r:
        assert json.load(r) == {"accepted": 1, "duplicates": 0}


def test_tenant_create_prints_the_key_last_and_refuses_duplicates(tmp_path):
    made = nudge("tenant", "create", "shop-1", "--data-dir", str(tmp_path))
    assert made.returncode == 0
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("nk_") and len(key) > 40
    again = nudge("tenant", "create", "shop-1", "--data-dir", str(tmp_path))
    assert again.returncode == 2 and "exists already" in again.stderr
    db = (tmp_path / "nudge.sqlite3").read_bytes()
    assert key.encode() not in db  # only the hash is stored


def test_serve_on_an_empty_data_dir_creates_a_demo_tenant_whose_key_works(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--data-dir", str(tmp_path / "d"), "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        key = lines[1].strip()
        assert "demo" in lines[0] and key.startswith("nk_")
        banner = next(line for line in iter(proc.stdout.readline, "") if line.startswith("nudge serving on"))
        # No --workers: as many worker processes as fit the machine (one on CI's two cores).
        from server.config import workers_for

        from .test_crash import worker_pids

        workers = workers_for()
        assert f"; {workers or 'no'} worker process" in banner, banner
        _ingest_once_ready(port, key)
        assert len(worker_pids(proc.pid)) == workers
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0  # a clean stop on SIGTERM
    assert (tmp_path / "d" / "snapshots" / "tenant-1.npz").exists()


def test_replay_reports_the_score_and_every_baseline_with_user_bootstrap_intervals(tmp_path):
    # Converters put something in the cart, look at it again and buy; the others look twice and leave.
    rows, t = [], 1_511_658_000
    for u in range(600):
        first, then = ("cart", "buy") if u % 2 else ("pv", None)
        rows.append(f"{u},1,1,{first},{t + 10 * u}")
        rows.append(f"{u},1,1,pv,{t + 10 * u + 30}")
        if then:
            rows.append(f"{u},1,1,{then},{t + 10 * u + 60}")
    rows.append(f"9999,1,1,pv,{t + 10 * 600 + 400}")  # so the last 5-minute horizons are observed
    path = tmp_path / "events.csv"
    path.write_text("\n".join(rows) + "\n")
    out = nudge("replay", "--data", str(path), "--format", "taobao", "--json", "--replicates", "50")
    assert out.returncode == 0, out.stderr
    assert "NaN" not in out.stdout
    report = json.loads(out.stdout)
    assert report["events"] == len(rows)
    rows_by_name = {r["predictor"]: r for r in report["rows"]}
    assert set(rows_by_name) == {"score", "purchase_5m", "purchase_60m", "markov", "heuristic_weights",
                                 "purchases_so_far", "events_last_30m", "logistic_counts"}
    for name, row in rows_by_name.items():
        if name != "purchase_60m":
            lo, hi = row["auc_5m_ci"]
            assert 0.0 <= lo <= row["auc_5m"] <= hi <= 1.0
    score = rows_by_name["score"]
    for metric in ("logloss", "brier", "ece", "calibration_slope"):
        assert score[f"{metric}_5m"] is not None
    assert {c["baseline"] for c in report["comparisons"]} == set(rows_by_name) - {"score", "purchase_5m",
                                                                                 "purchase_60m"}
    assert report["labels"]["5m"]["positives"] == 600  # a converter's cart and look both precede the buy
    # Every cart was followed by a purchase, a look only by one half of the time.
    assert report["weights"]["add_to_cart"] > 0.9
    assert 0.3 < report["weights"]["view"] < 0.6
    assert rows_by_name["purchase_5m"]["auc_5m"] > 0.9  # learned: a cart means a purchase within the minute


def test_replay_rejects_an_unknown_format_and_bad_rows(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("1,2,3,jump,1511658000\n")
    out = nudge("replay", "--data", str(path))
    assert out.returncode == 2 and "unknown behaviors" in out.stderr


@pytest.mark.skipif(not TAOBAO.exists(), reason="../shared/data is not present")
def test_replay_runs_on_the_real_taobao_slice():
    out = nudge("replay", "--data", str(TAOBAO), "--format", "taobao", "--limit", "15000", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["events"] == 15000
    # Real behaviour: purchases are followed by purchases more often than views are.
    assert report["weights"]["purchase"] > report["weights"]["view"]


def test_train_then_evaluate_from_the_command_line(tmp_path):
    rows, t = [], 1_511_658_000
    for u in range(240):
        rows += [f"{u},1,{u % 7},pv,{t + 20 * u}", f"{u},2,{u % 7},cart,{t + 20 * u + 15}"]
        if u % 3 == 0:
            rows.append(f"{u},2,{u % 7},buy,{t + 20 * u + 40}")
    rows.append(f"999,1,1,pv,{t + 20 * 240 + 2000}")
    path = tmp_path / "events.csv"
    path.write_text("\n".join(sorted(rows, key=lambda r: int(r.rsplit(",", 1)[1]))) + "\n")
    model = tmp_path / "m.pt"
    trained = nudge("train", "--data", str(path), "--format", "taobao", "--until-frac", "0.8", "--session-gap-s", "300",
                    "--epochs", "3", "--out", str(model), "--quiet")
    assert trained.returncode == 0, trained.stderr[-2000:]
    summary = json.loads(trained.stdout)
    assert set(summary["validation_metrics"]) == {"transformer", "markov", "popularity"}
    assert "epoch 1:" in trained.stderr
    plots = tmp_path / "plots"
    out = nudge("evaluate", "--model", str(model), "--data", str(path), "--format", "taobao", "--from-frac", "0.5", "--json",
                "--plots", str(plots))
    assert out.returncode == 0, out.stderr[-2000:]
    for chart in ("calibration.png", "lift.png"):
        assert (plots / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads(out.stdout)
    for name in ("transformer", "markov", "popularity"):
        metrics = result[name]
        assert {"next_action_logloss", "next_action_top1", "purchase_5m_auc", "purchase_60m_auc", "n_events",
                "next_action_censored", "purchase_5m_censored", "purchase_60m_censored"} <= set(metrics)
        assert metrics["n_events"] > 0 and metrics["purchase_60m_censored"] == metrics["n_events"]
    bad = nudge("evaluate", "--model", str(model), "--data", str(path), "--from-frac", "1.5")
    assert bad.returncode == 2 and "between 0 and 1" in bad.stderr


def test_train_from_a_tenants_log_writes_the_served_checkpoint_and_export_round_trips(tmp_path):
    import torch

    from model import EventBatch, TenantConfig
    from server.storage import Store

    data_dir = tmp_path / "data"
    store = Store(data_dir)
    config = TenantConfig(session_gap_s=300.0)
    tenant, _ = store.create_tenant("shop", config)
    rng = np.random.default_rng(0)
    n, t0 = 1200, time.time() - 86400
    users = [f"u{i}" for i in rng.integers(0, 60, n)]
    batch = EventBatch.build(users, rng.integers(0, len(config.actions), n), np.sort(t0 + rng.uniform(0, 20000, n)))
    store.append([(tenant.id, batch, config)])
    store.close()
    assert nudge("train", "--data-dir", str(data_dir)).returncode == 2  # --tenant is required
    trained = nudge("train", "--data-dir", str(data_dir), "--tenant", "shop", "--epochs", "1", "--quiet")
    assert trained.returncode == 0, trained.stderr[-2000:]
    checkpoint = torch.load(data_dir / "models" / "shop.pt", weights_only=True)
    assert checkpoint["vocabulary"] == list(config.actions)
    assert checkpoint["tenant_config"]["session_gap_s"] == 300.0 and checkpoint["data"]["events"] == n
    exported = tmp_path / "shop.jsonl"
    out = nudge("export", "--data-dir", str(data_dir), "--tenant", "shop", "--out", str(exported))
    assert out.returncode == 0 and len(exported.read_text().splitlines()) == n
    again = nudge("train", "--data", str(exported), "--format", "nudge", "--epochs", "1", "--quiet",
                  "--out", str(tmp_path / "again.pt"))
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads(again.stdout)["data"]["events"] == n
    missing = nudge("train", "--data-dir", str(data_dir), "--tenant", "nobody")
    assert missing.returncode == 2 and "no tenant 'nobody'" in missing.stderr


def test_serve_that_fails_to_start_keeps_the_demo_key_for_the_next_start(tmp_path):
    data_dir = tmp_path / "d"
    no_gpu = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, "CUDA_VISIBLE_DEVICES": ""}
    failed = nudge("serve", "--backend", "triton", "--data-dir", str(data_dir), "--port", str(free_port()), env=no_gpu)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr[-2000:]
    assert "backend 'triton' needs a CUDA device" in failed.stderr and "--backend numpy" in failed.stderr
    assert "nk_" not in failed.stdout  # checked before a key was handed out
    with socket.socket() as taken:  # a failure only found once the server starts: the port is in use
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = nudge("serve", "--backend", "numpy", "--data-dir", str(data_dir), "--port", str(taken.getsockname()[1]))
    assert busy.returncode == 2 and "address already in use" in busy.stderr, busy.stderr[-2000:]
    assert "Traceback" not in busy.stderr and "nk_" in busy.stdout
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--backend", "numpy", "--data-dir", str(data_dir),
         "--port", str(port)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines = [proc.stdout.readline() for _ in range(2)]
        key = lines[1].strip()
        assert "demo" in lines[0] and key.startswith("nk_") and key not in busy.stdout
        _ingest_once_ready(port, key)
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.returncode == 0


def yoochoose_folder(folder: Path) -> Path:
    folder.mkdir()
    (folder / "clicks.csv").write_text("Session_ID,Timestamp,Item_ID,Category\n"
                                       "1,2014-04-07 10:51:09.277,214536502,0\n2,2014-04-07 10:52:00.000,214536500,0\n")
    (folder / "buys.csv").write_text("Session_ID,Timestamp,Item_ID,Price,Quantity\n"
                                     "1,2014-04-07 10:54:09.868,214536502,12,1\n")
    return folder


def test_replay_of_another_format_without_format_says_what_taobao_looks_like_and_how_to_pick(tmp_path):
    folder = yoochoose_folder(tmp_path / "yoochoose")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("1,2,3,pv,1511658000\n1,2,3,pv,1511658001,extra\n")
    no_time = tmp_path / "no_time.csv"
    no_time.write_text("1,2,3,pv,1511658000\n1,2,3,pv,yesterday\n")
    for path, problem in ((folder, "is a folder"), (folder / "clicks.csv", "expected 5 columns, got 4"),
                          (folder / "buys.csv", "unknown behaviors ['12', 'Price']"),
                          (ragged, "the number of columns changed"), (no_time, "'yesterday' in row 2")):
        out = nudge("replay", "--data", str(path), "--quiet")
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert problem in out.stderr and "user,item,category,behavior,timestamp" in out.stderr
        assert "--format (taobao, retailrocket, yoochoose, jdata, rees46, otto, nudge)" in out.stderr
    named = nudge("replay", "--data", str(folder), "--format", "yoochoose", "--json", "--replicates", "5", "--quiet")
    assert named.returncode == 0, named.stderr[-2000:]
    assert json.loads(named.stdout)["events"] == 3


def test_cli_mistakes_end_in_one_error_line_that_says_the_fix(tmp_path, capsys):
    from server.cli import main

    def run(args):
        """(exit status, stderr) of the command run in this process: an uncaught exception fails the test."""
        try:
            status = main(args)
        except SystemExit as exc:  # argparse's refusals
            status = exc.code
        return status, capsys.readouterr().err

    events = tmp_path / "events.csv"
    events.write_text("1,2,3,pv,1511658000\n1,2,3,buy,1511658060\n")
    nowhere = tmp_path / "nowhere"
    for args, says in (
        (["replay", "--data", str(tmp_path / "missing.csv")], "missing.csv not found"),
        (["replay", "--data", str(events), "--limit", "0"], "argument --limit: must be at least 1, got 0"),
        (["train", "--data", str(events), "--out", str(tmp_path / "m.pt"), "--epochs", "0"],
         "argument --epochs: must be at least 1"),
        (["train", "--data", str(events), "--out", str(tmp_path / "m.pt"), "--batch-size", "0"],
         "argument --batch-size: must be at least 1"),
        (["evaluate", "--model", str(tmp_path / "m.pt"), "--data", str(events), "--from-frac", "0"],
         "argument --from-frac: must lie strictly between 0 and 1, got 0"),
        (["evaluate", "--model", str(tmp_path / "m.pt"), "--data", str(events), "--from-frac", "1.5"],
         "strictly between 0 and 1, got 1.5"),
        (["export", "--data-dir", str(nowhere), "--tenant", "shop", "--out", str(tmp_path / "x.jsonl")],
         f"{nowhere} holds no nudge database (nudge.sqlite3); pass the --data-dir the server uses"),
        (["train", "--data-dir", str(nowhere), "--tenant", "shop"], "holds no nudge database"),
    ):
        status, stderr = run(args)
        assert status == 2 and says in stderr, (args, stderr[-2000:])
    assert not nowhere.exists()  # a mistyped --data-dir is not made into an empty one


def strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_every_json_output_is_strict_json_without_nan(tmp_path):
    # Nobody buys: every purchase metric is undefined, and must come out as null.
    rows = [f"{u},{u % 3},1,{a},{1_511_658_000 + 20 * u + i}" for u in range(120) for i, a in enumerate(("pv", "cart"))]
    events = tmp_path / "events.csv"
    events.write_text("\n".join(rows) + "\n")
    obd = tmp_path / "obd" / "random" / "all"
    obd.mkdir(parents=True)
    (obd / "all.csv").write_text("item_id,click,propensity_score\n" + "".join(f"{i % 3},0,0.3333\n" for i in range(30)))
    model = tmp_path / "m.pt"
    outputs = {
        "replay": nudge("replay", "--data", str(events), "--json", "--replicates", "5", "--quiet"),
        "train": nudge("train", "--data", str(events), "--out", str(model), "--epochs", "1", "--quiet"),
        "replay-bandit": nudge("replay-bandit", "--data", str(tmp_path / "obd"), "--runs", "2", "--json"),
        "replay --policy": nudge("replay", "--data", str(events), "--policy", "--json", "--quiet"),
    }
    outputs["evaluate"] = nudge("evaluate", "--model", str(model), "--data", str(events), "--json", "--replicates", "5",
                                "--quiet")
    parsed = {}
    for command, out in outputs.items():
        assert out.returncode == 0, (command, out.stderr[-2000:])
        parsed[command] = strict_json(out.stdout)
    assert parsed["replay-bandit"][0]["ts_over_random"] is None  # no click: the ratio is undefined
    assert parsed["evaluate"]["markov"]["purchase_5m_auc"] is None
    policy = parsed["replay --policy"]
    assert (policy["users"], policy["users_with_cart"]) == (120, 120) and len(policy["rows"]) == 5
    assert next(r for r in policy["rows"] if r["intent"] == "purchase_likely")["share_of_carts"] is None


def test_an_export_of_a_tenant_with_its_own_actions_replays_from_the_file(tmp_path):
    from model import DEFAULT_ACTIONS, EventBatch, TenantConfig
    from server.storage import Store

    data_dir = tmp_path / "data"
    store = Store(data_dir)
    config = TenantConfig(actions=DEFAULT_ACTIONS + ("wishlist",))
    tenant, _ = store.create_tenant("shop", config)
    names = ["view", "wishlist", "add_to_cart", "purchase"] * 30
    t0 = time.time() - 86400
    batch = EventBatch.build([f"u{i // 4}" for i in range(len(names))], [config.actions.index(a) for a in names],
                             t0 + 10.0 * np.arange(len(names)))
    store.append([(tenant.id, batch, config)])
    store.close()
    exported = tmp_path / "shop.jsonl"
    assert nudge("export", "--data-dir", str(data_dir), "--tenant", "shop", "--out", str(exported)).returncode == 0
    out = nudge("replay", "--data", str(exported), "--format", "nudge", "--json", "--replicates", "5", "--quiet")
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["events"] == len(names)
    assert list(report["weights"]) == [*DEFAULT_ACTIONS, "wishlist"]
    no_purchase = tmp_path / "no_purchase.jsonl"
    kept = [line for line in exported.read_text().splitlines() if '"purchase"' not in line]
    no_purchase.write_text("".join(line + "\n" for line in kept))
    refused = nudge("replay", "--data", str(no_purchase), "--format", "nudge", "--quiet")
    assert refused.returncode == 2 and "no event has the action 'purchase'" in refused.stderr, refused.stderr[-2000:]
