"""Prometheus metrics of one app (its own registry, so several apps can live in one process)."""
from __future__ import annotations

import functools
import gc

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from . import gc_tuning

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """The server's metrics; tenants are labelled by id unless ``tenant_names`` allows their names."""

    def __init__(self, tenant_names: bool = False) -> None:
        self.tenant_names = tenant_names
        r = self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "nudge_request_seconds", "Request latency by route", ["route", "method", "status"], registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.events_ingested = Counter("nudge_events_ingested_total", "Events committed to the log", ["tenant"], registry=r)
        self.events_duplicate = Counter("nudge_events_duplicate_total", "Events skipped as retries", ["tenant"], registry=r)
        self.commit_events = Histogram(
            "nudge_commit_events", "Events per group commit", registry=r,
            buckets=(1, 10, 100, 1000, 10_000, 100_000),
        )
        self.score_batch_users = Histogram(
            "nudge_score_batch_users", "Users per scoring batch", registry=r,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384),
        )
        self.score_queue_users = Gauge("nudge_score_queue_users", "Users waiting to be scored", registry=r)
        self.backend = Gauge("nudge_backend_info", "The array backend in use (value 1)", ["backend"], registry=r)
        self.ready = Gauge("nudge_ready", "1 once recovery has finished", registry=r)
        self.replayed_events = Counter("nudge_recovery_replayed_events_total", "Events replayed at start-up", registry=r)
        self.snapshots = Counter("nudge_snapshots_total", "Engine snapshots written", registry=r)
        self.snapshots_unreadable = Counter(
            "nudge_snapshots_unreadable_total", "Snapshots set aside as unreadable (the log rebuilt the state)",
            registry=r)
        self.tenant_recovery_failures = Counter(
            "nudge_tenant_recovery_failures_total", "Failed attempts to recover a tenant's state (it answers 503 meanwhile)",
            registry=r)
        self.model_loads = Counter(
            "nudge_model_loads_total", "Attempts to load a tenant's model, by outcome", ["tenant", "outcome"], registry=r
        )
        self.predictions = Counter("nudge_predictions_total", "Users predicted, by predictor", ["predictor"], registry=r)
        self.signals = Counter(
            "nudge_signals_total", "Signal decisions by type, sent or withheld (holdout)",
            ["tenant", "type", "decision"], registry=r,
        )
        self.signal_outcomes = Counter(
            "nudge_signal_outcomes_total", "Signal decisions closed, by outcome", ["tenant", "outcome"], registry=r
        )
        self.feedback = Counter("nudge_feedback_total", "Feedback reports by outcome", ["tenant", "outcome"], registry=r)
        self.webhook_attempts = Counter(
            "nudge_webhook_attempts_total", "Webhook POSTs by outcome (delivered, retry, refused)", ["outcome"],
            registry=r,
        )
        self.shed = Counter("nudge_shed_requests_total", "Requests refused because the server was saturated",
                            ["route"], registry=r)
        self.apply_errors = Counter("nudge_engine_apply_errors_total", "Engine updates that failed", registry=r)
        gc_seconds = Gauge("nudge_gc_collection_seconds", "Seconds spent in garbage collections since start-up, by "
                           "generation (counted where `nudge serve` tuned the collector)", ["generation"], registry=r)
        for generation in range(3):
            gc_seconds.labels(str(generation)).set_function(functools.partial(gc_tuning.seconds_spent, generation))
        Gauge("nudge_gc_frozen_objects", "Objects frozen out of the collector's sight once recovery finished",
              registry=r).set_function(gc.get_freeze_count)

    def tenant_label(self, tenant) -> str:
        """A tenant's label value: its id, or its name where the operator allowed names."""
        return tenant.name if self.tenant_names else str(tenant.id)

    def render(self) -> bytes:
        return generate_latest(self.registry)
