"""`starling debug ...`: JSON in, JSON out, exit 2 with a message on bad input."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from starling.cli import main
from tests.protocol.vectors import vectors

FIXTURES = Path(__file__).parent / "protocol" / "fixtures"


def run(
    args: list[str], capsys: pytest.CaptureFixture[str], stdin: bytes | None = None
) -> tuple[int, str, str]:
    if stdin is not None:
        fake = io.TextIOWrapper(io.BytesIO(stdin))
        old = sys.stdin
        sys.stdin = fake
        try:
            code = main(args)
        finally:
            sys.stdin = old
    else:
        code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, name: str, value: Any) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(value))
    return str(path)


def test_canonical_json_from_stdin(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["debug", "canonical-json"], capsys, b'{"b": 1, "a": "\\u00e9"}')
    assert code == 0
    assert out == '{"a":"\u00e9","b":1}\n'


def test_canonical_json_of_the_spec_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["debug", "canonical-json"], capsys, b'{"a": -0, "b": 1e10}')
    assert (code, out) == (0, '{"a":0,"b":10000000000}\n')


@pytest.mark.parametrize(
    "text", [b'{"a": 1.5}', b"[9007199254740992]", b"{not json", b"[1e-3]", b"[1e99999]"]
)
def test_canonical_json_refuses(capsys: pytest.CaptureFixture[str], text: bytes) -> None:
    code, out, err = run(["debug", "canonical-json"], capsys, text)
    assert code == 2 and out == "" and err.startswith("starling debug:")


def test_event_id_matches_the_spec_vectors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    vector = vectors("event_id.reference_hash.message")[0]
    for case in vector["expected_by_room_version"]:
        for rv in case["room_versions"]:
            path = write(tmp_path, f"ev{rv}.json", case["output"]["signed_event"])
            code, out, err = run(["debug", "event-id", "--room-version", rv, path], capsys)
            assert code == 0, err
            assert json.loads(out)["event_id"] == case["output"]["event_id"]


def test_event_id_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "ev.json", {"type": "m.room.message"})
    code, _, err = run(["debug", "event-id", "--room-version", "99", path], capsys)
    assert code == 2 and "unknown room version" in err
    code, _, err = run(["debug", "event-id", "--room-version", "10", str(tmp_path / "no")], capsys)
    assert code == 2 and "cannot read" in err
    code, _, err = run(
        ["debug", "event-id", "--room-version", "10", write(tmp_path, "l", [1])], capsys
    )
    assert code == 2


def _auth_fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "auth" / f"{name}.json").read_text())
    return data


def _plain_auth_fixtures() -> list[str]:
    """Fixtures whose events are complete as stored (third-party invite ones are signed
    at test time by tests/protocol/test_auth_rules.py)."""
    names = []
    for path in sorted((FIXTURES / "auth").glob("*.json")):
        if "{public_key" not in path.read_text():
            names.append(path.stem)
    return names


def _with_room_id(fx: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The fixtures leave room_id out; give every event the room's ID as the auth-rule
    tests do (in room version 12 the create event's ID implies it)."""
    pdus = [*fx["state"], fx["event"]]
    room_id = "!room:example.org"
    if fx["room_version"] == "12":
        for pdu in pdus:
            if pdu["type"] == "m.room.create":
                room_id = "!" + pdu["event_id"][1:]
    out = []
    for pdu in pdus:
        pdu = dict(pdu)
        if "room_id" not in pdu and not (
            fx["room_version"] == "12" and pdu["type"] == "m.room.create"
        ):
            pdu["room_id"] = room_id
        out.append(pdu)
    return out[:-1], out[-1]


@pytest.mark.parametrize("name", _plain_auth_fixtures())
def test_check_auth_agrees_with_the_fixtures(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fx = _auth_fixture(name)
    state, event = _with_room_id(fx)
    ev = write(tmp_path, "event.json", event)
    auth = write(tmp_path, "auth.json", state)
    code, out, err = run(
        ["debug", "check-auth", "--room-version", fx["room_version"], "--trust-ids", ev, auth],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["allowed"] == (fx["expected"] == "allow")
    if not result["allowed"]:
        assert result["reason"]


def test_check_auth_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ev = write(tmp_path, "event.json", {"type": "m.room.message", "event_id": "$x"})
    code, _, err = run(
        ["debug", "check-auth", "--room-version", "10", "--trust-ids", ev, ev], capsys
    )
    assert code == 2 and "AUTH_EVENTS_FILE" in err


@pytest.mark.parametrize(
    "path", sorted((FIXTURES / "state_res").glob("*.json")), ids=lambda p: p.stem
)
def test_resolve_state_agrees_with_the_fixtures(
    path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fx = json.loads(path.read_text())
    code, out, err = run(
        ["debug", "resolve-state", "--room-version", fx["room_version"], "--trust-ids", str(path)],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out) == sorted(fx["expected"])


def test_resolve_state_reports_missing_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fx = json.loads(sorted((FIXTURES / "state_res").glob("*.json"))[0].read_text())
    fx["events"] = fx["events"][len(fx["events"]) // 2 :]
    code, _, err = run(
        [
            "debug",
            "resolve-state",
            "--room-version",
            fx["room_version"],
            "--trust-ids",
            write(tmp_path, "f.json", fx),
        ],
        capsys,
    )
    assert code == 2 and "starling debug:" in err
