"""Server ACL matching and history visibility for servers."""

from __future__ import annotations

import pytest

from starling.federation.room_access import acl_allows, glob_matches


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("*", "anything.example", True),
        ("*.evil.com", "a.evil.com", True),
        ("*.evil.com", "evil.com", False),
        ("ev?l.com", "evil.com", True),
        ("ev?l.com", "eviil.com", False),
        ("a*b*c", "aXXbYYc", True),
        ("a*b*c", "aXXbYY", False),
        ("", "", True),
        ("", "x", False),
    ],
)
def test_glob(pattern: str, text: str, expected: bool) -> None:
    assert glob_matches(pattern, text) is expected


def test_glob_is_not_exponential() -> None:
    # Backtracking regexes take ages here; the two-pointer matcher is quadratic at worst.
    assert not glob_matches("*a" * 40 + "b", "a" * 255)


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
