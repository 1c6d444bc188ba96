"""Application-service registration files (Synapse's format), read and checked at start.

A registration is a YAML file listed in ``app_service_config_files``::

    id: telegram                      # unique among the server's services
    url: http://localhost:29317       # where transactions and queries go; null: nowhere
    as_token: <secret>                # the service's token towards us (unique)
    hs_token: <secret>                # our token towards the service (unique)
    sender_localpart: telegrambot     # the service's own user
    namespaces:
      users:   [{exclusive: true, regex: '@telegram_.*:example\\.org'}]
      aliases: [{exclusive: true, regex: '#telegram_.*:example\\.org'}]
      rooms:   []
    rate_limited: false               # default true
    protocols: [telegram]             # third-party protocols it answers for
    receive_ephemeral: true           # also MSC2409's de.sorunome.msc2409.push_ephemeral:
                                      # typing, receipts, presence and to-device messages
    org.matrix.msc3202: true          # device lists, one-time-key counts and fallback key
                                      # types of its users' devices (encrypting bridges)

Namespace regexes are the admin's own patterns, compiled with Python's ``re``. A value is
in a namespace when the regex matches the *whole* value (``fullmatch``; Synapse matches a
prefix, which the usual ``@bridge_.*`` patterns make the same), and only values of at
most 255 bytes — the longest Matrix identifier — are ever matched, which bounds the cost
of a pathological pattern.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from starling.config import ConfigError
from starling.protocol.identifiers import MAX_ID_BYTES

MAX_TOKEN_LENGTH = 1024
_LOCALPART = re.compile(r"[a-z0-9._=\-/+]+", re.ASCII)


@dataclass(frozen=True, slots=True)
class Namespace:
    pattern: str
    exclusive: bool
    regex: re.Pattern[str] = field(compare=False, repr=False)

    def matches(self, value: str) -> bool:
        if len(value.encode()) > MAX_ID_BYTES:
            return False
        return self.regex.fullmatch(value) is not None


def _matches(namespaces: Sequence[Namespace], value: str, *, exclusive: bool = False) -> bool:
    return any(ns.matches(value) and (ns.exclusive or not exclusive) for ns in namespaces)


@dataclass(frozen=True, slots=True)
class AppService:
    id: str
    url: str | None
    as_token: str
    hs_token: str
    sender: str
    """The service's own user ID (``@sender_localpart:server``)."""
    users: tuple[Namespace, ...] = ()
    aliases: tuple[Namespace, ...] = ()
    rooms: tuple[Namespace, ...] = ()
    rate_limited: bool = True
    protocols: tuple[str, ...] = ()
    receive_ephemeral: bool = False
    msc3202: bool = False
    source: str = ""

    def owns_user(self, user_id: str) -> bool:
        """The service may act as this user: its sender or a user of its namespaces."""
        return user_id == self.sender or _matches(self.users, user_id)

    def user_in_namespace(self, user_id: str, *, exclusive: bool = False) -> bool:
        return _matches(self.users, user_id, exclusive=exclusive)

    def alias_in_namespace(self, alias: str, *, exclusive: bool = False) -> bool:
        return _matches(self.aliases, alias, exclusive=exclusive)

    def room_in_namespace(self, room_id: str, *, exclusive: bool = False) -> bool:
        return _matches(self.rooms, room_id, exclusive=exclusive)


def _fail(source: str, message: str) -> ConfigError:
    return ConfigError(f"application service {source}: {message}")


def _string(data: Mapping[str, Any], key: str, source: str, *, required: bool = True) -> Any:
    value = data.get(key)
    if value is None:
        if required:
            raise _fail(source, f"'{key}' is required")
        return None
    if not isinstance(value, str) or not value:
        raise _fail(source, f"'{key}' must be a non-empty string")
    return value


def _bool(data: Mapping[str, Any], key: str, default: bool, source: str) -> bool:
    value = data.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _fail(source, f"'{key}' must be true or false")
    return value


