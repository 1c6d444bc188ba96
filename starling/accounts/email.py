"""Email addresses on accounts, validated by this server (spec: client-server-api
"Adding Account Administrative Contact Information", `*/email/requestToken`; Synapse's
`email` section): the server mails a link with a one-time token; following it validates
the session; a validated session then adds the address to an account (POST
/account/3pid/add, or the deprecated POST /account/3pid), or completes the
m.login.email.identity stage of a registration. An address belongs to one account at
most, and logs in with the account's password (m.login.password with medium/address or
an m.id.thirdparty identifier).

Only `email` is handled here: phone numbers (msisdn) need an SMS sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from email.message import EmailMessage
from typing import Any
from urllib.parse import urlencode

from starling.accounts.uia import StageFailed
from starling.config import Config, EmailConfig, RateLimit, parse_duration
from starling.errors import MatrixError, bad_json, missing_param
from starling.ratelimit import TokenBuckets
from starling.storage.accounts import UIAuthSession
from starling.storage.threepid_validation import ThreepidValidationStore, ValidationSession

logger = logging.getLogger(__name__)

EMAIL_IDENTITY = "m.login.email.identity"
SUBMIT_PATH = "_synapse/client/email/submit_token"
# spec: client_secret is 1-255 of [0-9a-zA-Z.=_-]
_CLIENT_SECRET = re.compile(r"[0-9a-zA-Z.=_-]{1,255}")
_SID = re.compile(r"[0-9a-zA-Z.=_-]{1,255}")
MAX_ADDRESS = 254
MAX_SEND_ATTEMPT = 2**31
# A mail per address every 10 s at most, in bursts of 3 (a mail bomb is this server's).
SEND_LIMIT = RateLimit(per_second=0.1, burst_count=3)
SMTP_TIMEOUT = 10.0

Mailer = Callable[[str, str, str], Awaitable[None]]


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def normalise_email(address: str) -> str:
    """Addresses are compared lower-cased and trimmed (as Synapse's canonicalisation)."""
    return address.strip().lower()


def smtp_mailer(config: EmailConfig) -> Mailer:
    """Send a plain-text mail through the configured SMTP server (in a thread)."""

    def send(to: str, subject: str, text: str) -> None:
        import smtplib  # here: ~0.3 MiB of idle memory on servers that send no mail

        message = EmailMessage()
        message["From"] = config.notif_from
        message["To"] = to
        message["Subject"] = subject
        message.set_content(text)
        smtp = smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=SMTP_TIMEOUT)
        try:
            if config.require_transport_security:
                smtp.starttls(context=ssl.create_default_context())
            if config.smtp_user:
                smtp.login(config.smtp_user, config.smtp_pass or "")
            smtp.send_message(message)
            # The mail is accepted: a server that answers QUIT oddly changes nothing.
            with contextlib.suppress(smtplib.SMTPException, OSError):
                smtp.quit()
        finally:
            smtp.close()

    async def mail(to: str, subject: str, text: str) -> None:
        await asyncio.to_thread(send, to, subject, text)

    return mail


