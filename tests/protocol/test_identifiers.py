"""Identifier grammars: the spec's vectors (incl. where Synapse differs) and edge cases."""

from __future__ import annotations

from typing import Any

import pytest

from starling.protocol.identifiers import (
    IdentifierError,
    RoomAlias,
    RoomID,
    UserID,
    check_event_id,
    escape_property_name,
    is_valid_event_id,
    is_valid_localpart,
    is_valid_namespaced_identifier,
    is_valid_opaque_identifier,
    is_valid_room_alias,
    is_valid_room_id,
    is_valid_room_version,
    is_valid_server_name,
    is_valid_user_id,
    join_property_path,
    map_to_localpart,
    parse_room_alias,
    parse_room_id,
    parse_server_name,
    parse_user_id,
    split_property_path,
)
from starling.protocol.room_versions import EventFormat, get_room_version
from tests.protocol.vectors import vectors


def _list_vector(vector_id: str) -> list[tuple[Any, Any]]:
    (vector,) = vectors(vector_id)
    return list(zip(vector["input"], vector["expected"], strict=True))


@pytest.mark.parametrize(
    "vector_id", ["identifiers.server_name.valid_examples", "identifiers.server_name.invalid"]
)
def test_server_name_vectors(vector_id: str) -> None:
    # identifiers.server_name.invalid notes Synapse accepts "matrix.org:123456"; we follow
    # the grammar (port = 1*5DIGIT).
    for name, expected in _list_vector(vector_id):
        assert is_valid_server_name(name) is expected, name


def test_parse_server_name() -> None:
    assert parse_server_name("matrix.org") == ("matrix.org", None)
    assert parse_server_name("matrix.org:8448") == ("matrix.org", 8448)
    assert parse_server_name("[1234:5678::abcd]:5678") == ("[1234:5678::abcd]", 5678)
    assert parse_server_name("1.2.3.4:1") == ("1.2.3.4", 1)
    for bad in ["[1234]", "[::g]", "[::1", "::1", "a" * 256, "a:b:c", "é.org", "a.org\n", "[::1]:"]:
        assert not is_valid_server_name(bad), bad
        with pytest.raises(IdentifierError):
            parse_server_name(bad)
    assert not is_valid_server_name(None)  # type: ignore[arg-type]


def test_room_version_vector() -> None:
    for version, expected in _list_vector("identifiers.room_version.grammar"):
        assert is_valid_room_version(version) is expected, version
    assert is_valid_room_version("a" * 32)


def test_user_localpart_mapping_vector() -> None:
    # implementation_differences: Synapse also escapes a leading '_' ('=5fa'); the spec's
    # suggested algorithm, which we follow, does not.
    for case, expected in _list_vector("identifiers.user_localpart_mapping"):
        assert map_to_localpart(case["input"], case["case_sensitive"]) == expected
    assert map_to_localpart("Bob Smith!") == "bob=20smith=21"
    assert is_valid_localpart(map_to_localpart("anything ☃ at all\x00", True))


def test_property_path_vector() -> None:
    for path, expected in _list_vector("identifiers.dot_separated_property_paths"):
        assert split_property_path(path) == expected
        # Escaping round-trips, except the literal "\x" which we never produce.
        if "\\x" not in path:
            assert join_property_path(expected) == path


def test_property_path_edges() -> None:
    assert split_property_path("") == [""]
    assert split_property_path("a.") == ["a", ""]
    assert split_property_path("a\\") == ["a\\"]
    assert split_property_path("a\\\\.b") == ["a\\", "b"]
    assert escape_property_name("m.x\\y") == "m\\.x\\\\y"
    with pytest.raises(IdentifierError):
        split_property_path(None)  # type: ignore[arg-type]


# --- user IDs ----------------------------------------------------------------------------


def test_user_ids() -> None:
    uid = parse_user_id("@alice:example.org", strict=True)
    assert uid == UserID("alice", "example.org") and str(uid) == "@alice:example.org"
    assert uid.has_strict_localpart and uid.is_compliant
    assert parse_user_id("@a.b_c=d-e/f+1:[::1]:8448", strict=True).domain == "[::1]:8448"
    # Historical IDs must still be accepted, but are not strict / compliant.
    for historical in [
        "@Alice:example.org",
        "@al ice:example.org",
        "@☃:example.org",
        "@:example.org",
    ]:
        assert is_valid_user_id(historical)
        assert not is_valid_user_id(historical, strict=True)
    assert parse_user_id("@Alice:example.org").is_compliant
    assert not parse_user_id("@al ice:example.org").is_compliant
    assert not parse_user_id("@:example.org").is_compliant


@pytest.mark.parametrize(
    "bad",
    [
        "alice:example.org",
        "@alice",
        "@alice:",
        "@alice:exa mple.org",
        "@al\x00ice:example.org",
        "@\ud800:example.org",
        "@" + "a" * 243 + ":example.org",  # 256 bytes
        "@" + "é" * 122 + ":example.org",  # 256 bytes, fewer characters
        "#alice:example.org",
    ],
)
def test_bad_user_ids(bad: str) -> None:
    assert not is_valid_user_id(bad)
    with pytest.raises(IdentifierError):
        parse_user_id(bad)


