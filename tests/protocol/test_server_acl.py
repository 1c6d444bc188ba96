"""Server ACL evaluation (spec: m.room.server_acl): order of the rules, ports ignored,
case-insensitive globs, IP literals, malformed content."""

from __future__ import annotations

import time

from starling.protocol.server_acl import ServerAcl, server_allowed


def test_no_acl_allows_everyone() -> None:
    assert server_allowed(None, "anything.example")


def test_rules_in_order() -> None:
    acl = {"allow": ["*"], "deny": ["evil.com", "*.evil.com"], "allow_ip_literals": False}
    assert server_allowed(acl, "good.org")
    # The port is never considered.
    for name in ("evil.com", "evil.com:8448", "evil.com:1234", "sub.EVIL.com", "EVIL.COM"):
        assert not server_allowed(acl, name), name
    assert server_allowed(acl, "notevil.com")
    for literal in ("1.2.3.4", "1.2.3.4:8448", "[::1]", "[2001:db8::1]:80"):
        assert not server_allowed(acl, literal), literal
    # Deny wins over allow.
    assert not server_allowed({"allow": ["evil.com"], "deny": ["evil.com"]}, "evil.com")


def test_allow_defaults_to_nobody_and_ip_literals_default_to_allowed() -> None:
    assert not server_allowed({}, "example.org")
    assert not server_allowed({"deny": []}, "example.org")
    assert server_allowed({"allow": ["*"]}, "1.2.3.4")
    assert server_allowed({"allow": ["*"], "allow_ip_literals": "no"}, "1.2.3.4")
    assert server_allowed({"allow": ["1.2.3.*"]}, "1.2.3.4:80")


def test_question_mark_and_malformed_entries() -> None:
    acl = {"allow": ["server?.example", 7, None], "deny": "not-a-list"}
    assert server_allowed(acl, "server1.example")
    assert not server_allowed(acl, "server12.example")
    assert not server_allowed({"allow": ["*"]}, "not a server name")
    assert not server_allowed({"allow": "*"}, "example.org")


def test_hostile_patterns_stay_fast() -> None:
    acl = ServerAcl.from_content({"allow": ["*a" * 40 + "*b"], "deny": ["?" * 200]})
    start = time.monotonic()
    assert not acl.allows("a" * 250)
    # A generous bound that only catches exponential backtracking (a hang).
    assert time.monotonic() - start < 5
