"""The OpenAPI 3 document of the HTTP API (tests check it against the app's routes, and its response schemas
against real answers: tests/integration/test_openapi_responses.py)."""
from __future__ import annotations

from typing import Any

from kernels.backend import KNOWN_BACKENDS
from model.config import INTENTS, SIGNAL_TYPES
from model.contexts import DAYPARTS, DEVICES
from model.schema import event_json_schema

from .validation import FEEDBACK_OUTCOMES

_ERROR = {"$ref": "#/components/schemas/Error"}
_BODY_TYPES = ("application/json", "application/msgpack")


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {t: {"schema": schema} for t in _BODY_TYPES}


def _op(summary: str, ok: dict[str, Any], *, body: dict[str, Any] | None = None, auth: bool = True,
        errors: tuple[int, ...] = (), ok_status: str = "200", params: list | None = None,
        also: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """An operation; ``also``: other statuses whose body is not the error body, with their schemas."""
    responses: dict[str, Any] = {ok_status: {"description": "OK", "content": _content(ok)}}
    codes = set(errors) | ({401, 429, 503} if auth else set()) | ({400, 408, 413, 415} if body else set())
    for code in sorted(codes):
        responses[str(code)] = {"description": "Error", "content": _content(_ERROR)}
    for status, schema in (also or {}).items():
        responses[status] = {"description": "Not OK, answered with this body rather than the error body",
                             "content": _content(schema)}
    responses["default"] = {"description": "Any other error, e.g. 500 internal_error with a request id to quote",
                            "content": _content(_ERROR)}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": True, "content": _content(body)}
    if not auth:
        op["security"] = []
    if params:
        op["parameters"] = params
    return op


_EVENT = event_json_schema()
_SUB_PARAM = [{"name": "subscription_id", "in": "path", "required": True, "schema": {"type": "string"}}]
_USER_PARAM = [{"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"}}]
# Untyped: what a route documented without its shape would answer. The response schemas below are typed, and a
# test (tests/integration/test_openapi_responses.py) refuses a route whose 2xx answer is documented like this.
_OBJECT = {"type": "object"}

# ---- response shapes (OpenAPI 3.0: ``nullable`` beside a ``type``; a test validates real answers against them) ----

