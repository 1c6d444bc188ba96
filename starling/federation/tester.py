"""A federation self-check of one server, as an admin runs it (`starling debug
federation-check NAME`): where discovery sends requests, what `/version` answers, and
whether its `/_matrix/key/v2/server` answer checks out — the same code the server uses."""

from __future__ import annotations

import time
from typing import Any

from starling.federation.client import FederationClient
from starling.federation.discovery import DiscoveryError
from starling.federation.errors import FederationError, FederationUnreachable
from starling.federation.keyring import KEY_SERVER_PATH, KeyResponseError, parse_key_response


async def check_server(client: FederationClient, server_name: str) -> dict[str, Any]:
    """{"server_name", "targets" | "error", "version", "keys", "ok"}: ok when the server
    answered its keys over TLS with a valid, self-signed response."""
    report: dict[str, Any] = {"server_name": server_name, "ok": False}
    try:
        targets = await client.resolver.resolve(server_name)
    except DiscoveryError as e:
        report["error"] = f"cannot resolve: {e}"
        return report
    report["targets"] = [
        {"host": t.host, "port": t.port, "host_header": t.host_header, "tls_name": t.tls_name}
        for t in targets
    ]
    try:
        report["version"] = await client.get_json(
            server_name, "/_matrix/federation/v1/version", timeout=20
        )
    except (FederationError, FederationUnreachable) as e:
        report["version"] = {"error": str(e)}
    try:
        response = await client.get_json(server_name, KEY_SERVER_PATH, timeout=20)
        keys, valid_until = parse_key_response(response, server_name, int(time.time() * 1000))
    except (FederationError, FederationUnreachable, KeyResponseError) as e:
        report["keys"] = {"error": str(e)}
        return report
    report["keys"] = {
        "valid_until_ts": valid_until,
        "verify_keys": {k.key_id: k.verify_key for k in keys},
    }
    report["ok"] = True
    return report
