"""
Client authentication at the token endpoint (RFC 6749 §2.3): who is calling.

Exactly one method per request: C{client_secret_basic} (the HTTP Basic
scheme), C{client_secret_post} (C{client_id} and C{client_secret} in the
form body), a JWT assertion (C{client_assertion_type} and
C{client_assertion}, RFC 7521 §4.2, RFC 7523 §2.2) for C{private_key_jwt}
and C{client_secret_jwt}, checked in L{ccserver.oauth.assertions}, or for
C{federated_jwt}, a workload's token from a trusted issuer
(L{ccserver.oauth.federation}), or, with C{client_id} alone in the body,
the TLS client certificate (RFC 8705 §2: L{ccserver.oauth.mtls}).  Every secret failure is the same C{invalid_client}
error, so that an unknown client cannot be told from a wrong secret.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import unquote_plus

from attrs import frozen

from ccserver import audit, credentials, jose
from ccserver.errors import OAuthError, answered_with, invalid_client, invalid_request
from ccserver.interfaces import IClientStore
from ccserver.keysets import KeySetSource, KeySetUnavailable
from ccserver.model import Authenticated, Client
from ccserver.oauth import mtls
from ccserver.oauth.assertions import (
    JWT_BEARER,
    AssertionVerifier,
    ClientAssertion,
    assertion_identifier,
)
from ccserver.oauth.federation import JWT_SPIFFE, Federation, Recognised
from ccserver.oauth.limits import AuthLimits
from ccserver.text import identifier_problem

__all__ = ["JWT_BEARER", "JWT_SPIFFE"]
T = TypeVar("T")

#: The longest C{client_assertion} accepted, in bytes: a few claims and a
#: signature (RSA-4096 included) take a fraction of it; anything longer is
#: refused before it is decoded.
MAX_ASSERTION_BYTES = 8 * 1024

_FAILED = "client authentication failed"

# RFC 7235 §2.1: credentials = auth-scheme [ 1*SP ( token68 / #auth-param ) ],
# auth-scheme = token (RFC 7230 §3.2.6).  A tab is taken for a space, as
# RFC 7230 §3.5 lets a recipient do between the request line's words; any
# other character after the scheme makes the header malformed.
_CREDENTIALS = re.compile(r"([!#$%&'*+.^_`|~0-9A-Za-z-]+)(?:[ \t]+(.*))?", re.DOTALL)


@frozen
class ClientCredentials:
    """
    The credentials a request presented, and how.
    """

    method: str
    client_id: str
    client_secret: str


def split_authorization(header: str) -> tuple[str, str] | None:
    """
    An C{Authorization} header's scheme and the credentials after it
    (empty when there are none), or None when it does not start with a
    scheme token followed by spaces or tabs.
    """
    match = _CREDENTIALS.fullmatch(header.strip(" \t"))
    if match is None:
        return None
    return match.group(1), match.group(2) or ""


def _basic(authorization: str) -> ClientCredentials:
    """
    RFC 6749 §2.3.1: the client identifier and secret are form-urlencoded
    before they are joined with a colon and base64-encoded.

    No error description repeats any part of the header, not even a word
    that looks like a scheme: it may be a credential sent without one.
    """
    parts = split_authorization(authorization)
    if parts is None:
        raise invalid_client(
            "malformed Authorization header: expected a scheme, a space and credentials"
        )
    scheme, encoded = parts
    if scheme.lower() != "basic":
        raise invalid_client("that authentication scheme is not supported here; use Basic")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid_client("malformed Basic credentials") from None
    client_id, colon, client_secret = decoded.partition(":")
    if not colon:
        raise invalid_client("malformed Basic credentials")
    return ClientCredentials(
        "client_secret_basic", unquote_plus(client_id), unquote_plus(client_secret)
    )


def _assertion(
    authorization: str | None, form: Mapping[str, str], assertion_types: tuple[str, ...]
) -> ClientAssertion:
    """
    RFC 7521 §4.2: the assertion parameters, alone (one method per
    request, RFC 6749 §2.3); an unknown C{client_assertion_type} is
    C{invalid_client} (§4.2.1).
    """
    if authorization is not None or "client_secret" in form:
        raise invalid_request(
            "the client authenticated with more than one method "
            "(client_assertion and " + ("an Authorization header)" if authorization else "client_secret)")
        )
    assertion_type = form.get("client_assertion_type")
    assertion = form.get("client_assertion")
    if assertion_type is None:
        raise invalid_request("client_assertion_type: missing")
    if assertion is None:
        raise invalid_request("client_assertion: missing")
    if assertion_type not in assertion_types:
        raise invalid_client(
            "client_assertion_type: only " + " and ".join(assertion_types) + " supported"
        )
    if len(assertion) > MAX_ASSERTION_BYTES:
        raise invalid_client(f"client_assertion: longer than {MAX_ASSERTION_BYTES} bytes")
    return ClientAssertion(form.get("client_id"), assertion, assertion_type)


def presented_credentials(
    authorization: str | None,
    form: Mapping[str, str],
    assertion_types: tuple[str, ...] = (JWT_BEARER,),
) -> ClientCredentials | ClientAssertion:
    """
    The credentials of a token request, from its C{Authorization} header
    and form.

    @param assertion_types: the C{client_assertion_type}s accepted.
    @raise OAuthError: C{invalid_request} when more than one method is used
        or the client id could be no client's (L{identifier_problem}: the
        store is never asked about it), C{invalid_client} when none is, or
        the header is malformed.
    """
    presented = _presented(authorization, form, assertion_types)
    if presented.client_id:
        check_client_id(presented.client_id)
    return presented


def check_client_id(client_id: str) -> None:
    """
    A client id from a request (its form, Basic credentials, a client
    configuration URL), before the store is asked about it.

    @raise OAuthError: C{invalid_request} when it could be no client's
        (L{identifier_problem}): no store is asked, none can fail on it.
    """
    problem = identifier_problem(client_id)
    if problem is not None:
        raise invalid_request(f"client_id {problem}")


def _presented(
    authorization: str | None, form: Mapping[str, str], assertion_types: tuple[str, ...]
) -> ClientCredentials | ClientAssertion:
    if "client_assertion" in form or "client_assertion_type" in form:
        return _assertion(authorization, form, assertion_types)
    if authorization is not None:
        if "client_secret" in form:
            raise invalid_request(
                "the client authenticated with more than one method "
                "(Authorization header and client_secret)"
            )
        presented = _basic(authorization)
        if "client_id" in form and form["client_id"] != presented.client_id:
            raise invalid_request("client_id in the body differs from the Basic credentials")
        return presented
    if "client_secret" in form:
        if "client_id" not in form:
            raise invalid_request("client_secret was given without client_id")
        return ClientCredentials("client_secret_post", form["client_id"], form["client_secret"])
    if "client_id" in form:
        # RFC 8705 §2: the certificate authenticates; the registration says how.
        return ClientCredentials(mtls.CERTIFICATE, form["client_id"], "")
    raise invalid_client("no client authentication was included")


def claimed_client_id(presented: ClientCredentials | ClientAssertion) -> str:
    """
    The client a request claims to be, as the limits count it: the one
    the check is made for.  An assertion sent without C{client_id} names
    its client in C{sub} (RFC 7523 §3), read here unverified, as the
    verifier reads it to find the client's keys; "" when nothing names one.

    @raise OAuthError: C{invalid_client} for a C{sub} no client could have
        (L{assertion_identifier}): refused before it is counted, so that
        no store sees it.
    """
    if presented.client_id is not None:
        return presented.client_id
    try:
        _, claims = jose.unverified(presented.assertion)
    except jose.JOSEError:
        return ""
    sub = claims.get("sub")
    if sub is None:
        return ""
    return assertion_identifier("the sub claim", sub)


def workload_of(caller: Authenticated) -> dict[str, str] | None:
    """
    The workload identity whose token authenticated C{caller}, as the audit
    trail's C{workload} says it; None when the client used a credential of
    its own.
    """
    workload = caller.workload
    return None if workload is None else audit.workload(workload.issuer, workload.subject)


async def authenticate(
    store: IClientStore,
    presented: ClientCredentials,
    certificate: mtls.PresentedCertificate | None = None,
    *,
    now: Callable[[], float],
    key_sets: KeySetSource | None = None,
) -> Client:
    """
    The registered client these credentials authenticate.

    The secret is checked in constant time, against a stand-in digest when
    the client is unknown.  After a secret rotation the previous secret
    works too until its grace period ends (C{now} tells when that is): both
    digests are compared on every request, so that the time taken shows
    neither whether the client has a previous secret nor which one matched.
    A client that used a method other than its registered one fails like a
    wrong secret, but is told the right method once its secret has proven
    it is who it says.  A client whose registration named no method may use
    either secret method (L{Client.token_endpoint_auth_methods}).

    A request with C{client_id} alone authenticates with C{certificate}, its
    TLS client certificate, if the client registered an RFC 8705 method;
    C{key_sets} fetches the certificates of a client registered with a
    C{jwks_uri} (without one, such a client cannot authenticate).
    """
    if presented.method == mtls.CERTIFICATE:
        return await _authenticate_certificate(
            store, presented.client_id, certificate, key_sets
        )
    client = await store.get_client(presented.client_id) if presented.client_id else None
    expected = client.client_secret_digest if client else None
    previous = client.previous_secret_digest_at(now()) if client else None
    matches_current, matches_previous = credentials.matches(
        presented.client_secret, (expected, previous)
    )
    if not (matches_current or matches_previous) or client is None:
        raise invalid_client()
    allowed = client.token_endpoint_auth_methods
    if presented.method not in allowed:
        raise invalid_client(f"this client must authenticate with {' or '.join(allowed)}")
    return client


class ClientAuthenticator:
    """
    Who is calling, by whichever one method the request used: the secret
    methods here, assertions through an L{AssertionVerifier}, workload
    tokens through a L{Federation}, certificates through
    L{ccserver.oauth.mtls}; within the brute-force limits, counted here,
    the one place every client authentication passes (the token,
    introspection and revocation endpoints alike, and the JWT bearer
    grant's assertion).
    """

    def __init__(
        self,
        clients: IClientStore,
        assertions: AssertionVerifier | None = None,
        limits: AuthLimits | None = None,
        *,
        now: Callable[[], float],
        key_sets: KeySetSource | None = None,
        federation: Federation | None = None,
    ) -> None:
        """
        @param assertions: checks JWT assertions; without one they are
            refused.
        @param key_sets: fetches the C{jwks_uri} of
            C{self_signed_tls_client_auth} clients (the assertions' own,
            so that both share one cache); without one, such clients
            cannot authenticate.
        @param limits: counts failures per (client, source address) and
            refuses a pair past its budget; None for no limits.
        @param now: the clock that ends a rotated-out secret's grace.
        @param federation: checks workload tokens (C{federated_jwt}), with
            the trusted issuers; without one, none is accepted.
        """
        self._clients = clients
        self._assertions = assertions
        self._limits = limits
        self._now = now
        self._key_sets = key_sets
        self._federation = federation
        self._assertion_types = (JWT_BEARER, JWT_SPIFFE) if federation else (JWT_BEARER,)

    @property
    def federation(self) -> Federation | None:
        """
        The workload tokens' checker, if this server trusts any issuer.
        """
        return self._federation

    async def authenticate(
        self,
        authorization: str | None,
        form: Mapping[str, str],
        certificate: mtls.PresentedCertificate | None = None,
        source: str = "",
    ) -> Client:
        """
        @param certificate: the request's TLS client certificate, if any
            (RFC 8705): it authenticates a request with C{client_id} alone.
        @param source: the caller's address, which the limits count by.
        """
        return (await self.caller(authorization, form, certificate, source)).client

    async def caller(
        self,
        authorization: str | None,
        form: Mapping[str, str],
        certificate: mtls.PresentedCertificate | None = None,
        source: str = "",
    ) -> Authenticated:
        """
        L{authenticate}'s client, and the workload token it presented, if
        any.
        """
        presented = presented_credentials(authorization, form, self._assertion_types)
        recognised = None
        if isinstance(presented, ClientAssertion) and self._federation is not None:
            recognised = self._federation.recognise(presented)
        if recognised is not None:
            return await self.workload(recognised, source)
        return await self._limited(
            claimed_client_id(presented),
            source,
            lambda: self._authenticate(presented, certificate),
        )

    async def workload(self, recognised: Recognised, source: str) -> Authenticated:
        """
        The client a workload token authenticates, within the limits, which
        count its failures by the workload identity it names
        (L{Recognised.limit_key}).
        """
        federation = self._federation
        assert federation is not None  # only it recognises

        async def attempt() -> Authenticated:
            client, identity = await federation.authenticate(recognised)
            return Authenticated(client, identity)

        return await self._limited(recognised.limit_key, source, attempt)

    def claimed(
        self,
        authorization: str | None,
        form: Mapping[str, str],
        assertion: str | None = None,
    ) -> dict[str, Any]:
        """
        Who a refused request said it was, unproven, as the audit trail's
        fields say it: the client it names (C{claimed_client_id}: its
        C{client_id}, Basic user, or a client assertion's C{sub}), and for
        a workload token, the trusted issuer and subject it claims
        (C{claimed_workload}; then C{claimed_client_id} is only the
        C{client_id} the request named, since a workload's C{sub} is no
        client's).  Never raises: whatever cannot be read is left out.

        @param assertion: the JWT bearer grant's C{assertion}, when that
            was the request's credential.
        """
        try:
            presented = (
                presented_credentials(authorization, form, self._assertion_types)
                if assertion is None
                else ClientAssertion(form.get("client_id"), assertion, JWT_BEARER)
            )
        except OAuthError:
            return {"claimed_client_id": form.get("client_id")}
        if isinstance(presented, ClientAssertion) and (
            self._federation is not None or assertion is not None
        ):
            try:
                recognised = (
                    None if self._federation is None else self._federation.recognise(presented)
                )
            except OAuthError:
                # a workload's token of an issuer no one trusts
                return {"claimed_client_id": presented.client_id}
            if recognised is not None:
                return {
                    "claimed_client_id": presented.client_id,
                    "claimed_workload": audit.workload(
                        recognised.issuer.identifier, recognised.claims.get("sub")
                    ),
                }
            if assertion is not None:
                return {"claimed_client_id": presented.client_id}
        try:
            return {"claimed_client_id": claimed_client_id(presented) or None}
        except OAuthError:
            return {"claimed_client_id": presented.client_id}

    def tell_refusal(
        self,
        event_type: str,
        error: BaseException,
        caller: Authenticated | None,
        authorization: str | None,
        form: Mapping[str, str],
        source: str,
        *,
        assertion: str | None = None,
        **fields: object,
    ) -> None:
        """
        Tell the audit trail that a request of an endpoint that authenticates
        clients (token, introspection, revocation) was refused with C{error}:
        by C{caller} once it had authenticated (with the workload token
        that authenticated it, if one did), else by someone claiming to be
        what the request names (L{claimed}).
        """
        code, status = answered_with(error)
        if caller is None:
            actor = audit.UNAUTHENTICATED
            fields.update(self.claimed(authorization, form, assertion))
        else:
            actor = audit.client(caller.client.client_id)
            fields.update(client_id=caller.client.client_id, workload=workload_of(caller))
        audit.emit(event_type, actor, source or None, error=code, status=status, **fields)

    def _limited(
        self, key: str, source: str, attempt: Callable[[], Awaitable[T]]
    ) -> Awaitable[T]:
        if self._limits is None:
            return attempt()
        return self._limits.client(key, source, attempt)

    async def _authenticate(
        self,
        presented: ClientCredentials | ClientAssertion,
        certificate: mtls.PresentedCertificate | None,
    ) -> Authenticated:
        if isinstance(presented, ClientAssertion):
            if self._assertions is None:
                raise invalid_client("client assertions are not accepted here")
            return Authenticated(await self._assertions.authenticate(self._clients, presented))
        return Authenticated(
            await authenticate(
                self._clients, presented, certificate, now=self._now, key_sets=self._key_sets
            )
        )


async def _authenticate_certificate(
    store: IClientStore,
    client_id: str,
    certificate: mtls.PresentedCertificate | None,
    key_sets: KeySetSource | None,
) -> Client:
    client = await store.get_client(client_id)
    if client is None or client.token_endpoint_auth_method not in mtls.MTLS_METHODS:
        raise invalid_client("no client authentication was included")
    registered = None
    uri = client.metadata.get("jwks_uri")
    if (
        certificate is not None
        and client.token_endpoint_auth_method == mtls.SELF_SIGNED_TLS_CLIENT_AUTH
        and "jwks" not in client.metadata
        and isinstance(uri, str)
    ):
        registered = await _fetched_certificates(client_id, uri, certificate, key_sets)
    try:
        mtls.check_certificate(client.metadata, certificate, registered)
    except mtls.CertificateRefused as e:
        raise invalid_client(str(e)) from None
    return client


async def _fetched_certificates(
    client_id: str,
    uri: str,
    certificate: mtls.PresentedCertificate,
    key_sets: KeySetSource | None,
) -> tuple[bytes, ...]:
    """
    RFC 8705 §2.2.2: the certificates the client serves at its
    C{jwks_uri}.  One not in the cached set fetches it again (at most once
    per C{[client_auth] jwks_uri_refetch_seconds} per client, as an unknown
    C{kid} does), so that a client rotating its certificate is accepted at
    once.
    """
    if key_sets is None:
        raise invalid_client("this server does not fetch jwks_uri; the client cannot authenticate")
    try:
        registered = (await key_sets.key_set(uri)).certificates
        if certificate.der not in registered:
            registered = (await key_sets.key_set(uri, refetch_for=client_id)).certificates
    except KeySetUnavailable:
        raise invalid_client(
            "the client's jwks_uri could not be fetched, so its certificate cannot be "
            "checked; try again shortly"
        ) from None
    return registered