_STR, _INT, _NUM, _BOOL = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
_NULL_ONLY = {"type": "object", "nullable": True, "enum": [None]}  # null and nothing else (OpenAPI 3.0)


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` or null. A $ref takes no sibling keywords in OpenAPI 3.0, so a nullable one is a oneOf with a
    schema that only null matches; anything else gets ``nullable`` beside its ``type`` (and null in its ``enum``,
    which OpenAPI 3.0.3 still applies to null)."""
    if "$ref" in schema:
        return {"oneOf": [schema, _NULL_ONLY]}
    if "enum" in schema:
        return {**schema, "nullable": True, "enum": [*schema["enum"], None]}
    return {**schema, "nullable": True}


def _obj(properties: dict[str, Any], required: tuple[str, ...] | None = None, *, closed: bool = True,
         description: str | None = None) -> dict[str, Any]:
    """An object with these properties, all required unless ``required`` names some; ``closed``: no other keys."""
    out: dict[str, Any] = {"type": "object"}
    if description:
        out["description"] = description
    names = list(properties) if required is None else list(required)
    if names:
        out["required"] = names
    out["properties"] = properties
    if closed:
        out["additionalProperties"] = False
    return out


def _map(values: dict[str, Any], description: str) -> dict[str, Any]:
    """An object whose keys are names (actions, intents, types, variants), each holding ``values``."""
    return {"type": "object", "description": description, "additionalProperties": values}


def _array(items: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    return {"type": "array", "items": items, **({"description": description} if description else {})}


_NUM_OR_NULL = _nullable(_NUM)
_STR_OR_NULL = _nullable(_STR)
_PREDICTOR = {"type": "string", "enum": ["transformer", "markov"]}
_SIGNAL_TYPE = {"type": "string", "enum": list(SIGNAL_TYPES)}
_INTENT = {"type": "string", "enum": list(INTENTS)}
_FUNNEL_STEPS = ("sent", *FEEDBACK_OUTCOMES)
_FREE = {"type": "object", "additionalProperties": True}

_SCHEMAS: dict[str, Any] = {
    "Error": _obj({"error": _obj({
        "code": {"type": "string", "description": "Machine-readable, e.g. invalid_event, rate_limited"},
        "message": _STR,
        "details": _array(_ref("ErrorDetail"), "The fields at fault; may be empty"),
    })}),
    "ErrorDetail": _obj({
        "field": {"type": "string", "description": "The field at fault; '' for an item that is not an object"},
        "reason": _STR,
        "index": {"type": "integer", "minimum": 0, "description": "The item of a list body the problem is in"},
        "gate": _ref("GateReport"),
    }, ("field", "reason")),
    "Interval": {"type": "array", "items": _NUM, "minItems": 2, "maxItems": 2, "description": "[low, high]"},
    "IntervalOrNulls": {"type": "array", "items": _NUM_OR_NULL, "minItems": 2, "maxItems": 2,
                        "description": "[low, high]; [null, null] until there is data to compute it on"},
    "Context": _obj({
        "device": {"type": "string", "enum": list(DEVICES)},
        "daypart": {"type": "string", "enum": list(DAYPARTS)},
        "segment": _STR_OR_NULL,
    }),
    "Signal": _obj({
        "signal_id": _STR,
        "user_id": _STR,
        "type": _SIGNAL_TYPE,
        "payload": _ref("SignalPayload"),
        "score": {"type": "number", "description": "The user's engagement score when the signal was decided"},
        "intent": _INTENT,
        "created_at": {"type": "number", "description": "Seconds since the epoch"},
        "variant": {"type": "string", "description": "The bandit's variant: a discount tier ('10'), else 'default'"},
    }),
    "SignalPayload": {"oneOf": [
        _obj({"discount_pct": _NUM, "code": _STR}, ("discount_pct",), description="offer_discount"),
        _obj({"item_ids": _array(_STR), "source": {"type": "string", "enum": [
            "co_visitation", "category_popularity", "popularity"]}}, description="recommend_product"),
        _obj({"content_ids": _array(_STR)}, description="recommend_content"),
        _obj({"channel": _STR, "topic": _STR}, description="proactive_support"),
        _obj({"workflow": _STR, "fields": _obj({k: _STR for k in ("category", "item_id", "query", "page")}, ())},
             description="automated_workflow"),
    ]},
    "ScoreResult": _obj({
        "user_id": _STR,
        "score": {"type": "number", "description": "Engagement score: posterior mean, in [0, 1]"},
        "predicted": _obj({
            "next_action": {"type": "string",
                            "description": "An action, or session_end where the Transformer answered"},
            "probs": _map(_NUM, "Per action (and session_end where the Transformer answered): P(next action)"),
            "purchase_5m": _NUM,
            "purchase_60m": _NUM,
            "predictor": _PREDICTOR,
        }),
        "signal": {**_nullable(_ref("Signal")),
                   "description": "The signal decided now, else the user's latest open one; null when none"},
        "explain": _obj({
            "known": _BOOL,
            "context": _nullable(_ref("Context")),
            "window": _array(_obj({"action": _STR, "age_s": _NUM}), "The user's recent actions, oldest first"),
        }, description="Only with explain: true"),
    }, ("user_id", "score", "predicted", "signal")),
    "ConversionGroup": _obj({
        **{k: _INT for k in ("decisions", "open", "converted", "expired", "withheld")},
        "cohort": _obj({"decisions": _INT, "converted": _INT},
                       description="The decisions whose horizon has closed: what the rate covers"),
        "resolved": _INT,
        "conversion_rate": _NUM_OR_NULL,
        "conversion_rate_ci95": _ref("IntervalOrNulls"),
    }),
    "Bandit": _obj({
        "type": {"type": "string", "enum": [*SIGNAL_TYPES, "none"]},
        "variants": _array(_STR),
        **{k: _array(_NUM, "Per variant") for k in ("mean", "ci95_low", "ci95_high", "alpha", "beta", "outcomes")},
        "allocation": {"type": "string", "enum": ["even", "thompson"]},
        "floor_share": _NUM,
        "min_outcomes": _INT,
    }),
    "Bandits": {**_map(_ref("Bandit"), "Per intent"), "required": list(INTENTS)},
    "Stats": _obj({
        "signals": _obj({
            "sent_by_type": _map(_map(_INT, "Per variant"), "Per signal type"),
            "sent": _INT,
            "withheld": _INT,
        }),
        "conversion": _obj({
            "cohort": _obj({"decided_before": _NUM, "decisions": _INT}),
            "signalled": _ref("ConversionGroup"),
            "holdout": _ref("ConversionGroup"),
            "difference": {**_NUM_OR_NULL, "description": "Uplift: signalled rate minus holdout rate"},
            "difference_ci95": _ref("IntervalOrNulls"),
            "horizon_s": _NUM,
            "holdout_share": _NUM,
        }),
        "funnel": _obj({
            **{s: _INT for s in _FUNNEL_STEPS},
            "by_type": _map(_obj({s: _INT for s in _FUNNEL_STEPS}), "Per signal type"),
        }),
        "bandits": _ref("Bandits"),
        "feedback": _obj({o: _INT for o in FEEDBACK_OUTCOMES}, (), description="Reports received per outcome"),
    }),
    "BanditReport": _obj({
        "bandits": _ref("Bandits"),
        "period_s": _NUM,
        "allocations": _array(_obj({"period_start": _NUM, "intent": _INTENT, "variant": _STR, "signals": _INT}),
                              "Signals sent per period, intent and variant"),
    }),
    "NewSubscription": _obj({
        "id": _STR,
        "url": _STR,
        "types": {**_nullable(_array(_SIGNAL_TYPE)), "description": "null: every type"},
        "secret": {"type": "string", "description": "whsec_…; shown this once"},
    }),
    "Subscription": _obj({
        "id": _STR,
        "url": _STR,
        "types": {**_nullable(_array(_SIGNAL_TYPE)), "description": "null: every type"},
        "created_at": _NUM,
        "delivery": _obj({
            "delivered": _INT,
            "retrying": _BOOL,
            "attempts": _INT,
            "dead_lettered": _INT,
            "dead_letters_open": _INT,
            "last_error": _STR_OR_NULL,
            "last_error_at": _NUM_OR_NULL,
            "last_success_at": _NUM_OR_NULL,
        }),
    }),
    "DeadLetter": _obj({
        "id": _INT,
        "webhook_id": _STR,
        "signals": _INT,
        "attempts": _INT,
        "last_error": _STR_OR_NULL,
        "dead_at": _NUM,
        "state": {"type": "string", "enum": ["dead", "redeliver", "delivered"]},
    }),
    "ActionWeight": _obj({
        "action": _STR, "mean": _NUM, "ci95": _ref("Interval"), "alpha": _NUM, "beta": _NUM, "prior_mean": _NUM}),
    "Weights": _obj({
        "horizon_s": _NUM,
        "clock_s": {**_NUM_OR_NULL, "description": "The engine's event-time clock; null before any event"},
        "events_applied": _INT,
        "pending_attribution": _INT,
        "late_events": _INT,
        "actions": _array(_ref("ActionWeight"), "Pooled over contexts"),
        "contexts": _array(_obj({"context": _ref("Context"), "actions": _array(_ref("ActionWeight"))}),
                           "The contexts with evidence"),
        "transitions": _obj({
            "actions": _array(_STR),
            "from_session_start": _array(_NUM),
            "probabilities": _array(_array(_NUM), "[from action][to action]"),
            "lift": _array(_array(_NUM), "[previous action][action]"),
        }),
    }),
    "User": _obj({
        "user_id": _STR,
        "recent_actions": _array(_obj({"action": _STR, "ts": _NUM}), "Oldest first"),
        "score": _NUM,
        "score_kind": {"type": "string", "enum": ["posterior_mean"]},
    }),
    "TenantConfig": _obj({
        "actions": _array(_STR),
        "conversion_action": _STR,
        "prior_means": _map(_NUM, "Per action"),
        **{k: _NUM for k in ("prior_strength", "horizon_s", "forget_half_life_s", "recency_half_life_s")},
        "window_size": _INT,
        "session_gap_s": _NUM,
        "allowed_lateness_s": _NUM,
        "allow_backfill": _BOOL,
        "segments": _array(_STR),
        "seed": _INT,
        "thresholds": _map(_NUM, "Per intent"),
        "min_score": _NUM,
        "policy": _map({"type": "string", "enum": [*SIGNAL_TYPES, "none"]}, "Per intent: the signal type"),
        "discount_tiers_pct": _array(_NUM),
        "discount_codes": _map(_STR, "Per discount tier ('10')"),
        "content_map": _map(_array(_STR), "Per category, intent or 'default': content ids"),
        "support_channel": _STR,
        "workflow": _STR,
        "recommendations": _INT,
        "cooldown_s": _NUM,
        "daily_cap": _INT,
        "holdout_share": _NUM,
        "signal_horizon_s": _NUM,
        "cart_idle_s": _NUM,
        "discount_band": {**_array(_NUM), "minItems": 2, "maxItems": 2},
        "quiet_after_conversion_s": _NUM,
        "bandit_floor_share": _NUM,
        "bandit_min_outcomes": _INT,
    }),
    "FileStamp": _obj({"mtime_ns": _INT, "size": _INT}),
    "GateReport": _obj({
        "promote": _BOOL,
        "reason": _STR,
        "serving": _PREDICTOR,
        "forced": _BOOL,
        "validation_events": _nullable(_INT),
        "compared_events": _INT,
        "recent_events": _INT,
        "figures": _map({"anyOf": [_NUM_OR_NULL, _array(_NUM_OR_NULL)]},
                        "Gains with their 95 % intervals ([low, high]), each side's log-loss, counts"),
    }),
    "ModelState": _obj({
        "predictor": _PREDICTOR,
        "model": _nullable(_obj({
            "file": _STR,
            "loaded_at": _NUM_OR_NULL,
            "stamp": _nullable(_ref("FileStamp")),
            "vocabulary": _array(_STR),
            "model_config": {**_FREE, "description": "The Transformer's hyperparameters, as the checkpoint holds them"},
            "data": {**_FREE, "description": "What it was trained on, as the checkpoint holds it"},
            "validation_metrics": {**_FREE, "description": "Per predictor, its metrics on the validation span"},
            "training_seconds": _NUM_OR_NULL,
            "calibration": _map(_obj({"slope": _NUM, "intercept": _NUM, "outcomes": _INT}),
                                "Per head (purchase_5m, purchase_60m): the online calibration"),
        }, description="The Transformer that serves; null while the Markov chain does")),
        "last_error": _nullable(_obj({"code": _STR, "message": _STR, "at": _NUM})),
        "gate": _nullable(_ref("GateReport")),
        "rollback_to": _nullable(_PREDICTOR),
    }),
    "ModelEvent": _obj({
        "event": {"type": "string", "enum": ["promoted", "rejected", "rolled_back", "load_failed"]},
        "at": _NUM,
        "file": _STR,
        "stamp": _nullable(_ref("FileStamp")),
        "predictor": _PREDICTOR,
        "serving_stamp": _nullable(_ref("FileStamp")),
        "gate": _nullable(_ref("GateReport")),
        "message": _STR_OR_NULL,
    }),
    "ActivitySeries": _obj({
        "requests": _INT,
        "requests_per_s": _NUM,
        "latency_ms": _obj({q: {**_NUM_OR_NULL, "description": "null while there was no request"}
                            for q in ("p50", "p95", "p99")},
                           description="The handler's time, from a histogram with bins 2^(1/4) apart (within ~9 %)"),
    }, closed=False, description="Requests answered 200 over the window; ingest adds events, events_per_s and "
                                 "events_per_second; score adds users, users_per_s and users_per_second"),
    "Activity": _obj({
        "window_s": _INT,
        "ingest": {"allOf": [_ref("ActivitySeries"), _obj({
            "events": _INT, "events_per_s": _NUM,
            "events_per_second": _array(_INT, "Events accepted in each second of the window, oldest first")},
            closed=False)]},
        "score": {"allOf": [_ref("ActivitySeries"), _obj({
            "users": _INT, "users_per_s": _NUM,
            "users_per_second": _array(_INT, "Users scored in each second of the window, oldest first")},
            closed=False)]},
    }),
    "ScoreHistogram": _obj({
        "bins": _INT,
        "edges": _array(_NUM, "bins + 1 edges over [0, 1]"),
        "counts": _array(_INT, "Users per bin"),
        "users": {"type": "integer", "description": "Users the tenant's engine knows"},
        "scored": {"type": "integer", "description": "Users scored: all of them up to 10,000, a systematic sample "
                                                     "beyond"},
        "mean": _NUM_OR_NULL,
        "median": _NUM_OR_NULL,
        "score_kind": {"type": "string", "enum": ["posterior_mean"]},
    }),
    "Readiness": _obj({
        "ready": _BOOL,
        "backend": {"type": "string", "enum": list(KNOWN_BACKENDS)},
        "recovery": _obj({
            "state": {"type": "string", "enum": ["pending", "recovering", "ready", "failed"]},
            **{k: _INT for k in ("tenants", "from_snapshots", "replayed_events", "snapshots_set_aside")},
            "seconds": _NUM,
            "error": _STR_OR_NULL,
            "unavailable_tenants": _INT,
        }),
    }),
}


def build_spec() -> dict[str, Any]:
    """The whole document."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "nudge", "version": "1", "description": "Engagement scoring from streamed user actions."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                **_SCHEMAS,
                "Event": _EVENT,
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/events": {
                "post": _op(
                    "Ingest actions (row-wise 'events' or column-wise 'columns'); answered once durable",
                    _obj({"accepted": _INT,
                          "duplicates": {"type": "integer", "description": "Already logged (same event_id)"}}),
                    body={
                        "oneOf": [
                            {"type": "object", "required": ["events"],
                             "properties": {"events": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}}}},
                            {"type": "object", "required": ["columns"],
                             "properties": {"columns": {"type": "object", "additionalProperties": {"type": "array"}}}},
                        ]
                    },
                    errors=(409,),
                )
            },
            "/v1/score": {
                "post": _op(
                    "Score users: engagement score, predicted next action, purchase probabilities",
                    _obj({"results": _array(_ref("ScoreResult"), "One per user, in request order")}),
                    body={
                        "type": "object",
                        "required": ["users"],
                        "properties": {
                            "users": {"type": "array", "items": {
                                "type": "object", "required": ["user_id"],
                                "properties": {"user_id": {"type": "string"}, "state": _OBJECT}}},
                            "explain": {"type": "boolean"},
                        },
                    },
                )
            },
            "/v1/feedback": {"post": _op(
                "Report what became of signals, one report per step (received, handled, shown, clicked, converted, "
                "dismissed); converted closes the signal and rewards the bandit",
                _obj({"accepted": _INT}),
                body={"type": "object", "required": ["feedback"], "properties": {"feedback": {"type": "array", "items": {
                    "type": "object", "required": ["signal_id", "outcome"],
                    "properties": {"signal_id": {"type": "string"},
                                   "outcome": {"type": "string", "enum": ["received", "handled", "shown", "clicked",
                                                                        "converted", "dismissed"]},
                                   "ts": {"type": "number"}}}}}},
            )},
            "/v1/stats": {"get": _op(
                "Signals sent by type and variant; each group's decisions (open, converted, expired); conversion "
                "rates and the uplift's 95 % interval over the complete cohort (decisions whose horizon has closed: "
                "conversion.cohort); the funnel from sent to converted per signal type; the bandits' posteriors",
                _ref("Stats"))},
            "/v1/bandits": {"get": _op(
                "The intervention bandits: per intent the variants, their posteriors, outcomes learned from and how "
                "traffic is allocated now (even while warming up, else Thompson sampling with a floor); and the "
                "signals sent per hour, intent and variant", _ref("BanditReport"))},
            "/v1/subscriptions": {
                "post": _op("Register a webhook for signals; the answer holds the signing secret, shown once",
                            _ref("NewSubscription"),
                            body={"type": "object", "required": ["url"], "properties": {
                                "url": {"type": "string"}, "types": {"type": "array", "items": {"type": "string"}}}},
                            errors=(409,), ok_status="201"),
                "get": _op("The tenant's subscriptions with delivery statistics",
                           _obj({"subscriptions": _array(_ref("Subscription"), "Oldest first")})),
            },
            "/v1/subscriptions/{subscription_id}": {
                "delete": _op("Stop and remove a subscription",
                              _obj({"id": _STR, "deleted": {"type": "boolean", "enum": [True]}}), errors=(404,),
                              params=_SUB_PARAM)},
            "/v1/subscriptions/{subscription_id}/test": {
                "post": _op("Send one signed test delivery and report the endpoint's answer", _obj({
                    "delivered": _BOOL,
                    "status": {**_nullable(_INT), "description": "The endpoint's HTTP status; null when none came"},
                    "error": {**_STR_OR_NULL, "description": "Why it was not delivered; null when it was"},
                    "webhook_id": _STR,
                }), errors=(404,), params=_SUB_PARAM)},
            "/v1/subscriptions/{subscription_id}/dead-letters": {
                "get": _op("Batches given up on, with their last error", _obj({
                    "dead_letters": _array(_ref("DeadLetter"), "Oldest first, delivered ones included")}),
                    errors=(404,), params=_SUB_PARAM)},
            "/v1/subscriptions/{subscription_id}/dead-letters/{dead_letter_id}/redeliver": {
                "post": _op("Queue a dead letter for delivery again", _obj({
                    "id": _INT, "state": {"type": "string", "enum": ["redeliver"]}}), errors=(404,), ok_status="202",
                    params=[*_SUB_PARAM, {"name": "dead_letter_id", "in": "path", "required": True,
                                          "schema": {"type": "integer"}}])},
            "/v1/signals": {"get": _op(
                "Pull signals after a cursor, waiting up to wait_s for the first (long poll)",
                _obj({"signals": _array(_ref("Signal"), "In log order"),
                      "next": {"type": "string", "description": "The cursor to send as 'after' the next time"}}),
                errors=(400,), params=[
                    {"name": "after", "in": "query", "schema": {"type": "string"}, "description": "the 'next' of the last answer"},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {"name": "wait_s", "in": "query", "schema": {"type": "number", "minimum": 0}}])},
            "/v1/weights": {"get": _op("Action weights (Beta posteriors), transitions and lifts", _ref("Weights"))},
            "/v1/users/{user_id}": {
                "get": _op("A user's recent actions and score", _ref("User"), errors=(400, 404), params=_USER_PARAM),
                "delete": _op("Erase everything about a user",
                              _obj({"user_id": _STR, "erased": _BOOL, "events_deleted": _INT}), errors=(400,),
                              params=_USER_PARAM),
            },
            "/v1/config": {
                "get": _op("The tenant's configuration", _ref("TenantConfig")),
                "put": _op("Change settings (fields not given keep their values)", _ref("TenantConfig"), body=_OBJECT,
                           errors=(409,)),
            },
            "/v1/model": {"get": _op("The next-action model served (transformer or markov), the last load error or "
                                     "refusal, the last gate decision's figures and what a rollback returns to",
                                     _ref("ModelState"))},
            "/v1/model/reload": {"post": {**_op(
                "Gate the tenant's checkpoint now and serve it if it passes: validated on enough events, and not worse "
                "than what serves on the recent log (409 model_rejected otherwise); a refused one leaves the served "
                "model in place. {\"force\": true} skips the comparison, not the validation rule", _ref("ModelState"),
                errors=(400, 404, 408, 409, 413, 415, 422)),
                "requestBody": {"required": False, "content": _content(
                    {"type": "object", "additionalProperties": False, "properties": {"force": {"type": "boolean"}}})}}},
            "/v1/model/rollback": {"post": _op(
                "Serve again the predictor that served before the current one (the Markov chain before the first "
                "promoted model); 409 nothing_to_roll_back when there is none", _ref("ModelState"), errors=(409,))},
            "/v1/model/history": {"get": _op(
                "Promotions, refusals, rollbacks and failed loads of the tenant's model, newest first (the last 100), "
                "with file stamps and gate figures",
                _obj({"history": _array(_ref("ModelEvent"), "Newest first")}))},
            "/v1/activity": {"get": _op(
                "The tenant's ingest and scoring over the last minute: counts, rates, latency percentiles and the "
                "per-second series (what the dashboard plots)", _ref("Activity"))},
            "/v1/scores/histogram": {"get": _op(
                "How the tenant's users' scores (posterior means) spread over equal bins of [0, 1], now",
                _ref("ScoreHistogram"), errors=(400,), params=[
                    {"name": "bins", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                     "description": "default 20"}])},
            "/dashboard": {"get": {
                "summary": "The operator dashboard: one static page whose script reads this API with the key typed "
                           "into it (or given in the URL fragment, which browsers never send)",
                "security": [],
                "responses": {"200": {"description": "OK", "content": {"text/html": {"schema": _STR}}}},
            }},
            "/dashboard/{asset}": {"get": {
                "summary": "The dashboard's script, style sheet and icon",
                "security": [],
                "parameters": [{"name": "asset", "in": "path", "required": True, "schema": {
                    "type": "string", "enum": ["dashboard.js", "dashboard.css", "favicon.svg"]}}],
                "responses": {"200": {"description": "OK", "content": {
                    "text/javascript": {"schema": _STR}, "text/css": {"schema": _STR}, "image/svg+xml": {"schema": _STR}}},
                    "404": {"description": "Error", "content": _content(_ERROR)}},
            }},
            "/healthz": {"get": _op("Liveness", _obj({"status": {"type": "string", "enum": ["ok"]}}), auth=False)},
            "/readyz": {"get": _op("Readiness: recovery state and backend (503, with the same body, until recovered)",
                                   _ref("Readiness"), auth=False, also={"503": _ref("Readiness")})},
            "/metrics": {
                "get": {
                    "summary": "Prometheus metrics: with the metrics_token as a bearer token where one is set, else "
                               "to loopback clients only",
                    "security": [],
                    "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
                                  "401": {"description": "Error", "content": _content(_ERROR)},
                                  "403": {"description": "Error", "content": _content(_ERROR)}},
                }
            },
            "/openapi.json": {"get": _op("This document", _obj(
                {"openapi": _STR, "info": _FREE, "paths": _FREE, "components": _FREE, "security": _array(_FREE)},
                ("openapi", "info", "paths"), closed=False), auth=False)},
        },
    }
