"""Per-user push rules: storage, edits, and evaluation of room events for local users.

Spec: client-server-api modules/push.md. A user's rules are the spec's server-default
rules plus their own; the full ruleset is stored as the global account data m.push_rules
({"global": ruleset}, as Synapse exposes it), so clients see changes in /sync. Clients
cannot write m.push_rules directly (AccountDataService refuses it with 405): every change
goes through this service, which is why its cache of compiled rule sets can be invalidated
on its own writes. Edits of one user are serialised in this process.

`actions_for` evaluates events for one user (the protocol core does the matching); the
room facts the conditions need (joined member count, the sender's power level and the
room's notification levels, the user's display name in the room) are fetched only when
the user's rules use them, once per room per batch. Room member counts are the current
ones, not those at the time of each event.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from starling.account_data.service import AccountDataService
from starling.locks import KeyedLock
from starling.protocol import push_rules as pr
from starling.protocol.event import Event
from starling.protocol.power_levels import PowerLevels
from starling.rooms.event_service import RoomEventService
from starling.storage.memberships import MembershipStore
from starling.storage.profiles import ProfileStore

PUSH_RULES = "m.push_rules"
SCOPE = "global"
CACHE_SIZE = 10_000


def event_view(event: Event) -> dict[str, Any]:
    """The client-format fields push rules may look at."""
    view: dict[str, Any] = {
        "type": event.type,
        "content": event.content,
        "sender": event.sender,
        "room_id": event.room_id,
        "event_id": event.event_id,
        "origin_server_ts": event.origin_server_ts,
    }
    if event.state_key is not None:
        view["state_key"] = event.state_key
    return view


class PushRulesService:
    def __init__(
        self,
        account_data: AccountDataService,
        memberships: MembershipStore,
        profiles: ProfileStore,
        room_events: RoomEventService,
        *,
        legacy_mention_rules: bool = False,
    ) -> None:
        self._legacy_mentions = legacy_mention_rules
        self._account_data = account_data
        self._memberships = memberships
        self._profiles = profiles
        self._room_events = room_events
        self._compiled: OrderedDict[str, pr.PushRuleSet] = OrderedDict()
        self._locks: KeyedLock[str] = KeyedLock()

    # --- the ruleset -----------------------------------------------------------------

    async def get_ruleset(self, user_id: str) -> pr.Ruleset:
        """The user's full global ruleset, defaults merged in, in evaluation order."""
        stored = await self._account_data.get(user_id, None, PUSH_RULES)
        scope = stored.get(SCOPE) if isinstance(stored, dict) else None
        return pr.merge_with_defaults(
            user_id, scope if isinstance(scope, dict) else None, self._legacy_mentions
        )

    async def get_rule(self, user_id: str, kind: str, rule_id: str) -> dict[str, Any]:
        return pr.find_rule(await self.get_ruleset(user_id), kind, rule_id)

    async def rule_set(self, user_id: str) -> pr.PushRuleSet:
        """The user's compiled rules (cached until they change)."""
        hit = self._compiled.get(user_id)
        if hit is not None:
            self._compiled.move_to_end(user_id)
            return hit
        compiled = pr.PushRuleSet(await self.get_ruleset(user_id), user_id)
        self._compiled[user_id] = compiled
        if len(self._compiled) > CACHE_SIZE:
            self._compiled.popitem(last=False)
        return compiled

    async def put_rule(
        self,
        user_id: str,
        kind: str,
        rule_id: str,
        body: Mapping[str, Any],
        before: str | None = None,
        after: str | None = None,
    ) -> None:
        rule = pr.make_user_rule(kind, rule_id, body)
        await self._modify(user_id, lambda rs: pr.put_rule(rs, kind, rule, before, after))

    async def delete_rule(self, user_id: str, kind: str, rule_id: str) -> None:
        await self._modify(user_id, lambda rs: pr.delete_rule(rs, kind, rule_id))

    async def set_enabled(self, user_id: str, kind: str, rule_id: str, enabled: bool) -> None:
        await self._modify(user_id, lambda rs: pr.set_enabled(rs, kind, rule_id, enabled))

    async def set_actions(self, user_id: str, kind: str, rule_id: str, actions: Any) -> None:
        await self._modify(user_id, lambda rs: pr.set_actions(rs, kind, rule_id, actions))

    async def copy_room_rules(self, user_id: str, old_room_id: str, new_room_id: str) -> None:
        """After a room upgrade: the user's own rules about the old room (its room rule,
        and rules with a `room_id` condition naming it) again for the new room, as
        Synapse's copy_push_rules_from_room_to_room_for_user. Existing ones are kept."""

        def change(ruleset: pr.Ruleset) -> pr.Ruleset:
            for kind in pr.KINDS:
                for rule in list(ruleset.get(kind, [])):
                    if rule.get("default"):
                        continue
                    copied = _for_room(kind, rule, old_room_id, new_room_id)
                    if copied is None:
                        continue
                    try:
                        pr.find_rule(ruleset, kind, copied["rule_id"])
                        continue  # already there
                    except pr.PushRuleNotFound:
                        ruleset = pr.put_rule(ruleset, kind, copied)
            return ruleset

        await self._modify(user_id, change)

    async def _modify(self, user_id: str, change: Callable[[pr.Ruleset], pr.Ruleset]) -> None:
        async with self._locks(user_id):
            new = change(await self.get_ruleset(user_id))
            try:
                await self._account_data.set_account_data(user_id, None, PUSH_RULES, {SCOPE: new})
            finally:
                self._compiled.pop(user_id, None)

    # --- evaluation ------------------------------------------------------------------

    async def actions_for(
        self, user_id: str, events: Iterable[Event]
    ) -> dict[str, list[Any] | None]:
        """Event ID -> the actions the user's rules give it (None: no rule matched)."""
        rules = await self.rule_set(user_id)
        batch = list(events)
        rooms = {e.room_id for e in batch}
        counts: dict[str, int] = {}
        if rules.uses_member_count and rooms:
            counts = await self._memberships.count_joined(rooms)  # one query for all rooms
        contexts: dict[str, _RoomFacts] = {}
        out: dict[str, list[Any] | None] = {}
        for event in batch:
            facts = contexts.get(event.room_id)
            if facts is None:
                facts = await self._room_facts(
                    rules, user_id, event.room_id, counts.get(event.room_id, 0)
                )
                contexts[event.room_id] = facts
            out[event.event_id] = rules.evaluate(event_view(event), facts.context(event.sender))
        return out

    async def _room_facts(
        self, rules: pr.PushRuleSet, user_id: str, room_id: str, count: int
    ) -> _RoomFacts:
        levels: PowerLevels | None = None
        display_name: str | None = None
        keys: list[tuple[str, str]] = []
        if rules.uses_power_levels:
            keys += [("m.room.create", ""), ("m.room.power_levels", "")]
        if rules.uses_display_name:
            keys.append(("m.room.member", user_id))
        if keys:
            state = await self._room_events.current_state_events(room_id, keys)
            create = state.get(("m.room.create", ""))
            if create is not None and rules.uses_power_levels:
                levels = PowerLevels.from_state(
                    create, state.get(("m.room.power_levels", "")), create.room_version
                )
            if rules.uses_display_name:
                member = state.get(("m.room.member", user_id))
                name = member.content.get("displayname") if member is not None else None
                if not isinstance(name, str):
                    profile = await self._profiles.get_profile(user_id) or {}
                    name = profile.get("displayname")
                display_name = name if isinstance(name, str) else None
        return _RoomFacts(user_id, count, display_name, levels)


