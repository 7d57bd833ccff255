"""The OpenAPI document's response schemas against real answers.

A tenant is made to give every kind of answer (ingest, scores with explanations and signals, feedback, pulls,
webhook subscriptions with a test delivery and dead letters, weights, users, config, model and its history, stats,
bandits, readiness, errors), and each JSON or msgpack body is validated with ``jsonschema`` against the schema
the served document gives for that route, status and content type. The document is OpenAPI 3.0: its schemas
are JSON Schema draft 4 with ``nullable``, which the validator below honours the way OpenAPI 3.0.3 defines it
(null passes the ``type`` of a schema that says ``nullable: true``; other keywords, ``enum`` included, still
apply). ``$ref`` is resolved by ``referencing`` from a registry that holds the document.
"""
import asyncio
import json
import time

import pytest
import referencing
import referencing.jsonschema
from aiohttp import web
from jsonschema import Draft4Validator, validators

from model.config import DEFAULT_ACTIONS, INTENTS
from server.codecs import JSON as JSON_TYPE
from server.codecs import encode
from server.models import model_path

from .conftest import MSGPACK

SPEC_URI = "urn:nudge:openapi"
# Answered only under conditions the tests below set up apart (a trained checkpoint), or text.
ELSEWHERE = {("POST", "/v1/model/reload"), ("POST", "/v1/model/rollback")}


def _nullable_type(validator, types, instance, schema):
    """``type`` as OpenAPI 3.0 reads it: ``nullable: true`` beside it lets null through."""
    if instance is None and schema.get("nullable") is True:
        return
    yield from Draft4Validator.VALIDATORS["type"](validator, types, instance, schema)


OpenApi30Validator = validators.extend(Draft4Validator, {"type": _nullable_type})


def _escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")


class Document:
    """The served document, its registry, and the answers validated against it."""

    def __init__(self, spec: dict):
        self.spec = spec
        self.registry = referencing.Registry().with_resource(
            SPEC_URI, referencing.Resource(spec, referencing.jsonschema.DRAFT4))
        self.validated: set[tuple[str, str, int]] = set()

    def validator(self, *segments: str) -> OpenApi30Validator:
        pointer = "".join("/" + _escape(s) for s in segments)
        return OpenApi30Validator({"$ref": f"{SPEC_URI}#{pointer}"}, registry=self.registry)

    def problems(self, method: str, route: str, status: int, kind: str, body) -> list[str]:
        """What is wrong with ``body`` as the answer of ``method route`` with ``status`` in ``kind``."""
        responses = self.spec["paths"][route][method.lower()]["responses"]
        # Each 2xx-4xx a route gives must be listed; an unexpected 5xx is what the default answer is for.
        listed = str(status) if str(status) in responses or status < 500 else "default"
        if listed not in responses:
            return [f"{method} {route} answered {status}, which the document does not list"]
        if kind not in responses[listed]["content"]:
            return [f"{method} {route} {status} answered {kind}, which the document does not list"]
        validator = self.validator("paths", route, method.lower(), "responses", listed, "content", kind, "schema")
        return [f"{method} {route} {status} at /{'/'.join(map(str, e.absolute_path))}: {e.message}"
                for e in sorted(validator.iter_errors(body), key=lambda e: list(map(str, e.absolute_path)))]

    def check(self, method: str, route: str, reply) -> object:
        kind = reply.headers.get("Content-Type", "").split(";")[0].strip()
        problems = self.problems(method, route, reply.status, kind, reply.body)
        assert not problems, "\n".join(problems[:20])
        self.validated.add((method, route, reply.status))
        return reply.body

    async def call(self, api, method: str, route: str, body=None, *, expect: int, query: str = "", **kw):
        """Call ``route`` (a template: its {names} come from ``kw``), check the status and validate the body."""
        params = {k: kw.pop(k) for k in list(kw) if "{" + k + "}" in route}
        path = route.format(**params) + (f"?{query}" if query else "")
        reply = await api.call(method, path, body, **kw)
        assert reply.status == expect, (method, path, reply.status, reply.body)
        return self.check(method, route, reply)

    def documented_ok(self) -> set[tuple[str, str]]:
        return {(m.upper(), p) for p, ops in self.spec["paths"].items() for m, op in ops.items()
                if any(s.startswith("2") for s in op["responses"])}


