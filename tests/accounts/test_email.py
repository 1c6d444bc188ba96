"""Email addresses validated by this server (`email` config, accounts/email.py) against a
small SMTP sink on loopback: requestToken mails a link, following it validates the
session, registration with m.login.email.identity and /account/3pid/add give the account
the address, and the address then logs in with the password. Both engines."""

from __future__ import annotations

import asyncio
import email
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from starling.storage import Database
from tests.support.harness import Harness, make_harness

V3 = "/_matrix/client/v3"
PASSWORD = "correct horse battery"


class SmtpSink:
    """Just enough SMTP to take mails (HELO/EHLO, MAIL, RCPT, DATA, QUIT)."""

    def __init__(self) -> None:
        self.mails: asyncio.Queue[tuple[str, email.message.Message]] = asyncio.Queue()
        self.port = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 sink\r\n")
        rcpt = ""
        while line := await reader.readline():
            cmd = line.decode().strip()
            verb = cmd.split(" ", 1)[0].upper()
            if verb in ("HELO", "EHLO"):
                writer.write(b"250 sink\r\n")
            elif verb == "RCPT":
                rcpt = cmd.split(":", 1)[1].strip().strip("<>")
                writer.write(b"250 ok\r\n")
            elif verb == "DATA":
                writer.write(b"354 go on\r\n")
                await writer.drain()
                data = b""
                while (chunk := await reader.readline()) != b".\r\n":
                    data += chunk
                await self.mails.put((rcpt, email.message_from_bytes(data)))
                writer.write(b"250 queued\r\n")
            elif verb == "QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                break
            else:
                writer.write(b"250 ok\r\n")
            await writer.drain()
        writer.close()


@pytest.fixture
async def smtp() -> AsyncIterator[SmtpSink]:
    sink = SmtpSink()
    server = await asyncio.start_server(sink.handle, "127.0.0.1", 0)
    sink.port = server.sockets[0].getsockname()[1]
    try:
        yield sink
    finally:
        server.close()
        await server.wait_closed()


def email_config(sink: SmtpSink) -> dict[str, Any]:
    return {
        "public_baseurl": "https://hs.example/",
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "email": {
            "smtp_host": "127.0.0.1",
            "smtp_port": sink.port,
            "notif_from": "Starling <noreply@hs.example>",
        },
    }


async def validate(hs: Harness, sink: SmtpSink, path: str, address: str, secret: str) -> str:
    """requestToken, then follow the mailed link; the sid."""
    status, body = await hs.request(
        "POST", f"{V3}/{path}", None, {"client_secret": secret, "email": address, "send_attempt": 1}
    )
    assert status == 200, body
    to, mail = await asyncio.wait_for(sink.mails.get(), 10)
    assert to == address.lower()
    text = mail.get_payload(decode=True).decode()
    link = urlsplit(re.search(r"(https://\S+)", text).group(1))  # type: ignore[union-attr]
    assert link.path == "/_synapse/client/email/submit_token"
    async with hs.client.get(f"{link.path}?{link.query}") as resp:
        assert resp.status == 200 and "confirmed" in await resp.text()
    sid: str = body["sid"]
    return sid


async def test_email_registration_login_and_adding(
    database: Database, tmp_path: Path, smtp: SmtpSink
) -> None:
    async with make_harness(database, tmp_path, **email_config(smtp)) as hs:
        _, caps = await hs.request("GET", f"{V3}/capabilities", (await hs.register())[1])
        assert caps["capabilities"]["m.3pid_changes"] == {"enabled": True}
        status, body = await hs.request("POST", f"{V3}/register", None, {})
        assert status == 401 and {"stages": ["m.login.email.identity"]} in body["flows"]
        session = body["session"]

        sid = await validate(hs, smtp, "register/email/requestToken", "Ann@Example.org", "s1")
        status, body = await hs.request(
            "POST",
            f"{V3}/register",
            None,
            {
                "username": "ann",
                "password": PASSWORD,
                "auth": {
                    "type": "m.login.email.identity",
                    "session": session,
                    "threepid_creds": {"sid": sid, "client_secret": "s1"},
                },
            },
        )
        assert status == 200, body
        ann, ann_token = body["user_id"], body["access_token"]
        _, listed = await hs.request("GET", f"{V3}/account/3pid", ann_token)
        assert [(t["medium"], t["address"]) for t in listed["threepids"]] == [
            ("email", "ann@example.org")
        ]

        # the address logs in with the password, either way of naming it
        for login in (
            {"medium": "email", "address": "ANN@example.org"},
            {
                "identifier": {
                    "type": "m.id.thirdparty",
                    "medium": "email",
                    "address": "ann@example.org",
                }
            },
        ):
            status, body = await hs.request(
                "POST",
                f"{V3}/login",
                None,
                {"type": "m.login.password", "password": PASSWORD, **login},
            )
            assert status == 200 and body["user_id"] == ann, body
        status, body = await hs.request(
            "POST",
            f"{V3}/login",
            None,
            {
                "type": "m.login.password",
                "password": PASSWORD,
                "medium": "email",
                "address": "x@y.z",
            },
        )
        assert status == 403, body

        # taken now: another request for it is refused
        status, body = await hs.request(
            "POST",
            f"{V3}/account/3pid/email/requestToken",
            None,
            {"client_secret": "s2", "email": "ann@example.org", "send_attempt": 1},
        )
        assert status == 400 and body["errcode"] == "M_THREEPID_IN_USE", body

        # a wrong token validates nothing; an unvalidated session adds nothing
        status, body = await hs.request(
            "POST",
            f"{V3}/account/3pid/email/requestToken",
            None,
            {"client_secret": "s3", "email": "bob@example.org", "send_attempt": 1},
        )
        assert status == 200, body
        await smtp.mails.get()
        bob_sid = body["sid"]
        status, ok = await hs.request(
            "POST",
            "/_synapse/client/email/submit_token",
            None,
            {"sid": bob_sid, "client_secret": "s3", "token": "guess"},
        )
        assert status == 200 and ok == {"success": False}
        bob, bob_token = await hs.register("bob")
        await hs.services.account_store.set_password_hash(
            bob, await hs.services.passwords.hash(PASSWORD)
        )
        creds = {"sid": bob_sid, "client_secret": "s3"}
        status, body = await hs.request(
            "POST", f"{V3}/account/3pid", bob_token, {"three_pid_creds": creds}
        )
        assert status == 400 and body["errcode"] == "M_THREEPID_AUTH_FAILED", body

        # validated: /account/3pid/add asks for the password first
        sid = await validate(hs, smtp, "account/3pid/email/requestToken", "bob@example.org", "s4")
        add = {"sid": sid, "client_secret": "s4"}
        status, body = await hs.request("POST", f"{V3}/account/3pid/add", bob_token, add)
        assert status == 401, body
        auth = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": bob},
            "password": PASSWORD,
            "session": body["session"],
        }
        status, body = await hs.request(
            "POST", f"{V3}/account/3pid/add", bob_token, {**add, "auth": auth}
        )
        assert status == 200, body
        _, listed = await hs.request("GET", f"{V3}/account/3pid", bob_token)
        assert [t["address"] for t in listed["threepids"]] == ["bob@example.org"]