class _RoomFacts:
    """What one room contributes to the push context; per sender on demand."""

    __slots__ = ("_by_sender", "display_name", "levels", "member_count", "user_id")

    def __init__(
        self, user_id: str, member_count: int, display_name: str | None, levels: PowerLevels | None
    ) -> None:
        self.user_id = user_id
        self.member_count = member_count
        self.display_name = display_name
        self.levels = levels
        self._by_sender: dict[str, pr.PushContext] = {}

    def context(self, sender: str) -> pr.PushContext:
        ctx = self._by_sender.get(sender)
        if ctx is None:
            levels = self.levels
            ctx = pr.PushContext(
                user_id=self.user_id,
                room_member_count=self.member_count,
                display_name=self.display_name,
                # No power levels known: nobody may send notifications that need them.
                sender_power_level=levels.user_level(sender) if levels is not None else -1,
                notification_levels=levels.notifications if levels is not None else {},
            )
            self._by_sender[sender] = ctx
        return ctx


def _for_room(kind: str, rule: dict[str, Any], old: str, new: str) -> dict[str, Any] | None:
    """A copy of a user rule about room `old` made about room `new`, or None."""
    if kind == "room":
        return {**rule, "rule_id": new} if rule.get("rule_id") == old else None
    conditions = rule.get("conditions")
    if not isinstance(conditions, list) or not any(
        isinstance(c, dict) and c.get("key") == "room_id" and c.get("pattern") == old
        for c in conditions
    ):
        return None
    rule_id = str(rule.get("rule_id", "")).replace(old, new)
    if rule_id == rule.get("rule_id"):
        rule_id = f"{rule_id}-{new}"[: pr.MAX_RULE_ID_LENGTH]
    new_conditions = [
        {**c, "pattern": new}
        if isinstance(c, dict) and c.get("key") == "room_id" and c.get("pattern") == old
        else c
        for c in conditions
    ]
    return {**rule, "rule_id": rule_id, "conditions": new_conditions}