async def _document(server) -> Document:
    reply = await server.acme.call("GET", "/openapi.json", key=None)
    doc = Document(reply.body)
    doc.check("GET", "/openapi.json", reply)
    return doc


LOCAL = {"webhooks_allow_http": 1, "webhooks_allow_private": 1, "webhook_backoff_base_s": 0.05,
         "webhook_backoff_max_s": 0.2, "max_items_per_request": 500, "max_subscriptions": 2}
# Carts left 10 s ago are abandoned already: a discount signal for each, half the users held out.
SIGNALLING = {"policy": {i: "offer_discount" if i == "cart_abandon_risk" else "none" for i in INTENTS},
              "thresholds": {"cart_abandon_risk": 0.4}, "holdout_share": 0.5, "cooldown_s": 0.0, "daily_cap": 1000,
              "cart_idle_s": 5.0, "segments": ["vip"], "discount_tiers_pct": [5, 10],
              "discount_codes": {"5": "FIVE"}}


async def _receiver(aiohttp_server, status: int) -> str:
    """A local webhook endpoint that answers every delivery with ``status``."""
    async def handle(request):
        await request.read()
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/hook", handle)
    return str((await aiohttp_server(app)).make_url("/hook"))


async def _eventually(check, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while not (found := await check()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)
    return found


async def test_every_answer_of_a_busy_tenant_matches_the_document(start, aiohttp_server):
    s = await start(**LOCAL)
    doc = await _document(s)
    acme = s.acme
    await doc.call(acme, "GET", "/healthz", expect=200, key=None)
    await doc.call(acme, "GET", "/readyz", expect=200, key=None)
    await doc.call(acme, "GET", "/metrics", expect=200, key=None)
    await doc.call(acme, "GET", "/v1/config", expect=200)
    await doc.call(acme, "PUT", "/v1/config", SIGNALLING, expect=200)
    await doc.call(acme, "PUT", "/v1/config", {"window_size": "big", "nope": 1}, expect=400)
    await doc.call(acme, "GET", "/v1/model", expect=200)
    await doc.call(acme, "GET", "/v1/model/history", expect=200)
    await doc.call(acme, "POST", "/v1/model/reload", expect=404)
    await doc.call(acme, "POST", "/v1/model/reload", {"force": "yes"}, expect=400)
    await doc.call(acme, "POST", "/v1/model/rollback", expect=409)

    # Subscriptions first: they receive the signals made after them. The endpoint refuses every delivery.
    url = await _receiver(aiohttp_server, 400)
    sub = await doc.call(acme, "POST", "/v1/subscriptions", {"url": url, "types": ["offer_discount"]}, expect=201)
    other = await doc.call(acme, "POST", "/v1/subscriptions", {"url": url}, expect=201)
    assert sub["types"] == ["offer_discount"] and other["types"] is None
    await doc.call(acme, "POST", "/v1/subscriptions", {"url": url}, expect=409)
    await doc.call(acme, "POST", "/v1/subscriptions", {"url": "ftp://example.com/hook"}, expect=400)
    tested = await doc.call(acme, "POST", "/v1/subscriptions/{subscription_id}/test", expect=200,
                            subscription_id=sub["id"])
    assert tested["delivered"] is False and tested["status"] == 400
    await doc.call(acme, "POST", "/v1/subscriptions/{subscription_id}/test", expect=429, subscription_id=sub["id"])
    await doc.call(acme, "POST", "/v1/subscriptions/{subscription_id}/test", expect=404, subscription_id="sub_x")

    # Events: carts (signals, webhook batches dead-lettered at once by the endpoint's 400), in contexts.
    now = time.time()
    users = [f"u{i}" for i in range(12)]
    carts = [{"user_id": u, "action": a, "ts": now - 10 + i, "event_id": f"{u}-{i}", "item_id": f"i{i}",
              "category": "shoes", "context": {"device": "mobile", "segment": "vip", "tz_offset_min": 60}}
             for u in users for i, a in enumerate(["view", "add_to_cart"])]
    # Hours old, with a purchase: evidence per context once the weighting horizon has passed.
    events = [{"user_id": f"old{k}", "action": a, "ts": now - 3 * 3600 + 60 * k + i, "context": {"device": "desktop"}}
              for k in range(5) for i, a in enumerate(["view", "add_to_cart", "purchase"])] + carts
    assert (await doc.call(acme, "POST", "/v1/events", {"events": events}, expect=200))["accepted"] == len(events)
    again = await doc.call(acme, "POST", "/v1/events", {"events": carts[:3]}, expect=200, fmt=MSGPACK)
    assert again == {"accepted": 0, "duplicates": 3}
    await doc.call(acme, "POST", "/v1/events", {"events": [{"user_id": "a@b.example", "action": "fly"}]}, expect=400)
    await doc.call(acme, "POST", "/v1/events", raw=b"user_id,action", headers={"Content-Type": "text/csv"},
                   expect=415)

    scored = await doc.call(acme, "POST", "/v1/score", {
        "users": [{"user_id": u, "state": {"page": "/cart"}} for u in users] + [{"user_id": "stranger"}],
        "explain": True}, expect=200)
    results = scored["results"]
    assert any(r["signal"] for r in results) and results[-1]["signal"] is None
    assert results[0]["explain"]["context"]["segment"] == "vip" and results[-1]["explain"]["context"] is None
    await doc.call(acme, "POST", "/v1/score", {"users": [{"user_id": u} for u in users]}, expect=200,
                   accept=MSGPACK)
    await doc.call(acme, "POST", "/v1/score", {"users": [{"user_id": "x", "mood": "sunny"}]}, expect=400)
    await doc.call(acme, "POST", "/v1/score", {"users": [{"user_id": f"n{i}"} for i in range(501)]}, expect=413)

    pulled = await doc.call(acme, "GET", "/v1/signals", expect=200, query="limit=1000")
    signals = pulled["signals"]
    assert signals and {sig["type"] for sig in signals} == {"offer_discount"}
    await doc.call(acme, "GET", "/v1/signals", expect=200, query=f"after={pulled['next']}&wait_s=0")
    await doc.call(acme, "GET", "/v1/signals", expect=400, query="after=garbage")

    await doc.call(acme, "POST", "/v1/feedback", {"feedback": [
        {"signal_id": signals[0]["signal_id"], "outcome": "received"},
        {"signal_id": signals[0]["signal_id"], "outcome": "converted"},
        {"signal_id": signals[-1]["signal_id"], "outcome": "dismissed"}]}, expect=200)
    await doc.call(acme, "POST", "/v1/feedback", {"feedback": [{"signal_id": "sig_nope", "outcome": "shown"}]},
                   expect=400)
    await doc.call(acme, "POST", "/v1/feedback", {"feedback": [{"signal_id": "s", "outcome": "liked"}]}, expect=400)

    route = "/v1/subscriptions/{subscription_id}/dead-letters"

    async def dead():
        return (await doc.call(acme, "GET", route, expect=200, subscription_id=sub["id"]))["dead_letters"]

    letter = (await _eventually(dead))[0]
    assert letter["state"] == "dead" and letter["last_error"] == "HTTP 400"
    redeliver = route + "/{dead_letter_id}/redeliver"
    await doc.call(acme, "POST", redeliver, expect=202, subscription_id=sub["id"], dead_letter_id=letter["id"])
    await doc.call(acme, "POST", redeliver, expect=404, subscription_id=sub["id"], dead_letter_id="99999")
    await doc.call(acme, "GET", route, expect=404, subscription_id="sub_" + "0" * 24)
    listed = (await doc.call(acme, "GET", "/v1/subscriptions", expect=200))["subscriptions"]
    assert [x["id"] for x in listed] == [sub["id"], other["id"]]

    stats = await doc.call(acme, "GET", "/v1/stats", expect=200)
    assert stats["conversion"]["difference"] is None  # no horizon has closed yet
    await doc.call(acme, "GET", "/v1/stats", expect=200, accept=MSGPACK)
    # The same report once the horizon has closed for every decision: rates and the uplift are numbers then.
    state = next(st for st in s.runtime.tenants.values() if st.tenant.name == "acme")
    later = json.loads(encode(await s.runtime.stats(state, now=time.time() + 7200), JSON_TYPE))
    assert later["conversion"]["difference"] is not None and later["conversion"]["holdout"]["decisions"]
    assert not doc.problems("GET", "/v1/stats", 200, JSON_TYPE, later)
    await doc.call(acme, "GET", "/v1/bandits", expect=200)
    weights = await doc.call(acme, "GET", "/v1/weights", expect=200)
    assert weights["contexts"]

    await doc.call(acme, "GET", "/v1/users/{user_id}", expect=200, user_id="u1")
    await doc.call(acme, "GET", "/v1/users/{user_id}", expect=404, user_id="nobody")
    await doc.call(acme, "GET", "/v1/users/{user_id}", expect=400, user_id="a@b.example")
    await doc.call(acme, "DELETE", "/v1/users/{user_id}", expect=200, user_id="u2")
    await doc.call(acme, "DELETE", "/v1/users/{user_id}", expect=400, user_id="a@b.example")
    # Removing an action the log holds events of is refused.
    kept = [a for a in DEFAULT_ACTIONS if a != "add_to_cart"]
    await doc.call(acme, "PUT", "/v1/config", {"actions": kept, "prior_means": {"add_to_cart": None}}, expect=409)

    await doc.call(acme, "GET", "/v1/activity", expect=200)
    await doc.call(acme, "GET", "/v1/scores/histogram", expect=200)
    await doc.call(acme, "GET", "/v1/scores/histogram", expect=200, query="bins=7", accept=MSGPACK)
    await doc.call(acme, "GET", "/v1/scores/histogram", expect=400, query="bins=0")
    page = await doc.call(acme, "GET", "/dashboard", expect=200, key=None)
    assert "<html" in page.lower()
    for asset in ("dashboard.js", "dashboard.css", "favicon.svg"):
        await doc.call(acme, "GET", "/dashboard/{asset}", expect=200, key=None, asset=asset)
    await doc.call(acme, "GET", "/dashboard/{asset}", expect=404, key=None, asset="secrets.txt")

    await doc.call(acme, "DELETE", "/v1/subscriptions/{subscription_id}", expect=200, subscription_id=other["id"])
    await doc.call(acme, "DELETE", "/v1/subscriptions/{subscription_id}", expect=404, subscription_id=other["id"])
    await doc.call(acme, "GET", "/v1/stats", expect=401, key=None)
    await doc.call(acme, "GET", "/v1/stats", expect=401, key="not-a-key")

    # Not ready: the API answers 503 and so does /readyz, with its own body.
    s.runtime.recovery.state = "recovering"
    try:
        await doc.call(acme, "GET", "/v1/config", expect=503)
        await doc.call(acme, "GET", "/readyz", expect=503, key=None)
    finally:
        s.runtime.recovery.state = "ready"
    # An unexpected failure: the documented default answer.
    original = state.engine.recent_actions
    state.engine.recent_actions = None  # calling it fails
    try:
        await doc.call(acme, "GET", "/v1/users/{user_id}", expect=500, user_id="u1")
    finally:
        state.engine.recent_actions = original

    answered = {(m, r) for m, r, status in doc.validated if 200 <= status < 300}
    assert doc.documented_ok() - answered - ELSEWHERE == set()


@pytest.fixture(scope="module")
def checkpoints():
    """A checkpoint the gate promotes, and one trained on too little to be validated."""
    import numpy as np

    from .test_models import NOW, _sessions, _train

    rng = np.random.default_rng(2)
    return {
        "good": _train(*_sessions(0, 1000, NOW - 6 * 86400, 3 * 86400)),
        "unvalidated": _train(np.array([f"u{i}" for i in rng.integers(0, 30, 400)]), rng.choice(9, 400),
                              np.sort(NOW - 3 * 86400 + rng.uniform(0, 3000, 400)), epochs=1),
    }


async def test_model_answers_match_the_document(start, checkpoints):
    from model.predictor import write_checkpoint

    from .test_models import _log

    s = await start(model_poll_s=3600.0)
    doc = await _document(s)
    acme, path = s.acme, model_path(s.data_dir, "acme")
    assert (await acme.events(_log())).status == 200
    write_checkpoint(checkpoints["unvalidated"], path)
    refused = await doc.call(acme, "POST", "/v1/model/reload", expect=409)
    assert refused["error"]["details"][0]["gate"]["promote"] is False
    path.write_bytes(b"not a checkpoint")
    await doc.call(acme, "POST", "/v1/model/reload", expect=422)
    write_checkpoint(checkpoints["good"], path)
    promoted = await doc.call(acme, "POST", "/v1/model/reload", expect=200)
    assert promoted["predictor"] == "transformer" and promoted["model"]["stamp"]
    served = await doc.call(acme, "GET", "/v1/model", expect=200, accept=MSGPACK)
    assert served["last_error"] is None and served["rollback_to"] == "markov"
    results = (await doc.call(acme, "POST", "/v1/score", {"users": [{"user_id": "u0"}, {"user_id": "stranger"}],
                                                          "explain": True}, expect=200))["results"]
    assert [r["predicted"]["predictor"] for r in results] == ["transformer", "markov"]
    back = await doc.call(acme, "POST", "/v1/model/rollback", expect=200)
    assert back["predictor"] == "markov" and back["model"] is None
    await doc.call(acme, "POST", "/v1/model/rollback", expect=409)
    history = (await doc.call(acme, "GET", "/v1/model/history", expect=200))["history"]
    assert [h["event"] for h in history] == ["rolled_back", "promoted", "load_failed", "rejected"]


def _untyped(schema, where: str, resolver, seen: set) -> list[str]:
    """The places in ``schema`` that say nothing of their type: no type, an object with neither properties nor
    additionalProperties, an array without items. ``additionalProperties: true`` is a deliberate free-form map."""
    if "$ref" in schema:
        if schema["$ref"] in seen:
            return []
        seen.add(schema["$ref"])
        resolved = resolver.lookup(schema["$ref"])
        return _untyped(resolved.contents, schema["$ref"], resolved.resolver, seen)
    branches = [b for key in ("oneOf", "anyOf", "allOf") for b in schema.get(key, ())]
    problems = [p for i, b in enumerate(branches) for p in _untyped(b, f"{where}[{i}]", resolver, seen)]
    kind = schema.get("type")
    if kind is None and not branches:
        problems.append(f"{where}: no type")
    if kind == "object":
        if "properties" not in schema and "additionalProperties" not in schema and "enum" not in schema:
            problems.append(f"{where}: an object with neither properties nor additionalProperties")
        for name, sub in schema.get("properties", {}).items():
            problems += _untyped(sub, f"{where}.{name}", resolver, seen)
        if isinstance(schema.get("additionalProperties"), dict):
            problems += _untyped(schema["additionalProperties"], f"{where}.*", resolver, seen)
    if kind == "array":
        if "items" not in schema:
            problems.append(f"{where}: an array without items")
        else:
            problems += _untyped(schema["items"], f"{where}[]", resolver, seen)
    return problems


async def test_every_route_documents_a_typed_success_answer(start):
    s = await start()
    doc = await _document(s)
    resolver = doc.registry.resolver(base_uri=SPEC_URI)
    problems = []
    for route in s.app.router.routes():
        if route.method == "HEAD":
            continue
        method, path = route.method, route.resource.canonical
        op = doc.spec["paths"].get(path, {}).get(method.lower())
        if op is None:
            problems.append(f"{method} {path}: not in the document")
            continue
        ok = {status: r for status, r in op["responses"].items() if status.startswith("2")}
        if not ok:
            problems.append(f"{method} {path}: no 2xx answer documented")
        for status, response in ok.items():
            for kind, media in response.get("content", {}).items():
                at = f"{method} {path} {status} {kind}"
                problems += _untyped(media["schema"], at, resolver, set())
                schema = media["schema"]
                top = resolver.lookup(schema["$ref"]).contents if "$ref" in schema else schema
                if top.get("type") == "object" and not top.get("properties"):
                    problems.append(f"{at}: an object without named properties")
    assert not problems, "\n".join(problems)


async def test_the_documents_schemas_are_json_schemas(start):
    s = await start()
    spec = (await _document(s)).spec
    schemas = list(spec["components"]["schemas"].values())
    for ops in spec["paths"].values():
        for op in ops.values():
            bodies = [*op["responses"].values(), *([op["requestBody"]] if "requestBody" in op else [])]
            schemas += [media["schema"] for body in bodies for media in body.get("content", {}).values()]
    for schema in schemas:
        Draft4Validator.check_schema(schema)


async def test_the_validation_fails_on_a_wrong_type_a_missing_field_or_an_unknown_one(start):
    s = await start()
    doc = await _document(s)
    await s.acme.events([{"user_id": "u", "action": "add_to_cart"}])
    body = (await s.acme.call("POST", "/v1/score", {"users": [{"user_id": "u"}], "explain": True})).body
    assert not doc.problems("POST", "/v1/score", 200, JSON_TYPE, body)

    def broken(change):
        copy = json.loads(json.dumps(body))
        change(copy["results"][0])
        return doc.problems("POST", "/v1/score", 200, JSON_TYPE, copy)

    assert broken(lambda r: r.update(score="0.5"))  # a number as a string
    assert broken(lambda r: r["predicted"].pop("purchase_5m"))  # a required field dropped
    assert broken(lambda r: r["predicted"].update(predictor="oracle"))  # not one of the predictors
    assert broken(lambda r: r["predicted"]["probs"].update(view=None))  # null where it is not nullable
    assert broken(lambda r: r.update(extra=1))  # a key the server never sends
    assert broken(lambda r: r.update(signal={"signal_id": "sig_x"}))  # a signal without its fields
    assert broken(lambda r: r["explain"].update(context={"device": "phone", "daypart": "night", "segment": None}))
    assert not broken(lambda r: r.update(signal=None))
    config = (await s.acme.call("GET", "/v1/config")).body
    assert doc.problems("GET", "/v1/config", 200, JSON_TYPE, {**config, "window_size": 32.5})
    assert doc.problems("GET", "/v1/config", 200, JSON_TYPE, {k: v for k, v in config.items() if k != "seed"})
    error = {"error": {"code": "x", "message": "y", "details": [{"field": "f"}]}}
    assert doc.problems("POST", "/v1/score", 400, JSON_TYPE, error)  # a detail without its reason
    assert doc.problems("POST", "/v1/score", 418, JSON_TYPE, error)  # a status the document does not list
