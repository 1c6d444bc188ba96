"""Server ACL matching and history visibility for servers."""

from __future__ import annotations

from starling.federation.room_access import acl_allows


def test_hostile_acl_pattern_is_cheap() -> None:
    acl = {"allow": ["*a" * 40 + "b"]}
    assert not acl_allows(acl, "a" * 250)


def test_acl_rules_in_the_spec_order() -> None:
    acl = {"allow": ["*"], "deny": ["*.evil.com", "evil.com"], "allow_ip_literals": False}
    assert acl_allows(None, "any.example")
    assert acl_allows(acl, "good.example:8448")
    assert not acl_allows(acl, "evil.com:1234")  # the port is ignored
    assert not acl_allows(acl, "sub.evil.com")
    assert not acl_allows(acl, "1.2.3.4:8448")
    assert not acl_allows(acl, "[::1]:8448")
    assert acl_allows({"allow": ["*"]}, "1.2.3.4")
    assert not acl_allows({"deny": []}, "good.example")  # no allow rule: nobody
    assert acl_allows({"allow": ["GOOD.example"]}, "good.EXAMPLE")
    assert not acl_allows({"allow": "*"}, "good.example")  # malformed lists allow nothing
