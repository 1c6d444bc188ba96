"""The login providers Starling ships, against real components: LDAP against OpenLDAP's
slapd (Debian's package, which .ci/run installs) started here with a throwaway directory,
and the SQL user-table provider against a real table (PostgreSQL on the postgres run,
an SQLite file on the sqlite run). Both engines for Starling's own database."""

from __future__ import annotations

import logging
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import argon2
import asyncpg
import bcrypt
import pytest

from starling.modules.ldap import LdapAuthProvider
from starling.storage import Database
from starling.storage.admin_users import AdminUserStore
from starling.storage.external_login import ExternalLoginStore
from tests.support.dbfixtures import fresh_database_url
from tests.support.harness import Harness, make_harness

V3 = "/_matrix/client/v3"
DATA = Path(__file__).parent / "data"
BASE = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{BASE}"
ADMIN_PW = "admin-secret-pw"
_FAST = {"per_second": 1000, "burst_count": 1000}
# Many logins, right and wrong, in a row on purpose.
FAST_LOGINS = {"rc_login": {"address": _FAST, "account": _FAST, "failed_attempts": _FAST}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real OpenLDAP server on loopback with tests/modules/data/directory.ldif."""
    binary = shutil.which("slapd") or "/usr/sbin/slapd"
    slapadd = shutil.which("slapadd") or "/usr/sbin/slapadd"
    if not Path(binary).exists():
        pytest.fail("slapd is not installed: apt-get install slapd (as .ci/run does)")
    root = tmp_path_factory.mktemp("slapd")
    (root / "db").mkdir()
    conf = root / "slapd.conf"
    conf.write_text(
        "include /etc/ldap/schema/core.schema\n"
        "include /etc/ldap/schema/cosine.schema\n"
        "include /etc/ldap/schema/inetorgperson.schema\n"
        "modulepath /usr/lib/ldap\nmoduleload back_mdb\n"
        f"pidfile {root}/slapd.pid\n"
        f'database mdb\nmaxsize 10485760\nsuffix "{BASE}"\n'
        f'rootdn "{ADMIN_DN}"\nrootpw {ADMIN_PW}\ndirectory {root}/db\n'
    )
    subprocess.run(
        [slapadd, "-f", str(conf), "-l", str(DATA / "directory.ldif")],
        check=True,
        capture_output=True,
        timeout=30,
    )
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "-f", str(conf), "-h", f"ldap://127.0.0.1:{port}/", "-d", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("slapd did not start") from None
                time.sleep(0.05)
        yield f"ldap://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def ldap_config(uri: str, **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "uri": uri,
        "start_tls": False,
        "base": BASE,
        "attributes": {"uid": "uid", "mail": "mail", "name": "cn"},
        "bind_dn": ADMIN_DN,
        "bind_password": ADMIN_PW,
        "filter": "(objectClass=inetOrgPerson)",
        "timeout": 5,
        **extra,
    }


async def login(hs: Harness, user: str, password: str) -> tuple[int, Any]:
    return await hs.request(
        "POST",
        f"{V3}/login",
        None,
        {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user},
         "password": password},
    )  # fmt: skip


async def test_ldap_login(
    database: Database, tmp_path: Path, slapd: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    modules = [
        {"module": "ldap_auth_provider.LdapAuthProviderModule", "config": ldap_config(slapd)}
    ]
    async with make_harness(database, tmp_path, modules=modules, **FAST_LOGINS) as hs:
        # A local account made before LDAP was set up, whose name LDAP also has.
        alice = f"@alice:{hs.server_name}"
        await hs.services.accounts.register_by_admin(
            "alice", "local-alice-pw", admin=False, displayname="Alice"
        )

        status, body = await login(hs, "JDoe", "correct horse")
        assert status == 200, body
        jdoe = body["user_id"]
        assert jdoe == f"@jdoe:{hs.server_name}"
        status, profile = await hs.request("GET", f"{V3}/profile/{jdoe}/displayname")
        assert profile == {"displayname": "Jane Doe"}
        threepids = await AdminUserStore(database).threepids(jdoe)
        assert [(t["medium"], t["address"]) for t in threepids] == [("email", "jane@example.org")]
        # The next login finds the same account (by the link, not by name).
        status, again = await login(hs, "jdoe", "correct horse")
        assert (status, again["user_id"]) == (200, jdoe)
        # The account's password is LDAP's: user-interactive auth accepts it too.
        device = again["device_id"]
        status, body = await hs.request(
            "POST",
            f"{V3}/delete_devices",
            again["access_token"],
            {"devices": [device], "auth": {"type": "m.login.password", "password": "correct horse",
             "identifier": {"type": "m.id.user", "user": "jdoe"}}},
        )  # fmt: skip
        assert status == 200, body

        for user, password in [
            ("jdoe", "wrong horse"),
            ("jdoe", ""),
            ("twin", "twin-pw"),  # two entries: ambiguous, refused
            ("nobody", "correct horse"),
        ]:
            status, body = await login(hs, user, password)
            assert (status, body["errcode"]) in ((403, "M_FORBIDDEN"), (400, "M_BAD_JSON")), user
        assert not await hs.services.account_store.user_exists(f"@twin:{hs.server_name}")

        # LDAP's alice cannot take over the local @alice; the local password still works.
        status, body = await login(hs, "alice", "ldap-alice-pw")
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        assert "taken" in body["error"]
        status, body = await login(hs, "alice", "local-alice-pw")
        assert (status, body["user_id"]) == (200, alice)
    # Nothing logged a password, right or wrong, nor the service account's.
    for secret in ("correct horse", "wrong horse", "ldap-alice-pw", "twin-pw", ADMIN_PW):
        assert secret not in caplog.text


async def test_ldap_direct_bind_and_unreachable_server(slapd: str) -> None:
    """Without bind_dn the user binds as uid=<name>,<base>; a server that is down is a
    refusal within the timeout, never a hang."""

    class Api:
        def register_password_auth_provider_callbacks(self, **kw: Any) -> None:
            self.checkers = kw["auth_checkers"]

    direct = ldap_config(slapd, base=f"ou=people,{BASE}")
    del direct["bind_dn"], direct["bind_password"]
    provider = LdapAuthProvider(direct, Api())  # type: ignore[arg-type]
    identity = await provider.check_password(
        "jdoe", "m.login.password", {"password": "correct horse"}
    )
    assert identity is not None
    assert (identity.provider, identity.external_id, identity.display_name) == (
        "ldap", "jdoe", "Jane Doe"
    )  # fmt: skip
    assert identity.emails == ("jane@example.org",)
    assert await provider.check_password("jdoe", "m.login.password", {"password": "x"}) is None
    # An RDN-breaking name is escaped, not interpreted.
    assert (
        await provider.check_password(
            "jdoe,ou=people", "m.login.password", {"password": "correct horse"}
        )
        is None
    )

    down = LdapAuthProvider(ldap_config(f"ldap://127.0.0.1:{_free_port()}", timeout=2), Api())  # type: ignore[arg-type]
    started = time.monotonic()
    assert (
        await down.check_password("jdoe", "m.login.password", {"password": "correct horse"}) is None
    )
    assert time.monotonic() - started < 10
    for bad, message in [
        (ldap_config("http://x"), "uri"),
        (ldap_config(slapd, tls_options={"ca_certs_file": "/no/such/ca.pem"}), "tls_options"),
        (ldap_config(slapd, active_directory=True), "active_directory"),
    ]:
        with pytest.raises(ValueError, match=message):
            LdapAuthProvider(bad, Api())  # type: ignore[arg-type]


async def test_sql_user_table_login(engine: str, database: Database, tmp_path: Path) -> None:
    """A forum's user table (PostgreSQL on the postgres run, SQLite on the sqlite run),
    bcrypt and argon2 hashes."""
    rows = [
        (7, "Bob", bcrypt.hashpw(b"bob-pw", bcrypt.gensalt(4)).decode(), "Bob the Builder", False),
        (8, "carol", argon2.PasswordHasher().hash("carol-pw"), None, False),
        (9, "dave", bcrypt.hashpw(b"dave-pw", bcrypt.gensalt(4)).decode(), None, True),
    ]
    create = (
        "CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT NOT NULL,"
        " password_hash TEXT NOT NULL, display_name TEXT, banned BOOLEAN NOT NULL)"
    )
    query = (
        "SELECT id, username, password_hash, display_name FROM users"
        " WHERE lower(username) = $1 AND NOT banned"
    )
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    async with fresh_database_url(engine, app_dir) as url:
        if engine == "postgres":
            conn = await asyncpg.connect(url)
            await conn.execute(create)
            await conn.executemany("INSERT INTO users VALUES ($1, $2, $3, $4, $5)", rows)
            await conn.close()
            dsn = url
        else:
            with sqlite3.connect(url) as lite:
                lite.execute(create)
                lite.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)", rows)
            lite.close()
            dsn = f"sqlite:///{url}"
        config = {"dsn": dsn, "query": query, "provider_id": "forum", "timeout": 5}
        modules = [{"module": "starling.modules.sql_users.SqlUserTableProvider", "config": config}]
        async with make_harness(database, tmp_path, modules=modules, **FAST_LOGINS) as hs:
            status, body = await login(hs, "bob", "bob-pw")
            assert status == 200, body
            bob = body["user_id"]
            assert bob == f"@bob:{hs.server_name}"
            _, profile = await hs.request("GET", f"{V3}/profile/{bob}/displayname")
            assert profile == {"displayname": "Bob the Builder"}
            status, body = await login(hs, "carol", "carol-pw")
            assert (status, body.get("user_id")) == (200, f"@carol:{hs.server_name}")
            for user, password in [("bob", "carol-pw"), ("dave", "dave-pw"), ("eve", "x")]:
                status, body = await login(hs, user, password)
                assert (status, body["errcode"]) == (403, "M_FORBIDDEN"), user
            links = await ExternalLoginStore(database).external_ids_of(bob)
            assert links == [("forum", "7")]
            if engine == "postgres":
                # Renamed in the forum: the same row, so the same Matrix account.
                conn = await asyncpg.connect(url)
                await conn.execute("UPDATE users SET username = 'robert' WHERE id = 7")
                await conn.close()
                status, body = await login(hs, "robert", "bob-pw")
                assert (status, body["user_id"]) == (200, bob)
