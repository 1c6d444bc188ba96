"""Reporting content (spec: Client-Server API > Reporting content) and the admin API over
the reports (Synapse: docs/admin_api/event_reports.md), both engines."""

from __future__ import annotations

from tests.support.harness import Harness

V1 = "/_synapse/admin/v1"
C = "/_matrix/client/v3"
HS = "test.local"


async def test_report_event_and_room(hs: Harness, admin: str) -> None:
    alice, alice_token = await hs.register("alice")
    bob, bob_token = await hs.register("bob")
    _, eve_token = await hs.register("eve")
    room = await hs.create_room(alice_token, name="Pub", preset="public_chat")
    status, _ = await hs.request("POST", f"{C}/join/{room}", bob_token, {})
    assert status == 200
    event_id = await hs.send_message(alice_token, room, "rude words")
    status, resp = await hs.request(
        "POST", f"{C}/rooms/{room}/report/{event_id}", bob_token, {"reason": "rude", "score": -50}
    )
    assert (status, resp) == (200, {})
    # not joined, unknown event, event of another room: all 404, the spec's one answer
    other = await hs.create_room(alice_token)
    other_event = await hs.send_message(alice_token, other, "elsewhere")
    for token, path in [
        (eve_token, f"{C}/rooms/{room}/report/{event_id}"),
        (bob_token, f"{C}/rooms/{room}/report/$nope"),
        (bob_token, f"{C}/rooms/{room}/report/{other_event}"),
    ]:
        status, resp = await hs.request("POST", path, token, {"reason": "x"})
        assert (status, resp["errcode"]) == (404, "M_NOT_FOUND"), path
    for body, errcode in [
        ({"reason": 5}, "M_BAD_JSON"),
        ({"score": 10}, "M_INVALID_PARAM"),
        ({"reason": "x" * 2000}, "M_INVALID_PARAM"),
    ]:
        status, resp = await hs.request(
            "POST", f"{C}/rooms/{room}/report/{event_id}", bob_token, body
        )
        assert (status, resp["errcode"]) == (400, errcode), body
    # a room report: anyone, for a room known here
    status, resp = await hs.request(
        "POST", f"{C}/rooms/{room}/report", eve_token, {"reason": "spam"}
    )
    assert (status, resp) == (200, {})
    status, resp = await hs.request("POST", f"{C}/rooms/{room}/report", eve_token, {})
    assert (status, resp["errcode"]) == (400, "M_MISSING_PARAM")
    status, resp = await hs.request(
        "POST", f"{C}/rooms/!unknown:{HS}/report", eve_token, {"reason": "x"}
    )
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await hs.request("POST", f"{C}/rooms/{room}/report", None, {"reason": "x"})
    assert status == 401

    # the admin's view: newest first by default
    status, resp = await hs.request("GET", f"{V1}/event_reports", admin)
    assert status == 200, resp
    assert resp["total"] == 2 and "next_token" not in resp
    room_report, event_report = resp["event_reports"]
    assert room_report["event_id"] is None and room_report["reason"] == "spam"
    assert event_report["event_id"] == event_id and event_report["user_id"] == bob
    assert event_report["sender"] == alice and event_report["score"] == -50
    assert event_report["name"] == "Pub" and event_report["room_id"] == room
    status, resp = await hs.request(
        "GET", f"{V1}/event_reports", admin, params={"dir": "f", "limit": "1"}
    )
    assert resp["event_reports"][0]["id"] == event_report["id"] and resp["next_token"] == 1
    status, resp = await hs.request(
        "GET", f"{V1}/event_reports", admin, params={"event_sender_user_id": alice}
    )
    assert [r["id"] for r in resp["event_reports"]] == [event_report["id"]]
    status, resp = await hs.request("GET", f"{V1}/event_reports", admin, params={"user_id": bob})
    assert resp["total"] == 1
    status, resp = await hs.request("GET", f"{V1}/event_reports", admin, params={"room_id": other})
    assert resp == {"event_reports": [], "total": 0}
    status, resp = await hs.request("GET", f"{V1}/event_reports/{event_report['id']}", admin)
    assert resp["event_json"]["content"]["body"] == "rude words"
    status, resp = await hs.request("DELETE", f"{V1}/event_reports/{event_report['id']}", admin)
    assert (status, resp) == (200, {})
    status, resp = await hs.request("GET", f"{V1}/event_reports/{event_report['id']}", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await hs.request("DELETE", f"{V1}/event_reports/{event_report['id']}", admin)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    for bad in ("abc", "-1", "9" * 30):
        status, resp = await hs.request("GET", f"{V1}/event_reports/{bad}", admin)
        assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM"), bad
    status, resp = await hs.request("GET", f"{V1}/event_reports", admin, params={"dir": "z"})
    assert (status, resp["errcode"]) == (400, "M_INVALID_PARAM")
    # non-admins
    for method, path in [
        ("GET", f"{V1}/event_reports"),
        ("GET", f"{V1}/event_reports/1"),
        ("DELETE", f"{V1}/event_reports/1"),
    ]:
        status, resp = await hs.request(method, path, bob_token)
        assert (status, resp["errcode"]) == (403, "M_FORBIDDEN"), path
