"""Accounts of people who sign in through an external system: a password provider (LDAP,
an application's SQL user table, any module's ``auth_checkers``) or an OpenID Connect
provider (`oidc.py`).

Who is who is decided only by the provider's stable subject — ``(provider, external_id)``:
an LDAP entry's uid, a user table's key, an ID token's ``sub`` — linked to one local
account in ``user_external_ids`` on first login and followed ever after. A display name
or an e-mail address never finds an account. On first login an account is created with
the wanted localpart; an *existing* account with that localpart, not linked to this
identity, is never taken over unless the provider's configuration says
``allow_existing_users: true`` (a server migrating from Synapse's LDAP module, say), and
then only if that account has no link to the same provider yet. OpenID Connect providers
may ``dedupe``: a taken localpart becomes ``alice1``, ``alice2``..., as Synapse does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starling.appservice.registry import AppServiceRegistry
from starling.errors import MatrixError, forbidden
from starling.protocol.identifiers import IdentifierError, parse_user_id
from starling.storage.accounts import AccountStore, UserExists
from starling.storage.external_login import ExternalLoginStore
from starling.storage.profiles import ProfileStore

logger = logging.getLogger(__name__)

MAX_DEDUPE_ATTEMPTS = 10
MAX_DISPLAY_NAME = 256


@dataclass(frozen=True, slots=True)
class ExternalIdentity:
    """Who an external system says is signing in."""

    provider: str  # e.g. "ldap", "sql", "oidc-google": the namespace of external_id
    external_id: str  # the provider's stable subject; the only key to the account
    localpart: str  # the localpart wanted for a new account (first login only)
    display_name: str | None = None  # set on the new account only
    emails: tuple[str, ...] = ()  # informative; never used to find an account
    allow_existing_user: bool = False  # may link an existing, unlinked account
    dedupe: bool = False  # a taken localpart gets a number appended


def clean_localpart(raw: str) -> str:
    """A provider's name for someone as a Matrix localpart: lower-cased, characters outside
    the spec's set replaced by ``_`` (as Synapse's mapping does), never empty."""
    allowed = set("abcdefghijklmnopqrstuvwxyz0123456789._=-/+")
    out = "".join(c if c in allowed else "_" for c in raw.strip().lower())
    return out.strip("_") or "user"


class ExternalAccounts:
    def __init__(
        self,
        server_name: str,
        accounts: AccountStore,
        profiles: ProfileStore,
        links: ExternalLoginStore,
        app_services: AppServiceRegistry | None = None,
        set_threepids: Callable[[str, list[tuple[str, str]], int], Awaitable[str | None]]
        | None = None,
    ) -> None:
        # Records a new account's e-mail addresses as its third-party IDs (admin store);
        # an address another account has is left out, never moved.
        self._set_threepids = set_threepids
        self._server_name = server_name
        self._accounts = accounts
        self._profiles = profiles
        self._links = links
        self._app_services = app_services or AppServiceRegistry()

    async def resolve(self, identity: ExternalIdentity) -> str:
        """The local user of `identity`, created (or, when allowed, linked) on first login."""
        if not identity.provider or not identity.external_id:
            raise forbidden("The identity provider gave no subject")
        linked = await self._links.user_for_external_id(identity.provider, identity.external_id)
        if linked is not None:
            return linked
        base = clean_localpart(identity.localpart)
        attempts = MAX_DEDUPE_ATTEMPTS if identity.dedupe else 1
        for attempt in range(attempts):
            localpart = base if attempt == 0 else f"{base}{attempt}"
            user_id = f"@{localpart}:{self._server_name}"
            try:
                parse_user_id(user_id)
            except IdentifierError:
                raise forbidden("The identity provider's user name is not usable") from None
            if localpart.isdigit() or self._app_services.user_reserved(user_id):
                continue
            if await self._accounts.user_exists(user_id):
                if attempt == 0 and identity.allow_existing_user:
                    if await self._link_existing(identity, user_id):
                        return user_id
                continue
            try:
                await self._accounts.create_user(user_id, None)
            except UserExists:
                continue
            display = (identity.display_name or localpart)[:MAX_DISPLAY_NAME]
            await self._profiles.create_profile(user_id, display)
            if not await self._links.link_external_id(
                identity.provider, identity.external_id, user_id
            ):
                # A concurrent first login of the same identity linked it first.
                winner = await self._links.user_for_external_id(
                    identity.provider, identity.external_id
                )
                if winner is None:
                    raise MatrixError(500, "M_UNKNOWN", "Could not link the account")
                return winner
            await self._record_emails(user_id, identity.emails)
            logger.info("%s: a first login created %s", identity.provider, user_id)
            return user_id
        raise forbidden(
            f"The user name {base!r} is taken on this server by another account; "
            "ask an administrator"
        )

    async def _record_emails(self, user_id: str, emails: tuple[str, ...]) -> None:
        if self._set_threepids is None:
            return
        now = int(time.time() * 1000)
        wanted = sorted({e.strip().lower() for e in emails if "@" in e and len(e) <= 254})
        while wanted:
            taken = await self._set_threepids(user_id, [("email", e) for e in wanted], now)
            if taken is None:
                return
            wanted.remove(taken)

    async def _link_existing(self, identity: ExternalIdentity, user_id: str) -> bool:
        record = await self._accounts.get_user(user_id)
        if record is None or record.deactivated:
            return False
        if any(p == identity.provider for p, _ in await self._links.external_ids_of(user_id)):
            return False  # already someone else's at this provider
        return await self._links.link_external_id(identity.provider, identity.external_id, user_id)

    async def external_ids(self, user_id: str) -> list[tuple[str, str]]:
        return await self._links.external_ids_of(user_id)
