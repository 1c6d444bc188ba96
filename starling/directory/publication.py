"""Who may publish a room in this server's room directory: Synapse's
`room_list_publication_rules`. Server admins always may. Without rules (the default here,
as in Synapse before 1.126) the usual room-moderator check alone decides; with rules, the
first rule whose globs match the publisher, one of the room's aliases and the room ID
decides, and no match denies."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from starling.config import PublicationRule


def _alias_matches(pattern: str, aliases: Sequence[str]) -> bool:
    if pattern == "*":
        return True
    return any(fnmatchcase(alias, pattern) for alias in aliases)


class PublicationRules:
    def __init__(self, rules: Sequence[PublicationRule] | None) -> None:
        self._rules = None if rules is None else list(rules)

    def allows(self, user_id: str, room_id: str, aliases: Sequence[str], *, admin: bool) -> bool:
        if admin or self._rules is None:
            return True
        for rule in self._rules:
            if (
                fnmatchcase(user_id, rule.user_id)
                and fnmatchcase(room_id, rule.room_id)
                and _alias_matches(rule.alias, aliases)
            ):
                return rule.action == "allow"
        return False
