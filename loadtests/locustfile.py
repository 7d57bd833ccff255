"""Load profiles for nudge, in msgpack, with locust's fast HTTP user.

    locust -f loadtests/locustfile.py --headless -u 50 -r 50 -t 60s --host http://127.0.0.1:8080 \\
        --api-key "$NUDGE_API_KEY" MixedUser

Profiles (pick one or more by class name; without one, locust runs all three, weighted):
- ``IngestHeavyUser``: batches of 100-1000 events, row-wise or column-wise;
- ``ScoreHeavyUser``: single users and batches of 100;
- ``MixedUser``: small ingests, scores, feedback on the signals it received, and signal pulls.

One locust worker tops out near 5k requests/s on a small machine: add ``--processes N`` when the load
generator must not be the bottleneck. The bodies come from ``loadtests/bodies.py``, which ``loadtests.bench``
shares without needing locust.
"""
from __future__ import annotations

import itertools
import os
import random
import sys
from pathlib import Path

import msgpack
from locust import FastHttpUser, between, events, task

# locust loads this file by its path: the repo root makes the shared body builders importable from any directory.
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parents[1]))
from loadtests.bodies import events_body, score_body

MSGPACK = "application/msgpack"
ALL_STATUSES = frozenset(range(100, 600))


@events.init_command_line_parser.add_listener
def _arguments(parser):
    parser.add_argument("--api-key", default=os.environ.get("NUDGE_API_KEY", ""), help="a tenant's API key")


def _error_code(body: bytes) -> str:
    """The machine-readable code of an error answer, for locust's failure table."""
    try:
        return str(msgpack.unpackb(body)["error"]["code"])
    except Exception:  # not a nudge error body (a proxy's page, a cut connection)
        return "?"


class _NudgeUser(FastHttpUser):
    abstract = True

    def on_start(self) -> None:
        self.rng = random.Random()
        key = self.environment.parsed_options.api_key
        if not key:
            raise RuntimeError("pass --api-key (or set NUDGE_API_KEY) to a tenant's key")
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": MSGPACK, "Accept": MSGPACK}
        # Every status reaches our own check below. Otherwise geventhttpclient raises on a 4xx/5xx and then fails
        # to log its msgpack body as UTF-8, which kills the task instead of counting a failure.
        self.client.client.valid_response_codes = ALL_STATUSES

    def post(self, path: str, body: bytes, name: str):
        with self.client.post(path, data=body, headers=self.headers, name=name, catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code} {_error_code(resp.content)}")
                return None
            return msgpack.unpackb(resp.content)


class IngestHeavyUser(_NudgeUser):
    weight = 1
    wait_time = between(0, 0.01)

    @task(3)
    def rows(self) -> None:
        self.post("/v1/events", events_body(self.rng, self.rng.randint(100, 1000), False), "events rows 100-1000")

    @task(1)
    def columns(self) -> None:
        self.post("/v1/events", events_body(self.rng, self.rng.randint(100, 1000), True), "events columns 100-1000")


class ScoreHeavyUser(_NudgeUser):
    weight = 3
    wait_time = between(0, 0.005)

    @task(5)
    def one(self) -> None:
        self.post("/v1/score", score_body(self.rng, 1), "score 1 user")

    @task(1)
    def hundred(self) -> None:
        self.post("/v1/score", score_body(self.rng, 100), "score 100 users")


class MixedUser(_NudgeUser):
    weight = 2
    wait_time = between(0.01, 0.05)

    def on_start(self) -> None:
        super().on_start()
        self.signal_ids: list[str] = []
        self.cursor = ""
        # Outcomes in turn, a conversion first: each ending a quarter of the time, and even a short run in which a
        # user reports on a single signal teaches the bandit a conversion.
        self.endings = itertools.cycle(["converted", "clicked", "dismissed", None])

    @task(4)
    def ingest(self) -> None:
        self.post("/v1/events", events_body(self.rng, self.rng.randint(1, 20), False), "events rows 1-20")

    @task(4)
    def score(self) -> None:
        answer = self.post("/v1/score", score_body(self.rng, self.rng.randint(1, 10)), "score 1-10 users")
        for result in (answer or {}).get("results", []):
            if result.get("signal"):
                self.signal_ids.append(result["signal"]["signal_id"])

    @task(2)
    def feedback(self) -> None:
        """What a shop's client reports: it got the signal, acted on it, the user saw it, and then an outcome."""
        if not self.signal_ids:
            return
        reports = []
        for sid in dict.fromkeys(self.signal_ids[:20]):  # a signal seen in a score answer and a pull: once
            reports += [{"signal_id": sid, "outcome": step} for step in ("received", "handled", "shown")]
            ending = next(self.endings)
            if ending:
                reports.append({"signal_id": sid, "outcome": ending})
        del self.signal_ids[:20]
        self.post("/v1/feedback", msgpack.packb({"feedback": reports}), "feedback")

    @task(2)
    def pull(self) -> None:
        with self.client.get(f"/v1/signals?after={self.cursor}&limit=100", headers=self.headers, name="pull signals",
                             catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code} {_error_code(resp.content)}")
                return
            page = msgpack.unpackb(resp.content)
            self.cursor = page["next"]
            # Several locust users share one tenant: each takes a share of the pulled signals to report on.
            self.signal_ids += [s["signal_id"] for s in page.get("signals", []) if self.rng.random() < 0.5]
        if self.signal_ids:  # a client reports on what it pulled as it handles it, not at some later turn
            self.feedback()