class EmailValidation:
    def __init__(
        self,
        config: Config,
        store: ThreepidValidationStore,
        mailer: Mailer | None = None,
        *,
        buckets: TokenBuckets | None = None,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._config = config
        self._email = config.email
        self._store = store
        self._mailer = mailer or (smtp_mailer(config.email) if config.email else None)
        self._buckets = buckets or TokenBuckets()
        self._clock_ms = clock_ms
        self._lifetime_ms = (
            parse_duration(config.email.validation_token_lifetime) if config.email else 0
        )

    @property
    def enabled(self) -> bool:
        return self._email is not None and self._mailer is not None

    def _require(self) -> None:
        if not self.enabled:
            raise MatrixError(
                400, "M_THREEPID_DENIED", "This server does not send email: no email addresses"
            )

    # --- requestToken -----------------------------------------------------------------

    async def request_token(self, body: Mapping[str, Any], *, registering: bool) -> dict[str, Any]:
        """POST /register/email/requestToken (`registering`) or
        /account/3pid/email/requestToken: mail a validation link; {sid, submit_url}."""
        self._require()
        client_secret = _client_secret(body.get("client_secret"))
        raw = body.get("email")
        if not isinstance(raw, str):
            raise missing_param("Missing 'email'")
        address = normalise_email(raw)
        if not 3 <= len(address) <= MAX_ADDRESS or "@" not in address[1:-1] or "\n" in address:
            raise MatrixError(400, "M_INVALID_PARAM", "'email' is not an email address")
        attempt = body.get("send_attempt")
        if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 0:
            raise bad_json("'send_attempt' must be a non-negative integer")
        attempt = min(attempt, MAX_SEND_ATTEMPT)
        if await self._store.address_owner("email", address) is not None:
            # Registering with it, or adding it again: either way it is taken.
            raise MatrixError(400, "M_THREEPID_IN_USE", "This email address is already in use")
        now = self._clock_ms()
        existing = await self._store.find(client_secret, "email", address)
        if existing is not None and existing.created_ts + self._lifetime_ms < now:
            existing = None
        if existing is not None and attempt <= existing.last_send_attempt:
            return self._answer(existing.session_id)  # a retry: the mail went already
        await self._buckets.take("email_request", address, SEND_LIMIT)
        token = secrets.token_urlsafe(24)
        if existing is None:
            sid = secrets.token_urlsafe(18)
            await self._store.delete_older_than(now - 24 * 3600 * 1000)
            await self._store.create(
                ValidationSession(
                    sid, "email", address, client_secret, attempt, _hash(token), now, None
                )
            )
        else:
            sid = existing.session_id
            await self._store.resend(sid, attempt, _hash(token))
        link = (
            self._base()
            + SUBMIT_PATH
            + "?"
            + urlencode({"token": token, "client_secret": client_secret, "sid": sid})
        )
        assert self._email is not None and self._mailer is not None
        text = (
            f"Someone asked to use this email address on {self._config.server_name}"
            f" ({self._email.app_name}). To confirm it is you, open this link:\n\n{link}\n\n"
            "If it was not you, ignore this mail.\n"
        )
        try:
            await self._mailer(
                address, f"[{self._email.app_name}] Confirm your email address", text
            )
        except OSError as e:  # smtplib.SMTPException included
            logger.warning("email: sending to %s failed: %s", address, e)
            raise MatrixError(500, "M_UNKNOWN", "The validation mail could not be sent") from None
        return self._answer(sid)

    def _base(self) -> str:
        return self._config.client_base_url.rstrip("/") + "/"

    def _answer(self, sid: str) -> dict[str, Any]:
        return {"sid": sid, "submit_url": self._base() + SUBMIT_PATH}

    # --- the link -----------------------------------------------------------------------

    async def submit_token(self, sid: Any, client_secret: Any, token: Any) -> bool:
        """The emailed link (GET) or the client's submit_url (POST): True once validated."""
        if not isinstance(sid, str) or not _SID.fullmatch(sid):
            return False
        if not isinstance(client_secret, str) or not isinstance(token, str) or len(token) > 256:
            return False
        session = await self._store.get(sid)
        if session is None or not hmac.compare_digest(session.client_secret, client_secret):
            return False
        if not hmac.compare_digest(session.token_hash, _hash(token)):
            return False
        if session.created_ts + self._lifetime_ms < self._clock_ms():
            return False
        await self._store.mark_validated(sid, self._clock_ms())
        return True

    # --- using a validated session ---------------------------------------------------------

    async def validated(self, creds: Any) -> ValidationSession:
        """The validated session named by {sid, client_secret}, or M_THREEPID_AUTH_FAILED."""
        if not isinstance(creds, Mapping):
            raise bad_json("The third-party credentials must be an object")
        sid, client_secret = creds.get("sid"), creds.get("client_secret")
        if not isinstance(sid, str) or not isinstance(client_secret, str):
            raise missing_param("Missing 'sid' or 'client_secret'")
        session = await self._store.get(sid) if _SID.fullmatch(sid) else None
        if (
            session is None
            or not hmac.compare_digest(session.client_secret, client_secret)
            or session.validated_at is None
            or session.created_ts + self._lifetime_ms < self._clock_ms()
        ):
            raise MatrixError(
                400,
                "M_THREEPID_AUTH_FAILED",
                "No validated email session found for these credentials",
            )
        return session

    async def add_to_account(self, user_id: str, creds: Any) -> None:
        """POST /account/3pid/add (or the deprecated /account/3pid)."""
        self._require()
        session = await self.validated(creds)
        assert session.validated_at is not None
        if not await self._store.add_to_account(
            user_id, session.medium, session.address, session.validated_at, self._clock_ms()
        ):
            raise MatrixError(400, "M_THREEPID_IN_USE", "This email address is already in use")

    async def check_registration_stage(
        self, session: UIAuthSession, auth: Mapping[str, Any]
    ) -> None:
        """The m.login.email.identity stage of a registration."""
        creds = auth.get("threepid_creds", auth.get("threepidCreds"))
        try:
            validated = await self.validated(creds)
        except MatrixError as e:
            raise StageFailed(e.errcode, e.error) from None
        if await self._store.address_owner(validated.medium, validated.address) is not None:
            raise StageFailed("M_THREEPID_IN_USE", "This email address is already in use")
        await self._store.attach_uia(validated.session_id, session.session_id)

    async def after_registration(self, uia_session: str, user_id: str) -> None:
        """The addresses a registration validated become the new account's."""
        now = self._clock_ms()
        for medium, address in await self._store.validated_for_uia(uia_session):
            if not await self._store.add_to_account(user_id, medium, address, now, now):
                logger.info("email: %s was taken meanwhile; not added to %s", address, user_id)

    async def user_for_address(self, medium: str, address: str) -> str | None:
        if medium == "email":
            address = normalise_email(address)
        return await self._store.address_owner(medium, address)


def _client_secret(value: Any) -> str:
    if not isinstance(value, str):
        raise missing_param("Missing 'client_secret'")
    if not _CLIENT_SECRET.fullmatch(value):
        raise MatrixError(
            400, "M_INVALID_PARAM", "'client_secret' must be 1-255 of [0-9a-zA-Z.=_-]"
        )
    return value
