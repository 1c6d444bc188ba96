"""Sign-in through a CAS server (Synapse's `cas_config`; Apereo CAS protocol 2.0/3.0):
m.login.sso with the provider `cas` and the legacy m.login.cas.

1. The client is sent to `<server_url>/login?service=<ours>`, where ours is
   `<public base>/_matrix/client/r0/login/cas/ticket?redirectUrl=<the client's URL>` (the
   path Synapse gives CAS servers; for user-interactive auth `?session=<UIA session>`).
2. CAS sends the browser back there with a `ticket`; we ask
   `<server_url>/proxyValidate?ticket=...&service=<the same URL>` and read the user name and
   attributes from its XML answer.
3. The user name becomes a localpart as Synapse maps it (lower-cased, other characters
   `=xx`-escaped: `cas_user!` -> `cas_user=21`); the first sign-in links the CAS name to the
   account (an existing account of that localpart included, as Synapse does), and the
   client gets a login token (SsoService._to_client)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import aiohttp

from starling.config import CasConfig

logger = logging.getLogger(__name__)

TICKET_PATH = "_matrix/client/r0/login/cas/ticket"
HTTP_TIMEOUT = 10.0
MAX_RESPONSE = 64 * 1024
MAX_TICKET = 1024
_NS = "{http://www.yale.edu/tp/cas}"
# Synapse's map_username_to_mxid_localpart: what stays as it is ("=" is the escape).
_NOT_KEPT = re.compile(rb"[^a-z0-9_\-./+]")


class CasError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class CasUser:
    name: str
    attributes: dict[str, list[str]]


def map_username_to_localpart(username: str) -> str:
    """Synapse's mapping of an external user name to a localpart: lower-cased, every other
    byte not allowed in a localpart written as `=xx`, a leading `_` as `=5f`."""
    raw = _NOT_KEPT.sub(lambda m: b"=%02x" % m.group()[0], username.lower().encode("utf-8"))
    return re.sub(rb"^_", b"=5f", raw).decode("ascii")


def parse_service_response(body: bytes) -> CasUser:
    """The user of a CAS `serviceResponse` (authenticationSuccess), or CasError."""
    import xml.etree.ElementTree as ET  # here: ~0.8 MiB of idle memory without CAS

    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise CasError(502, "The CAS server's answer is not XML") from None
    success = root.find(f"{_NS}authenticationSuccess")
    if success is None:
        failure = root.find(f"{_NS}authenticationFailure")
        code = failure.get("code", "") if failure is not None else ""
        logger.info("CAS: ticket refused (%s)", code[:100])
        raise CasError(403, "The CAS server did not accept the sign-in")
    user = (success.findtext(f"{_NS}user") or "").strip()
    if not user:
        raise CasError(502, "The CAS server named no user")
    attributes: dict[str, list[str]] = {}
    found = success.find(f"{_NS}attributes")
    for child in list(found) if found is not None else []:
        if child.tag.startswith(_NS) and child.text is not None:
            attributes.setdefault(child.tag[len(_NS) :], []).append(child.text.strip())
    return CasUser(user, attributes)


class CasProvider:
    def __init__(
        self,
        config: CasConfig,
        client_base_url: str,
        http: Callable[[], aiohttp.ClientSession],
    ) -> None:
        self.config = config
        self.id = config.idp_id
        self._base = client_base_url.rstrip("/") + "/" + TICKET_PATH
        self._http = http

    def service_url(self, key: str, value: str) -> str:
        """Our ticket URL CAS sends the browser back to (`redirectUrl` or `session`)."""
        return f"{self._base}?{key}={quote(value, safe='')}"

    def login_url(self, service: str) -> str:
        return self.config.server_url.rstrip("/") + "/login?service=" + quote(service, safe="")

    async def validate(self, ticket: str, service: str) -> CasUser:
        if not ticket or len(ticket) > MAX_TICKET:
            raise CasError(400, "The sign-in came back without a valid ticket")
        url = self.config.server_url.rstrip("/") + "/proxyValidate"
        try:
            async with self._http().get(
                url,
                params={"ticket": ticket, "service": service},
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT),
            ) as resp:
                body = await resp.content.read(MAX_RESPONSE + 1)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as e:
            logger.info("CAS: %s unreachable: %s", url, e)
            raise CasError(502, "The CAS server could not be reached") from None
        if status != 200 or len(body) > MAX_RESPONSE:
            raise CasError(502, f"The CAS server answered {status}")
        user = parse_service_response(body)
        for name, wanted in self.config.required_attributes.items():
            values = user.attributes.get(name)
            if not values or (wanted is not None and wanted not in values):
                raise CasError(403, "You are not allowed to sign in here")
        return user

    def display_name(self, user: CasUser) -> str | None:
        attr = self.config.displayname_attribute
        values = user.attributes.get(attr) if attr else None
        return values[0] if values else None
