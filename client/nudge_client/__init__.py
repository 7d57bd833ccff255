"""A light client for nudge, the engagement scoring server: it needs only httpx and msgpack.

    from nudge_client import Client

    with Client("http://localhost:8080", key) as nudge:
        nudge.track("u-42", "add_to_cart", item_id="sku-1")
        nudge.flush()
        print(nudge.score(["u-42"])[0].score)

Events are batched (100 events or 0.5 s), sent as msgpack by a background thread (an asyncio task in
:class:`AsyncClient`), retried with jittered exponential backoff that honours ``Retry-After``, idempotent through
an ``event_id`` made on the client, bounded in memory with an explicit overflow policy, and optionally spooled to
disk. See docs/client.md.
"""
__version__ = "0.1.0"

from .aio import AsyncClient  # noqa: E402
from .client import Client  # noqa: E402
from .errors import (ApiError, ClientClosed, NudgeError, QueueFull, SpoolLocked, Unreachable,  # noqa: E402
                     WebhookVerificationError)
from .retry import RetryPolicy  # noqa: E402
from .types import (Context, FeedbackReport, FeedbackResult, PageState, Prediction, RecentAction,  # noqa: E402
                    ScoreResult, Signal, SignalPage, Stats, UserView)
from .webhooks import verify_webhook  # noqa: E402

__all__ = [
    "ApiError", "AsyncClient", "Client", "ClientClosed", "Context", "FeedbackReport", "FeedbackResult", "NudgeError",
    "PageState", "Prediction", "QueueFull", "RecentAction", "RetryPolicy", "ScoreResult", "Signal", "SignalPage",
    "SpoolLocked", "Stats", "Unreachable", "UserView", "WebhookVerificationError", "verify_webhook",
]
