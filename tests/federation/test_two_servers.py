"""Two real `starling serve` processes over TLS on loopback (tests/federation/harness.py):
keys fetched and verified across servers, X-Matrix authentication both ways, /version."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import orjson
import pytest

from starling.protocol.signing import SigningKey, verify_signed_json
from tests.federation.harness import STARLING, federation_servers, free_port, signed_request
from tests.support.dbfixtures import ENGINES

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("engine", ENGINES)
async def test_two_servers_authenticate_each_other(engine: str, tmp_path: Path) -> None:
    # b's server name carries a proxy's port, not its listener's. On SQLite the servers
    # verify each other's certificates (test CA); on PostgreSQL they run as the external
    # harness runs them (verification off).
    async with federation_servers(
        tmp_path, 2, engine=engine, proxy=[False, True], verify_certificates=engine == "sqlite"
    ) as (a, b):
        a_key, b_key = a.signing_key(), b.signing_key()

        # /version answers, over TLS, without authentication.
        status, body = await a.federation_get("/_matrix/federation/v1/version")
        assert status == 200 and body["server"]["name"] == "Starling", body

        # Each server's own keys, self-signed.
        status, keys = await b.federation_get("/_matrix/key/v2/server")
        assert status == 200, keys
        assert keys["server_name"] == b.server_name
        assert keys["verify_keys"] == {b_key.key_id: {"key": b_key.public_key_base64}}
        verify_signed_json(keys, b.server_name, b_key.key_id, b_key.verify_key)

        # a, as a notary, fetches b's keys from b over TLS (through b's proxy port) and
        # counter-signs them.
        status, answer = await a.federation_get(f"/_matrix/key/v2/query/{b.server_name}")
        assert status == 200, (answer, a.log_tail())
        (response,) = answer["server_keys"]
        assert response["verify_keys"] == {b_key.key_id: {"key": b_key.public_key_base64}}
        verify_signed_json(response, b.server_name, b_key.key_id, b_key.verify_key)
        verify_signed_json(response, a.server_name, a_key.key_id, a_key.verify_key)

        # The admin's check, with a's federation settings: b resolves, answers, and its
        # keys check out; a port with nothing behind it does not.
        check = await asyncio.to_thread(
            _run, "debug", "federation-check", b.server_name, "-c", str(a.config_path)
        )
        assert check.returncode == 0, check.stderr
        report = orjson.loads(check.stdout)
        assert report["ok"] and report["version"]["server"]["name"] == "Starling"
        assert report["keys"]["verify_keys"] == {b_key.key_id: b_key.public_key_base64}
        assert report["targets"] == [
            {
                "host": "localhost",
                "port": b.name_port,
                "host_header": b.server_name,
                "tls_name": "localhost",
            }
        ]
        check = await asyncio.to_thread(
            _run, "debug", "federation-check", f"localhost:{free_port()}", "-c", str(a.config_path)
        )
        assert check.returncode == 1 and not orjson.loads(check.stdout)["ok"]

        # A request signed by b with b's key is accepted by a (which fetches b's keys).
        path = "/_matrix/federation/v1/publicRooms"
        status, body = await signed_request(a, "GET", path, origin=b.server_name, key=b_key)
        assert status == 200, (body, a.log_tail())
        assert body["chunk"] == []
        status, body = await signed_request(
            a, "POST", path, origin=b.server_name, key=b_key, body={"limit": 5}
        )
        assert status == 200, body

        # Forged: b's key ID, another key.
        forged = SigningKey.generate(b_key.version)
        status, body = await signed_request(a, "GET", path, origin=b.server_name, key=forged)
        assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED"), body
        # Signed by b for another destination.
        status, body = await signed_request(
            a, "GET", path, origin=b.server_name, key=b_key, destination="elsewhere.example"
        )
        assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED"), body
        # A body that is not the one signed.
        status, body = await signed_request(
            a,
            "POST",
            path,
            origin=b.server_name,
            key=b_key,
            body={"limit": 5},
            sent_body={"limit": 6},
        )
        assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED"), body
        # Claiming to be a itself, or no header at all.
        status, body = await signed_request(a, "GET", path, origin=a.server_name, key=a_key)
        assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED"), body
        status, body = await signed_request(
            a, "GET", path, origin=b.server_name, key=b_key, header="Bearer x"
        )
        assert (status, body["errcode"]) == (401, "M_UNAUTHORIZED"), body

        # A user of a lists b's published rooms: a signs the request to b, b verifies it
        # with a's keys fetched from a.
        bob = await b.register("bob")
        room_id = await b.create_room(bob, visibility="public", name="Lobby")
        alice = await a.register("alice")
        status, body = await a.client_request(
            "GET", "/_matrix/client/v3/publicRooms", alice.token, params={"server": b.server_name}
        )
        assert status == 200, (body, a.log_tail(), b.log_tail())
        assert [r["room_id"] for r in body["chunk"]] == [room_id]
        assert body["chunk"][0]["name"] == "Lobby"
        status, body = await a.client_request(
            "POST",
            "/_matrix/client/v3/publicRooms",
            alice.token,
            {"filter": {"generic_search_term": "lob"}},
            params={"server": b.server_name},
        )
        assert status == 200 and [r["room_id"] for r in body["chunk"]] == [room_id], body

        # Stopped with SIGTERM (exit 0) and restarted on the same data directory, b keeps
        # its key and users.
        assert await asyncio.to_thread(b.stop) == 0, b.log_tail()
        await asyncio.to_thread(b.start)
        assert b.signing_key().key_id == b_key.key_id
        status, body = await b.client_request("GET", "/_matrix/client/v3/account/whoami", bob.token)
        assert status == 200 and body["user_id"] == bob.user_id, body


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*STARLING, *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )
