"""HTTP handlers and middlewares: decode, validate, submit, await, encode."""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import itertools
import logging
import os
import re
import time
from math import ceil

from aiohttp import ClientPayloadError, web
from aiohttp.http_exceptions import HttpProcessingError

from core import NotOpen
from core.commands import Weights
from model import ConfigError, TenantConfig
from model.events import ConfigChanged

from .batcher import Overloaded
from .codecs import decode, inflate, request_format, respond, respond_results
from .delivery import TestDeliveryLimited
from .errors import ApiError, invalid_field
from .keys import METRICS, REQUEST_ID, RUNTIME, SPEC, TENANT
from .merge_patch import merge_patch
from .metrics import CONTENT_TYPE
from .models import ModelRejected, ModelUnavailable
from .runtime import NotReady, SubscriptionLimit, TenantUnavailable
from .shares import OverShare
from .storage import ConfigConflict
from .validation import (
    encode_cursor,
    parse_event_body,
    parse_feedback,
    parse_histogram_query,
    parse_pull_query,
    parse_score_request,
    parse_subscription,
    user_id_problem,
)
from .webhook_urls import UrlRefused, check_webhook_url
from .worker_process import WorkerLost

log = logging.getLogger(__name__)

# Request ids: a random per-process prefix and a counter; unique without a system call per request.
_REQUEST_PREFIX = os.urandom(6).hex()
_REQUEST_COUNTER = itertools.count(1)
# A client's own X-Request-Id is echoed only when it is this plain; anything else gets one of ours.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_MAX_KEY_CHARS = 256
# Not an HTTP status anyone receives: how requests whose client went away mid-body are counted.
_CLIENT_CLOSED = 499


class _ClientGone(Exception):
    """The client closed the connection before its request body arrived."""

_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
}


