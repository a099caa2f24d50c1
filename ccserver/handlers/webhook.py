"""
The C{webhook} grant handler: an external web service decides each grant.

For every token request the handler POSTs a JSON document to the configured
URL (L{request_document}; for a token exchange, L{exchange_document}, with
the verified claims of the subject and actor tokens) and turns the answer
into a L{GrantAuthorization} or an OAuth error:

  - C{200} with C{{"scope": [...], "access_token": {...}}}: a token with
    that scope (the service is authoritative: it may grant values the client
    did not register), lifetime, audience and extra claims;
  - C{4xx} with C{{"error": ..., "error_description": ...}}: that error goes
    to the client (400, or 401 with a Basic challenge for C{invalid_client});
  - anything else (no answer within the timeout, a refused connection, a
    5xx, a malformed answer): C{temporarily_unavailable} (503), never a
    token, and a log line that says why.

Its collaborators come in through the constructor: an HTTP client with
treq's C{post} (a L{treq.client.HTTPClient}, or L{treq.testing.StubTreq} in
tests), the clock that bounds the exchange, and the connection pool to
close when the server stops (the handler is a service for that).  The
plugin in L{ccserver.plugins.ccserver_builtin} composes them with the
reactor the server gives it.

docs/grant-handlers.md describes the exchange for those who write a service.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, NoReturn, Protocol
from urllib.parse import urlsplit, urlunsplit

from attrs import field, frozen
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse
from zope.interface import implementer

from ccserver import strictjson
from ccserver.errors import ConfigError, OAuthError, invalid_client, temporarily_unavailable
from ccserver.interfaces import IClientCredentialsGrantHandler, ITokenExchangeHandler
from ccserver.model import (
    TOKEN_EXCHANGE,
    Client,
    GrantAuthorization,
    GrantRequest,
    TokenExchangeRequest,
    VerifiedToken,
    check_claims,
    is_lifetime,
    is_scope_token,
    may_act_problem,
)
from ccserver.outbound import (
    NOT_ANSWERED,
    USER_AGENT,
    BodyTooLarge,
    describe_failure,
    read_body,
    traced_request,
    was_cancelled,
)

#: Seconds the whole exchange may take when the configuration names none.
DEFAULT_TIMEOUT = 2.0
#: The largest answer read from the service, in bytes; a larger one is
#: malformed.
MAX_ANSWER = 64 * 1024
#: Client fields that are never sent, whatever C{client_fields} says.
NEVER_SENT = frozenset(
    {
        "client_secret",
        "client_secret_digest",
        "registration_access_token",
        "registration_access_token_digest",
    }
)

_KEYS = ("url", "token", "timeout", "client_fields")
# RFC 6749 §5.2: error = 1*( %x20-21 / %x23-5B / %x5D-7E )
_ERROR_CODE = re.compile(r"[\x20\x21\x23-\x5B\x5D-\x7E]+")
# RFC 6750 §2.1 allows b64token; any visible ASCII keeps the header valid.
_HEADER_TOKEN = re.compile(r"[\x21-\x7E]+")
#: What a client is told when the service could not decide (503).
_UNAVAILABLE = "the authorization policy service is unavailable; try again shortly"
_ANSWER_KEYS = frozenset({"scope", "access_token"})
_ACCESS_TOKEN_KEYS = frozenset({"lifetime", "audience", "claims", "may_act"})


class HTTPPoster(Protocol):
    """
    What the handler needs of an HTTP client: treq's C{post}.
    """

    def post(
        self,
        url: str,
        /,
        *,
        data: bytes,
        headers: Headers,
        allow_redirects: bool,
        unbuffered: bool,
        reactor: Any,
    ) -> Deferred[Any]: ...


@frozen
class WebhookConfig:
    """
    The C{[grant_handler]} table of the webhook handler, checked.

    @ivar url: where the grant requests are POSTed (absolute http or https).
    @ivar token: sent as C{Authorization: Bearer <token>}, or L{None}.
    @ivar timeout: seconds the whole exchange may take.
    @ivar client_fields: the client metadata fields sent, or L{None} for all.
    """

    url: str
    token: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT
    client_fields: tuple[str, ...] | None = None


def _config_error(key: str, message: str) -> NoReturn:
    raise ConfigError(f"[grant_handler] {key}: {message}")


def _check_url(value: object) -> str:
    if not isinstance(value, str):
        _config_error("url", "must be a string")
    parts = urlsplit(value)
    try:
        _ = parts.port
    except ValueError:
        _config_error("url", f"{value!r} has an invalid port")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        _config_error("url", f"{value!r} is not an absolute http or https URL")
    if parts.username is not None or parts.password is not None:
        _config_error("url", "must not hold credentials; use token")
    if parts.fragment:
        _config_error("url", f"{value!r} must have no fragment")
    return value


def _check_token(value: object) -> str:
    # The message never shows the value: it is a secret.
    if not isinstance(value, str):
        _config_error("token", "must be a string")
    if not _HEADER_TOKEN.fullmatch(value):
        _config_error("token", "must be visible ASCII characters, without spaces")
    return value


def _check_timeout(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _config_error("timeout", f"must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value <= 0:
        _config_error("timeout", f"must be greater than 0, not {value!r}")
    return float(value)


def _check_client_fields(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        _config_error("client_fields", "must be a list of client metadata field names")
    secret = sorted(NEVER_SENT.intersection(value))
    if secret:
        _config_error("client_fields", f"{secret[0]!r} is a secret and is never sent")
    return tuple(dict.fromkeys(value))


def parse_config(config: Mapping[str, Any]) -> WebhookConfig:
    """
    Check the C{[grant_handler]} table (without C{name}).

    @raise ConfigError: a key is unknown, missing or wrong; the message
        starts with C{[grant_handler] <key>: }.
    """
    for key in sorted(config):
        if key not in _KEYS:
            _config_error(key, "unknown key; the webhook handler takes " + ", ".join(_KEYS))
    if "url" not in config:
        _config_error("url", "missing; the webhook handler needs the URL of its service")
    return WebhookConfig(
        url=_check_url(config["url"]),
        token=_check_token(config["token"]) if "token" in config else None,
        timeout=_check_timeout(config["timeout"]) if "timeout" in config else DEFAULT_TIMEOUT,
        client_fields=(
            _check_client_fields(config["client_fields"]) if "client_fields" in config else None
        ),
    )


def _client_fields(client: Client, client_fields: tuple[str, ...] | None) -> dict[str, Any]:
    metadata = client.metadata
    names = metadata.keys() if client_fields is None else client_fields
    return {name: metadata[name] for name in names if name in metadata and name not in NEVER_SENT}


def request_document(
    grant: GrantRequest, client_fields: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """
    The JSON document POSTed to the service for this grant.

    @param client_fields: the client metadata fields to send, or L{None}
        for all.  Secrets and registration tokens are never sent.
    """
    document: dict[str, Any] = {
        "grant_type": grant.grant_type,
        "client_id": grant.client.client_id,
        "client": _client_fields(grant.client, client_fields),
        "scope": None if grant.scope is None else sorted(grant.scope),
        "resource": list(grant.resource),
        "params": dict(grant.params),
        "issuer": grant.issuer,
    }
    workload = grant.workload
    if workload is not None:
        # a federated_jwt client: its workload's token, verified
        document["workload"] = {
            "issuer": workload.issuer,
            "subject": workload.subject,
            "claims": dict(workload.claims),
        }
    return document


def _token_document(token: VerifiedToken | None) -> dict[str, Any] | None:
    """
    A verified token as the service sees it: its type and claims, never
    the token itself.
    """
    if token is None:
        return None
    return {"token_type": token.token_type, "claims": _plain(token.claims)}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {name: _plain(member) for name, member in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(member) for member in value]
    return value


def exchange_document(
    exchange: TokenExchangeRequest, client_fields: tuple[str, ...] | None = None
) -> dict[str, Any]:
    """
    The JSON document POSTed to the service for a token exchange (RFC
    8693): the client's, as for a grant, and the verified claims of the
    subject and actor tokens (never the tokens), the C{audience} and
    C{requested_token_type} asked for.
    """
    return {
        "grant_type": TOKEN_EXCHANGE,
        "client_id": exchange.client.client_id,
        "client": _client_fields(exchange.client, client_fields),
        "scope": None if exchange.scope is None else sorted(exchange.scope),
        "resource": list(exchange.resource),
        "audience": list(exchange.audience),
        "requested_token_type": exchange.requested_token_type,
        "subject_token": _token_document(exchange.subject),
        "actor_token": _token_document(exchange.actor),
        "params": dict(exchange.params),
        "issuer": exchange.issuer,
    }


class MalformedAnswer(Exception):
    """
    The service answered, but not in a way this handler understands.
    """


class ServiceFailed(Exception):
    """
    The service answered with a server error (5xx).
    """


class WebhookTimeout(Exception):
    """
    The service did not answer within the timeout.
    """


def load_answer(body: bytes) -> Any:
    """
    Parse an answer as strict JSON (UTF-8, no repeated names, no NaN).

    @raise MalformedAnswer: it is not.
    """
    try:
        return strictjson.loads(body)
    except ValueError as e:
        raise MalformedAnswer(f"the body is not JSON: {e}") from None


def _unknown(document: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = sorted(set(document) - known)
    if unknown:
        raise MalformedAnswer(
            f"{where}{unknown[0]!r} is not a member this server knows; expected "
            + ", ".join(sorted(known))
        )


def authorization_from_answer(document: Any) -> GrantAuthorization:
    """
    The decision a 200 answer carries.

    @raise MalformedAnswer: the answer breaks the format (docs/grant-handlers.md).
    """
    if not isinstance(document, dict):
        raise MalformedAnswer("the answer is not a JSON object")
    _unknown(document, _ANSWER_KEYS, "")
    if "scope" not in document:
        raise MalformedAnswer("scope: missing")
    scope = document["scope"]
    if not isinstance(scope, list) or not all(is_scope_token(v) for v in scope):
        raise MalformedAnswer("scope: must be a list of scope values (strings without spaces)")
    # An optional member that is null counts as absent.
    token = document.get("access_token")
    if token is None:
        token = {}
    if not isinstance(token, dict):
        raise MalformedAnswer("access_token: must be an object")
    _unknown(token, _ACCESS_TOKEN_KEYS, "access_token: ")
    lifetime = token.get("lifetime")
    if lifetime is not None and not is_lifetime(lifetime):
        raise MalformedAnswer("access_token.lifetime: must be a positive integer (seconds)")
    audience = token.get("audience")
    if audience is not None and (
        not isinstance(audience, list) or not all(isinstance(v, str) and v for v in audience)
    ):
        raise MalformedAnswer("access_token.audience: must be a list of non-empty strings")
    claims = token.get("claims")
    if claims is None:
        claims = {}
    if not isinstance(claims, dict):
        raise MalformedAnswer("access_token.claims: must be an object")
    try:
        check_claims(claims)
    except ValueError as e:
        raise MalformedAnswer(f"access_token.claims: {e}") from None
    may_act = token.get("may_act")
    if may_act is not None:
        problem = may_act_problem(may_act)
        if problem is not None:
            raise MalformedAnswer(f"access_token.may_act: {problem}")
    try:
        return GrantAuthorization(
            scope=scope,
            lifetime=lifetime,
            audience=audience or None,
            claims=claims,
            may_act=may_act,
        )
    except (TypeError, ValueError) as e:
        raise MalformedAnswer(str(e)) from None


def denial_from_answer(document: Any) -> OAuthError:
    """
    The OAuth error a 4xx answer carries: 400, or 401 with a Basic
    challenge for C{invalid_client} (RFC 6749 §5.2).

    @raise MalformedAnswer: it carries no proper C{error}.
    """
    if not isinstance(document, dict):
        raise MalformedAnswer("a 4xx answer must be a JSON object with an error")
    error = document.get("error")
    if not isinstance(error, str) or not _ERROR_CODE.fullmatch(error):
        raise MalformedAnswer("error: a 4xx answer must have an OAuth error code (RFC 6749 §5.2)")
    description = document.get("error_description")
    if description is None:
        description = "the authorization policy denied this request"
    if not isinstance(description, str):
        raise MalformedAnswer("error_description: must be a string")
    if error == "invalid_client":
        return invalid_client(description)
    return OAuthError(error, description)


def _display_url(url: str) -> str:
    """
    The URL as logged: no query string, which might hold a secret.
    """
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


@implementer(IClientCredentialsGrantHandler, ITokenExchangeHandler)
class WebhookHandler(Service):
    """
    Asks a web service what each grant authorises.

    @param config: the checked configuration (L{parse_config}).
    @param http: an HTTP client with treq's C{post}: a
        L{treq.client.HTTPClient} (over a persistent connection pool), the
        C{treq} module, or a L{treq.testing.StubTreq}.
    @param clock: what bounds the exchange by C{config.timeout}.
    @param pool: the connection pool under C{http}, closed when the
        handler (an L{IService} in the server's tree) stops.
    """

    _log = Logger()

    def __init__(
        self,
        config: WebhookConfig,
        http: HTTPPoster,
        clock: IReactorTime,
        pool: HTTPConnectionPool | None = None,
    ) -> None:
        self.config = config
        self._pool = pool
        self._http = http
        self._clock = clock
        self._url = _display_url(config.url)
        self._headers = Headers(
            {
                "Content-Type": ["application/json"],
                "Accept": ["application/json"],
                "User-Agent": [USER_AGENT],
            }
        )
        if config.token is not None:
            self._headers.setRawHeaders("Authorization", [f"Bearer {config.token}"])

    def __repr__(self) -> str:
        return f"<WebhookHandler {self._url}>"

    def stopService(self) -> Deferred[None] | None:
        """
        Close the connections kept open to the service.
        """
        super().stopService()
        if self._pool is None:
            return None
        closed: Deferred[None] = self._pool.closeCachedConnections()
        return closed

    def authorize(self, grant: GrantRequest) -> Deferred[GrantAuthorization]:
        """
        Ask the service; see the module docstring for what its answers mean.
        """
        return self._decide(request_document(grant, self.config.client_fields), grant.client)

    def authorize_exchange(self, exchange: TokenExchangeRequest) -> Deferred[GrantAuthorization]:
        """
        Ask the service about a token exchange: the same exchange, with the
        exchange's facts in the document (L{exchange_document}).
        """
        return self._decide(
            exchange_document(exchange, self.config.client_fields), exchange.client
        )

    def _decide(self, document: dict[str, Any], client: Client) -> Deferred[GrantAuthorization]:
        decision = Deferred.fromCoroutine(self._ask(document, client.client_id))
        decision.addTimeout(self.config.timeout, self._clock, onTimeoutCancel=self._timed_out)
        decision.addErrback(self._unavailable, client.client_id)
        return decision

    async def _ask(self, document: dict[str, Any], client_id: str) -> GrantAuthorization:
        body = json.dumps(document, separators=(",", ":")).encode()
        deadline = self._clock.seconds() + self.config.timeout
        try:
            response = await self._post(body)
        except NOT_ANSWERED as e:
            if was_cancelled(e) or self._clock.seconds() >= deadline:
                raise
            self._log.info(
                "Asking {url} again: the connection failed before an answer ({reason})",
                url=self._url,
                reason=describe_failure(Failure()),
            )
            response = await self._post(body)
        answer = await read_body(response, MAX_ANSWER)
        code = response.code
        if code == 200:
            return authorization_from_answer(load_answer(answer))
        if 400 <= code < 500:
            try:
                denial = denial_from_answer(load_answer(answer))
            except MalformedAnswer as e:
                raise MalformedAnswer(f"{code} answer: {e}") from None
            self._log.debug(
                "{url} denied a token to {client_id}: {error}",
                url=self._url,
                client_id=client_id,
                error=denial.error,
            )
            raise denial
        if 500 <= code < 600:
            raise ServiceFailed(f"it answered {code}")
        raise MalformedAnswer(f"it answered {code}; expected 200, 4xx or 5xx")

    def _post(self, body: bytes) -> Deferred[IResponse]:
        headers = self._headers.copy()
        # with [tracing] on: a span of its own, its trace context sent along
        answered = traced_request("POST", self.config.url, headers)
        posted: Deferred[IResponse] = self._http.post(
            self.config.url,
            data=body,
            headers=headers,
            allow_redirects=False,
            unbuffered=True,
            # treq would otherwise import the global reactor; it needs none
            # without its own timeout.
            reactor=self._clock,
        )
        return posted if answered is None else posted.addBoth(answered)

    def _timed_out(self, result: object, timeout: float) -> NoReturn:
        raise WebhookTimeout(f"no answer within {timeout:g}s")

    def _unavailable(self, failure: Failure, client_id: str) -> Failure:
        # A denial goes to the client as it is; a cancellation (the client
        # went away) is not the service's fault.
        if failure.check(OAuthError, CancelledError):
            return failure
        if was_cancelled(failure.value):
            return Failure(CancelledError())
        reason: str | None
        if failure.check(WebhookTimeout, ServiceFailed):
            reason = failure.getErrorMessage()
        elif failure.check(MalformedAnswer, BodyTooLarge):
            reason = f"malformed answer: {failure.getErrorMessage()}"
        else:
            reason = describe_failure(failure)
        if reason is None:
            self._log.failure(
                "Unexpected error asking {url} about a grant for {client_id}",
                failure,
                url=self._url,
                client_id=client_id,
            )
            raise temporarily_unavailable(_UNAVAILABLE)
        self._log.warn(
            "The grant webhook {url} could not decide for client {client_id}, "
            "so its token request gets 503: {reason}",
            url=self._url,
            client_id=client_id,
            reason=reason,
        )
        raise temporarily_unavailable(_UNAVAILABLE)
