"""`starling debug check-auth` applies the receipt pipeline's auth-events checks to an
event that lists its auth events."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from starling.cli import main
from starling.protocol.room_versions import KNOWN_ROOM_VERSIONS
from tests.federation.dag import Dag, FakeServer


def _run(tmp_path: Path, capsys: pytest.CaptureFixture[str], rv: str, event, auth) -> dict:  # type: ignore[no-untyped-def]
    ev = tmp_path / "event.json"
    ev.write_text(json.dumps(event.pdu))
    au = tmp_path / "auth.json"
    au.write_text(json.dumps([e.pdu for e in auth]))
    code = main(["debug", "check-auth", "--room-version", rv, str(ev), str(au)])
    out, err = capsys.readouterr()
    assert code == 0, err
    result: dict = json.loads(out)
    return result


@pytest.mark.parametrize("rv", ["1", "10", "12"])
def test_check_auth_applies_the_auth_events_checks(
    rv: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = FakeServer("remote.example")
    dag = Dag(KNOWN_ROOM_VERSIONS[rv], [server])
    alice = server.user("alice")
    dag.standard_room(alice)
    everything = list(dag.events.values())

    good = dag.message(alice, track=False)
    assert _run(tmp_path, capsys, rv, good, everything) == {"allowed": True}

    jr = dag.current_state()[("m.room.join_rules", "")]
    extra = dag.message(alice, auth=[*good.auth_event_ids, jr], track=False)
    result = _run(tmp_path, capsys, rv, extra, everything)
    assert result["allowed"] is False and "not needed" in result["reason"]

    twice = dag.message(alice, auth=[*good.auth_event_ids, good.auth_event_ids[0]], track=False)
    assert _run(tmp_path, capsys, rv, twice, everything)["allowed"] is False

    create_id = dag.create_event.event_id
    if rv == "12":  # the create event must not be listed
        listed = dag.message(alice, auth=[create_id, *good.auth_event_ids], track=False)
        assert _run(tmp_path, capsys, rv, listed, everything)["allowed"] is False
    else:  # ...and must be listed before
        unlisted = dag.message(
            alice, auth=[a for a in good.auth_event_ids if a != create_id], track=False
        )
        assert _run(tmp_path, capsys, rv, unlisted, everything)["allowed"] is False
