"""Single sign-on with OpenID Connect providers (config ``oidc_providers``, Synapse's
keys), for ``m.login.sso`` (spec: client-server-api "Client login via SSO"):

1. ``GET /login/sso/redirect[/{idpId}]?redirectUrl=<client>``: a new SSO session — a
   random ``state``, ``nonce`` and PKCE verifier (S256), stored with the client's URL
   and the hash of a random cookie set on the browser — then a redirect to the
   provider's authorization endpoint (authorization code flow).
2. The provider sends the browser to ``<public_baseurl>/_synapse/client/oidc/callback``
   (Synapse's path, so provider registrations move over unchanged) with ``code`` and
   ``state``. The state is taken (good once, for 10 minutes) and must come with the same
   browser's cookie (login CSRF); the code is exchanged at the token endpoint with the
   verifier and the client's credentials; the ID token's signature is checked against
   the provider's JWKS (asymmetric algorithms only: no ``none``, no HMAC), and its
   ``iss``, ``aud`` (and ``azp``), ``exp``, ``iat`` and ``nonce``.
3. The subject (``user_mapping_provider.config.subject_claim``, ``sub`` by default) is
   the identity (provider ``oidc-<idp_id>``, `external.py`): the same subject is always
   the same account; a new one gets the localpart of ``localpart_template`` (a taken one
   gets a number appended — never someone else's account, whatever the claims say) and
   the display name of ``display_name_template``.
4. A one-use ``loginToken`` (2 minutes) is handed to the client's URL, which logs in
   with ``m.login.token``. A URL under ``sso.client_whitelist`` is redirected to at once;
   any other gets a page naming where the login goes and asking to continue, so a link
   crafted by someone else cannot silently carry a login token away.

Outbound calls (discovery, JWKS, token, userinfo) have a 10-second total timeout and
read at most 1 MiB. Client secrets, codes and tokens are never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import orjson

from starling.accounts.cas import CasError, CasProvider, map_username_to_localpart
from starling.accounts.external import ExternalIdentity
from starling.config import CasConfig, Config, OidcProvider, RateLimit
from starling.errors import MatrixError
from starling.ratelimit import TokenBuckets
from starling.storage.external_login import ExternalLoginStore, SsoSession, token_hash

if TYPE_CHECKING:
    # joserfc (and cryptography under it) is imported on the first ID token: OIDC is off
    # by default and the import costs ~10 MiB of idle memory.
    from joserfc.jwk import KeySet

logger = logging.getLogger(__name__)

CALLBACK_PATH = "/_synapse/client/oidc/callback"
COOKIE = "starling_oidc_session"
SESSION_LIFETIME_MS = 10 * 60 * 1000
HTTP_TIMEOUT = 10.0
MAX_RESPONSE = 1024 * 1024
LEEWAY_S = 120
# Asymmetric signatures only: "none" and HMAC (keyed with a secret the client also
# holds) are refused, so nobody but the provider can make an ID token we accept.
ID_TOKEN_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
                       "ES384", "ES512", "EdDSA"]  # fmt: skip
JWKS_REFRESH_S = 60
MAX_REDIRECT_URL = 2048
# Each redirect stores an SSO session: per client address, 20 at once then one a second.
SSO_START_LIMIT = RateLimit(per_second=1.0, burst_count=20)


class SsoError(Exception):
    """A failed SSO step: shown to the browser as a page (never a stack trace)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class SsoRedirect:
    """Where to send the browser: a plain redirect, or a page to show (confirmation)."""

    location: str | None = None
    page: str | None = None
    cookie: str | None = None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def auth_provider_id(provider: OidcProvider) -> str:
    """Synapse's naming: "oidc" stays, anything else gets "oidc-" in front."""
    idp = provider.idp_id
    return idp if idp == "oidc" or idp.startswith("oidc-") else f"oidc-{idp}"


_TEMPLATE = re.compile(r"\{\{\s*user\.([A-Za-z0-9_.:-]+)\s*(\|\s*lower\s*)?\}\}")


