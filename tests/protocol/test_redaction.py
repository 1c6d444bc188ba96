"""Redaction: every spec vector, in every room version it names, plus edge cases."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from starling.protocol.redaction import RedactionError, redact
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS, get_room_version
from tests.protocol.vectors import vectors


def _cases() -> list[Any]:
    cases = []
    for v in vectors("redaction."):
        for group in v["expected_by_room_version"]:
            for rv in group["room_versions"]:
                cases.append(
                    pytest.param(v["input"]["event"], rv, group["output"], id=f"{v['id']}-v{rv}")
                )
    return cases


@pytest.mark.parametrize(("event", "room_version", "expected"), _cases())
def test_redaction_vector(
    event: dict[str, Any], room_version: str, expected: dict[str, Any]
) -> None:
    before = copy.deepcopy(event)
    assert redact(event, get_room_version(room_version)) == expected
    assert event == before  # the input is never modified


def test_every_room_version_is_covered_by_vectors() -> None:
    covered = {
        rv
        for v in vectors("redaction.")
        for group in v["expected_by_room_version"]
        for rv in group["room_versions"]
    }
    assert covered == set(KNOWN_ROOM_VERSIONS)


@pytest.mark.parametrize("rv", sorted(KNOWN_ROOM_VERSIONS))
def test_content_is_always_present(rv: str) -> None:
    out = redact({"type": "m.room.message", "sender": "@a:b"}, get_room_version(rv))
    assert out == {"type": "m.room.message", "sender": "@a:b", "content": {}}


def test_v11_third_party_invite_without_signed_keeps_empty_object() -> None:
    event = {
        "type": "m.room.member",
        "content": {"membership": "invite", "third_party_invite": {"display_name": "x"}},
    }
    out = redact(event, get_room_version("11"))
    assert out["content"] == {"membership": "invite", "third_party_invite": {}}


def test_v11_third_party_invite_not_an_object_is_dropped() -> None:
    event = {"type": "m.room.member", "content": {"membership": "invite", "third_party_invite": 3}}
    assert redact(event, get_room_version("12"))["content"] == {"membership": "invite"}


def test_non_string_type_keeps_no_content() -> None:
    out = redact({"type": 5, "content": {"membership": "join"}}, get_room_version("1"))
    assert out["content"] == {}


def test_create_content_copy_is_independent_in_v11() -> None:
    content = {"room_version": "11"}
    out = redact({"type": "m.room.create", "content": content}, get_room_version("11"))
    out["content"]["x"] = 1
    assert content == {"room_version": "11"}


@pytest.mark.parametrize("bad", [None, [], "x", 3])
def test_non_object_event_rejected(bad: Any) -> None:
    with pytest.raises(RedactionError, match="not a JSON object"):
        redact(bad, get_room_version("10"))


@pytest.mark.parametrize("content", [[], "x", None, 1])
def test_non_object_content_rejected(content: Any) -> None:
    with pytest.raises(RedactionError, match="content"):
        redact({"type": "m.room.member", "content": content}, get_room_version("9"))