def test_user_id_length_limit_is_inclusive() -> None:
    assert is_valid_user_id("@" + "a" * 242 + ":example.org", strict=True)  # 255 bytes


# --- room IDs, aliases, event IDs ---------------------------------------------------------


def test_room_id_format_vector() -> None:
    (vector,) = vectors("room_id.format.v12")
    room_id = vector["input"]["id"]
    v12 = get_room_version(vector["input"]["room_version"])
    assert parse_room_id(room_id, v12) == RoomID(room_id[1:], None)
    assert str(parse_room_id(room_id)) == room_id
    assert not is_valid_room_id(room_id, get_room_version("11"))


def test_room_id_from_create_event_vector() -> None:
    (vector,) = vectors("room_id.v12.from_create_event")
    assert is_valid_room_id(vector["expected"]["room_id"], get_room_version("12"))
    assert is_valid_event_id(vector["expected"]["event_id"], EventFormat.V3)


def test_domain_room_ids() -> None:
    v11 = get_room_version("11")
    assert parse_room_id("!abc:example.org", v11) == RoomID("abc", "example.org")
    assert str(parse_room_id("!abc:example.org:8448")) == "!abc:example.org:8448"
    assert not is_valid_room_id("!abc:example.org", get_room_version("12"))
    for bad in [
        "abc:example.org",
        "!abc",
        "!a\x00:b.org",
        "!a:b c",
        "!" + "a" * 250 + ":b.org",
        None,
    ]:
        assert not is_valid_room_id(bad)  # type: ignore[arg-type]


def test_room_aliases() -> None:
    assert parse_room_alias("#room:example.org") == RoomAlias("room", "example.org")
    assert str(parse_room_alias("#Ünïcode room:example.org")) == "#Ünïcode room:example.org"
    for bad in [
        "room:example.org",
        "#room",
        "#ro\x00om:example.org",
        "#a:b:c",
        "#" + "a" * 250 + ":b.org",
    ]:
        assert not is_valid_room_alias(bad)


EVENT_ID_FORMAT = {"1": EventFormat.V1, "3": EventFormat.V2, "4": EventFormat.V3}
EVENT_VECTORS = vectors("event_id.format.")


@pytest.mark.parametrize("vector", EVENT_VECTORS, ids=[v["id"] for v in EVENT_VECTORS])
def test_event_id_format_vectors(vector: dict[str, Any]) -> None:
    event_id = vector["input"]["id"]
    fmt = get_room_version(vector["input"]["room_version"]).event_format
    assert fmt == EVENT_ID_FORMAT[vector["input"]["room_version"]]
    assert is_valid_event_id(event_id, fmt) is vector["expected"]["well_formed"]
    assert is_valid_event_id(event_id)
    alphabet = vector["expected"].get("alphabet")
    if alphabet == "standard" and ("+" in event_id or "/" in event_id):
        assert not is_valid_event_id(event_id, EventFormat.V3)
    if alphabet == "urlsafe" and ("-" in event_id or "_" in event_id):
        assert not is_valid_event_id(event_id, EventFormat.V2)
    if alphabet is not None:
        assert not is_valid_event_id(event_id, EventFormat.V1)


def test_bad_event_ids() -> None:
    good = "$Rqnc-F-dvnEYJTyHq_iKxU2bZ1CI92-kuZq3a5lr5Zg"
    for bad in [good[1:], good + "A", good[:-1], good[:-1] + "h", "$abc", "$a\x00:b.org", ""]:
        with pytest.raises(IdentifierError):
            check_event_id(bad, EventFormat.V3)
    with pytest.raises(IdentifierError):
        check_event_id("$abc:example.org", EventFormat.V3)
    check_event_id("$abc:example.org", EventFormat.V1)


# --- other grammars ------------------------------------------------------------------------


def test_namespaced_and_opaque() -> None:
    assert is_valid_namespaced_identifier("m.login.password")
    assert is_valid_namespaced_identifier("com.example-x_1")
    for bad in ["", "M.login", "1abc", "a b", "a" * 256]:
        assert not is_valid_namespaced_identifier(bad)
    assert is_valid_opaque_identifier("AbC-._~9")
    for bad in ["", "a b", "a/b", "a" * 256, "é"]:
        assert not is_valid_opaque_identifier(bad)


@pytest.mark.parametrize("char", ["\x00", "\x01", "\t", "\n", "\x1b", "\x7f"])
def test_control_characters_are_refused_in_every_sigil_id(char: str) -> None:
    assert not is_valid_user_id(f"@a{char}b:example.org")
    assert not is_valid_room_alias(f"#a{char}b:example.org")
    assert not is_valid_room_id(f"!a{char}b:example.org")
    assert not is_valid_event_id(f"$a{char}b:example.org")
    # Spaces and other Unicode stay valid in historical IDs.
    assert is_valid_user_id("@a b☃:example.org")
