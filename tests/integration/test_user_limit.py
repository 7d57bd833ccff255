"""A tenant's users in memory are bounded: a batch that would add users past ``max_users_per_tenant`` is refused
whole with 409 ``user_limit_reached``; known users' events still go in, and erasing users makes room."""
import time


def events(*users):
    return [{"user_id": u, "action": "view", "ts": time.time() - 5} for u in users]


async def test_new_users_past_the_limit_are_refused_whole_and_known_ones_still_go_in(start):
    s = await start(max_users_per_tenant=5)
    assert (await s.acme.events(events("a", "b", "c", "d"))).status == 200
    refused = await s.acme.events(events("a", "e", "f"))  # 4 known + 2 new > 5
    assert refused.status == 409, refused.body
    error = refused.body["error"]
    assert error["code"] == "user_limit_reached" and error["details"][0]["field"] == "user_id"
    assert "4 users" in error["message"] and "adds 2" in error["message"]
    assert (await s.acme.call("GET", "/v1/users/e")).status == 404  # nothing of the batch went in

    assert (await s.acme.events(events("a", "b", "e"))).status == 200  # one new: 5 of 5
    assert (await s.acme.events(events("a", "b", "c", "d", "e"))).status == 200  # all known
    assert (await s.acme.events(events("g"))).status == 409
    # The limit is per tenant.
    assert (await s.globex.events(events(*"abcde"))).status == 200

    assert (await s.acme.call("DELETE", "/v1/users/d")).status == 200
    assert (await s.acme.events(events("g"))).status == 200
