"""
Mutual TLS (RFC 8705), in memory: matching certificates to registrations,
registration rules, and the whole app with certificates from a trusted
proxy's header (StubTreq's peer is 127.0.0.1).  Real TLS connections:
tests/test_mtls_process.py.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import time
from typing import Any

from attrs import evolve
from cryptography.hazmat.primitives.asymmetric import ec
from treq.testing import StubTreq
from twisted.trial.unittest import SynchronousTestCase

from ccserver import credentials
from ccserver.assembly import certificate_reader
from ccserver.config import MTLSConfig, TLSConfig
from ccserver.oauth import mtls
from ccserver.oauth.discovery import metadata
from ccserver.oauth.mtls import (
    BOUND_TOKENS,
    CertificateRefused,
    PresentedCertificate,
    check_certificate,
    same_dn,
)
from ccserver.oauth.tokens import access_token_claims
from tests.certs import Issued, expired, issue, make_ca, not_yet_valid
from tests.helpers import ISSUER, MASTER_TOKEN, ServerTestCase, basic
from tests.test_client_auth_jwt import JWKS_URI, JWKSResource

CA = make_ca()
OTHER_CA = make_ca("Other CA")
CLIENT = issue(
    CA,
    "client-one",
    dns=("client.example.com",),
    uris=("spiffe://example.com/client-one",),
    ips=("10.1.2.3",),
    emails=("ops@example.com",),
)
SELF_SIGNED = issue(None, "self-signed-client")
DN = "CN=client-one,O=Example,C=GB"


def presented(issued: Issued, chain_verified: bool = True) -> PresentedCertificate:
    return PresentedCertificate(issued.der, chain_verified, time.time())


def thumbprint(issued: Issued) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(issued.der).digest()).rstrip(b"=").decode()


class DistinguishedNameTests(SynchronousTestCase):
    def test_normalized(self) -> None:
        subject = CLIENT.certificate.subject
        for dn in (DN, "cn=Client-One, o=EXAMPLE,  c=gb", "CN=client-one,O=Example,C=GB"):
            self.assertTrue(same_dn(dn, subject), dn)

    def test_different(self) -> None:
        subject = CLIENT.certificate.subject
        for dn in ("CN=client-two,O=Example,C=GB", "O=Example,CN=client-one,C=GB", "CN=client-one", "not a dn"):
            self.assertFalse(same_dn(dn, subject), dn)


class LookAlikeNameTests(SynchronousTestCase):
    """
    The matching rule (L{mtls.same_dn}): ASCII letters match in either case
    and runs of spaces count as one, but no other character is folded or
    normalised.  A look-alike a CA may issue to someone else (U+017F LATIN
    SMALL LETTER LONG S, U+212A KELVIN SIGN, fullwidth forms, a ligature, a
    no-break space) is another name, though RFC 4518's case folding and
    NFKC would make it the same.
    """

    def subject(self, common_name: str) -> Any:
        """
        The subject of a certificate our CA issued: CN, O=Example, C=GB.
        """
        return issue(CA, common_name).certificate.subject

    def test_look_alikes_are_other_names(self) -> None:
        for presented, registered in [
            ("order\u017f", "orders"),  # ſ, RFC 4518 folds it to s
            ("orders", "order\u017f"),
            ("\u212aelvin", "Kelvin"),  # KELVIN SIGN, NFKC and case folding make it K, k
            ("\u212aelvin", "kelvin"),
            ("Kelvin", "\u212aelvin"),
            ("\uff4f\uff52\uff44\uff45\uff52\uff53", "orders"),  # fullwidth ｏｒｄｅｒｓ
            ("\uff2f\uff32\uff24\uff25\uff32\uff33", "ORDERS"),  # fullwidth ＯＲＤＥＲＳ
            ("of\ufb01ce", "office"),  # the ﬁ ligature
            ("web\u00a0app", "web app"),  # a no-break space
            ("web\u2003app", "web app"),  # an em space
            ("orders\u200b", "orders"),  # a zero-width space
            ("ZO\u00cb", "Zo\u00eb"),  # no case folding beyond ASCII
            ("Zo\u0065\u0308", "Zo\u00eb"),  # nor normalisation: e + combining diaeresis
        ]:
            self.assertFalse(
                same_dn(f"CN={registered},O=Example,C=GB", self.subject(presented)),
                (presented, registered),
            )

    def test_ascii_case_and_spaces(self) -> None:
        """
        What an operator types may differ from the certificate in the case
        of ASCII letters (attribute names and values) and in spaces around
        and within values (RFC 4518 §2.6.1); the order of the RDNs may not.
        """
        for presented, registered in [
            ("orders", "CN=orders,O=Example,C=GB"),
            ("Orders", "cn=ORDERS,o=example,c=gb"),
            ("ORDERS", "CN=orders,O=Example,C=GB"),
            ("web app", "CN=web   app,O=Example,C=GB"),
            ("  web  app ", "CN=web app,O=Example,C=GB"),
            ("Zo\u00eb", "CN=zo\u00eb,O=Example,C=GB"),
            ("Zo\u00eb", "CN=ZO\\C3\\AB,O=EXAMPLE,C=GB"),  # RFC 4514 hex escapes: UTF-8 of ë
        ]:
            self.assertTrue(same_dn(registered, self.subject(presented)), (presented, registered))
        self.assertFalse(same_dn("CN=Zo\u00cb,O=Example,C=GB", self.subject("Zo\u00eb")))

    def test_subject_alternative_names(self) -> None:
        """
        The same rule for a registered DNS name or email address: ASCII
        case only.
        """
        certificate = issue(
            CA, "client-one", dns=("kelvin.example",), emails=("ops@example.com",)
        )
        metadata = {"token_endpoint_auth_method": "tls_client_auth"}
        for field, value in [
            ("tls_client_auth_san_dns", "KELVIN.Example"),
            ("tls_client_auth_san_email", "OPS@Example.COM"),
        ]:
            check_certificate({**metadata, field: value}, presented(certificate))
        for field, value in [
            ("tls_client_auth_san_dns", "\u212aelvin.example"),
            ("tls_client_auth_san_dns", "kelvin.\uff45xample"),
            ("tls_client_auth_san_email", "op\u017f@example.com"),
        ]:
            with self.assertRaises(CertificateRefused, msg=value):
                check_certificate({**metadata, field: value}, presented(certificate))


class CheckCertificateTests(SynchronousTestCase):
    def refused(self, metadata: dict[str, Any], certificate: PresentedCertificate | None) -> str:
        with self.assertRaises(CertificateRefused) as caught:
            check_certificate(metadata, certificate)
        return str(caught.exception)

    def test_each_subject_field(self) -> None:
        for field, value in [
            ("tls_client_auth_subject_dn", DN),
            ("tls_client_auth_san_dns", "CLIENT.example.com"),
            ("tls_client_auth_san_uri", "spiffe://example.com/client-one"),
            ("tls_client_auth_san_ip", "10.1.2.3"),
            ("tls_client_auth_san_email", "ops@example.com"),
        ]:
            check_certificate(
                {"token_endpoint_auth_method": "tls_client_auth", field: value}, presented(CLIENT)
            )

    def test_each_subject_field_mismatch(self) -> None:
        for field, value in [
            ("tls_client_auth_subject_dn", "CN=client-two,O=Example,C=GB"),
            ("tls_client_auth_san_dns", "other.example.com"),
            ("tls_client_auth_san_uri", "spiffe://example.com/client-two"),
            ("tls_client_auth_san_ip", "10.1.2.4"),
            ("tls_client_auth_san_email", "dev@example.com"),
        ]:
            message = self.refused(
                {"token_endpoint_auth_method": "tls_client_auth", field: value}, presented(CLIENT)
            )
            self.assertIn(field, message)

    def test_chain_not_verified(self) -> None:
        message = self.refused(
            {"token_endpoint_auth_method": "tls_client_auth", "tls_client_auth_subject_dn": DN},
            presented(CLIENT, chain_verified=False),
        )
        self.assertIn("trusted CA", message)

    def test_none_presented(self) -> None:
        self.assertIn(
            "none was presented",
            self.refused({"token_endpoint_auth_method": "tls_client_auth"}, None),
        )

    def test_expired_and_not_yet_valid(self) -> None:
        for certificate in (expired(CA, "client-one"), not_yet_valid(CA, "client-one")):
            self.assertIn(
                "expired or is not yet valid",
                self.refused(
                    {
                        "token_endpoint_auth_method": "tls_client_auth",
                        "tls_client_auth_subject_dn": DN,
                    },
                    presented(certificate),
                ),
            )
        for certificate in (expired(None, "s"), not_yet_valid(None, "s")):
            registered = {
                "token_endpoint_auth_method": "self_signed_tls_client_auth",
                "jwks": {"keys": [{"kty": "EC", "x5c": [certificate.x5c]}]},
            }
            self.assertIn("expired", self.refused(registered, presented(certificate, False)))

    def test_self_signed(self) -> None:
        registered = {
            "token_endpoint_auth_method": "self_signed_tls_client_auth",
            "jwks": {"keys": [{"kty": "EC"}, {"kty": "EC", "x5c": [SELF_SIGNED.x5c]}]},
        }
        check_certificate(registered, presented(SELF_SIGNED, chain_verified=False))
        self.assertIn("not one this client registered", self.refused(registered, presented(CLIENT)))

    def test_bound_thumbprint(self) -> None:
        certificate = presented(CLIENT)
        self.assertEqual(certificate.thumbprint, thumbprint(CLIENT))
        for registered, expected in [
            ({"token_endpoint_auth_method": "client_secret_basic"}, None),
            ({"token_endpoint_auth_method": "client_secret_basic", BOUND_TOKENS: True}, certificate.thumbprint),
            ({"token_endpoint_auth_method": "tls_client_auth"}, certificate.thumbprint),
            ({"token_endpoint_auth_method": "self_signed_tls_client_auth"}, certificate.thumbprint),
        ]:
            self.assertEqual(mtls.bound_thumbprint(registered, certificate), expected)
            self.assertIsNone(mtls.bound_thumbprint(registered, None))

    def test_confirmation_beside_dpop(self) -> None:
        """
        RFC 7800 §3.1: cnf may carry a DPoP jkt and an x5t#S256 together.
        """
        claims = dict(
            issuer=ISSUER,
            client_id="c",
            audience=[ISSUER],
            issued_at=0,
            expires_at=1,
            jti="j",
            scope=(),
            extra={},
        )
        both = access_token_claims(**claims, jkt="abc", x5t_s256="xyz")  # type: ignore[arg-type]
        self.assertEqual(both["cnf"], {"jkt": "abc", "x5t#S256": "xyz"})
        self.assertEqual(access_token_claims(**claims, x5t_s256="xyz")["cnf"], {"x5t#S256": "xyz"})  # type: ignore[arg-type]
        self.assertNotIn("cnf", access_token_claims(**claims))  # type: ignore[arg-type]


class DiscoveryTests(SynchronousTestCase):
    def test_not_advertised_without_mtls(self) -> None:
        document = metadata(ISSUER, "RS256")
        self.assertNotIn("tls_client_auth", document["token_endpoint_auth_methods_supported"])
        self.assertNotIn(BOUND_TOKENS, document)
        self.assertNotIn("mtls_endpoint_aliases", document)

    def test_advertised(self) -> None:
        document = metadata(ISSUER, "RS256", mtls=True, mtls_base_url="https://mtls.example")
        for name in ("token", "introspection", "revocation"):
            self.assertIn("tls_client_auth", document[f"{name}_endpoint_auth_methods_supported"])
            self.assertIn(
                "self_signed_tls_client_auth", document[f"{name}_endpoint_auth_methods_supported"]
            )
        self.assertIs(document[BOUND_TOKENS], True)
        self.assertEqual(
            document["mtls_endpoint_aliases"],
            {
                "token_endpoint": "https://mtls.example/token",
                "introspection_endpoint": "https://mtls.example/token/introspect",
                "revocation_endpoint": "https://mtls.example/token/revoke",
            },
        )


class _MTLSApp(ServerTestCase):
    """
    The whole app, with client certificates from a proxy's header.
    """

    header = "X-Client-Cert"
    trusted = ("127.0.0.1",)
    token_format = "jwt"

    def make_config(self, **tokens: Any) -> Any:
        config = super().make_config(format=self.token_format, **tokens)
        return evolve(
            config,
            tls=TLSConfig(base_url="https://mtls.example"),
            mtls=MTLSConfig(proxy_header=self.header, trusted_proxies=self.trusted),
        )

    def make_certificates(self) -> Any:
        # the certificate reader the daemon makes
        return certificate_reader(self.clock, self.config, client_ca=None)

    def with_cert(
        self, path: str, form: dict[str, str], certificate: Issued | None, **headers: str
    ) -> Any:
        from urllib.parse import urlencode

        headers = {"Content-Type": "application/x-www-form-urlencoded", **headers}
        if certificate is not None:
            headers[self.header] = certificate.escaped
        return self.request("POST", path, headers=headers, data=urlencode(form).encode())

    def tls_client(self) -> dict[str, Any]:
        return self.register(
            scope="read",
            token_endpoint_auth_method="tls_client_auth",
            tls_client_auth_subject_dn=DN,
        )



class MTLSAppTests(_MTLSApp):
    """
    The whole app, with client certificates from a trusted proxy's header.
    """

    def test_tls_client_auth(self) -> None:
        client = self.tls_client()
        response = self.with_cert(
            "/token", {"grant_type": "client_credentials", "client_id": client["client_id"]}, CLIENT
        )
        self.assertEqual(response.code, 200, response.body)
        claims = self.verify(response.json()["access_token"])
        self.assertEqual(claims["cnf"], {"x5t#S256": thumbprint(CLIENT)})
        self.assertEqual(claims["client_id"], client["client_id"])

    def test_refusals(self) -> None:
        client = self.tls_client()
        form = {"grant_type": "client_credentials", "client_id": client["client_id"]}
        for certificate in (
            None,
            issue(CA, "client-two"),
            expired(CA, "client-one"),
            not_yet_valid(CA, "client-one"),
        ):
            response = self.with_cert("/token", form, certificate)
            self.assertEqual(response.code, 401, certificate)
            self.assertEqual(response.json()["error"], "invalid_client")

    def test_look_alike_subject_refused(self) -> None:
        """
        A CA-issued CN=orderſ (U+017F) is not the client registered with
        CN=orders; CN=ORDERS, in other ASCII case, is.
        """
        client = self.register(
            scope="read",
            token_endpoint_auth_method="tls_client_auth",
            tls_client_auth_subject_dn="CN=orders,O=Example,C=GB",
        )
        form = {"grant_type": "client_credentials", "client_id": client["client_id"]}
        for common_name in ("order\u017f", "\uff4frders", "orders\u200b"):
            response = self.with_cert("/token", form, issue(CA, common_name))
            self.assertEqual(response.code, 401, common_name)
            self.assertEqual(response.json()["error"], "invalid_client")
        response = self.with_cert("/token", form, issue(CA, "ORDERS"))
        self.assertEqual(response.code, 200, response.body)

    def test_client_id_alone_for_a_secret_client(self) -> None:
        client = self.register(scope="read")
        response = self.with_cert(
            "/token", {"grant_type": "client_credentials", "client_id": client["client_id"]}, CLIENT
        )
        self.assertEqual(response.code, 401)
        self.assertEqual(response.json()["error"], "invalid_client")

    def test_secret_does_not_authenticate_an_mtls_client(self) -> None:
        """
        A certificate client registered when such clients were still given
        a secret: the secret does not authenticate it, and it is told why.
        """
        client = self.tls_client()
        secret = "an-old-secret"
        stored = self.successResultOf(self.store.get_client(client["client_id"]))
        self.successResultOf(
            self.store.replace_client(evolve(stored, client_secret_digest=credentials.digest(secret)))
        )
        response = self.with_cert(
            "/token",
            {"grant_type": "client_credentials"},
            CLIENT,
            Authorization=basic(client["client_id"], secret),
        )
        self.assertEqual(response.code, 401)
        self.assertIn("tls_client_auth", response.json()["error_description"])

    def test_self_signed(self) -> None:
        client = self.register(
            token_endpoint_auth_method="self_signed_tls_client_auth",
            jwks={"keys": [SELF_SIGNED.jwk]},
        )
        form = {"grant_type": "client_credentials", "client_id": client["client_id"]}
        response = self.with_cert("/token", form, SELF_SIGNED)
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(
            self.verify(response.json()["access_token"])["cnf"], {"x5t#S256": thumbprint(SELF_SIGNED)}
        )
        self.assertEqual(self.with_cert("/token", form, issue(None, "impostor")).code, 401)

    def test_bound_tokens_for_a_secret_client(self) -> None:
        client = self.register(**{BOUND_TOKENS: True})
        auth = basic(client["client_id"], client["client_secret"])
        form = {"grant_type": "client_credentials"}
        response = self.with_cert("/token", form, CLIENT, Authorization=auth)
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(
            self.verify(response.json()["access_token"])["cnf"], {"x5t#S256": thumbprint(CLIENT)}
        )
        # Without a certificate: refused, not a bearer token in its place.
        response = self.with_cert("/token", form, None, Authorization=auth)
        self.assertEqual(response.code, 400)
        self.assertIn(BOUND_TOKENS, response.json()["error_description"])

    def test_unbound_for_a_plain_client(self) -> None:
        client = self.register()
        response = self.with_cert(
            "/token",
            {"grant_type": "client_credentials"},
            CLIENT,
            Authorization=basic(client["client_id"], client["client_secret"]),
        )
        self.assertNotIn("cnf", self.verify(response.json()["access_token"]))

    def test_introspection_and_revocation(self) -> None:
        client = self.tls_client()
        me = {"client_id": client["client_id"]}
        token = self.with_cert(
            "/token", {"grant_type": "client_credentials", **me}, CLIENT
        ).json()["access_token"]
        answer = self.with_cert("/token/introspect", {"token": token, **me}, CLIENT)
        self.assertEqual(answer.code, 200, answer.body)
        self.assertEqual(answer.json()["cnf"], {"x5t#S256": thumbprint(CLIENT)})
        self.assertTrue(answer.json()["active"])
        for path in ("/token/introspect", "/token/revoke"):
            for certificate in (None, issue(CA, "client-two")):
                refused = self.with_cert(path, {"token": token, **me}, certificate)
                self.assertEqual(refused.code, 401, path)
                self.assertEqual(refused.json()["error"], "invalid_client")
        self.assertEqual(self.with_cert("/token/revoke", {"token": token, **me}, CLIENT).code, 200)
        answer = self.with_cert("/token/introspect", {"token": token, **me}, CLIENT)
        self.assertEqual(answer.json(), {"active": False})

    def test_discovery(self) -> None:
        document = self.request("GET", "/.well-known/oauth-authorization-server").json()
        self.assertIs(document[BOUND_TOKENS], True)
        self.assertIn("tls_client_auth", document["token_endpoint_auth_methods_supported"])
        self.assertEqual(
            document["mtls_endpoint_aliases"]["token_endpoint"], "https://mtls.example/token"
        )


class OpaqueMTLSAppTests(MTLSAppTests):
    """
    The same with opaque tokens: the binding is stored, and introspection
    returns it.
    """

    token_format = "opaque"

    def verify(self, access_token: str, audience: str = ISSUER) -> dict[str, Any]:
        record = self.successResultOf(self.store.get_token(credentials.opaque_token_key(access_token)))
        assert record is not None
        claims: dict[str, Any] = {"client_id": record.client_id}
        if record.x5t_s256 is not None:
            claims["cnf"] = {"x5t#S256": record.x5t_s256}
        return claims


class UntrustedProxyTests(_MTLSApp):
    """
    The header from an address not in trusted_proxies is ignored: a forged
    header authenticates nobody.
    """

    trusted = ("127.0.0.2",)

    def test_tls_client_auth(self) -> None:
        client = self.tls_client()
        response = self.with_cert(
            "/token", {"grant_type": "client_credentials", "client_id": client["client_id"]}, CLIENT
        )
        self.assertEqual(response.code, 401)
        self.assertIn("none was presented", response.json()["error_description"])


class SelfSignedJWKSURITests(_MTLSApp):
    """
    RFC 8705 §2.2.2: a self_signed_tls_client_auth client whose certificate
    is behind its jwks_uri (a twisted.web resource reached through StubTreq).
    """

    def make_jwks_http(self) -> Any:
        self.jwks_server = JWKSResource()
        self.jwks_server.jwks = {"keys": [SELF_SIGNED.jwk]}
        return StubTreq(self.jwks_server)

    def setUp(self) -> None:
        super().setUp()
        client = self.register(
            token_endpoint_auth_method="self_signed_tls_client_auth", jwks_uri=JWKS_URI
        )
        self.assertEqual(client["jwks_uri"], JWKS_URI)
        self.form = {"grant_type": "client_credentials", "client_id": client["client_id"]}

    def refused(self, certificate: Issued | None) -> str:
        response = self.with_cert("/token", self.form, certificate)
        self.assertEqual(response.code, 401, response.body)
        self.assertEqual(response.json()["error"], "invalid_client")
        return str(response.json()["error_description"])

    def test_accepted_and_cached(self) -> None:
        for _ in range(2):
            response = self.with_cert("/token", self.form, SELF_SIGNED)
            self.assertEqual(response.code, 200, response.body)
            self.assertEqual(
                self.verify(response.json()["access_token"])["cnf"],
                {"x5t#S256": thumbprint(SELF_SIGNED)},
            )
        self.assertEqual(self.jwks_server.fetches, 1)

    def test_not_in_the_set(self) -> None:
        impostor = issue(None, "impostor")
        self.assertIn("not one this client registered", self.refused(impostor))
        # fetched, then fetched again in case the client rotated; no more
        # within jwks_uri_refetch_seconds, however many impostors come
        self.assertEqual(self.jwks_server.fetches, 2)
        self.refused(impostor)
        self.assertEqual(self.jwks_server.fetches, 2)

    def test_no_certificate_fetches_nothing(self) -> None:
        self.assertIn("none was presented", self.refused(None))
        self.assertEqual(self.jwks_server.fetches, 0)

    def test_rotation_accepted_at_once(self) -> None:
        self.assertEqual(self.with_cert("/token", self.form, SELF_SIGNED).code, 200)
        rotated = issue(None, "self-signed-client")
        self.jwks_server.jwks = {"keys": [SELF_SIGNED.jwk, rotated.jwk]}
        response = self.with_cert("/token", self.form, rotated)
        self.assertEqual(response.code, 200, response.body)
        self.assertEqual(
            self.verify(response.json()["access_token"])["cnf"], {"x5t#S256": thumbprint(rotated)}
        )
        self.assertEqual(self.jwks_server.fetches, 2)

    def refused_after_timeout(self) -> str:
        """
        Refused once the jwks_uri fetch timeout (5 s) has passed, not
        before: every failed fetch answers alike.
        """
        from urllib.parse import urlencode

        pending = self.treq.post(
            ISSUER + "/token",
            data=urlencode(self.form).encode(),
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                self.header: SELF_SIGNED.escaped,
            },
        )
        self.clock.advance(4.9)
        self.treq.flush()
        self.assertNoResult(pending)
        self.clock.advance(0.2)
        self.treq.flush()
        response = self.successResultOf(pending)
        self.assertEqual(response.code, 401)
        body = self.successResultOf(response.json())
        self.assertEqual(body["error"], "invalid_client")
        return str(body["error_description"])

    def test_unreachable(self) -> None:
        self.jwks_server.code = 500
        self.assertIn("jwks_uri could not be fetched", self.refused_after_timeout())

    def test_not_a_jwk_set(self) -> None:
        self.jwks_server.body = b"<html>"
        self.assertIn("jwks_uri could not be fetched", self.refused_after_timeout())

    def test_certificate_key_refused(self) -> None:
        """
        A served certificate whose key would be refused at registration
        (here on secp256k1) is left out of the set.
        """
        odd = issue(None, "odd-curve", curve=ec.SECP256K1())
        self.jwks_server.jwks = {"keys": [SELF_SIGNED.jwk, {**SELF_SIGNED.jwk, "x5c": [odd.x5c]}]}
        self.assertIn("not one this client registered", self.refused(odd))
        self.assertEqual(self.with_cert("/token", self.form, SELF_SIGNED).code, 200)

    def test_hang_times_out(self) -> None:
        self.jwks_server.hang = True
        self.assertIn("jwks_uri could not be fetched", self.refused_after_timeout())


class RegistrationTests(ServerTestCase):
    def refused(self, field: str, **metadata: Any) -> None:
        response = self.request(
            "POST",
            "/client-reg",
            headers={"Authorization": f"Bearer {MASTER_TOKEN}"},
            json_body=metadata,
        )
        self.assertEqual(response.code, 400, metadata)
        self.assertEqual(response.json()["error"], "invalid_client_metadata")
        self.assertTrue(response.json()["error_description"].startswith(field), response.body)

    def test_tls_client_auth_needs_exactly_one_subject(self) -> None:
        method = {"token_endpoint_auth_method": "tls_client_auth"}
        self.refused("tls_client_auth_subject_dn", **method)
        self.refused(
            "tls_client_auth_subject_dn",
            **method,
            tls_client_auth_subject_dn=DN,
            tls_client_auth_san_dns="client.example.com",
        )

    def test_malformed_subjects(self) -> None:
        method = {"token_endpoint_auth_method": "tls_client_auth"}
        for field, value in [
            ("tls_client_auth_subject_dn", "no equals sign"),
            ("tls_client_auth_subject_dn", 7),
            ("tls_client_auth_san_ip", "10.1.2"),
            ("tls_client_auth_san_email", "nobody"),
            ("tls_client_auth_san_uri", "relative"),
            ("tls_client_auth_san_dns", ""),
        ]:
            self.refused(field, **method, **{field: value})

    def test_subject_only_with_tls_client_auth(self) -> None:
        self.refused("tls_client_auth_san_dns", tls_client_auth_san_dns="client.example.com")

    def test_self_signed_needs_x5c(self) -> None:
        method = {"token_endpoint_auth_method": "self_signed_tls_client_auth"}
        self.refused("jwks", **method)
        self.refused("jwks", **method, jwks={"keys": [{"kty": "EC"}]})
        self.refused("jwks", **method, jwks={"keys": [{"kty": "EC", "x5c": ["bm90IGEgY2VydA=="]}]})
        self.refused("jwks", **method, jwks={"keys": [{"kty": "EC", "x5c": "x"}]})

    def test_self_signed_jwks_uri(self) -> None:
        method = {"token_endpoint_auth_method": "self_signed_tls_client_auth"}
        self.refused("jwks_uri", **method, jwks_uri="http://client.example/jwks")
        self.refused("jwks_uri", **method, jwks_uri="http://127.0.0.1:8080/jwks")
        self.refused("jwks_uri", **method, jwks_uri="https://client.example/jwks", jwks={"keys": []})
        uri = "https://client.example/jwks"
        self.assertEqual(self.register(**method, jwks_uri=uri)["jwks_uri"], uri)

    def test_certificate_key_rules(self) -> None:
        """
        A registered certificate's key is held to the rules of any key:
        no curve but P-256, P-384, P-521.
        """
        method = {"token_endpoint_auth_method": "self_signed_tls_client_auth"}
        odd = issue(None, "odd-curve", curve=ec.SECP256K1())
        self.refused("jwks", **method, jwks={"keys": [{**SELF_SIGNED.jwk, "x5c": [odd.x5c]}]})
        self.register(**method, jwks={"keys": [SELF_SIGNED.jwk]})

    def test_bound_tokens_is_a_boolean(self) -> None:
        self.refused(BOUND_TOKENS, **{BOUND_TOKENS: "yes"})

    def test_registered(self) -> None:
        client = self.register(
            token_endpoint_auth_method="tls_client_auth",
            tls_client_auth_san_uri="spiffe://example.com/client-one",
            **{BOUND_TOKENS: True},
        )
        self.assertEqual(client["tls_client_auth_san_uri"], "spiffe://example.com/client-one")
        self.assertIs(client[BOUND_TOKENS], True)

    def test_privileged(self) -> None:
        """
        A client's own registration access token cannot change how it
        authenticates by certificate, nor whether its tokens are bound.
        """
        client = self.register(
            token_endpoint_auth_method="tls_client_auth", tls_client_auth_subject_dn=DN
        )
        for change in [
            {"tls_client_auth_subject_dn": "CN=attacker,O=Example,C=GB"},
            {
                "token_endpoint_auth_method": "self_signed_tls_client_auth",
                "tls_client_auth_subject_dn": None,
                "jwks": {"keys": [SELF_SIGNED.jwk]},
            },
            {BOUND_TOKENS: True},
        ]:
            body = {
                "client_id": client["client_id"],
                "token_endpoint_auth_method": "tls_client_auth",
                "tls_client_auth_subject_dn": DN,
                **change,
            }
            body = {k: v for k, v in body.items() if v is not None}
            response = self.request(
                "PUT",
                f"/client-reg/{client['client_id']}",
                headers={"Authorization": f"Bearer {client['registration_access_token']}"},
                json_body=body,
            )
            self.assertEqual(response.code, 400, change)
            self.assertIn("only the master token", response.json()["error_description"])


class ChainVerifierTests(SynchronousTestCase):
    def test_chains_to_client_ca(self) -> None:
        from twisted.internet.task import Clock

        from ccserver.tls import ChainVerifier

        clock = Clock()
        clock.advance(time.time())
        verifier = ChainVerifier([CA.certificate], clock.seconds)
        self.assertTrue(verifier.verify(CLIENT.certificate, []))
        self.assertFalse(verifier.verify(issue(OTHER_CA, "client-one").certificate, []))
        self.assertFalse(verifier.verify(SELF_SIGNED.certificate, []))
        self.assertFalse(verifier.verify(expired(CA, "client-one").certificate, []))

    def test_verdict_kept_a_while(self) -> None:
        """
        A chain is verified again once its verdict is older than
        CACHE_SECONDS (here: the client certificate has expired by then).
        """
        from twisted.internet.task import Clock

        from ccserver.tls import ChainVerifier

        clock = Clock()
        clock.advance(time.time())
        verifier = ChainVerifier([CA.certificate], clock.seconds)
        ending = issue(
            CA, "client-one", not_after=datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=10)
        )
        self.assertTrue(verifier.verify(ending.certificate, []))
        clock.advance(30)
        self.assertTrue(verifier.verify(ending.certificate, []))
        clock.advance(verifier.CACHE_SECONDS)
        self.assertFalse(verifier.verify(ending.certificate, []))


class TokenExchangeBindingTests(_MTLSApp):
    """
    RFC 8693 with RFC 8705: a token exchanging client that authenticates
    with its certificate gets a token bound to it, as for any grant.
    """

    def test_exchanged_token_bound_to_the_certificate(self) -> None:
        from ccserver.model import ACCESS_TOKEN_TYPE, TOKEN_EXCHANGE

        api = "https://b.example/api"
        a = self.register(scope="read", audience=[api])
        a_token = self.token(
            {"grant_type": "client_credentials"}, basic(a["client_id"], a["client_secret"])
        ).json()["access_token"]
        b = self.register(
            scope="read",
            token_endpoint_auth_method="tls_client_auth",
            tls_client_auth_subject_dn=DN,
            grant_types=[TOKEN_EXCHANGE],
            resource_server_uris=[api],
        )
        form = {
            "grant_type": TOKEN_EXCHANGE,
            "client_id": b["client_id"],
            "subject_token": a_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
        }
        response = self.with_cert("/token", form, CLIENT)
        self.assertEqual(response.code, 200, response.body)
        claims = self.verify(response.json()["access_token"])
        self.assertEqual(claims["cnf"], {"x5t#S256": thumbprint(CLIENT)})
        self.assertEqual((claims["sub"], claims["act"]), (a["client_id"], {"sub": b["client_id"]}))
        # without the certificate, the client cannot even authenticate
        self.assertEqual(self.with_cert("/token", form, None).json()["error"], "invalid_client")