def render(template: str | None, claims: Mapping[str, Any]) -> str | None:
    """A Jinja-like ``{{ user.claim }}`` / ``{{ user.claim | lower }}`` template over the
    claims; None when a claim it names is missing or not text."""
    if template is None:
        return None
    missing = False

    def sub(m: re.Match[str]) -> str:
        nonlocal missing
        value = claims.get(m.group(1))
        if not isinstance(value, str | int) or isinstance(value, bool):
            missing = True
            return ""
        text = str(value)
        return text.lower() if m.group(2) else text

    out = _TEMPLATE.sub(sub, template)
    return None if missing or not out.strip() else out


class _Provider:
    """One provider's endpoints and keys (fetched on first use, JWKS refreshed when an
    unknown key ID turns up, at most once a minute)."""

    def __init__(self, config: OidcProvider, http: Callable[[], aiohttp.ClientSession]) -> None:
        self.config = config
        self.id = auth_provider_id(config)
        self._http = http
        # Per process, by design: the provider's own documents (each worker fetches its
        # own copy). The SSO sessions (state, nonce, verifier) are in the database, so the
        # callback may land on any worker (tests/cluster).
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._keys_at = 0.0

    async def _get_json(self, url: str, **kwargs: Any) -> dict[str, Any]:
        return await self._request("GET", url, **kwargs)

    async def _request(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            async with self._http().request(
                method,
                url,
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT),
                allow_redirects=False,
                **kwargs,
            ) as resp:
                body = await resp.content.read(MAX_RESPONSE + 1)
                if len(body) > MAX_RESPONSE:
                    raise SsoError(502, "The identity provider's answer is too large")
                if resp.status != 200:
                    logger.warning("OIDC %s: %s %s answered %d", self.id, method, url, resp.status)
                    raise SsoError(502, "The identity provider refused the request")
                value = orjson.loads(body)
        except (aiohttp.ClientError, TimeoutError, OSError, orjson.JSONDecodeError) as e:
            logger.warning("OIDC %s: %s %s failed: %s", self.id, method, url, type(e).__name__)
            raise SsoError(502, "The identity provider could not be reached") from None
        if not isinstance(value, dict):
            raise SsoError(502, "The identity provider's answer is not a JSON object")
        return value

    async def metadata(self) -> dict[str, Any]:
        if self._metadata is not None:
            return self._metadata
        cfg = self.config
        meta: dict[str, Any] = {}
        if cfg.discover:
            url = cfg.issuer.rstrip("/") + "/.well-known/openid-configuration"
            meta = await self._get_json(url)
            if meta.get("issuer") != cfg.issuer:
                # OpenID Connect Discovery §4.3: the document must name the same issuer.
                raise SsoError(502, "The identity provider's discovery names another issuer")
        for key in ("authorization_endpoint", "token_endpoint", "userinfo_endpoint", "jwks_uri"):
            configured = getattr(cfg, key)
            if configured:
                meta[key] = configured
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            endpoint = meta.get(key)
            if not isinstance(endpoint, str) or urlsplit(endpoint).scheme not in ("http", "https"):
                raise SsoError(502, f"The identity provider has no usable {key}")
        self._metadata = meta
        return meta

    async def keys(self, refresh: bool = False) -> KeySet:
        now = time.monotonic()
        if self._keys is not None and not (refresh and now - self._keys_at > JWKS_REFRESH_S):
            return self._keys
        from joserfc.errors import JoseError
        from joserfc.jwk import KeySet

        jwks = await self._get_json((await self.metadata())["jwks_uri"])
        try:
            self._keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError, KeyError):
            raise SsoError(502, "The identity provider's keys are unusable") from None
        self._keys_at = now
        return self._keys

    async def verify_id_token(self, id_token: str, nonce: str, now: float) -> dict[str, Any]:
        """The ID token's claims, once its signature and claims check out."""
        from joserfc import jwt
        from joserfc.errors import JoseError

        cfg = self.config
        try:
            try:
                token = jwt.decode(id_token, await self.keys(), algorithms=ID_TOKEN_ALGORITHMS)
            except JoseError as e:
                if "kid" not in str(e).lower():
                    raise
                # A key the provider rotated in since we fetched the set.
                token = jwt.decode(
                    id_token, await self.keys(refresh=True), algorithms=ID_TOKEN_ALGORITHMS
                )
        except (JoseError, ValueError, TypeError):
            raise SsoError(403, "The identity provider's ID token is not validly signed") from None
        claims = dict(token.claims)
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        checks = [
            (claims.get("iss") == cfg.issuer, "issuer"),
            (cfg.client_id in audiences, "audience"),
            (len(audiences) == 1 or claims.get("azp") == cfg.client_id, "authorized party"),
            (_number(claims.get("exp")) > now - LEEWAY_S, "expiry"),
            (_number(claims.get("iat")) <= now + LEEWAY_S, "issue time"),
            (
                isinstance(claims.get("nonce"), str)
                and hmac.compare_digest(str(claims["nonce"]), nonce),
                "nonce",
            ),
        ]
        for ok, what in checks:
            if not ok:
                logger.warning("OIDC %s: ID token refused (%s)", self.id, what)
                raise SsoError(403, f"The ID token's {what} is wrong")
        return claims

    async def exchange(self, code: str, verifier: str, redirect_uri: str) -> dict[str, Any]:
        cfg = self.config
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        headers = {"Accept": "application/json"}
        if cfg.client_auth_method == "client_secret_basic":
            # RFC 6749 §2.3.1: form-encoded id and secret in HTTP Basic.
            from urllib.parse import quote

            pair = f"{quote(cfg.client_id, safe='')}:{quote(cfg.client_secret or '', safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form["client_id"] = cfg.client_id
            if cfg.client_auth_method == "client_secret_post":
                form["client_secret"] = cfg.client_secret or ""
        meta = await self.metadata()
        return await self._request("POST", meta["token_endpoint"], data=form, headers=headers)

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        url = (await self.metadata()).get("userinfo_endpoint")
        if not isinstance(url, str):
            raise SsoError(502, "The identity provider has no userinfo endpoint")
        return await self._get_json(url, headers={"Authorization": f"Bearer {access_token}"})


