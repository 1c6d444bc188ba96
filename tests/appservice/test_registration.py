"""Registration files: parsed as Synapse's format, refused with a clear message when bad."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from starling.appservice.registration import load_registrations, parse_registration
from starling.appservice.registry import AppServiceRegistry
from starling.config import ConfigError
from tests.appservice.support import write_registration

SERVER = "example.org"


def _data(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "irc",
        "url": "http://127.0.0.1:9999",
        "as_token": "a" * 32,
        "hs_token": "h" * 32,
        "sender_localpart": "ircbot",
        "namespaces": {
            "users": [{"regex": "@irc_.*:example\\.org", "exclusive": True}],
            "aliases": [{"regex": "#irc_.*", "exclusive": False}],
        },
    }
    data.update(overrides)
    return data


def test_a_synapse_registration_is_read() -> None:
    service = parse_registration(
        _data(protocols=["irc"], **{"de.sorunome.msc2409.push_ephemeral": True}), "f", SERVER
    )
    assert service.sender == "@ircbot:example.org"
    assert service.rate_limited is True
    assert service.receive_ephemeral is True
    assert service.protocols == ("irc",)
    assert service.user_in_namespace("@irc_alice:example.org", exclusive=True)
    assert not service.user_in_namespace("@alice:example.org")
    # The whole value must match, not a prefix of it.
    assert not service.user_in_namespace("@irc_alice:example.org.evil")
    assert service.alias_in_namespace("#irc_room:example.org")
    assert not service.alias_in_namespace("#irc_room:example.org", exclusive=True)
    assert service.owns_user("@ircbot:example.org")


def test_values_longer_than_any_identifier_never_match() -> None:
    service = parse_registration(
        _data(namespaces={"users": [{"regex": "@.*", "exclusive": True}]}), "f", SERVER
    )
    assert service.user_in_namespace("@" + "a" * 200 + ":example.org")
    assert not service.user_in_namespace("@" + "a" * 300 + ":example.org")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"id": None}, "'id' is required"),
        ({"as_token": 5}, "'as_token' must be a non-empty string"),
        ({"url": "ftp://x"}, r"'url' must be an http\(s\) URL"),
        ({"sender_localpart": "Bad Bot"}, "'sender_localpart'"),
        ({"namespaces": {"users": [{"regex": "(", "exclusive": True}]}}, "not a valid regex"),
        ({"namespaces": {"users": [{"regex": "@a.*", "exclusive": "yes"}]}}, "exclusive"),
        ({"namespaces": {"users": "@a.*"}}, "must be a list"),
        ({"rate_limited": "no"}, "'rate_limited' must be true or false"),
        ({"protocols": "irc"}, "'protocols'"),
        ({"as_token": "x" * 2000}, "longer than"),
    ],
)
def test_bad_registrations_are_refused(change: dict[str, Any], message: str) -> None:
    data = _data()
    for key, value in change.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    with pytest.raises(ConfigError, match=message):
        parse_registration(data, "bridge.yaml", SERVER)


def test_a_null_url_is_allowed() -> None:
    assert parse_registration(_data(url=None), "f", SERVER).url is None


def test_duplicate_ids_and_tokens_are_refused(tmp_path: Path) -> None:
    one = write_registration(tmp_path, _data(), "one.yaml")
    same_id = write_registration(tmp_path, _data(as_token="b" * 32, hs_token="c" * 32), "2.yaml")
    with pytest.raises(ConfigError, match="id 'irc' is also used"):
        load_registrations([one, same_id], SERVER)
    same_token = write_registration(tmp_path, _data(id="other", hs_token="c" * 32), "3.yaml")
    with pytest.raises(ConfigError, match="token is also used"):
        load_registrations([one, same_token], SERVER)
    own_twice = write_registration(tmp_path, _data(id="x", as_token="d" * 8, hs_token="d" * 8))
    with pytest.raises(ConfigError, match="token is also used"):
        load_registrations([own_twice], SERVER)


def test_unreadable_or_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_registrations([tmp_path / "missing.yaml"], SERVER)
    bad = tmp_path / "bad.yaml"
    bad.write_text("id: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_registrations([bad], SERVER)
    bad.write_text("- a list")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_registrations([bad], SERVER)


def test_registry_answers() -> None:
    irc = parse_registration(_data(), "a", SERVER)
    other = parse_registration(
        _data(
            id="b",
            as_token="x" * 8,
            hs_token="y" * 8,
            sender_localpart="bbot",
            url=None,
            namespaces={"users": [{"regex": "@irc_.*", "exclusive": False}]},
        ),
        "b",
        SERVER,
    )
    registry = AppServiceRegistry([irc, other])
    assert registry.by_token("a" * 32) is irc
    assert registry.by_token("h" * 32) is None  # hs_tokens are ours, never accepted
    assert registry.user_reserved("@irc_bob:example.org")
    assert not registry.user_reserved("@irc_bob:example.org", allowed=irc)
    assert registry.user_reserved("@bbot:example.org")  # a service's sender is its own
    assert not registry.alias_reserved("#irc_x:example.org")  # not exclusive
    # Services without a URL are never asked anything.
    assert registry.interested_in_user("@irc_bob:example.org") == [irc]
