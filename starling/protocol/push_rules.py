"""Push rules: validation, the server-default rule set, and evaluation against an event.

Spec: client-server-api modules/push.md ("Push Rules", "Actions", "Conditions",
"Predefined Rules"); appendices "Glob-style matching" and "Dot-separated property paths".

A *ruleset* here is the wire format of GET /pushrules/global/: kind -> list of rule dicts
(`rule_id`, `default`, `enabled`, `actions`, plus `conditions` or `pattern`), each list in
evaluation order. `merge_with_defaults` builds a user's full ruleset from what is stored for
them (their own rules, and their enabled/actions changes to the server-default rules) and
the spec's defaults (data/default_push_rules.json, loaded as package data). The edit
functions (`put_rule`, `delete_rule`, `set_enabled`, `set_actions`) return a new ruleset.

`PushRuleSet` compiles a ruleset once (globs to regexes, paths split, conditions to small
closures) and `evaluate`s events: a plain dict view of the client event plus a
`PushContext` (room member count, the user, their display name in the room, the sender's
power level and the room's notification levels). The result is the first matching
enabled rule's actions, historical actions (`dont_notify`, `coalesce`) stripped, or None.

Pure: no I/O (the defaults file is read once, from the package).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from typing import Any

from starling.protocol.glob import compile_glob
from starling.protocol.identifiers import split_property_path
from starling.protocol.power_levels import DEFAULT_NOTIFICATION

JsonDict = dict[str, Any]
Ruleset = dict[str, list[JsonDict]]

# The rule kinds, in the order they are checked.
KINDS: tuple[str, ...] = ("override", "content", "room", "sender", "underride")
MASTER_RULE_ID = ".m.rule.master"
HISTORICAL_ACTIONS = frozenset({"dont_notify", "coalesce"})
KNOWN_CONDITIONS = frozenset(
    {
        "event_match",
        "event_property_is",
        "event_property_contains",
        "contains_display_name",
        "room_member_count",
        "sender_notification_permission",
    }
)
MAX_RULE_ID_LENGTH = 255
_MAX_SAFE_INT = 2**53 - 1
_USER_ID_PLACEHOLDER = "[the user's Matrix ID]"
_MEMBER_COUNT = re.compile(r"^(==|<=|>=|<|>)?([0-9]{1,15})\Z")
_COMPARE: dict[str, Callable[[int, int], bool]] = {
    "==": lambda a, b: a == b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}


class PushRuleError(ValueError):
    """A rule, condition or action is malformed (M_INVALID_PARAM)."""


class PushRuleNotFound(LookupError):
    """No such rule (M_NOT_FOUND)."""


class PushRuleAnchorNotFound(LookupError):
    """The `before`/`after` rule of a PUT does not exist (M_UNKNOWN)."""


# --- the server-default rules ---------------------------------------------------------


@cache
def _default_template() -> Ruleset:
    text = resources.files("starling.protocol").joinpath("data/default_push_rules.json")
    data = json.loads(text.read_text(encoding="utf-8"))
    rules: Ruleset = data["global"]
    return rules


def _fill_user_id(value: Any, user_id: str) -> Any:
    if isinstance(value, dict):
        return {k: _fill_user_id(v, user_id) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill_user_id(v, user_id) for v in value]
    return user_id if value == _USER_ID_PLACEHOLDER else value


# The body-based mention rules spec v1.17 removed (MSC4210), as Synapse still ships them by
# default: for clients that mention without `m.mentions`. Only with `legacy_mentions`.
_HIGHLIGHT: JsonDict = {"set_tweak": "highlight"}
_SOUND: JsonDict = {"set_tweak": "sound", "value": "default"}
_LEGACY_OVERRIDE_AFTER: dict[str, JsonDict] = {
    ".m.rule.is_user_mention": {
        "rule_id": ".m.rule.contains_display_name",
        "default": True,
        "enabled": True,
        "conditions": [{"kind": "contains_display_name"}],
        "actions": ["notify", _SOUND, _HIGHLIGHT],
    },
    ".m.rule.is_room_mention": {
        "rule_id": ".m.rule.roomnotif",
        "default": True,
        "enabled": True,
        "conditions": [
            {"kind": "event_match", "key": "content.body", "pattern": "@room"},
            {"kind": "sender_notification_permission", "key": "room"},
        ],
        "actions": ["notify", _HIGHLIGHT],
    },
}


def _legacy_content_rule(user_id: str) -> JsonDict:
    return {
        "rule_id": ".m.rule.contains_user_name",
        "default": True,
        "enabled": True,
        "pattern": user_id[1:].partition(":")[0],
        "actions": ["notify", _SOUND, _HIGHLIGHT],
    }


def default_rules(user_id: str, legacy_mentions: bool = False) -> Ruleset:
    """The spec's server-default rules for one user, in evaluation order (a fresh copy);
    with `legacy_mentions` also the removed body-based mention rules, where Synapse has
    them (after the `m.mentions` rule of each kind of mention; the user-name rule is the
    only content rule)."""
    template = _default_template()
    rules = {kind: _fill_user_id(template.get(kind, []), user_id) for kind in KINDS}
    if legacy_mentions:
        override: list[JsonDict] = []
        for rule in rules["override"]:
            override.append(rule)
            extra = _LEGACY_OVERRIDE_AFTER.get(rule["rule_id"])
            if extra is not None:
                override.append(copy.deepcopy(extra))
        rules["override"] = override
        rules["content"] = [*rules["content"], _legacy_content_rule(user_id)]
    return rules


def is_server_default(rule_id: str) -> bool:
    return rule_id.startswith(".")


# --- validation -----------------------------------------------------------------------


def check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise PushRuleError(f"Unknown push rule kind {kind!r}")


def validate_rule_id(rule_id: str) -> None:
    """For rules a user creates: not server-default ('.'), no slashes, bounded length."""
    if not rule_id:
        raise PushRuleError("rule_id must not be empty")
    if is_server_default(rule_id):
        raise PushRuleError("rule_ids starting with '.' are reserved for server-default rules")
    if "/" in rule_id or "\\" in rule_id:
        raise PushRuleError("rule_id must not contain slashes or backslashes")
    if len(rule_id) > MAX_RULE_ID_LENGTH:
        raise PushRuleError(f"rule_id must be at most {MAX_RULE_ID_LENGTH} characters")


def validate_actions(actions: Any) -> list[Any]:
    """The actions to store: a list of "notify" and {"set_tweak": ...} objects. The
    historical actions ("dont_notify", "coalesce") are kept as the client gave them (it
    reads them back, as from Synapse) and mean nothing when rules are evaluated."""
    if not isinstance(actions, list):
        raise PushRuleError("'actions' must be a list")
    out: list[Any] = []
    for action in actions:
        if isinstance(action, str):
            if action != "notify" and action not in HISTORICAL_ACTIONS:
                raise PushRuleError(f"Unrecognised action {action!r}")
            out.append(action)
        elif isinstance(action, dict) and isinstance(action.get("set_tweak"), str):
            out.append(action)
        else:
            raise PushRuleError(f"Unrecognised action {action!r}")
    return out


def _is_scalar(value: Any) -> bool:
    """A non-compound canonical JSON value: str, int in the safe range, bool, null."""
    if value is None or isinstance(value, (str, bool)):
        return True
    return isinstance(value, int) and -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT


def validate_condition(condition: Any) -> JsonDict:
    """A condition to store. Unknown kinds are kept (they never match, per spec); the
    parameters of the known kinds must be well-formed."""
    if not isinstance(condition, dict) or not isinstance(condition.get("kind"), str):
        raise PushRuleError("Each condition must be an object with a string 'kind'")
    kind = condition["kind"]
    key = condition.get("key")
    if kind in ("event_match", "event_property_is", "event_property_contains") or (
        kind == "sender_notification_permission"
    ):
        if not isinstance(key, str) or not key:
            raise PushRuleError(f"{kind} needs a string 'key'")
    if kind == "event_match" and not isinstance(condition.get("pattern"), str):
        raise PushRuleError("event_match needs a string 'pattern'")
    if kind in ("event_property_is", "event_property_contains"):
        if "value" not in condition or not _is_scalar(condition["value"]):
            raise PushRuleError(f"{kind} needs a 'value': a string, integer, boolean or null")
    if kind == "room_member_count":
        is_ = condition.get("is")
        if not isinstance(is_, str) or _MEMBER_COUNT.match(is_) is None:
            raise PushRuleError("room_member_count needs 'is': an integer with ==, <, >, <=, >=")
    return condition


def make_user_rule(kind: str, rule_id: str, body: Mapping[str, Any]) -> JsonDict:
    """A new user-defined rule from a PUT body (enabled, as the spec requires)."""
    check_kind(kind)
    validate_rule_id(rule_id)
    if "actions" not in body:
        raise PushRuleError("Missing 'actions'")
    rule: JsonDict = {
        "rule_id": rule_id,
        "default": False,
        "enabled": True,
        "actions": validate_actions(body["actions"]),
    }
    if kind in ("override", "underride"):
        conditions = body.get("conditions", [])
        if not isinstance(conditions, list):
            raise PushRuleError("'conditions' must be a list")
        rule["conditions"] = [validate_condition(c) for c in conditions]
    elif kind == "content":
        pattern = body.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise PushRuleError("Content rules need a string 'pattern'")
        rule["pattern"] = pattern
    return rule


# --- merging stored rules with the defaults and editing -------------------------------


def _stored_rules(stored: Mapping[str, Any] | None, kind: str) -> list[JsonDict]:
    if not stored:
        return []
    rules = stored.get(kind)
    if not isinstance(rules, list):
        return []
    return [r for r in rules if isinstance(r, dict) and isinstance(r.get("rule_id"), str)]


def merge_with_defaults(
    user_id: str, stored: Mapping[str, Any] | None, legacy_mentions: bool = False
) -> Ruleset:
    """The user's full ruleset: their own rules (first within each kind) and the server
    defaults (with their stored enabled/actions changes), `.m.rule.master` first of all.
    `legacy_mentions`: see `default_rules`.

    `stored` is a ruleset as written before (the m.push_rules "global" object); defaults
    no longer known are dropped and new ones appear with their spec defaults.
    """
    merged: Ruleset = {}
    for kind, defaults in default_rules(user_id, legacy_mentions).items():
        own: list[JsonDict] = []
        changed: dict[str, JsonDict] = {}
        seen: set[str] = set()
        for rule in _stored_rules(stored, kind):
            rule_id = rule["rule_id"]
            if is_server_default(rule_id):
                changed[rule_id] = rule
            elif rule_id not in seen:
                seen.add(rule_id)
                own.append({**rule, "default": False, "enabled": rule.get("enabled") is not False})
        for rule in defaults:
            change = changed.get(rule["rule_id"])
            if change is not None:
                if isinstance(change.get("enabled"), bool):
                    rule["enabled"] = change["enabled"]
                if isinstance(change.get("actions"), list):
                    rule["actions"] = change["actions"]
        if kind == "override" and defaults and defaults[0]["rule_id"] == MASTER_RULE_ID:
            merged[kind] = [defaults[0], *own, *defaults[1:]]
        else:
            merged[kind] = [*own, *defaults]
    return merged


def find_rule(ruleset: Ruleset, kind: str, rule_id: str) -> JsonDict:
    check_kind(kind)
    for rule in ruleset.get(kind, []):
        if rule["rule_id"] == rule_id:
            return rule
    raise PushRuleNotFound(f"Unknown push rule {kind}/{rule_id}")


def put_rule(
    ruleset: Ruleset,
    kind: str,
    rule: JsonDict,
    before: str | None = None,
    after: str | None = None,
) -> Ruleset:
    """Add or replace a user rule. A replaced rule keeps its place (and enabled state)
    unless `before`/`after` move it; a new one goes first among the user's rules. `before`
    wins when both are given. Anchors must be user rules of the same kind."""
    check_kind(kind)
    result = copy.deepcopy(ruleset)
    rules = result[kind]
    rule_id = rule["rule_id"]
    index = next((i for i, r in enumerate(rules) if r["rule_id"] == rule_id), None)
    anchor = before if before is not None else after
    if index is not None:
        rule = {**rule, "enabled": rules[index].get("enabled", True)}
        if anchor is None:
            rules[index] = rule
            return result
        del rules[index]
    if anchor is not None:
        if is_server_default(anchor):
            raise PushRuleError("Rules cannot be placed relative to server-default rules")
        at = next((i for i, r in enumerate(rules) if r["rule_id"] == anchor), None)
        if at is None:
            raise PushRuleAnchorNotFound(f"before/after rule not found: {anchor}")
        rules.insert(at if before is not None else at + 1, rule)
    else:
        first = 1 if rules and rules[0]["rule_id"] == MASTER_RULE_ID else 0
        rules.insert(first, rule)
    return result


def delete_rule(ruleset: Ruleset, kind: str, rule_id: str) -> Ruleset:
    """Remove a user rule; server-default rules cannot be deleted (PushRuleError)."""
    find_rule(ruleset, kind, rule_id)
    if is_server_default(rule_id):
        raise PushRuleError("Server-default rules cannot be deleted")
    result = copy.deepcopy(ruleset)
    result[kind] = [r for r in result[kind] if r["rule_id"] != rule_id]
    return result


def _change(ruleset: Ruleset, kind: str, rule_id: str, **changes: Any) -> Ruleset:
    find_rule(ruleset, kind, rule_id)
    result = copy.deepcopy(ruleset)
    result[kind] = [{**r, **changes} if r["rule_id"] == rule_id else r for r in result[kind]]
    return result


def set_enabled(ruleset: Ruleset, kind: str, rule_id: str, enabled: bool) -> Ruleset:
    return _change(ruleset, kind, rule_id, enabled=enabled)


def set_actions(ruleset: Ruleset, kind: str, rule_id: str, actions: Any) -> Ruleset:
    return _change(ruleset, kind, rule_id, actions=validate_actions(actions))


# --- actions --------------------------------------------------------------------------


def clean_actions(actions: Sequence[Any]) -> list[Any]:
    return [a for a in actions if not (isinstance(a, str) and a in HISTORICAL_ACTIONS)]


def notifies(actions: Sequence[Any] | None) -> bool:
    return actions is not None and "notify" in actions


def tweaks(actions: Sequence[Any] | None) -> dict[str, Any]:
    """The tweaks the actions set; a highlight tweak without a value is true."""
    out: dict[str, Any] = {}
    for action in actions or ():
        if isinstance(action, dict) and isinstance(action.get("set_tweak"), str):
            name = action["set_tweak"]
            if "value" in action:
                out[name] = action["value"]
            elif name == "highlight":
                out[name] = True
    return out


def is_highlight(actions: Sequence[Any] | None) -> bool:
    return tweaks(actions).get("highlight") is True


# --- matching -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PushContext:
    """What the conditions need besides the event."""

    user_id: str
    room_member_count: int = 0
    display_name: str | None = None  # the user's display name in the room
    sender_power_level: int | float = 0
    notification_levels: Mapping[str, int] = field(default_factory=dict)


Matcher = Callable[[Mapping[str, Any], PushContext], bool]
_MISSING = object()
_WORD = "(?-i:[A-Za-z0-9_])"
_NON_WORD = "(?-i:[^A-Za-z0-9_])"


@lru_cache(maxsize=4096)
def _display_name_regex(name: str) -> re.Pattern[str]:
    # A literal (no wildcards, so nothing to backtrack over) between word boundaries: the
    # value's start/end, or a character outside [A-Za-z0-9_] on either side of the edge.
    body = re.escape(name)
    body = f"(?:(?<!{_WORD})|(?={_NON_WORD})){body}(?:(?!{_WORD})|(?<={_NON_WORD}))"
    return re.compile(body, re.IGNORECASE | re.DOTALL)


def glob_matches(pattern: str, value: str, *, words: bool = False) -> bool:
    """Case-insensitive glob (* and ?) match: the whole value, or with `words` any
    substring starting and ending at word boundaries. Without backtracking
    (`starling.protocol.glob`): patterns and values are both user input."""
    glob = compile_glob(pattern, ignore_case=True)
    return glob.matches_words(value) if words else glob.matches(value)


def _lookup(event: Mapping[str, Any], path: Sequence[str]) -> Any:
    value: Any = event
    for part in path:
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _same_scalar(a: Any, b: Any) -> bool:
    # No casting: true is not 1, "1" is not 1.
    return type(a) is type(b) and a == b and _is_scalar(a)


def _never(event: Mapping[str, Any], ctx: PushContext) -> bool:
    return False


def _compile_condition(condition: Any) -> Matcher:
    """A matcher for one condition; malformed or unknown conditions never match."""
    try:
        validate_condition(condition)
    except PushRuleError:
        return _never
    kind = condition["kind"]
    if kind == "event_match":
        path = tuple(split_property_path(condition["key"]))
        words = path == ("content", "body")
        glob = compile_glob(condition["pattern"], ignore_case=True)
        match = glob.matches_words if words else glob.matches

        def event_match(event: Mapping[str, Any], ctx: PushContext) -> bool:
            value = _lookup(event, path)
            return isinstance(value, str) and match(value)

        return event_match
    if kind == "event_property_is":
        path = tuple(split_property_path(condition["key"]))
        expected = condition["value"]

        def property_is(event: Mapping[str, Any], ctx: PushContext) -> bool:
            return _same_scalar(_lookup(event, path), expected)

        return property_is
    if kind == "event_property_contains":
        path = tuple(split_property_path(condition["key"]))
        wanted = condition["value"]

        def property_contains(event: Mapping[str, Any], ctx: PushContext) -> bool:
            values = _lookup(event, path)
            return isinstance(values, list) and any(_same_scalar(v, wanted) for v in values)

        return property_contains
    if kind == "contains_display_name":
        return _contains_display_name
    if kind == "room_member_count":
        m = _MEMBER_COUNT.match(condition["is"])
        assert m is not None  # validated
        compare, number = _COMPARE[m.group(1) or "=="], int(m.group(2))

        def member_count(event: Mapping[str, Any], ctx: PushContext) -> bool:
            return compare(ctx.room_member_count, number)

        return member_count
    if kind == "sender_notification_permission":
        key = condition["key"]

        def sender_permission(event: Mapping[str, Any], ctx: PushContext) -> bool:
            needed = ctx.notification_levels.get(key, DEFAULT_NOTIFICATION)
            return ctx.sender_power_level >= needed

        return sender_permission
    return _never


def _contains_display_name(event: Mapping[str, Any], ctx: PushContext) -> bool:
    name = (ctx.display_name or "").strip()
    content = event.get("content")
    body = content.get("body") if isinstance(content, Mapping) else None
    if not name or not isinstance(body, str):
        return False
    return _display_name_regex(name).search(body) is not None


def condition_matches(
    condition: Mapping[str, Any], event: Mapping[str, Any], ctx: PushContext | None = None
) -> bool:
    """Whether one condition holds for the event (compiles it each call; for tests)."""
    return _compile_condition(condition)(event, ctx or PushContext(user_id=""))


# --- compiled rule sets ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _CompiledRule:
    kind: str
    rule_id: str
    matchers: tuple[Matcher, ...]
    actions: list[Any]


def _rule_matchers(kind: str, rule: Mapping[str, Any]) -> tuple[Matcher, ...]:
    if kind == "content":
        pattern = rule.get("pattern")
        if not isinstance(pattern, str):
            return (_never,)
        return (
            _compile_condition({"kind": "event_match", "key": "content.body", "pattern": pattern}),
        )
    if kind in ("room", "sender"):
        field_name = "room_id" if kind == "room" else "sender"
        wanted: str = rule["rule_id"]

        def same(event: Mapping[str, Any], ctx: PushContext) -> bool:
            value = event.get(field_name)
            return isinstance(value, str) and value == wanted

        return (same,)
    conditions = rule.get("conditions", [])
    if not isinstance(conditions, list):
        return (_never,)
    return tuple(_compile_condition(c) for c in conditions)


def _compile_rule(kind: str, rule: Mapping[str, Any]) -> _CompiledRule:
    actions = rule.get("actions")
    return _CompiledRule(
        kind,
        rule["rule_id"],
        _rule_matchers(kind, rule),
        clean_actions(actions if isinstance(actions, list) else []),
    )


# Compiled rules shared between users (issue 20, memory): most users have the server-default
# rules, which differ between users only in the two that name the user, so a compiled rule
# set per user was ~14 KiB of identical closures; now ~1 KiB. Keyed by the rule's JSON;
# bounded (emptied when full: rule sets already built keep theirs).
_SHARED_RULES_MAX = 4096
_shared_rules: dict[tuple[str, str], _CompiledRule] = {}


def _shared_rule(kind: str, rule: Mapping[str, Any], user_id: str | None) -> _CompiledRule:
    try:
        key = (kind, json.dumps(rule, sort_keys=True))
    except (TypeError, ValueError):  # not JSON (never from account data): not shared
        return _compile_rule(kind, rule)
    if user_id and user_id in key[1]:
        return _compile_rule(kind, rule)  # names its user: no one else's
    hit = _shared_rules.get(key)
    if hit is None:
        hit = _compile_rule(kind, rule)
        if len(_shared_rules) >= _SHARED_RULES_MAX:
            _shared_rules.clear()
        _shared_rules[key] = hit
    return hit


class PushRuleSet:
    """A user's ruleset compiled for evaluation. Build once per ruleset and reuse."""

    __slots__ = ("_rules", "uses_display_name", "uses_member_count", "uses_power_levels")

    def __init__(self, ruleset: Ruleset, user_id: str | None = None) -> None:
        """`user_id`: whose rules these are; rules naming that user are not shared."""
        compiled: list[_CompiledRule] = []
        uses: set[str] = set()
        for kind in KINDS:
            for rule in ruleset.get(kind, []):
                if rule.get("enabled") is False:
                    continue
                compiled.append(_shared_rule(kind, rule, user_id))
                for c in rule.get("conditions") or ():
                    if isinstance(c, dict) and isinstance(c.get("kind"), str):
                        uses.add(c["kind"])
        self._rules = tuple(compiled)
        self.uses_display_name = "contains_display_name" in uses
        self.uses_member_count = "room_member_count" in uses
        self.uses_power_levels = "sender_notification_permission" in uses

    def match(
        self, event: Mapping[str, Any], ctx: PushContext
    ) -> tuple[str, str, list[Any]] | None:
        """(kind, rule_id, actions) of the first matching rule, or None. Events the user
        sent never match."""
        if event.get("sender") == ctx.user_id:
            return None
        for rule in self._rules:
            if all(m(event, ctx) for m in rule.matchers):
                return rule.kind, rule.rule_id, rule.actions
        return None

    def evaluate(self, event: Mapping[str, Any], ctx: PushContext) -> list[Any] | None:
        """The actions for the event (maybe empty: a rule matched but does not notify),
        or None when no rule matched."""
        hit = self.match(event, ctx)
        return None if hit is None else hit[2]