def _number(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return float("nan")  # every comparison with NaN is False: a missing claim fails


class SsoService:
    """The SSO flow for every configured provider (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        store: ExternalLoginStore,
        login_external: Callable[[ExternalIdentity], Awaitable[str]],
        *,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        buckets: TokenBuckets | None = None,
    ) -> None:
        self._config = config
        self._store = store
        self._login_external = login_external
        self._clock_ms = clock_ms
        self._providers = {
            auth_provider_id(p): _Provider(p, self._http) for p in config.oidc_providers
        }
        self._session: aiohttp.ClientSession | None = None
        self._verify = not config.use_insecure_ssl_client_just_for_testing_do_not_use
        # CAS (accounts/cas.py): one more provider for m.login.sso, and m.login.cas.
        self.cas = (
            CasProvider(config.cas_config, config.client_base_url, self._http)
            if config.cas_config.enabled
            else None
        )
        # Shared by the processes with workers (starling/ratelimit.py).
        self._buckets = buckets or TokenBuckets()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._verify, limit=20)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def providers(self) -> list[tuple[str, str]]:
        out = [(p.id, p.config.idp_name) for p in self._providers.values()]
        if self.cas is not None:
            out.append((self.cas.id, self.cas.config.idp_name))
        return out

    def identity_providers(self) -> list[dict[str, str]]:
        """GET /login's ``identity_providers`` (spec: "m.login.sso")."""
        configs: list[OidcProvider | CasConfig] = [p.config for p in self._providers.values()]
        ids = [p.id for p in self._providers.values()]
        if self.cas is not None:
            configs.append(self.cas.config)
            ids.append(self.cas.id)
        out = []
        for idp_id, config in zip(ids, configs, strict=True):
            entry = {"id": idp_id, "name": config.idp_name}
            if config.idp_icon:
                entry["icon"] = config.idp_icon
            if config.idp_brand:
                entry["brand"] = config.idp_brand
            out.append(entry)
        return out

    @property
    def callback_url(self) -> str:
        return self._config.client_base_url.rstrip("/") + CALLBACK_PATH

    def picker_page(self, redirect_url: str) -> str:
        """Several providers and the client named none: let the user choose."""
        _check_redirect_url(redirect_url)
        items = "".join(
            '<li><a href="{}">{}</a></li>'.format(
                html.escape(
                    f"/_matrix/client/v3/login/sso/redirect/{pid}?"
                    + urlencode({"redirectUrl": redirect_url})
                ),
                html.escape(name),
            )
            for pid, name in self.providers
        )
        return _page("Sign in", f"<p>Sign in with:</p><ul>{items}</ul>")

    async def start(self, idp_id: str, redirect_url: str, ip: str = "") -> SsoRedirect:
        if self.cas is not None and idp_id == self.cas.id:
            _check_redirect_url(redirect_url)
            await self._buckets.take("sso_start", ip, SSO_START_LIMIT)
            service = self.cas.service_url("redirectUrl", redirect_url)
            return SsoRedirect(location=self.cas.login_url(service))
        provider = self._providers.get(idp_id)
        if provider is None:
            raise MatrixError(404, "M_NOT_FOUND", "Unknown identity provider")
        _check_redirect_url(redirect_url)
        await self._buckets.take("sso_start", ip, SSO_START_LIMIT)
        meta = await provider.metadata()
        state = secrets.token_urlsafe(24)
        nonce = secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)  # RFC 7636: 43-128 characters
        cookie = secrets.token_urlsafe(24)
        now = self._clock_ms()
        await self._store.add_sso_session(
            SsoSession(
                state=state,
                idp_id=idp_id,
                nonce=nonce,
                code_verifier=verifier,
                client_redirect_url=redirect_url,
                cookie_hash=token_hash(cookie),
                expires_ms=now + SESSION_LIFETIME_MS,
            ),
            now,
        )
        params = {
            "response_type": "code",
            "client_id": provider.config.client_id,
            "redirect_uri": self.callback_url,
            "scope": " ".join(provider.config.scopes),
            "state": state,
            "nonce": nonce,
        }
        if provider.config.pkce_method != "never":
            params["code_challenge"] = _b64(hashlib.sha256(verifier.encode()).digest())
            params["code_challenge_method"] = "S256"
        endpoint = meta["authorization_endpoint"]
        sep = "&" if urlsplit(endpoint).query else "?"
        return SsoRedirect(location=endpoint + sep + urlencode(params), cookie=cookie)

    async def callback(self, query: Mapping[str, str], cookie: str | None) -> SsoRedirect:
        state = query.get("state")
        if not state or len(state) > 256:
            raise SsoError(400, "The sign-in came back without its state")
        session = await self._store.take_sso_session(state)
        if session is None or session.expires_ms < self._clock_ms():
            raise SsoError(400, "This sign-in has expired or was already used; start again")
        if cookie is None or not hmac.compare_digest(token_hash(cookie), session.cookie_hash):
            # Someone else's sign-in finished in this browser: never log it in here.
            raise SsoError(403, "This sign-in was started in another browser; start again")
        provider = self._providers.get(session.idp_id)
        if provider is None:
            raise SsoError(400, "Unknown identity provider")
        if "error" in query:
            logger.info("OIDC %s: the provider answered %s", provider.id, query["error"][:100])
            raise SsoError(403, "The identity provider did not sign you in")
        code = query.get("code")
        if not code or len(code) > 4096:
            raise SsoError(400, "The identity provider sent no code")
        tokens = await provider.exchange(code, session.code_verifier, self.callback_url)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise SsoError(502, "The identity provider sent no ID token")
        claims = await provider.verify_id_token(id_token, session.nonce, self._clock_ms() / 1000)
        if provider.config.user_profile_method == "userinfo_endpoint":
            access_token = tokens.get("access_token")
            if not isinstance(access_token, str):
                raise SsoError(502, "The identity provider sent no access token")
            info = await provider.userinfo(access_token)
            if info.get("sub") != claims.get("sub"):
                # OpenID Connect Core §5.3.2: userinfo of another subject is not this user.
                raise SsoError(403, "The identity provider's userinfo is of someone else")
            claims = {**info, **claims}
        for req in provider.config.attribute_requirements:
            value = claims.get(req.attribute)
            if not (value == req.value or (isinstance(value, list) and req.value in value)):
                raise SsoError(403, "You are not allowed to sign in here")
        identity = self._identity(provider, claims)
        if not provider.config.enable_registration and not await self._is_linked(identity):
            raise SsoError(403, "There is no account of yours here, and new ones are not made")
        login_token = await self._login_external(identity)
        return self._to_client(session.client_redirect_url, login_token)

    async def cas_login(self, ticket: str, redirect_url: str) -> SsoRedirect:
        """GET /login/cas/ticket?redirectUrl=...&ticket=...: the CAS server vouches for
        the ticket; the client at redirectUrl gets a login token (accounts/cas.py)."""
        cas = self.cas
        if cas is None:
            raise SsoError(404, "CAS sign-in is not enabled here")
        try:
            _check_redirect_url(redirect_url)
        except MatrixError as e:
            raise SsoError(400, e.error) from None
        try:
            user = await cas.validate(ticket, cas.service_url("redirectUrl", redirect_url))
        except CasError as e:
            raise SsoError(e.status, e.message) from None
        identity = ExternalIdentity(
            provider=cas.id,
            external_id=user.name,
            localpart=map_username_to_localpart(user.name),
            display_name=cas.display_name(user),
            # As Synapse's CAS: a first sign-in with an existing account's name is that
            # account (CAS names the server's own users).
            allow_existing_user=True,
        )
        if not cas.config.enable_registration and not await self._is_linked(identity):
            raise SsoError(403, "There is no account of yours here, and new ones are not made")
        login_token = await self._login_external(identity)
        return self._to_client(redirect_url, login_token)

    def cas_ui_auth_start(self, session_id: str) -> str | None:
        """Where the m.login.sso fallback sends the browser for a UIA session (CAS)."""
        if self.cas is None:
            return None
        return self.cas.login_url(self.cas.service_url("session", session_id))

    async def cas_ui_auth(
        self,
        ticket: str,
        session_id: str,
        complete: Callable[[str, str, str], Awaitable[bool]],
    ) -> bool:
        """GET /login/cas/ticket?session=...&ticket=...: the CAS user signed in for a UIA
        session; `complete(session, provider, CAS name)` records the stage."""
        cas = self.cas
        if cas is None:
            raise SsoError(404, "CAS sign-in is not enabled here")
        try:
            user = await cas.validate(ticket, cas.service_url("session", session_id))
        except CasError as e:
            raise SsoError(e.status, e.message) from None
        return await complete(session_id, cas.id, user.name)

    async def _is_linked(self, identity: ExternalIdentity) -> bool:
        user = await self._store.user_for_external_id(identity.provider, identity.external_id)
        return user is not None

    def _identity(self, provider: _Provider, claims: Mapping[str, Any]) -> ExternalIdentity:
        mapping = provider.config.user_mapping_provider.config
        subject = claims.get(mapping.subject_claim)
        if not isinstance(subject, str | int) or isinstance(subject, bool) or subject == "":
            raise SsoError(403, "The identity provider gave no subject")
        localpart = render(mapping.localpart_template, claims)
        if localpart is None:
            raise SsoError(403, "The identity provider gave no user name")
        emails = render(mapping.email_template, claims)
        return ExternalIdentity(
            provider=provider.id,
            external_id=str(subject),
            localpart=localpart,
            display_name=render(mapping.display_name_template, claims),
            emails=(emails,) if emails else (),
            allow_existing_user=provider.config.allow_existing_users,
            dedupe=True,
        )

    def _to_client(self, redirect_url: str, login_token: str) -> SsoRedirect:
        parts = urlsplit(redirect_url)
        sep = "&" if parts.query else "?"
        target = redirect_url + sep + urlencode({"loginToken": login_token})
        if any(redirect_url.startswith(prefix) for prefix in self._config.sso.client_whitelist):
            return SsoRedirect(location=target)
        host = parts.hostname or redirect_url
        body = (
            f"<p>You are signing in to <b>{html.escape(host)}</b>. Continue only if you "
            "started this sign-in there.</p>"
            f'<p><a href="{html.escape(target)}">Continue to {html.escape(host)}</a></p>'
        )
        return SsoRedirect(page=_page("Continue your sign-in", body))


def _check_redirect_url(url: str) -> None:
    parts = urlsplit(url)
    if len(url) > MAX_REDIRECT_URL or not parts.scheme or parts.scheme.lower() in (
        "javascript", "data", "vbscript", "file"
    ):  # fmt: skip
        raise MatrixError(400, "M_INVALID_PARAM", "'redirectUrl' must be a client's URL")


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width'>"
        f"<title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def sso_page(title: str, body_html: str) -> str:
    """One of the SSO pages (body_html is already escaped)."""
    return _page(title, body_html)


def sso_error_page(error: SsoError) -> str:
    return _page("Sign-in failed", f"<p>{html.escape(error.message)}</p>")
