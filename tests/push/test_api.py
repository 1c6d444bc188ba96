"""Push rules and pushers through the Client-Server API, on both engines."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.support.harness import Harness

V3 = "/_matrix/client/v3"
RULES = f"{V3}/pushrules/global"


async def ok(hs: Harness, method: str, path: str, token: str, body: Any = None, **kw: Any) -> Any:
    status, resp = await hs.request(method, path, token, body, **kw)
    assert status == 200, resp
    return resp


async def test_defaults_are_listed_in_order(hs: Harness) -> None:
    user, token = await hs.register()
    everything = await ok(hs, "GET", f"{V3}/pushrules/", token)
    ruleset = everything["global"]
    assert set(ruleset) == {"override", "content", "room", "sender", "underride"}
    assert ruleset["override"][0]["rule_id"] == ".m.rule.master"
    assert ruleset["override"][0]["enabled"] is False
    invite = next(r for r in ruleset["override"] if r["rule_id"] == ".m.rule.invite_for_me")
    assert invite["conditions"][2]["pattern"] == user
    assert [r["rule_id"] for r in ruleset["underride"]][-1] == ".m.rule.encrypted"
    assert await ok(hs, "GET", f"{RULES}/", token) == ruleset
    status, _ = await hs.request("GET", f"{V3}/pushrules/")
    assert status == 401


async def test_create_read_move_delete(hs: Harness) -> None:
    _user, token = await hs.register()
    body = {"pattern": "cake*lie", "actions": ["notify"]}
    await ok(hs, "PUT", f"{RULES}/content/nocake", token, body)
    rule = await ok(hs, "GET", f"{RULES}/content/nocake", token)
    assert rule == {
        "rule_id": "nocake",
        "default": False,
        "enabled": True,
        "actions": ["notify"],
        "pattern": "cake*lie",
    }
    await ok(hs, "PUT", f"{RULES}/content/second", token, body)
    await ok(hs, "PUT", f"{RULES}/content/third", token, body, params={"after": "nocake"})
    ruleset = await ok(hs, "GET", f"{RULES}/", token)
    assert [r["rule_id"] for r in ruleset["content"]] == ["second", "nocake", "third"]
    # The change reaches the client as m.push_rules account data.
    stored = hs.services.account_data
    content = await stored.get(_user, None, "m.push_rules")
    assert content is not None and [r["rule_id"] for r in content["global"]["content"]] == [
        "second",
        "nocake",
        "third",
    ]

    await ok(hs, "PUT", f"{RULES}/content/third/enabled", token, {"enabled": False})
    assert await ok(hs, "GET", f"{RULES}/content/third/enabled", token) == {"enabled": False}
    await ok(hs, "PUT", f"{RULES}/content/third/actions", token, {"actions": []})
    assert await ok(hs, "GET", f"{RULES}/content/third/actions", token) == {"actions": []}

    await ok(hs, "DELETE", f"{RULES}/content/nocake", token)
    status, resp = await hs.request("GET", f"{RULES}/content/nocake", token)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    status, resp = await hs.request("DELETE", f"{RULES}/content/nocake", token)
    assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")


async def test_room_and_sender_rules_use_ids(hs: Harness) -> None:
    _user, token = await hs.register()
    room = quote("!abc:example.org")
    await ok(hs, "PUT", f"{RULES}/room/{room}", token, {"actions": []})
    rule = await ok(hs, "GET", f"{RULES}/room/{room}", token)
    assert rule["rule_id"] == "!abc:example.org" and "conditions" not in rule


async def test_server_default_rules(hs: Harness) -> None:
    _user, token = await hs.register()
    master = f"{RULES}/override/.m.rule.master"
    await ok(hs, "PUT", f"{master}/enabled", token, {"enabled": True})
    assert await ok(hs, "GET", f"{master}/enabled", token) == {"enabled": True}
    await ok(hs, "PUT", f"{RULES}/underride/.m.rule.message/actions", token, {"actions": []})
    rule = await ok(hs, "GET", f"{RULES}/underride/.m.rule.message", token)
    assert rule["actions"] == [] and rule["default"] is True
    # Not created, replaced, moved or deleted.
    for method, path, body in [
        ("PUT", master, {"actions": []}),
        ("PUT", f"{RULES}/override/.m.rule.new", {"actions": []}),
        ("DELETE", master, None),
    ]:
        status, resp = await hs.request(method, path, token, body)
        assert status == 400, (method, path, resp)
    await ok(hs, "PUT", f"{RULES}/override/mine", token, {"actions": []})
    status, resp = await hs.request(
        "PUT",
        f"{RULES}/override/other",
        token,
        {"actions": []},
        params={"before": ".m.rule.master"},
    )
    assert status == 400
    status, resp = await hs.request(
        "PUT", f"{RULES}/override/other", token, {"actions": []}, params={"before": "nope"}
    )
    assert (status, resp["errcode"]) == (400, "M_UNKNOWN")


async def test_validation(hs: Harness) -> None:
    _user, token = await hs.register()
    cases = [
        ("PUT", f"{RULES}/override/x", {"actions": ["explode"]}),
        ("PUT", f"{RULES}/override/x", {}),
        ("PUT", f"{RULES}/override/x", {"actions": [], "conditions": [{"kind": "event_match"}]}),
        ("PUT", f"{RULES}/content/x", {"actions": []}),
        ("PUT", f"{RULES}/bogus/x", {"actions": []}),
        ("PUT", f"{RULES}/override/a%5Cb", {"actions": []}),
        ("PUT", f"{RULES}/override/.m.rule.master/enabled", {"enabled": "yes"}),
        ("PUT", f"{RULES}/override/.m.rule.master/actions", {"actions": "notify"}),
    ]
    for method, path, body in cases:
        status, resp = await hs.request(method, path, token, body)
        assert status == 400, (path, body, resp)
        assert resp["errcode"] in ("M_INVALID_PARAM", "M_MISSING_PARAM", "M_BAD_JSON"), resp
    for path in (f"{RULES}/override/none/enabled", f"{RULES}/override/none/actions"):
        status, resp = await hs.request("GET", path, token)
        assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
        status, resp = await hs.request("PUT", path, token, {"enabled": True, "actions": []})
        assert (status, resp["errcode"]) == (404, "M_NOT_FOUND")
    # Unknown condition kinds are stored (they never match).
    await ok(
        hs, "PUT", f"{RULES}/override/y", token, {"actions": [], "conditions": [{"kind": "x.y"}]}
    )


async def test_unread_counts_follow_user_rules(hs: Harness) -> None:
    alice, alice_token = await hs.register()
    bob, bob_token = await hs.register()
    room_id = await hs.create_room(alice_token, preset="public_chat")
    await ok(hs, "POST", f"{V3}/join/{room_id}", bob_token, {})
    await hs.send_message(alice_token, room_id, "the cake is a lie")
    await hs.send_message(alice_token, room_id, "nothing")

    async def counts() -> dict[str, int]:
        got = await hs.services.unread_counts.counts(bob, [room_id])
        n = sum(c[0] for c in got[room_id].values())
        h = sum(c[1] for c in got[room_id].values())
        return {"n": n, "h": h}

    assert await counts() == {"n": 2, "h": 0}
    await ok(
        hs,
        "PUT",
        f"{RULES}/content/cake",
        bob_token,
        {"pattern": "cake", "actions": ["notify", {"set_tweak": "highlight"}]},
    )
    assert await counts() == {"n": 2, "h": 1}
    await ok(hs, "PUT", f"{RULES}/room/{quote(room_id)}", bob_token, {"actions": []})
    assert await counts() == {"n": 1, "h": 1}  # content rules come before room rules
    await ok(hs, "PUT", f"{RULES}/override/.m.rule.master/enabled", bob_token, {"enabled": True})
    assert await counts() == {"n": 0, "h": 0}
    assert alice != bob


async def test_pushers(hs: Harness) -> None:
    _user, token = await hs.register()
    assert await ok(hs, "GET", f"{V3}/pushers", token) == {"pushers": []}
    pusher = {
        "kind": "http",
        "app_id": "face.mcapp.appy.prod",
        "pushkey": "key1",
        "app_display_name": "Appy",
        "device_display_name": "Phone",
        "lang": "en",
        "data": {
            "url": "https://push.example.org/_matrix/push/v1/notify",
            "format": "event_id_only",
        },
    }
    await ok(hs, "POST", f"{V3}/pushers/set", token, pusher)
    await ok(hs, "POST", f"{V3}/pushers/set", token, {**pusher, "lang": "fr"})  # replaces
    await ok(hs, "POST", f"{V3}/pushers/set", token, {**pusher, "pushkey": "key2"})
    listed = (await ok(hs, "GET", f"{V3}/pushers", token))["pushers"]
    assert [(p["pushkey"], p["lang"]) for p in listed] == [("key1", "fr"), ("key2", "en")]
    assert listed[0]["data"]["url"].endswith("/notify")
    await ok(hs, "POST", f"{V3}/pushers/set", token, {**pusher, "kind": None})
    listed = (await ok(hs, "GET", f"{V3}/pushers", token))["pushers"]
    assert [p["pushkey"] for p in listed] == ["key2"]
    # Deleting again is fine.
    await ok(hs, "POST", f"{V3}/pushers/set", token, {**pusher, "kind": None})
    other, other_token = await hs.register()
    assert await ok(hs, "GET", f"{V3}/pushers", other_token) == {"pushers": []}
    assert other != _user


async def test_pusher_validation(hs: Harness) -> None:
    _user, token = await hs.register()
    base = {
        "kind": "http",
        "app_id": "a.b",
        "pushkey": "k",
        "app_display_name": "A",
        "device_display_name": "D",
        "lang": "en",
        "data": {"url": "https://push.example.org/_matrix/push/v1/notify"},
    }
    cases: list[tuple[dict[str, Any], str]] = [
        ({k: v for k, v in base.items() if k != "pushkey"}, "M_MISSING_PARAM"),
        ({k: v for k, v in base.items() if k != "lang"}, "M_MISSING_PARAM"),
        ({**base, "kind": "carrier-pigeon"}, "M_INVALID_PARAM"),
        ({**base, "app_id": "x" * 65}, "M_INVALID_PARAM"),
        ({**base, "pushkey": "k" * 513}, "M_INVALID_PARAM"),
        ({**base, "data": {}}, "M_MISSING_PARAM"),
        ({**base, "data": {"url": "https://push.example.org/elsewhere"}}, "M_INVALID_PARAM"),
        ({**base, "data": "x"}, "M_BAD_JSON"),
        (
            {**base, "kind": "email", "app_id": "m.email", "pushkey": "not-an-address"},
            "M_INVALID_PARAM",
        ),
    ]
    for body, errcode in cases:
        status, resp = await hs.request("POST", f"{V3}/pushers/set", token, body)
        assert (status, resp["errcode"]) == (400, errcode), (body, resp)
    email = {**base, "kind": "email", "app_id": "m.email", "pushkey": "bob@example.org", "data": {}}
    await ok(hs, "POST", f"{V3}/pushers/set", token, email)


async def test_pushers_are_replaced_across_users_unless_appended(hs: Harness) -> None:
    alice, atok = await hs.register()
    bob, btok = await hs.register()
    pusher = {
        "kind": "http",
        "app_id": "org.example.app",
        "pushkey": "same-device-key",
        "app_display_name": "App",
        "device_display_name": "Phone",
        "lang": "en",
        "data": {"url": "https://push.example.org/_matrix/push/v1/notify"},
    }
    assert (await hs.request("POST", f"{V3}/pushers/set", atok, pusher))[0] == 200
    # The same app_id/pushkey set by Bob without append removes Alice's.
    assert (await hs.request("POST", f"{V3}/pushers/set", btok, pusher))[0] == 200
    status, body = await hs.request("GET", f"{V3}/pushers", atok)
    assert status == 200 and body["pushers"] == []
    status, body = await hs.request("GET", f"{V3}/pushers", btok)
    assert [p["pushkey"] for p in body["pushers"]] == ["same-device-key"]
    # With append, both keep it.
    appended = {**pusher, "append": True}
    assert (await hs.request("POST", f"{V3}/pushers/set", atok, appended))[0] == 200
    for token in (atok, btok):
        status, body = await hs.request("GET", f"{V3}/pushers", token)
        assert len(body["pushers"]) == 1
    # kind null deletes only the caller's.
    deletion = {"kind": None, "app_id": "org.example.app", "pushkey": "same-device-key"}
    assert (await hs.request("POST", f"{V3}/pushers/set", atok, deletion))[0] == 200
    assert (await hs.request("GET", f"{V3}/pushers", atok))[1]["pushers"] == []
    assert len((await hs.request("GET", f"{V3}/pushers", btok))[1]["pushers"]) == 1
    assert alice != bob


async def test_rules_of_one_kind_and_historical_actions(hs: Harness) -> None:
    _user, token = await hs.register()
    await ok(
        hs, "PUT", f"{RULES}/sender/{quote('@bob:example.com')}", token, {"actions": ["notify"]}
    )
    rules = await ok(hs, "GET", f"{RULES}/sender/", token)
    assert [r["rule_id"] for r in rules] == ["@bob:example.com"]
    # "dont_notify" is read back as given (clients set it; evaluation ignores it).
    path = f"{RULES}/override/.m.rule.suppress_notices/actions"
    await ok(hs, "PUT", path, token, {"actions": ["dont_notify"]})
    assert await ok(hs, "GET", path, token) == {"actions": ["dont_notify"]}


async def test_malformed_rule_paths_are_400(hs: Harness) -> None:
    _user, token = await hs.register()
    for method, path in [
        ("PUT", "/"),
        ("PUT", "/not_a_scope/room/x"),
        ("PUT", "/global"),
        ("PUT", "/global/room"),
        ("PUT", "/global/room/"),
        ("PUT", "/global/override/.m.rule.master/not_an_attr"),
        ("GET", "/global"),
        ("GET", "/global/room"),
        ("GET", "/not_a_scope/"),
        ("GET", "/global/not_a_template/"),
        ("GET", "/global/override/.m.rule.master/not_an_attr"),
        ("DELETE", "/global/room/"),
    ]:
        status, resp = await hs.request(method, f"{V3}/pushrules{path}", token, {"actions": []})
        assert status == 400, (method, path, resp)
    status, _ = await hs.request("GET", f"{V3}/pushrules/global/override/not_a_rule", token)
    assert status == 404