def _route_name(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def error_middleware(request: web.Request, handler):
    """Every error becomes the one error body; unexpected ones are logged once and answer 500."""
    request_id = request.headers.get("X-Request-Id", "")
    if not _CLIENT_REQUEST_ID.fullmatch(request_id):
        request_id = f"{_REQUEST_PREFIX}{next(_REQUEST_COUNTER):08x}"
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    try:
        response = await handler(request)
    except _ClientGone:
        log.debug("client closed the connection mid-body: %s %s (request %s)", request.method, request.path,
                  request_id)
        response = web.Response(status=_CLIENT_CLOSED)
    except ApiError as exc:
        response = respond(request, exc.body(), exc.status, exc.headers)
    except (WorkerLost, NotOpen):
        err = ApiError(503, "worker_restarting", "the worker serving this tenant is being restarted and recovers it "
                       "from the log; retry shortly", headers={"Retry-After": "1"})
        response = respond(request, err.body(), 503, err.headers)
    except web.HTTPException as exc:
        code = _HTTP_CODES.get(exc.status, f"http_{exc.status}")
        message = {
            404: f"no route {request.path}; see /openapi.json",
            405: f"{request.method} is not allowed on {request.path}",
            413: "the request body is larger than the server accepts",
        }.get(exc.status, exc.reason)
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        response = respond(request, ApiError(exc.status, code, message).body(), exc.status, headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error in %s %s (request %s)", request.method, request.path, request_id)
        err = ApiError(500, "internal_error", f"an internal error occurred; quote request id {request_id}")
        response = respond(request, err.body(), 500)
    response.headers["X-Request-Id"] = request_id
    request.app[METRICS].request_seconds.labels(_route_name(request), request.method, response.status).observe(
        time.perf_counter() - started
    )
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler):
    """Bearer key to tenant for /v1 routes; then the tenant's rate limit."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    key = _bearer(request)
    if not key:
        raise _unauthorized("send 'Authorization: Bearer <api key>'")
    if len(key) > _MAX_KEY_CHARS or not (key.isascii() and key.isprintable()):
        raise _unauthorized("the API key is not valid")
    try:
        state = await request.app[RUNTIME].authenticate(key)
    except NotReady:
        raise ApiError(503, "not_ready", "the server is recovering its state; retry shortly", headers={"Retry-After": "1"})
    except TenantUnavailable as exc:
        raise ApiError(503, "tenant_unavailable", f"this tenant's state could not be recovered: {str(exc)[:300]}; "
                       "the operator has been told in the server log", headers={"Retry-After": "30"}) from None
    if state is None:
        raise _unauthorized("the API key is not valid")
    runtime = request.app[RUNTIME]
    shares = runtime.shares
    shares.enter(state.tenant.id, request.content_length or 0)  # counted among its tenant's, refused or not
    try:
        if (request.method == "POST" and runtime.loop_lag.overloaded and request.path in _SHEDDABLE
                and shares.sheds(state.tenant.id)):
            runtime.metrics.shed.labels(request.path).inc()
            raise ApiError(503, "overloaded", f"the server is saturated (event loop {runtime.loop_lag.lag_ms:.0f} ms "
                           "behind); retry later", headers={"Retry-After": "1"})
        wait = state.bucket.take()
        if wait is not None:
            raise ApiError(429, "rate_limited", "too many requests for this tenant",
                           headers={"Retry-After": str(int(wait))})
        request[TENANT] = state
        return await handler(request)
    finally:
        shares.leave(state.tenant.id)


# Scoring is what waits behind a late loop. Ingest is not shed here: parsing its bodies is what makes the loop
# late under heavy but sustainable ingest, and ingest has its own bounds (commit queue, engine backlog).
# Feedback, config and reads stay answered under load.
_SHEDDABLE = frozenset({"/v1/score"})


def _bearer(request: web.Request) -> str:
    """The token of an ``Authorization: Bearer`` header, or ''."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="nudge"'})


async def _raw_body(request: web.Request) -> bytes:
    """The body's bytes, read within the time limit."""
    config = request.app[RUNTIME].config
    try:
        async with asyncio.timeout(config.body_read_timeout_s):
            return await request.read()
    except TimeoutError:
        raise ApiError(408, "body_timeout",
                       f"the request body did not arrive within {config.body_read_timeout_s:g} s") from None
    except (ConnectionError, ClientPayloadError, HttpProcessingError):
        raise _ClientGone() from None


def _decoded(request: web.Request, raw: bytes):
    """``raw`` inflated (after authentication) within the size limit, and decoded."""
    max_bytes = request.app[RUNTIME].config.max_body_bytes
    return decode(inflate(raw, request.headers.get("Content-Encoding"), max_bytes), request_format(request))


async def _body(request: web.Request):
    """The decoded body: read within the time limit, inflated (after authentication) within the size limit."""
    return _decoded(request, await _raw_body(request))


# From this size up, while other tenants are active, a tenant's event bodies are decoded and validated one per turn of
# the event loop (TenantState.parse_turn); past _MAX_TURN_WAITERS of them waiting, the tenant's next are refused, so
# its flood is answered with 429 rather than queued for ever.
_TAKES_TURNS_BYTES = 32 * 1024
_MAX_TURN_WAITERS = 8


async def _events_batch(request: web.Request, state):
    runtime = request.app[RUNTIME]
    raw = await _raw_body(request)

    def parse():
        # Checked again after the last wait: bodies admitted together (when room was made, each waited for its read
        # and its turn) are refused here, before their parse, once those parsed before them fill the backlog.
        try:
            runtime.check_ingest_backlog(state)
        except Overloaded as exc:
            raise _overloaded(exc) from None
        body = inflate(raw, request.headers.get("Content-Encoding"), runtime.config.max_body_bytes)
        return parse_event_body(body, request_format(request), state.config, time.time(),
                                runtime.config.max_items_per_request)

    if len(raw) < _TAKES_TURNS_BYTES or not runtime.shares.others_active(state.tenant.id):
        return parse()
    if state.parse_waiting >= _MAX_TURN_WAITERS:
        raise _overloaded(OverShare(state.parse_waiting, retry_after_s=1.0))
    state.parse_waiting += 1
    try:
        await state.parse_turn.acquire()
    finally:
        state.parse_waiting -= 1
    try:
        batch = parse()
        # The turn is held into the loop's next iteration: the loop polls its sockets between iterations, so other
        # requests are read and served between two of this tenant's parses, not after all of them.
        await asyncio.sleep(0)
    finally:
        state.parse_turn.release()
    return batch


async def post_events(request: web.Request) -> web.Response:
    started = time.perf_counter()
    state = request[TENANT]
    runtime = request.app[RUNTIME]
    try:
        await runtime.admit_ingest(state)  # before the body is read and validated: waiting and refusing stay cheap
    except Overloaded as exc:
        raise _overloaded(exc) from None
    batch = await _events_batch(request, state)
    beyond = await runtime.new_users_beyond_limit(state, batch)
    if beyond is not None:
        known, new = beyond
        raise ApiError(409, "user_limit_reached",
                       f"this tenant holds {known} users and the batch adds {new}, past the server's limit of "
                       f"{runtime.config.max_users_per_tenant} (max_users_per_tenant); nothing was accepted. Erase "
                       "users (DELETE /v1/users/{user_id}) or have the operator raise the limit",
                       [{"field": "user_id", "reason": "a new user past the tenant's user limit"}])
    try:
        accepted, duplicates = await runtime.ingest(state, batch)
    except Overloaded as exc:
        raise _overloaded(exc) from None
    except ConfigChanged as exc:
        raise ApiError(409, "config_changed", f"{exc}; validate against GET /v1/config and resend") from None
    state.activity.record_ingest(accepted, time.perf_counter() - started)
    return respond(request, {"accepted": accepted, "duplicates": duplicates})


def _overloaded(exc: Overloaded) -> ApiError:
    if isinstance(exc, OverShare):
        return ApiError(429, "tenant_over_share", f"{exc} for this tenant; the other tenants active keep their "
                        "share of the server: retry later or send more slowly", headers={"Retry-After": str(int(exc.retry_after_s))})
    return ApiError(503, "overloaded", f"{exc}; retry later", headers={"Retry-After": str(int(exc.retry_after_s))})


async def post_score(request: web.Request) -> web.Response:
    started = time.perf_counter()
    runtime, state = request.app[RUNTIME], request[TENANT]
    try:
        state.batcher.check_delay()  # before the body is read and parsed: under overload, refusals stay cheap
    except Overloaded as exc:
        raise _overloaded(exc) from None
    user_ids, explain, hints = parse_score_request(await _body(request), runtime.config.max_items_per_request)
    try:
        results = await runtime.score(state, user_ids, explain, hints)
    except Overloaded as exc:
        raise _overloaded(exc) from None
    state.activity.record_score(len(user_ids), time.perf_counter() - started)
    return respond_results(request, results)


async def post_feedback(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    items = parse_feedback(await _body(request), runtime.config.max_items_per_request, time.time())
    unknown = await runtime.feedback(request[TENANT], items)
    if unknown:
        index = {sid: i for i, (sid, _, _) in reversed(list(enumerate(items)))}
        details = [{"index": index[sid], "field": "signal_id", "reason": "unknown signal"} for sid in unknown[:100]]
        raise ApiError(400, "invalid_feedback", f"{len(unknown)} unknown signal ids; none was recorded", details)
    return respond(request, {"accepted": len(items)})


async def get_stats(request: web.Request) -> web.Response:
    return respond(request, await request.app[RUNTIME].stats(request[TENANT]))


async def get_bandits(request: web.Request) -> web.Response:
    return respond(request, await request.app[RUNTIME].bandits(request[TENANT]))


async def get_activity(request: web.Request) -> web.Response:
    return respond(request, request[TENANT].activity.report())


async def get_score_histogram(request: web.Request) -> web.Response:
    bins = parse_histogram_query(request.query)
    return respond(request, await request.app[RUNTIME].score_histogram(request[TENANT], bins))


async def post_subscription(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    url, types = parse_subscription(await _body(request))
    cfg = runtime.config
    try:
        await check_webhook_url(url, allow_http=bool(cfg.webhooks_allow_http), allow_private=bool(cfg.webhooks_allow_private))
    except UrlRefused as exc:
        raise ApiError(400, "invalid_url", f"the webhook URL is refused: {exc}", [{"field": "url", "reason": str(exc)}])
    try:
        created = await runtime.create_subscription(request[TENANT], url, types)
    except SubscriptionLimit as exc:
        raise ApiError(409, "too_many_subscriptions", f"{exc}; delete one first") from None
    return respond(request, created, 201)


async def list_subscriptions(request: web.Request) -> web.Response:
    return respond(request, {"subscriptions": await request.app[RUNTIME].subscriptions(request[TENANT])})


_SUBSCRIPTION_ID = re.compile(r"sub_[0-9a-f]{24}")


async def _subscription(request: web.Request):
    sub_id = request.match_info["subscription_id"]
    sub = None
    if _SUBSCRIPTION_ID.fullmatch(sub_id):
        sub = await request.app[RUNTIME].subscription(request[TENANT], sub_id)
    if sub is None:
        raise ApiError(404, "subscription_not_found", f"no subscription {sub_id[:64]!r}",
                       [{"field": "subscription_id", "reason": "unknown"}])
    return sub


async def delete_subscription(request: web.Request) -> web.Response:
    sub = await _subscription(request)
    await request.app[RUNTIME].delete_subscription(request[TENANT], sub.id)
    return respond(request, {"id": sub.id, "deleted": True})


async def send_test_delivery(request: web.Request) -> web.Response:
    sub = await _subscription(request)
    try:
        result = await request.app[RUNTIME].deliveries.send_test(sub)
    except TestDeliveryLimited as exc:
        raise ApiError(429, "rate_limited", str(exc),
                       headers={"Retry-After": str(max(1, ceil(exc.retry_after_s)))}) from None
    return respond(request, result)


async def get_dead_letters(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    sub = await _subscription(request)
    return respond(request, {"dead_letters": await runtime.on_storage(runtime.store.dead_letters, sub.id)})


async def redeliver_dead_letter(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    sub = await _subscription(request)
    raw = request.match_info["dead_letter_id"]
    well_formed = raw.isascii() and raw.isdigit() and len(raw) <= 18
    queued = well_formed and await runtime.on_storage(runtime.store.mark_redeliver, sub.id, int(raw))
    if not queued:
        raise ApiError(404, "dead_letter_not_found", f"no dead letter {raw[:32]!r} waiting in this subscription",
                       [{"field": "dead_letter_id", "reason": "unknown, or already queued or delivered"}])
    runtime.deliveries.notify([request[TENANT].tenant.id])
    return respond(request, {"id": int(raw), "state": "redeliver"}, 202)


async def get_signals(request: web.Request) -> web.Response:
    after, limit, wait_s = parse_pull_query(request.query)
    signals, next_seq = await request.app[RUNTIME].pull_signals(request[TENANT], after, limit, wait_s)
    return respond(request, {"signals": signals, "next": encode_cursor(next_seq)})


async def get_weights(request: web.Request) -> web.Response:
    state = request[TENANT]
    report = await request.app[RUNTIME].command(Weights(state.tenant.id))
    return respond(request, report)


def _path_user(request: web.Request) -> str:
    user_id = request.match_info["user_id"]
    reason = user_id_problem(user_id)
    if reason:
        raise invalid_field("user_id", reason)
    return user_id


async def get_user(request: web.Request) -> web.Response:
    user_id = _path_user(request)
    view = await request.app[RUNTIME].user(request[TENANT], user_id)
    if view is None:
        raise ApiError(404, "user_not_found", f"no events for user {user_id!r}", [{"field": "user_id", "reason": "unknown"}])
    return respond(request, view)


async def delete_user(request: web.Request) -> web.Response:
    user_id = _path_user(request)
    return respond(request, await request.app[RUNTIME].erase_user(request[TENANT], user_id))


async def get_config(request: web.Request) -> web.Response:
    return respond(request, request[TENANT].config.to_dict())


async def put_config(request: web.Request) -> web.Response:
    state = request[TENANT]
    body = await _body(request)
    if not isinstance(body, dict):
        raise invalid_field("body", "must be an object of settings")
    try:
        # RFC 7396: nested maps merge and a null drops a setting, so TenantConfig's default applies again.
        config = TenantConfig.from_dict(merge_patch(state.config.to_dict(), body))
    except ConfigError as exc:
        details = [{"field": f, "reason": r} for f, r in exc.problems]
        raise ApiError(400, "invalid_config", str(exc), details) from None
    try:
        await request.app[RUNTIME].put_config(state, config)
    except ConfigConflict as exc:
        raise ApiError(409, "config_conflict", str(exc)) from None
    return respond(request, config.to_dict())


async def get_model(request: web.Request) -> web.Response:
    return respond(request, request[TENANT].model.describe())


_MODEL_STATUS = {"model_not_found": 404, "model_mismatch": 409, "invalid_model": 422, "model_rejected": 409,
                 "nothing_to_roll_back": 409}


def _model_error(exc: ModelUnavailable, state) -> ApiError:
    details = None
    if isinstance(exc, ModelRejected):
        details = [{"field": "checkpoint", "reason": exc.code, "gate": exc.gate}]
    return ApiError(_MODEL_STATUS[exc.code], exc.code, f"{exc}; still serving {state.model.predictor_name}", details)


async def _reload_force(request: web.Request) -> bool:
    """``force`` of the optional ``{"force": true}`` body."""
    if not request.can_read_body:
        return False
    body = await _body(request)
    if not isinstance(body, dict) or set(body) - {"force"} or not isinstance(body.get("force", False), bool):
        raise invalid_field("force", 'send no body, or {"force": true} to promote on the checkpoint\'s own validation')
    return body.get("force", False)


async def reload_model(request: web.Request) -> web.Response:
    state = request[TENANT]
    force = await _reload_force(request)
    try:
        return respond(request, await request.app[RUNTIME].reload_model(state, force=force))
    except ModelUnavailable as exc:
        raise _model_error(exc, state) from None


async def rollback_model(request: web.Request) -> web.Response:
    state = request[TENANT]
    try:
        return respond(request, await request.app[RUNTIME].rollback_model(state))
    except ModelUnavailable as exc:
        raise _model_error(exc, state) from None


async def get_model_history(request: web.Request) -> web.Response:
    return respond(request, {"history": list(request[TENANT].model.history)})


async def healthz(request: web.Request) -> web.Response:
    return respond(request, {"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    body = {"ready": runtime.ready, "backend": runtime.backend, "recovery": runtime.recovery.as_dict()}
    return respond(request, body, 200 if runtime.ready else 503)


def _metrics_allowed(request: web.Request, token: str) -> None:
    """The metrics token where one is set, else a loopback client: tenants' activity is not for everyone."""
    if token:
        given = _bearer(request).encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, token.encode()):
            raise _unauthorized("GET /metrics needs 'Authorization: Bearer <metrics_token>'")
        return
    try:
        loopback = ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ApiError(403, "forbidden", "/metrics answers loopback clients only; set the metrics_token setting "
                       "(NUDGE_METRICS_TOKEN) to scrape it from elsewhere")


async def metrics(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    _metrics_allowed(request, runtime.config.metrics_token)
    runtime.metrics.score_queue_users.set(sum(s.batcher.queued_items for s in runtime.tenants.values()))
    return web.Response(body=runtime.metrics.render(), headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    return respond(request, request.app[SPEC])


ROUTES = [
    ("POST", "/v1/events", post_events),
    ("POST", "/v1/score", post_score),
    ("POST", "/v1/feedback", post_feedback),
    ("GET", "/v1/stats", get_stats),
    ("GET", "/v1/bandits", get_bandits),
    ("GET", "/v1/activity", get_activity),
    ("GET", "/v1/scores/histogram", get_score_histogram),
    ("POST", "/v1/subscriptions", post_subscription),
    ("GET", "/v1/subscriptions", list_subscriptions),
    ("DELETE", "/v1/subscriptions/{subscription_id}", delete_subscription),
    ("POST", "/v1/subscriptions/{subscription_id}/test", send_test_delivery),
    ("GET", "/v1/subscriptions/{subscription_id}/dead-letters", get_dead_letters),
    ("POST", "/v1/subscriptions/{subscription_id}/dead-letters/{dead_letter_id}/redeliver", redeliver_dead_letter),
    ("GET", "/v1/signals", get_signals),
    ("GET", "/v1/weights", get_weights),
    ("GET", "/v1/users/{user_id}", get_user),
    ("DELETE", "/v1/users/{user_id}", delete_user),
    ("GET", "/v1/config", get_config),
    ("PUT", "/v1/config", put_config),
    ("GET", "/v1/model", get_model),
    ("POST", "/v1/model/reload", reload_model),
    ("POST", "/v1/model/rollback", rollback_model),
    ("GET", "/v1/model/history", get_model_history),
    ("GET", "/healthz", healthz),
    ("GET", "/readyz", readyz),
    ("GET", "/metrics", metrics),
    ("GET", "/openapi.json", openapi),
]
