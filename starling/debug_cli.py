"""`starling debug ...`: the protocol core as command-line tools for server admins.

Like Dendrite's resolve-state: each command reads JSON, prints JSON, exits 0 on success
and 2 with a one-line message on bad input. They run the same code the server runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import orjson

from starling.protocol.canonical_json import (
    CanonicalJsonError,
    encode_canonical_json,
    parse_json_strict,
)
from starling.protocol.event import Event
from starling.protocol.room_versions import (
    KNOWN_ROOM_VERSIONS,
    RoomVersion,
    UnknownRoomVersion,
    get_room_version,
)

EXIT_BAD_INPUT = 2


class BadInput(Exception):
    """Input the command cannot use; printed as one line, exit code 2."""


def _read(path: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise BadInput(f"cannot read {path}: {e.strerror}") from None


def _load_json(path: str) -> Any:
    raw = _read(path)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BadInput(f"{path}: not valid JSON: {e}") from None


def _room_version(ident: str) -> RoomVersion:
    try:
        return get_room_version(ident)
    except UnknownRoomVersion:
        raise BadInput(
            f"unknown room version {ident!r}; known: {', '.join(KNOWN_ROOM_VERSIONS)}"
        ) from None


def _event_id(pdu: dict[str, Any], rv: RoomVersion, trust_ids: bool) -> str:
    from starling.protocol.hashing import compute_event_id

    given = pdu.get("event_id")
    if trust_ids:
        if not isinstance(given, str):
            raise BadInput("with --trust-ids every event needs an event_id string")
        return given
    try:
        return compute_event_id(pdu, rv)
    except ValueError as e:
        raise BadInput(f"cannot compute the event ID: {e}") from None


def _event(pdu: Any, rv: RoomVersion, trust_ids: bool, what: str) -> Event:
    if not isinstance(pdu, dict):
        raise BadInput(f"{what}: expected a JSON object")
    return Event(pdu, _event_id(pdu, rv, trust_ids), rv)


def _print(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value) + b"\n")


def cmd_canonical_json(args: argparse.Namespace) -> None:
    try:
        value = parse_json_strict(_read(args.file))
        sys.stdout.buffer.write(encode_canonical_json(value) + b"\n")
    except CanonicalJsonError as e:
        raise BadInput(f"no canonical form: {e}") from None


def cmd_event_id(args: argparse.Namespace) -> None:
    rv = _room_version(args.room_version)
    pdu = _load_json(args.file)
    if not isinstance(pdu, dict):
        raise BadInput("expected a JSON object (one event)")
    _print({"event_id": _event_id(pdu, rv, trust_ids=False)})


def cmd_check_auth(args: argparse.Namespace) -> None:
    from starling.protocol.auth_rules import check_auth_rules

    rv = _room_version(args.room_version)
    event = _event(_load_json(args.event_file), rv, args.trust_ids, "EVENT_FILE")
    auth_list = _load_json(args.auth_events_file)
    if not isinstance(auth_list, list):
        raise BadInput("AUTH_EVENTS_FILE: expected a JSON list of events")
    given: dict[str, Event] = {}
    for i, pdu in enumerate(auth_list):
        ev = _event(pdu, rv, args.trust_ids, f"AUTH_EVENTS_FILE[{i}]")
        if ev.state_key is None:
            raise BadInput(f"AUTH_EVENTS_FILE[{i}]: auth events must be state events")
        given[ev.event_id] = ev
    if "auth_events" in event.pdu:
        # The event names its auth events: the same checks as on receipt of a PDU (step
        # 4): exactly an allowed selection, then the rules against those events alone.
        from starling.federation.receipt.auth_events import check_auth_events
        from starling.federation.receipt.verdict import Rejected

        create = next((e for e in given.values() if e.state_map_key == ("m.room.create", "")), None)
        verdict = check_auth_events(event, given, create_event=create)
        if isinstance(verdict, Rejected):
            _print({"allowed": False, "reason": verdict.reason})
        else:
            _print({"allowed": True})
        return
    # Without auth_events the file is the state to check against (the fixtures' form).
    auth_state = {ev.state_map_key: ev for ev in given.values()}
    decision = check_auth_rules(event, auth_state)
    if decision.allowed:
        _print({"allowed": True})
    else:
        _print({"allowed": False, "reason": decision.reason})


def cmd_resolve_state(args: argparse.Namespace) -> None:
    from starling.protocol.state_res import MissingEventsError, resolve_state, state_set_from_ids

    rv = _room_version(args.room_version)
    data = _load_json(args.file)
    if not isinstance(data, dict) or not isinstance(data.get("events"), list):
        raise BadInput('FILE: expected {"events": [...], "state_sets": [[...], ...]}')
    sets = data.get("state_sets")
    if not isinstance(sets, list) or not all(isinstance(s, list) for s in sets):
        raise BadInput("FILE: state_sets must be a list of lists of event IDs")
    events: dict[str, Event] = {}
    for i, pdu in enumerate(data["events"]):
        ev = _event(pdu, rv, args.trust_ids, f"events[{i}]")
        events[ev.event_id] = ev
    try:
        state_sets = [state_set_from_ids(s, events) for s in sets]
        resolved = resolve_state(rv, state_sets, events)
    except MissingEventsError as e:
        raise BadInput(f"events missing from FILE: {', '.join(sorted(e.event_ids))}") from None
    except ValueError as e:
        raise BadInput(str(e)) from None
    _print(sorted([t, sk, eid] for (t, sk), eid in resolved.items()))


def add_debug_commands(sub: Any) -> None:
    debug = sub.add_parser(
        "debug",
        help="protocol tools: canonical JSON, event IDs, auth checks, state resolution, "
        "federation checks, one low-bandwidth (CoAP) request",
        description="Protocol tools for server admins. Read JSON, print JSON; exit 2 on bad input.",
    )
    dsub = debug.add_subparsers(dest="debug_command", metavar="TOOL")
    dsub.required = True

    c = dsub.add_parser(
        "canonical-json",
        help="print the canonical JSON of stdin (or FILE)",
        description="Print the canonical JSON form of the input, or why it has none.",
    )
    c.add_argument("file", nargs="?", default="-", help="input file (default: stdin)")
    c.set_defaults(func=_wrap(cmd_canonical_json))

    e = dsub.add_parser(
        "event-id",
        help="compute the event ID of an event",
        description='Print {"event_id": ...} for the event in FILE.',
    )
    e.add_argument("--room-version", required=True)
    e.add_argument("file", help="a JSON file holding one event (- for stdin)")
    e.set_defaults(func=_wrap(cmd_event_id))

    a = dsub.add_parser(
        "check-auth",
        help="run the authorization rules on an event",
        description=(
            'Print {"allowed": true} or {"allowed": false, "reason": ...}. When the event '
            "has auth_events, they are checked as on receipt of a PDU (an allowed selection: "
            "no duplicates, none unneeded or from another room, the create event listed "
            "except in room 12) and the rules run against those events only; otherwise "
            "AUTH_EVENTS_FILE is the state to check against."
        ),
    )
    a.add_argument("--room-version", required=True)
    a.add_argument("--trust-ids", action="store_true", help="take each event_id as given")
    a.add_argument("event_file", metavar="EVENT_FILE")
    a.add_argument("auth_events_file", metavar="AUTH_EVENTS_FILE", help="a JSON list of events")
    a.set_defaults(func=_wrap(cmd_check_auth))

    r = dsub.add_parser(
        "resolve-state",
        help="run state resolution",
        description=(
            'FILE = {"events": [every event, auth chains included], "state_sets": '
            "[[event IDs], ...]}. Prints the resolved state as a sorted JSON list of "
            "[type, state_key, event_id]."
        ),
    )
    r.add_argument("--room-version", required=True)
    r.add_argument("--trust-ids", action="store_true", help="take each event_id as given")
    r.add_argument("file", metavar="FILE")
    r.set_defaults(func=_wrap(cmd_resolve_state))

    f = dsub.add_parser(
        "federation-check",
        help="check that a server can be federated with: discovery, TLS, /version, keys",
        description=(
            "Resolve SERVER_NAME as federation does, then fetch its /version and signing "
            "keys over TLS and check them. Prints a JSON report; exits 0 if the keys check "
            "out, 1 otherwise. -c uses a config's federation settings (certificate "
            "verification, IP ranges); without it, the defaults."
        ),
    )
    f.add_argument("server_name", metavar="SERVER_NAME")
    f.add_argument("-c", "--config", help="path to starling.yaml (federation settings)")
    f.set_defaults(func=_wrap(cmd_federation_check))

    q = dsub.add_parser(
        "coap",
        help="send one Client-Server request over low-bandwidth CoAP+CBOR+Noise",
        description=(
            "Like curl for MSC3079: reads BASE_URL/_matrix/client/versions (HTTPS) for the "
            "UDP port and Noise key, then sends METHOD PATH over CoAP+CBOR+Noise and prints "
            '{"status", "body" (as JSON), "bytes": {"sent", "received"}}. The access token '
            "is taken from the STARLING_ACCESS_TOKEN environment variable (not an argument: "
            "those end up in shell history). Exits 0 for a 2xx/3xx answer, 1 otherwise."
        ),
    )
    q.add_argument("base_url", metavar="BASE_URL", help="e.g. https://matrix.example.org")
    q.add_argument("method", metavar="METHOD", choices=["GET", "PUT", "POST", "DELETE"])
    q.add_argument("path", metavar="PATH", help="e.g. /_matrix/client/v3/account/whoami")
    q.add_argument("-d", "--data", help="JSON request body")
    q.set_defaults(func=_wrap(cmd_coap))


def cmd_coap(args: argparse.Namespace) -> int:
    """One Client-Server request over low-bandwidth CoAP+CBOR+Noise, like curl."""
    import asyncio
    import base64
    import os

    import aiohttp

    from starling.protocol.lowbandwidth.coap import FEATURE, NOISE_FEATURE
    from starling_client.lowbandwidth import LowBandwidthClient, LowBandwidthError

    body = None
    if args.data is not None:
        try:
            body = parse_json_strict(args.data.encode())
        except CanonicalJsonError as e:
            raise BadInput(f"--data is not JSON: {e}") from None
    base = args.base_url.rstrip("/")
    token = os.environ.get("STARLING_ACCESS_TOKEN")

    async def discover() -> tuple[str, int, bytes]:
        from yarl import URL

        host = URL(base).host or "127.0.0.1"
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(
                    base + "/_matrix/client/versions", timeout=aiohttp.ClientTimeout(total=10)
                ) as resp,
            ):
                versions = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            raise BadInput(f"cannot read {base}/_matrix/client/versions: {e}") from None
        info = versions.get(FEATURE, {}).get(NOISE_FEATURE) if isinstance(versions, dict) else None
        if not isinstance(info, dict):
            raise BadInput(f"{base} does not offer low-bandwidth Matrix over Noise")
        key = base64.b64decode(str(info["public_key"]) + "=" * (-len(info["public_key"]) % 4))
        return host, int(info["port"]), key

    async def run() -> dict[str, Any]:
        host, port, key = await discover()
        client = await LowBandwidthClient.connect(host, port, key)
        client.access_token = token
        try:
            status, answer = await client.request(args.method, args.path, body, timeout_s=60)
        finally:
            await client.close()
        return {
            "status": status,
            "body": answer,
            "bytes": {"sent": client.bytes_sent, "received": client.bytes_received},
        }

    try:
        report = asyncio.run(run())
    except LowBandwidthError as e:
        raise BadInput(str(e)) from None
    _print(report)
    return 0 if report["status"] < 400 else 1


def cmd_federation_check(args: argparse.Namespace) -> int:
    import asyncio

    from starling.config import ConfigError, load_config, load_config_dict
    from starling.federation.client import FederationClient
    from starling.federation.tester import check_server
    from starling.protocol.signing import SigningKey

    try:
        if args.config:
            config = load_config(args.config)
        else:
            config = load_config_dict({"server_name": "federation-check.invalid"})
    except ConfigError as e:
        raise BadInput(f"invalid configuration: {e}") from None

    async def run() -> dict[str, Any]:
        # An ephemeral key: the endpoints checked need no authentication.
        client = FederationClient(config, SigningKey.generate())
        try:
            return await check_server(client, args.server_name)
        finally:
            await client.close()

    report = asyncio.run(run())
    _print(report)
    return 0 if report["ok"] else 1


def _wrap(fn: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            code = fn(args)
        except BadInput as e:
            print(f"starling debug: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        return code if isinstance(code, int) else 0

    return run