def _namespaces(data: Any, kind: str, source: str) -> tuple[Namespace, ...]:
    if data is None:
        return ()
    if not isinstance(data, list):
        raise _fail(source, f"'namespaces.{kind}' must be a list")
    out = []
    for i, entry in enumerate(data):
        where = f"namespaces.{kind}[{i}]"
        if not isinstance(entry, dict):
            raise _fail(source, f"'{where}' must be a mapping with 'regex' and 'exclusive'")
        pattern = entry.get("regex")
        if not isinstance(pattern, str) or not pattern:
            raise _fail(source, f"'{where}.regex' must be a non-empty string")
        exclusive = entry.get("exclusive", False)
        if not isinstance(exclusive, bool):
            raise _fail(source, f"'{where}.exclusive' must be true or false")
        try:
            compiled = re.compile(pattern)
        except re.error as e:
            raise _fail(source, f"'{where}.regex' is not a valid regex: {e}") from None
        out.append(Namespace(pattern, exclusive, compiled))
    return tuple(out)


def parse_registration(data: Any, source: str, server_name: str) -> AppService:
    """One registration from its parsed YAML; ConfigError naming `source` if invalid."""
    if not isinstance(data, dict):
        raise _fail(source, "the file must be a mapping")
    service_id = _string(data, "id", source)
    url = data.get("url")
    if url is not None:
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise _fail(source, "'url' must be an http(s) URL or null")
        if not urlsplit(url).hostname:
            raise _fail(source, "'url' has no host")
    as_token = _string(data, "as_token", source)
    hs_token = _string(data, "hs_token", source)
    for key, token in (("as_token", as_token), ("hs_token", hs_token)):
        if len(token) > MAX_TOKEN_LENGTH:
            raise _fail(source, f"'{key}' is longer than {MAX_TOKEN_LENGTH} characters")
    localpart = _string(data, "sender_localpart", source)
    if not _LOCALPART.fullmatch(localpart):
        raise _fail(source, "'sender_localpart' is not a valid user ID localpart")
    sender = f"@{localpart}:{server_name}"
    if len(sender.encode()) > MAX_ID_BYTES:
        raise _fail(source, "the sender's user ID is longer than 255 bytes")
    namespaces = data.get("namespaces") or {}
    if not isinstance(namespaces, dict):
        raise _fail(source, "'namespaces' must be a mapping")
    protocols = data.get("protocols") or []
    if not isinstance(protocols, list) or not all(
        isinstance(p, str) and p and "/" not in p for p in protocols
    ):
        raise _fail(source, "'protocols' must be a list of protocol names")
    receive_ephemeral = _bool(data, "receive_ephemeral", False, source) or _bool(
        data, "de.sorunome.msc2409.push_ephemeral", False, source
    )
    return AppService(
        id=service_id,
        url=url.rstrip("/") if url else None,
        as_token=as_token,
        hs_token=hs_token,
        sender=sender,
        users=_namespaces(namespaces.get("users"), "users", source),
        aliases=_namespaces(namespaces.get("aliases"), "aliases", source),
        rooms=_namespaces(namespaces.get("rooms"), "rooms", source),
        rate_limited=_bool(data, "rate_limited", True, source),
        protocols=tuple(protocols),
        receive_ephemeral=receive_ephemeral,
        msc3202=_bool(data, "org.matrix.msc3202", False, source),
        source=source,
    )


def check_unique(services: Sequence[AppService]) -> None:
    """Two services may not share an ID or a token (either kind), as Synapse refuses."""
    seen: dict[str, str] = {}
    tokens: dict[str, str] = {}
    for service in services:
        if service.id in seen:
            raise _fail(service.source, f"id {service.id!r} is also used by {seen[service.id]}")
        seen[service.id] = service.source
        for token in (service.as_token, service.hs_token):
            if token in tokens:
                raise _fail(service.source, f"a token is also used by {tokens[token]}")
            tokens[token] = service.source


def load_registrations(paths: Iterable[str | Path], server_name: str) -> list[AppService]:
    """Read every registration file; ConfigError on the first that is unreadable or bad."""
    services = []
    for path in paths:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(
                f"cannot read application service file {str(p)!r}: {e.strerror}"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"application service {p}: not valid YAML: {e}") from None
        services.append(parse_registration(data, str(p), server_name))
    check_unique(services)
    return services
