"""The OpenAPI 3 document of the HTTP API (a test checks it against the app's routes)."""
from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_BODY_TYPES = ("application/json", "application/msgpack")


def _content(schema: dict[str, Any]) -> dict[str, Any]:
    return {t: {"schema": schema} for t in _BODY_TYPES}


def _op(summary: str, ok: dict[str, Any], *, body: dict[str, Any] | None = None, auth: bool = True,
        errors: tuple[int, ...] = (), ok_status: str = "200", params: list | None = None) -> dict[str, Any]:
    responses: dict[str, Any] = {ok_status: {"description": "OK", "content": _content(ok)}}
    codes = set(errors) | ({401, 429, 503} if auth else set()) | ({400, 408, 413, 415} if body else set())
    for code in sorted(codes):
        responses[str(code)] = {"description": "Error", "content": _content(_ERROR)}
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body is not None:
        op["requestBody"] = {"required": True, "content": _content(body)}
    if not auth:
        op["security"] = []
    if params:
        op["parameters"] = params
    return op


_EVENT = {
    "type": "object",
    "required": ["user_id", "action"],
    "additionalProperties": False,
    "properties": {
        "user_id": {"type": "string", "maxLength": 128, "description": "Your pseudonymous id (no e-mail or phone)"},
        "action": {"type": "string", "description": "One of the tenant's actions"},
        "ts": {"type": "number", "description": "Seconds since the epoch; defaults to now"},
        "event_id": {"type": "string", "maxLength": 128, "description": "Makes retries idempotent"},
        "item_id": {"type": "string"},
        "category": {"type": "string"},
        "query": {"type": "string", "maxLength": 512},
        "context": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "device": {"type": "string", "enum": ["desktop", "mobile", "tablet", "other"]},
                "segment": {"type": "string"},
                "tz_offset_min": {"type": "integer", "minimum": -840, "maximum": 840},
            },
        },
    },
}
_SUB_PARAM = [{"name": "subscription_id", "in": "path", "required": True, "schema": {"type": "string"}}]
_SIGNAL = {
    "type": "object",
    "properties": {k: {"type": t} for k, t in (
        ("signal_id", "string"), ("user_id", "string"), ("type", "string"), ("payload", "object"), ("score", "number"),
        ("intent", "string"), ("created_at", "number"), ("variant", "string"))},
}
_USER_PARAM = [{"name": "user_id", "in": "path", "required": True, "schema": {"type": "string"}}]
_OBJECT = {"type": "object"}


def build_spec() -> dict[str, Any]:
    """The whole document."""
    return {
        "openapi": "3.0.3",
        "info": {"title": "nudge", "version": "1", "description": "Engagement scoring from streamed user actions."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message", "details"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "details": {"type": "array", "items": {"type": "object"}},
                            },
                        }
                    },
                },
                "Event": _EVENT,
            },
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/events": {
                "post": _op(
                    "Ingest actions (row-wise 'events' or column-wise 'columns'); answered once durable",
                    {"type": "object", "properties": {"accepted": {"type": "integer"}, "duplicates": {"type": "integer"}}},
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
                    {"type": "object", "properties": {"results": {"type": "array", "items": _OBJECT}}},
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
                {"type": "object", "properties": {"accepted": {"type": "integer"}}},
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
                _OBJECT)},
            "/v1/bandits": {"get": _op(
                "The intervention bandits: per intent the variants, their posteriors, outcomes learned from and how "
                "traffic is allocated now (even while warming up, else Thompson sampling with a floor); and the "
                "signals sent per hour, intent and variant", _OBJECT)},
            "/v1/subscriptions": {
                "post": _op("Register a webhook for signals; the answer holds the signing secret, shown once",
                            {"type": "object", "properties": {"id": {"type": "string"}, "secret": {"type": "string"},
                                                              "url": {"type": "string"}, "types": _OBJECT}},
                            body={"type": "object", "required": ["url"], "properties": {
                                "url": {"type": "string"}, "types": {"type": "array", "items": {"type": "string"}}}},
                            errors=(409,), ok_status="201"),
                "get": _op("The tenant's subscriptions with delivery statistics", _OBJECT),
            },
            "/v1/subscriptions/{subscription_id}": {
                "delete": _op("Stop and remove a subscription", _OBJECT, errors=(404,), params=_SUB_PARAM)},
            "/v1/subscriptions/{subscription_id}/test": {
                "post": _op("Send one signed test delivery and report the endpoint's answer", _OBJECT, errors=(404,),
                            params=_SUB_PARAM)},
            "/v1/subscriptions/{subscription_id}/dead-letters": {
                "get": _op("Batches given up on, with their last error", _OBJECT, errors=(404,), params=_SUB_PARAM)},
            "/v1/subscriptions/{subscription_id}/dead-letters/{dead_letter_id}/redeliver": {
                "post": _op("Queue a dead letter for delivery again", _OBJECT, errors=(404,), ok_status="202", params=[
                    *_SUB_PARAM, {"name": "dead_letter_id", "in": "path", "required": True, "schema": {"type": "integer"}}])},
            "/v1/signals": {"get": _op(
                "Pull signals after a cursor, waiting up to wait_s for the first (long poll)",
                {"type": "object", "properties": {"signals": {"type": "array", "items": _SIGNAL}, "next": {"type": "string"}}},
                errors=(400,), params=[
                    {"name": "after", "in": "query", "schema": {"type": "string"}, "description": "the 'next' of the last answer"},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {"name": "wait_s", "in": "query", "schema": {"type": "number", "minimum": 0}}])},
            "/v1/weights": {"get": _op("Action weights (Beta posteriors), transitions and lifts", _OBJECT)},
            "/v1/users/{user_id}": {
                "get": _op("A user's recent actions and score", _OBJECT, errors=(400, 404), params=_USER_PARAM),
                "delete": _op("Erase everything about a user", _OBJECT, errors=(400,), params=_USER_PARAM),
            },
            "/v1/config": {
                "get": _op("The tenant's configuration", _OBJECT),
                "put": _op("Change settings (fields not given keep their values)", _OBJECT, body=_OBJECT,
                           errors=(409,)),
            },
            "/v1/model": {"get": _op("The next-action model served (transformer or markov), the last load error or "
                                     "refusal, the last gate decision's figures and what a rollback returns to",
                                     _OBJECT)},
            "/v1/model/reload": {"post": {**_op(
                "Gate the tenant's checkpoint now and serve it if it passes: validated on enough events, and not worse "
                "than what serves on the recent log (409 model_rejected otherwise); a refused one leaves the served "
                "model in place. {\"force\": true} skips the comparison, not the validation rule", _OBJECT,
                errors=(400, 404, 408, 409, 413, 415, 422)),
                "requestBody": {"required": False, "content": _content(
                    {"type": "object", "additionalProperties": False, "properties": {"force": {"type": "boolean"}}})}}},
            "/v1/model/rollback": {"post": _op(
                "Serve again the predictor that served before the current one (the Markov chain before the first "
                "promoted model); 409 nothing_to_roll_back when there is none", _OBJECT, errors=(409,))},
            "/v1/model/history": {"get": _op(
                "Promotions, refusals, rollbacks and failed loads of the tenant's model, newest first (the last 100), "
                "with file stamps and gate figures",
                {"type": "object", "properties": {"history": {"type": "array", "items": _OBJECT}}})},
            "/healthz": {"get": _op("Liveness", _OBJECT, auth=False)},
            "/readyz": {"get": _op("Readiness: recovery state and backend", _OBJECT, auth=False, errors=(503,))},
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
            "/openapi.json": {"get": _op("This document", _OBJECT, auth=False)},
        },
    }
