"""Server configuration: defaults < TOML file < NUDGE_* environment < command line."""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping


@dataclass(frozen=True)
class ServerConfig:
    """Settings of one nudge server process.

    Parameters
    ----------
    data_dir : where the SQLite database and engine snapshots live.
    host, port : where to listen.
    backend : array backend: auto, numpy, triton or cupy.
    workers : worker processes that own the tenants' engines (by tenant id), off the server's GIL; 0 runs the one
        worker on a thread of the server's process. ``nudge serve`` fits it to the machine where it is not set
        (:func:`workers_for`); built here, a config has none.
    max_body_bytes : larger request bodies are refused with 413.
    max_items_per_request : most events or users in one request.
    max_batch_size : most users in one scoring batch.
    max_wait_ms : longest a scoring request waits for its batch to fill.
    score_batches_in_flight : a tenant's scoring batches sent to its worker before the first answers: with 2, the
        next batch waits in the worker's queue instead of behind the round trip to the server and back.
    max_queue_users : users waiting for scoring before new requests are shed with 503.
    max_queue_delay_ms : new scoring requests are shed with 503 while the users already waiting would take
        longer than this to score (0 disables); what fits in the next batch is never refused. 25 ms: with 100-user
        requests at 3 x the sustainable rate on the 2-core VM, the admitted p99 stayed at 3.3 x the nominal one
        (200 ms gave 11.8 x), with no refusal at the sustainable rate (docs/benchmarks.md).
    rate_limit_per_s, rate_limit_burst : per-tenant token bucket (0 disables).
    snapshot_interval_s : how often engine snapshots are written.
    max_commit_events : most events in one group commit.
    max_pending_events : events waiting for their commit before new ingest requests are shed with 503.
    model_poll_s : how often tenants' model checkpoints are checked for a new version.
    signal_sweep_s : how often signals past their horizon are closed as not converted.
    webhooks_allow_http : 1 lets subscriptions use plain http URLs (local use only).
    webhooks_allow_private : 1 lets webhooks reach loopback, private and link-local addresses (local use only).
    webhook_timeout_s : a delivery with no answer within this long is retried.
    webhook_retry_period_s : a batch still failing this long after its first attempt is dead-lettered.
    webhook_backoff_base_s, webhook_backoff_max_s : the first retry waits up to base; each doubles, up to max.
    webhook_batch_size : most signals in one delivery.
    webhook_test_interval_s : least time between two test deliveries of one subscription.
    max_subscriptions : most webhook subscriptions per tenant.
    signal_retention_s : signals older than this are deleted (pull and delivery cannot reach them any more).
    max_poll_wait_s : the longest ``GET /v1/signals`` waits for new signals.
    max_loop_lag_ms : while the event loop runs this late, new score requests are refused with 503 before their
        bodies are read (0 disables).
    max_apply_delay_ms : new ingest requests are shed with 503 while the acknowledged events not yet applied to the
        engine would take longer than this to apply (0 disables); scores wait behind them.
    ingest_wait_ms : an ingest request that finds either backlog above full waits up to this long for room (holding
        no CPU) before it is refused; a client that resends at once then waits instead of bouncing (0: refuse at
        once).
    max_ingest_waiters : the most ingest requests waiting for room at once (one tenant: its ``tenant_share`` of
        them while others are active); beyond them, refused at once.
    max_users_per_tenant : the most users one tenant's engine holds in memory (about 4 KiB each, measured by
        ``python -m loadtests.bench_user_memory``); a batch that would add users beyond it is refused whole with
        409 ``user_limit_reached`` (erase users to make room).
    tenant_share : while other tenants are active, the most of the two ingest backlogs above (events waiting for
        their commit, acknowledged events waiting to be applied) one tenant may hold; its ingest beyond that gets
        429 ``tenant_over_share`` (1 disables; a tenant alone may always use all of it).
    event_loop : ``auto`` (uvloop where installed), ``uvloop`` or ``asyncio``.
    log_level : Python logging level name.
    log_format : ``text`` or ``json`` (one object per line).
    access_log : log every request with its request id (off by default: it is one line per request).
    body_read_timeout_s : a request body not fully received within this long is refused with 408.
    metrics_token : when set, ``GET /metrics`` needs ``Authorization: Bearer <metrics_token>``; when empty it
        answers loopback clients only.
    metrics_tenant_names : 1 labels per-tenant metrics with tenant names instead of tenant ids.
    """

    data_dir: Path = Path("nudge-data")
    host: str = "127.0.0.1"
    port: int = 8080
    backend: str = "auto"
    workers: int = 0
    max_body_bytes: int = 4 * 1024 * 1024
    max_items_per_request: int = 10_000
    max_batch_size: int = 1024
    max_wait_ms: float = 2.0
    max_queue_users: int = 65_536
    score_batches_in_flight: int = 2
    max_queue_delay_ms: float = 25.0
    rate_limit_per_s: float = 2000.0
    rate_limit_burst: float = 4000.0
    snapshot_interval_s: float = 60.0
    max_commit_events: int = 100_000
    max_pending_events: int = 500_000
    model_poll_s: float = 2.0
    signal_sweep_s: float = 5.0
    webhooks_allow_http: int = 0
    webhooks_allow_private: int = 0
    webhook_timeout_s: float = 10.0
    webhook_retry_period_s: float = 86400.0
    webhook_backoff_base_s: float = 1.0
    webhook_backoff_max_s: float = 3600.0
    webhook_batch_size: int = 100
    webhook_test_interval_s: float = 10.0
    max_subscriptions: int = 20
    signal_retention_s: float = 7 * 86400.0
    max_poll_wait_s: float = 30.0
    max_loop_lag_ms: float = 100.0
    max_apply_delay_ms: float = 1000.0
    tenant_share: float = 0.5
    ingest_wait_ms: float = 1000.0
    max_ingest_waiters: int = 256
    max_users_per_tenant: int = 1_000_000
    event_loop: str = "auto"
    log_level: str = "INFO"
    log_format: str = "text"
    access_log: int = 0
    body_read_timeout_s: float = 30.0
    metrics_token: str = ""
    metrics_tenant_names: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.backend not in ("auto", "numpy", "triton", "cupy"):
            problems.append(f"backend must be auto, numpy, triton or cupy, got {self.backend!r}")
        if self.event_loop not in ("auto", "uvloop", "asyncio"):
            problems.append(f"event_loop must be auto, uvloop or asyncio, got {self.event_loop!r}")
        if self.log_format not in ("text", "json"):
            problems.append(f"log_format must be text or json, got {self.log_format!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            problems.append(f"log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {self.log_level!r}")
        if not 0 <= self.port <= 65535:
            problems.append(f"port must lie in [0, 65535], got {self.port}")
        positive = (
            "max_body_bytes", "max_items_per_request", "max_batch_size", "max_queue_users",
            "snapshot_interval_s", "max_commit_events", "max_pending_events", "model_poll_s", "signal_sweep_s",
            "webhook_timeout_s", "webhook_retry_period_s", "webhook_backoff_base_s", "webhook_backoff_max_s",
            "webhook_batch_size", "max_subscriptions", "signal_retention_s", "body_read_timeout_s",
            "webhook_test_interval_s", "max_users_per_tenant", "score_batches_in_flight",
        )
        problems += [f"{n} must be > 0, got {getattr(self, n)}" for n in positive if not getattr(self, n) > 0]
        non_negative = ("workers", "max_wait_ms", "rate_limit_per_s", "rate_limit_burst", "max_loop_lag_ms", "max_queue_delay_ms",
                        "max_apply_delay_ms", "ingest_wait_ms", "max_ingest_waiters")
        problems += [f"{n} must be >= 0, got {getattr(self, n)}" for n in non_negative if getattr(self, n) < 0]
        if not 0 < self.tenant_share <= 1:
            problems.append(f"tenant_share must lie in (0, 1], got {self.tenant_share}")
        if problems:
            raise ValueError("invalid server config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ServerConfig":
        """Build from a mapping of setting names to values (strings are converted)."""
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(types))
        if unknown:
            raise ValueError(f"unknown server settings: {', '.join(unknown)}; known: {', '.join(sorted(types))}")
        return cls(**{k: _coerce(k, types[k], v) for k, v in data.items()})

    @classmethod
    def load(cls, file: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
             defaults: Mapping[str, Any] | None = None, **overrides: Any):
        """Layer ``defaults`` (in place of the built-in ones), a TOML file, ``NUDGE_*`` variables and explicit
        overrides (None means 'not given')."""
        values: dict[str, Any] = dict(defaults or {})
        if file:
            with open(file, "rb") as fh:
                values.update(tomllib.load(fh))
        env = os.environ if env is None else env
        names = {f.name for f in dataclasses.fields(cls)}
        values.update({k[6:].lower(): v for k, v in env.items() if k.startswith("NUDGE_") and k[6:].lower() in names})
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)


def workers_for(cores: int | None = None, gpu: bool = False) -> int:
    """``nudge serve``'s worker processes where none are set: one per core beside the server's own process, at most
    eight (tenants are spread over them by id; each holds its own imports and engines); none on a single core. One
    on a GPU backend, whose device one process drives (each process would hold a CUDA context of its own)."""
    if gpu:
        return 1
    return max(0, min((usable_cores() if cores is None else cores) - 1, 8))


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the platform tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _coerce(name: str, kind: str, value: Any) -> Any:
    try:
        if kind == "Path":
            return Path(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ValueError(f"server setting {name} must be {kind}, got {value!r}") from None
