"""/_synapse/admin/v1/federation/destinations (both engines): list (paged, filtered),
one destination, reset_connection; admins only; unknown destinations are 404."""

from __future__ import annotations

from starling.storage.federation_sender import FederationSenderStore
from tests.support.harness import Harness

ADMIN = "/_synapse/admin/v1/federation/destinations"


async def test_destinations_listed_shown_and_reset(hs: Harness) -> None:
    _, admin = await hs.register("root", admin=True)
    _, user = await hs.register("plain")
    store = FederationSenderStore(hs.services.db)
    for name in ("a.test", "b.test", "down.test"):
        await store.ensure_destination(name, 0)
    await store.set_retry("down.test", 4000, 123_000, 100_000)

    status, body = await hs.request("GET", ADMIN, admin)
    assert status == 200, body
    assert body["total"] == 3
    assert [d["destination"] for d in body["destinations"]] == ["a.test", "b.test", "down.test"]
    down = body["destinations"][2]
    assert down["failure_ts"] == 100_000 and down["retry_interval"] == 4000
    assert body["destinations"][0]["failure_ts"] is None

    status, body = await hs.request("GET", f"{ADMIN}?from=1&limit=1", admin)
    assert status == 200 and [d["destination"] for d in body["destinations"]] == ["b.test"]
    assert body["next_token"] == "2"
    status, body = await hs.request("GET", f"{ADMIN}?destination=down", admin)
    assert status == 200 and body["total"] == 1
    status, body = await hs.request("GET", f"{ADMIN}?limit=-1", admin)
    assert status == 400 and body["errcode"] == "M_INVALID_PARAM"

    status, body = await hs.request("GET", f"{ADMIN}/down.test", admin)
    assert status == 200 and body["retry_interval"] == 4000
    status, body = await hs.request("GET", f"{ADMIN}/nowhere.test", admin)
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, body = await hs.request("GET", ADMIN, user)
    assert status == 403

    status, body = await hs.request("POST", f"{ADMIN}/down.test/reset_connection", admin, {})
    assert status == 200, body
    status, body = await hs.request("GET", f"{ADMIN}/down.test", admin)
    assert body["retry_interval"] == 0 and body["failure_ts"] is None
    status, body = await hs.request("POST", f"{ADMIN}/nowhere.test/reset_connection", admin, {})
    assert status == 404
