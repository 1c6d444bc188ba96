"""Push rules in the protocol core: the spec's condition vectors, glob matching, the
server-default rules' behaviour, and ruleset edits."""

from __future__ import annotations

from typing import Any

import pytest

from starling.protocol import push_rules as pr
from tests.protocol.vectors import vector_ids, vectors
from tests.support.hang_guard import finishes

ME = "@bob:example.org"
OTHER = "@alice:example.org"


@pytest.mark.parametrize("vector", vectors("push.condition"), ids=vector_ids("push.condition"))
def test_condition_vectors(vector: dict[str, Any]) -> None:
    got = pr.condition_matches(vector["input"]["condition"], vector["input"]["event"])
    assert got is vector["expected"]


def test_there_are_condition_vectors() -> None:
    assert len(vectors("push.condition")) >= 13


@pytest.mark.parametrize(
    ("pattern", "value", "words", "expected"),
    [
        ("lunc?*", "Lunch plans", False, True),
        ("a*c", "ABC", False, True),
        ("a.c", "abc", False, False),  # '.' is literal
        ("[x]", "[x]", False, True),  # no character classes
        ("*", "", False, True),
        ("bob", "hey bob, hi", True, True),
        ("bob", "bobby", True, False),
        ("bob", "a_bob", True, False),  # '_' is a word character
        ("bob", "café-bob", True, True),
        ("@room", "hi @room!", True, True),
        ("ex*ple", "An exciting triple-whammy", True, True),
        ("ex*ple", "lexample", True, False),
    ],
)
def test_glob_matching(pattern: str, value: str, words: bool, expected: bool) -> None:
    assert pr.glob_matches(pattern, value, words=words) is expected


def _msg(body: str = "hello", sender: str = OTHER, **content: Any) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "sender": sender,
        "room_id": "!r:example.org",
        "event_id": "$e",
        "content": {"msgtype": "m.text", "body": body, **content},
    }


def _rules(stored: dict[str, Any] | None = None) -> pr.PushRuleSet:
    return pr.PushRuleSet(pr.merge_with_defaults(ME, stored))


def _ctx(members: int = 3, level: int = 0, **kw: Any) -> pr.PushContext:
    return pr.PushContext(user_id=ME, room_member_count=members, sender_power_level=level, **kw)


def _rule_id(event: dict[str, Any], ctx: pr.PushContext | None = None, rules: Any = None) -> Any:
    hit = (rules or _rules()).match(event, ctx or _ctx())
    return hit[1] if hit else None


def test_default_ruleset_shape() -> None:
    ruleset = pr.merge_with_defaults(ME, None)
    assert list(ruleset) == list(pr.KINDS)
    master = ruleset["override"][0]
    assert master["rule_id"] == ".m.rule.master" and master["enabled"] is False
    invite = pr.find_rule(ruleset, "override", ".m.rule.invite_for_me")
    assert invite["conditions"][2]["pattern"] == ME
    mention = pr.find_rule(ruleset, "override", ".m.rule.is_user_mention")
    assert mention["conditions"][0]["value"] == ME
    assert all(r["default"] for kind in pr.KINDS for r in ruleset[kind])


