"""LDAP login, configured as Synapse's LDAP module (matrix-synapse-ldap3) is:

    modules:
      - module: ldap_auth_provider.LdapAuthProviderModule   # or starling.modules.ldap.LdapAuthProvider
        config:
          enabled: true
          uri: "ldap://ldap.example.com:389"      # or ldaps://; a list tries each in turn
          start_tls: true
          base: "ou=users,dc=example,dc=com"
          attributes: {uid: "uid", mail: "mail", name: "cn"}
          # Search mode (recommended): a service account finds the user's entry first.
          bind_dn: "cn=matrix,dc=example,dc=com"
          bind_password: "..."
          filter: "(objectClass=inetOrgPerson)"
          tls_options: {validate: true, ca_certs_file: /etc/ssl/certs/ldap-ca.pem}
          # Starling's additions: timeouts (seconds), and whether a first login may take
          # over an existing account of the same name (migrations from Synapse).
          timeout: 10
          allow_existing_users: false

A ``m.login.password`` login is checked here before the local password database
(``password_config.localdb_enabled: false`` makes it the only check). Without ``bind_dn``
the user binds directly as ``<uid attribute>=<name>,<base>``; with it, the service account
searches ``(&(<uid>=<name>)<filter>)`` under ``base``, exactly one entry must match, and
the user then binds as that entry. The name is escaped for both (no LDAP injection); an
empty password is refused before anything is sent (an LDAP server takes an empty
password as an anonymous bind, which "succeeds"). The entry's uid attribute is the
identity (provider ``ldap``): a first login creates the account with it as localpart and
the name attribute as display name. ldap3 is synchronous: each check runs in a thread,
with connect and receive timeouts. Passwords are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPCommunicationError, LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from starling.accounts.external import ExternalIdentity
from starling.modules.api import ModuleApi

logger = logging.getLogger(__name__)

PROVIDER = "ldap"
# ldap3.Tls's arguments, which Synapse's tls_options passes on (validate: a boolean).
TLS_OPTIONS = {
    "validate", "local_private_key_file", "local_certificate_file", "local_private_key_password",
    "version", "ca_certs_file", "valid_names", "ca_certs_path", "ca_certs_data", "ciphers", "sni",
}  # fmt: skip


@dataclass(frozen=True)
class LdapConfig:
    uris: tuple[str, ...]
    start_tls: bool
    base: str
    uid_attr: str
    mail_attr: str | None
    name_attr: str | None
    bind_dn: str | None
    bind_password: str | None
    filter: str | None
    timeout: float
    tls: tuple[tuple[str, Any], ...]  # ldap3.Tls arguments (Synapse's tls_options)
    allow_existing_users: bool

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> LdapConfig:
        known = {
            "enabled", "uri", "start_tls", "base", "attributes", "bind_dn", "bind_password",
            "filter", "timeout", "tls_options", "allow_existing_users", "active_directory",
        }  # fmt: skip
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; allowed: {sorted(known)}")
        if config.get("active_directory"):
            raise ValueError("'active_directory' (UPN logins) is not supported; use search mode")
        uri = config.get("uri")
        uris = [uri] if isinstance(uri, str) else uri
        if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
            raise ValueError("'uri': an ldap:// or ldaps:// URI (or a list of them)")
        for u in uris:
            if not u.startswith(("ldap://", "ldaps://")):
                raise ValueError(f"'uri': {u!r} is not ldap:// or ldaps://")
        base = config.get("base")
        if not isinstance(base, str) or not base:
            raise ValueError("'base': the DN users are under")
        attributes = config.get("attributes") or {}
        if not isinstance(attributes, dict) or not isinstance(attributes.get("uid"), str):
            raise ValueError("'attributes': a mapping with at least 'uid' (and 'mail', 'name')")
        bind_dn = config.get("bind_dn")
        bind_password = config.get("bind_password")
        if (bind_dn is None) != (bind_password is None):
            raise ValueError("'bind_dn' and 'bind_password' go together")
        filt = config.get("filter")
        if filt is not None and not (isinstance(filt, str) and filt.startswith("(")):
            raise ValueError("'filter': an LDAP filter such as (objectClass=person)")
        timeout = config.get("timeout", 10)
        if not isinstance(timeout, int | float) or not 0 < timeout <= 120:
            raise ValueError("'timeout': seconds, more than 0 and at most 120")
        tls_options = config.get("tls_options") or {}
        if not isinstance(tls_options, dict) or set(tls_options) - TLS_OPTIONS:
            raise ValueError(f"'tls_options': a mapping of {sorted(TLS_OPTIONS)}")
        tls = {k: v for k, v in tls_options.items() if k != "validate"}
        tls["validate"] = (
            ssl.CERT_NONE if tls_options.get("validate") is False else ssl.CERT_REQUIRED
        )
        return cls(
            uris=tuple(uris),
            start_tls=bool(config.get("start_tls", False)),
            base=base,
            uid_attr=attributes["uid"],
            mail_attr=attributes.get("mail"),
            name_attr=attributes.get("name"),
            bind_dn=bind_dn,
            bind_password=bind_password,
            filter=filt,
            timeout=float(timeout),
            tls=tuple(sorted(tls.items())),
            allow_existing_users=bool(config.get("allow_existing_users", False)),
        )


def _first(entry: Any, attr: str | None) -> str | None:
    if attr is None or attr not in entry:
        return None
    values = entry[attr].values
    return str(values[0]) if values else None


class LdapAuthProvider:
    """See the module docstring."""

    def __init__(self, config: Mapping[str, Any], api: ModuleApi) -> None:
        self._enabled = bool(config.get("enabled", True))
        self.config = LdapConfig.parse(config)
        try:
            # Built once: ldap3 reads the certificate files here, so a wrong path stops
            # the start instead of failing every login.
            self._tls = ldap3.Tls(**dict(self.config.tls))
        except LDAPException as e:
            raise ValueError(f"'tls_options': {e}") from None
        if not self._enabled:
            return
        api.register_password_auth_provider_callbacks(
            auth_checkers={("m.login.password", ("password",)): self.check_password}
        )

    async def check_password(
        self, username: str, login_type: str, fields: Mapping[str, Any]
    ) -> ExternalIdentity | None:
        password = fields.get("password")
        if not isinstance(password, str) or not password or not username:
            return None
        return await asyncio.to_thread(self._check, username, password)

    def _connection(self, user: str | None, password: str | None) -> ldap3.Connection:
        """A bound connection to the first URI that answers, or LDAPException (a wrong
        password included). Each URI in turn, once, each within the timeout (not
        ldap3's ServerPool, which waits between rounds)."""
        tls = self._tls
        error: LDAPException | None = None
        for uri in self.config.uris:
            server = ldap3.Server(
                uri, connect_timeout=self.config.timeout, tls=tls, get_info=ldap3.NONE
            )
            conn = ldap3.Connection(
                server,
                user=user,
                password=password,
                authentication=ldap3.SIMPLE if user is not None else ldap3.ANONYMOUS,
                # ldap3 packs it into a socket option as a whole number.
                receive_timeout=max(1, int(self.config.timeout)),
                raise_exceptions=True,
                read_only=True,
            )
            try:
                conn.open()
            except LDAPCommunicationError as e:
                error = e
                continue  # unreachable: the next URI
            try:
                if self.config.start_tls:
                    conn.start_tls()
                conn.bind()
            except BaseException:
                conn.unbind()
                raise
            return conn
        assert error is not None
        raise error

    def _check(self, username: str, password: str) -> ExternalIdentity | None:
        cfg = self.config
        attrs = [a for a in (cfg.uid_attr, cfg.mail_attr, cfg.name_attr) if a]
        uid_filter = f"({cfg.uid_attr}={escape_filter_chars(username)})"
        search_filter = f"(&{uid_filter}{cfg.filter})" if cfg.filter else uid_filter
        try:
            if cfg.bind_dn is not None:
                with self._connection(cfg.bind_dn, cfg.bind_password) as service:
                    service.search(cfg.base, search_filter, ldap3.SUBTREE, attributes=attrs)
                    entries = list(service.entries)
                if len(entries) != 1:
                    # None, or an ambiguous name: never guess who it is.
                    return None
                dn = entries[0].entry_dn
                with self._connection(dn, password) as conn:
                    entry = entries[0]
            else:
                dn = f"{cfg.uid_attr}={escape_rdn(username)},{cfg.base}"
                with self._connection(dn, password) as conn:
                    conn.search(dn, search_filter, ldap3.BASE, attributes=attrs)
                    if len(conn.entries) != 1:
                        return None
                    entry = conn.entries[0]
        except LDAPException as e:
            # A wrong password is an LDAPInvalidCredentialsResult; the class name says
            # enough, and never carries the password.
            logger.info("LDAP login of %r refused: %s", username, type(e).__name__)
            return None
        uid = _first(entry, cfg.uid_attr)
        if not uid:
            return None
        mail = _first(entry, cfg.mail_attr)
        return ExternalIdentity(
            provider=PROVIDER,
            external_id=uid.lower(),
            localpart=uid,
            display_name=_first(entry, cfg.name_attr),
            emails=(mail,) if mail else (),
            allow_existing_user=cfg.allow_existing_users,
        )