def test_default_rules_behaviour() -> None:
    assert _rule_id(_msg()) == ".m.rule.message"
    assert _rule_id(_msg(), _ctx(members=2)) == ".m.rule.room_one_to_one"
    assert _rule_id(_msg(msgtype="m.notice")) == ".m.rule.suppress_notices"
    encrypted = {"type": "m.room.encrypted", "sender": OTHER, "content": {"ciphertext": "x"}}
    assert _rule_id(encrypted) == ".m.rule.encrypted"
    assert _rule_id(encrypted, _ctx(members=2)) == ".m.rule.encrypted_room_one_to_one"
    mention = _msg(**{"m.mentions": {"user_ids": [ME]}})
    assert _rule_id(mention) == ".m.rule.is_user_mention"
    assert pr.is_highlight(_rules().evaluate(mention, _ctx()))
    # The localpart in the body is not a mention any more (spec v1.17).
    assert not pr.is_highlight(_rules().evaluate(_msg("hey bob"), _ctx()))
    edit = _msg(**{"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}})
    assert _rule_id(edit) == ".m.rule.suppress_edits"
    assert pr.notifies(_rules().evaluate(_msg(), _ctx()))
    assert not pr.notifies(_rules().evaluate(_msg(msgtype="m.notice"), _ctx()))
    assert _rules().evaluate(_msg(sender=ME), _ctx()) is None  # own events never match


def test_legacy_mention_rules_only_when_asked() -> None:
    """The body-based rules spec v1.17 removed, where Synapse still has them."""
    legacy = pr.PushRuleSet(pr.merge_with_defaults(ME, None, legacy_mentions=True))
    ruleset = pr.merge_with_defaults(ME, None, legacy_mentions=True)
    override = [r["rule_id"] for r in ruleset["override"]]
    assert override.index(".m.rule.contains_display_name") == (
        override.index(".m.rule.is_user_mention") + 1
    )
    assert override.index(".m.rule.roomnotif") == override.index(".m.rule.is_room_mention") + 1
    assert [r["rule_id"] for r in ruleset["content"]] == [".m.rule.contains_user_name"]
    assert ruleset["content"][0]["pattern"] == ME[1:].partition(":")[0]
    named = _msg(f"hey {ME[1:].partition(':')[0]}, lunch?")
    assert _rule_id(named, rules=legacy) == ".m.rule.contains_user_name"
    assert pr.is_highlight(legacy.evaluate(named, _ctx()))
    assert _rule_id(_msg("@room look"), _ctx(level=50), rules=legacy) == ".m.rule.roomnotif"
    assert _rule_id(_msg("@room look"), _ctx(level=0), rules=legacy) == ".m.rule.message"
    assert _rule_id(named) == ".m.rule.message"  # off by default (the spec's rules)


def test_member_events() -> None:
    invite = {
        "type": "m.room.member",
        "sender": OTHER,
        "state_key": ME,
        "content": {"membership": "invite"},
    }
    assert _rule_id(invite) == ".m.rule.invite_for_me"
    assert pr.notifies(_rules().evaluate(invite, _ctx()))
    join = {**invite, "state_key": OTHER, "content": {"membership": "join"}}
    assert _rule_id(join) == ".m.rule.member_event"
    assert not pr.notifies(_rules().evaluate(join, _ctx()))
    other_invite = {**invite, "state_key": "@carol:example.org"}
    assert _rule_id(other_invite) == ".m.rule.member_event"


def test_room_mention_needs_notification_power() -> None:
    event = _msg(**{"m.mentions": {"room": True}})
    assert _rule_id(event, _ctx(level=50)) == ".m.rule.is_room_mention"
    assert _rule_id(event, _ctx(level=0)) == ".m.rule.message"
    lowered = _ctx(level=10, notification_levels={"room": 10})
    assert pr.is_highlight(_rules().evaluate(event, lowered))


def test_tombstone_highlights() -> None:
    tomb = {"type": "m.room.tombstone", "sender": OTHER, "state_key": "", "content": {}}
    assert pr.is_highlight(_rules().evaluate(tomb, _ctx()))
    assert _rules().evaluate({**tomb, "state_key": "x"}, _ctx()) is None


def test_master_rule_silences_everything() -> None:
    ruleset = pr.set_enabled(pr.merge_with_defaults(ME, None), "override", ".m.rule.master", True)
    rules = pr.PushRuleSet(ruleset)
    mention = _msg(**{"m.mentions": {"user_ids": [ME]}})
    assert rules.evaluate(mention, _ctx()) == []


def test_user_rules_and_kinds_order() -> None:
    ruleset = pr.merge_with_defaults(ME, None)
    content = pr.make_user_rule("content", "cake", {"pattern": "cake*lie", "actions": ["notify"]})
    ruleset = pr.put_rule(ruleset, "content", content)
    room = pr.make_user_rule("room", "!r:example.org", {"actions": []})
    ruleset = pr.put_rule(ruleset, "room", room)
    rules = pr.PushRuleSet(ruleset)
    # content rules come before room rules
    assert _rule_id(_msg("the cake is a lie"), rules=rules) == "cake"
    assert _rule_id(_msg("no dessert"), rules=rules) == "!r:example.org"
    sender = pr.make_user_rule("sender", OTHER, {"actions": ["notify"]})
    rules = pr.PushRuleSet(pr.put_rule(ruleset, "sender", sender))
    assert _rule_id(_msg("x"), rules=rules) == "!r:example.org"
    disabled = pr.PushRuleSet(pr.set_enabled(ruleset, "room", "!r:example.org", False))
    assert _rule_id(_msg("x"), rules=disabled) == ".m.rule.message"


def test_contains_display_name_and_member_count() -> None:
    rule = pr.make_user_rule(
        "override",
        "name",
        {
            "conditions": [
                {"kind": "contains_display_name"},
                {"kind": "room_member_count", "is": ">=3"},
            ],
            "actions": ["notify", {"set_tweak": "highlight"}],
        },
    )
    rules = pr.PushRuleSet(pr.put_rule(pr.merge_with_defaults(ME, None), "override", rule))
    assert rules.uses_display_name and rules.uses_member_count and rules.uses_power_levels
    named = _ctx(display_name="Robert Tables")
    assert _rule_id(_msg("ask ROBERT tables"), named, rules) == "name"
    assert _rule_id(_msg("Robert Tablesque"), named, rules) == ".m.rule.message"
    assert _rule_id(_msg("ask robert tables"), _ctx(), rules) == ".m.rule.message"  # no name
    small = _ctx(members=2, display_name="Robert Tables")
    assert _rule_id(_msg("robert tables"), small, rules) == ".m.rule.room_one_to_one"


@pytest.mark.parametrize(
    ("is_", "count", "expected"),
    [
        ("2", 2, True),
        ("==2", 3, False),
        ("<3", 2, True),
        (">3", 3, False),
        (">=3", 3, True),
        ("<=1", 2, False),
        ("2\n", 2, False),  # `$` would match before a trailing newline: malformed
    ],
)
def test_room_member_count(is_: str, count: int, expected: bool) -> None:
    ctx = pr.PushContext(user_id=ME, room_member_count=count)
    assert pr.condition_matches({"kind": "room_member_count", "is": is_}, {}, ctx) is expected


def test_unknown_and_malformed_conditions_never_match() -> None:
    assert not pr.condition_matches({"kind": "org.example.new"}, _msg())
    assert not pr.condition_matches({"kind": "event_match", "key": "type"}, _msg())
    assert not pr.condition_matches(
        {"kind": "event_match", "key": "content", "pattern": "*"}, _msg()
    )
    assert not pr.condition_matches({"kind": "room_member_count", "is": "~2"}, _msg())


def test_event_property_paths() -> None:
    event = _msg(**{"m.relates_to": {"rel_type": "m.thread"}})
    cond = {
        "kind": "event_property_is",
        "key": "content.m\\.relates_to.rel_type",
        "value": "m.thread",
    }
    assert pr.condition_matches(cond, event)
    assert not pr.condition_matches({**cond, "key": "content.m.relates_to.rel_type"}, event)
    null = {"kind": "event_property_is", "key": "content.x", "value": None}
    assert pr.condition_matches(null, _msg(x=None))
    assert not pr.condition_matches(null, _msg())  # absent is not null
    contains = {"kind": "event_property_contains", "key": "content.xs", "value": 1}
    assert pr.condition_matches(contains, _msg(xs=[True, 1]))
    assert not pr.condition_matches(contains, _msg(xs=[True]))  # true is not 1


def test_validation() -> None:
    with pytest.raises(pr.PushRuleError):
        pr.make_user_rule("override", ".mine", {"actions": []})
    with pytest.raises(pr.PushRuleError):
        pr.make_user_rule("override", "a/b", {"actions": []})
    with pytest.raises(pr.PushRuleError):
        pr.make_user_rule("override", "x", {"actions": ["explode"]})
    with pytest.raises(pr.PushRuleError):
        pr.make_user_rule("override", "x", {})
    with pytest.raises(pr.PushRuleError):
        pr.make_user_rule("content", "x", {"actions": []})
    with pytest.raises(pr.PushRuleError):
        pr.make_user_rule("override", "x", {"actions": [], "conditions": [{"kind": "event_match"}]})
    with pytest.raises(pr.PushRuleError):
        pr.make_user_rule("bogus", "x", {"actions": []})
    rule = pr.make_user_rule("override", "x", {"actions": ["notify", "dont_notify", "coalesce"]})
    # Historical actions are kept as given; evaluation ignores them.
    assert rule["actions"] == ["notify", "dont_notify", "coalesce"]
    assert pr.clean_actions(rule["actions"]) == ["notify"]
    assert rule["enabled"] is True and rule["default"] is False


def test_ordering_edits() -> None:
    rs = pr.merge_with_defaults(ME, None)

    def rule(rule_id: str) -> dict[str, Any]:
        return pr.make_user_rule("override", rule_id, {"actions": []})

    rs = pr.put_rule(rs, "override", rule("a"))
    rs = pr.put_rule(rs, "override", rule("b"))  # new rules go first
    rs = pr.put_rule(rs, "override", rule("c"), after="a")
    rs = pr.put_rule(rs, "override", rule("d"), before="b", after="c")  # before wins
    ids = [r["rule_id"] for r in rs["override"]]
    assert ids[:5] == [".m.rule.master", "d", "b", "a", "c"]
    rs = pr.set_enabled(rs, "override", "a", False)
    rs = pr.put_rule(rs, "override", rule("a"))  # update keeps place and enabled state
    assert [r["rule_id"] for r in rs["override"]][3] == "a"
    assert pr.find_rule(rs, "override", "a")["enabled"] is False
    with pytest.raises(pr.PushRuleAnchorNotFound):
        pr.put_rule(rs, "override", rule("e"), before="nope")
    with pytest.raises(pr.PushRuleError):
        pr.put_rule(rs, "override", rule("e"), after=".m.rule.message")
    with pytest.raises(pr.PushRuleError):
        pr.delete_rule(rs, "override", ".m.rule.suppress_notices")
    with pytest.raises(pr.PushRuleNotFound):
        pr.delete_rule(rs, "override", "zzz")
    rs = pr.delete_rule(rs, "override", "a")
    assert "a" not in {r["rule_id"] for r in rs["override"]}


def test_stored_ruleset_round_trip_keeps_changes_to_defaults() -> None:
    rs = pr.merge_with_defaults(ME, None)
    rs = pr.set_actions(rs, "underride", ".m.rule.message", [])
    rs = pr.put_rule(rs, "underride", pr.make_user_rule("underride", "u", {"actions": []}))
    # Unknown defaults in storage are dropped; the user's rule comes first in its kind.
    rs["override"].append(
        {"rule_id": ".m.rule.gone", "default": True, "enabled": True, "actions": []}
    )
    again = pr.merge_with_defaults(ME, rs)
    assert again["underride"][0]["rule_id"] == "u"
    assert pr.find_rule(again, "underride", ".m.rule.message")["actions"] == []
    with pytest.raises(pr.PushRuleNotFound):
        pr.find_rule(again, "override", ".m.rule.gone")


def test_event_match_patterns_do_not_backtrack() -> None:
    """A push rule's pattern is user input: many `*`s against a long body must not make
    matching backtrack (the guard only catches a hang; it takes milliseconds)."""
    body = "a" * 10_000

    def work() -> list[bool]:
        return [
            pr.condition_matches(
                {"kind": "event_match", "key": key, "pattern": "*a*a*a*a*a*a*a*a*b"},
                _msg(body, topic=body),
            )
            for key in ("content.body", "content.topic")
        ]

    assert finishes(work) == [False, False]


def test_compiled_rules_are_shared_between_users_but_not_the_ones_naming_a_user() -> None:
    # Issue 20 (memory): the server-default rules are compiled once for everyone; the two
    # that name their user (invite_for_me, is_user_mention) stay each user's own.
    alice, bob = "@alice:example.org", "@bob:example.org"
    a = pr.PushRuleSet(pr.merge_with_defaults(alice, None, False), alice)
    b = pr.PushRuleSet(pr.merge_with_defaults(bob, None, False), bob)
    shared = {r.rule_id for r, s in zip(a._rules, b._rules, strict=True) if r is s}
    assert ".m.rule.member_event" in shared and ".m.rule.message" in shared
    assert ".m.rule.invite_for_me" not in shared and ".m.rule.is_user_mention" not in shared
    invite = {
        "type": "m.room.member",
        "sender": "@carol:example.org",
        "state_key": bob,
        "content": {"membership": "invite"},
    }
    bob_match = b.match(invite, pr.PushContext(user_id=bob))
    assert bob_match is not None and bob_match[1] == ".m.rule.invite_for_me"
    alice_match = a.match(invite, pr.PushContext(user_id=alice))
    assert alice_match is None or alice_match[1] != ".m.rule.invite_for_me"
    mention = {
        "type": "m.room.message",
        "sender": "@carol:example.org",
        "content": {"body": "hi", "m.mentions": {"user_ids": [alice]}},
    }
    alice_mention = a.match(mention, pr.PushContext(user_id=alice))
    assert alice_mention is not None and alice_mention[1] == ".m.rule.is_user_mention"
    bob_mention = b.match(mention, pr.PushContext(user_id=bob))
    assert bob_mention is None or bob_mention[1] != ".m.rule.is_user_mention"
