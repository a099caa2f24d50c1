"""
Mutual TLS (RFC 8705) over real TLS connections to a running C{twist
ccserver}: a TLS listener beside the plain one, clients presenting
certificates with C{requests}, and a proxy's header from a trusted and an
untrusted address.
"""

from __future__ import annotations

import http.client
import os
import ssl
import subprocess
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from twisted.trial.unittest import SynchronousTestCase

from tests.certs import Issued, expired, issue, make_ca, not_yet_valid
from tests.helpers import temp_dir
from tests.process import CCServerProcess, free_port, run_ccserver
from tests.test_client_auth_jwt_process import JWKSServer
from tests.test_mtls import DN, thumbprint

pytestmark = pytest.mark.process

CA = make_ca()
SERVER_CA = make_ca("Server CA")
SERVER = issue(SERVER_CA, "localhost", dns=("localhost",), ips=("127.0.0.1",), server=True)
CLIENT = issue(CA, "client-one")
SELF_SIGNED = issue(None, "self-signed-client")


def write_config(folder: Path, tls_port: int, *, trusted: str, extra: str = "") -> Path:
    cert, key = SERVER.write(folder, "server")
    client_ca = folder / "clients-ca.pem"
    client_ca.write_bytes(CA.pem)
    config = folder / "ccserver.toml"
    config.write_text(
        f"""{extra}
[tokens]
format = "opaque"

[client_auth]
# the clients' jwks_uri are served on the loopback here
jwks_uri_private_networks = ["127.0.0.0/8"]
# a failed fetch answers after this long
jwks_uri_timeout = 1

[tls]
listen = ["tcp:{tls_port}:interface=127.0.0.1"]
certificate = "{cert}"
private_key = "{key}"
client_ca = "{client_ca}"
base_url = "https://127.0.0.1:{tls_port}"

[mtls]
proxy_header = "X-Client-Cert"
trusted_proxies = ["{trusted}"]
"""
    )
    return config


class DirectTLSTests(SynchronousTestCase):
    """
    The TLS listener; 127.0.0.2 is the trusted proxy, so that requests from
    127.0.0.1 are direct and a header they carry is forged.
    """

    workers = 1

    @classmethod
    def setUpClass(cls) -> None:
        import tempfile

        cls.folder = Path(tempfile.mkdtemp(prefix="ccserver-mtls-"))
        cls.tls_port = free_port()
        config = write_config(cls.folder, cls.tls_port, trusted="127.0.0.2")
        args = ["--config", str(config)]
        if cls.workers > 1:
            args += ["--workers", str(cls.workers)]
        cls.server = CCServerProcess(cls.folder, *args).start()
        # requests checks the server against the CA that issued it.
        cls.verify_path = str(cls.folder / "server-ca.pem")
        Path(cls.verify_path).write_bytes(SERVER_CA.pem)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.kill()

    @property
    def tls_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def cert_files(self, issued: Issued) -> tuple[str, str]:
        folder = temp_dir(self)
        return issued.write(folder, "client")

    def post(
        self, path: str, data: dict[str, str], certificate: Issued | None, **kwargs: Any
    ) -> requests.Response:
        return requests.post(
            self.tls_url + path,
            data=data,
            cert=self.cert_files(certificate) if certificate else None,
            verify=self.verify_path,
            timeout=10,
            **kwargs,
        )

    def register(self, **metadata: Any) -> dict[str, Any]:
        return self.server.register(**metadata)

    def test_ca_issued(self) -> None:
        client = self.register(
            token_endpoint_auth_method="tls_client_auth", tls_client_auth_subject_dn=DN
        )
        me = {"client_id": client["client_id"]}
        response = self.post("/token", {"grant_type": "client_credentials", **me}, CLIENT)
        self.assertEqual(response.status_code, 200, response.text)
        token = response.json()["access_token"]
        answer = self.post("/token/introspect", {"token": token, **me}, CLIENT)
        self.assertEqual(answer.status_code, 200, answer.text)
        self.assertEqual(answer.json()["cnf"], {"x5t#S256": thumbprint(CLIENT)})
        self.assertEqual(self.post("/token/revoke", {"token": token, **me}, CLIENT).status_code, 200)
        answer = self.post("/token/introspect", {"token": token, **me}, CLIENT)
        self.assertEqual(answer.json(), {"active": False})

    def test_self_signed(self) -> None:
        client = self.register(
            token_endpoint_auth_method="self_signed_tls_client_auth",
            jwks={"keys": [SELF_SIGNED.jwk]},
        )
        form = {"grant_type": "client_credentials", "client_id": client["client_id"]}
        response = self.post("/token", form, SELF_SIGNED)
        self.assertEqual(response.status_code, 200, response.text)

    def test_self_signed_jwks_uri_rotated_while_running(self) -> None:
        """
        RFC 8705 §2.2.2: the certificate behind a jwks_uri (on 127.0.0.1);
        a certificate the client adds there is accepted at once.
        """
        jwks_server = JWKSServer()
        self.addCleanup(jwks_server.close)
        jwks_server.jwks = {"keys": [SELF_SIGNED.jwk]}
        client = self.register(
            token_endpoint_auth_method="self_signed_tls_client_auth", jwks_uri=jwks_server.url
        )
        form = {"grant_type": "client_credentials", "client_id": client["client_id"]}
        response = self.post("/token", form, SELF_SIGNED)
        self.assertEqual(response.status_code, 200, response.text)
        rotated = issue(None, "self-signed-client")
        jwks_server.jwks = {"keys": [SELF_SIGNED.jwk, rotated.jwk]}
        response = self.post("/token", form, rotated)
        self.assertEqual(response.status_code, 200, response.text)

    def test_self_signed_jwks_uri_unreachable(self) -> None:
        client = self.register(
            token_endpoint_auth_method="self_signed_tls_client_auth",
            jwks_uri=f"http://127.0.0.1:{free_port()}/jwks.json",
        )
        form = {"grant_type": "client_credentials", "client_id": client["client_id"]}
        refused = self.post("/token", form, SELF_SIGNED)
        self.assertEqual(refused.status_code, 401, refused.text)
        self.assertEqual(refused.json()["error"], "invalid_client")
        self.assertIn("jwks_uri could not be fetched", refused.json()["error_description"])

    def test_refusals(self) -> None:
        """
        No certificate, another subject, a certificate from another CA (or
        self-signed) with the right subject, an expired or not yet valid one.
        """
        client = self.register(
            token_endpoint_auth_method="tls_client_auth", tls_client_auth_subject_dn=DN
        )
        form = {"grant_type": "client_credentials", "client_id": client["client_id"]}
        for certificate, why in [
            (None, "none was presented"),
            (issue(CA, "client-two"), "does not match"),
            (issue(make_ca("Rogue CA"), "client-one"), "trusted CA"),
            (issue(None, "client-one"), "trusted CA"),
            (expired(CA, "client-one"), "expired"),
            (not_yet_valid(CA, "client-one"), "not yet valid"),
        ]:
            response = self.post("/token", form, certificate)
            self.assertEqual(response.status_code, 401, (why, response.text))
            self.assertEqual(response.json()["error"], "invalid_client")
            self.assertIn(why, response.json()["error_description"])

    def test_forged_header_from_untrusted_address(self) -> None:
        client = self.register(
            token_endpoint_auth_method="tls_client_auth", tls_client_auth_subject_dn=DN
        )
        form = {"grant_type": "client_credentials", "client_id": client["client_id"]}
        for url in (self.server.url, self.tls_url):
            response = requests.post(
                url + "/token",
                data=form,
                headers={"X-Client-Cert": CLIENT.escaped},
                verify=self.verify_path,
                timeout=10,
            )
            self.assertEqual(response.status_code, 401, url)

    def test_secrets_still_work_over_tls(self) -> None:
        client = self.register()
        response = requests.post(
            self.tls_url + "/token",
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], client["client_secret"]),
            verify=self.verify_path,
            timeout=10,
        )
        self.assertEqual(response.status_code, 200, response.text)

    def test_trusted_proxy_header(self) -> None:
        """
        From 127.0.0.2 (the trusted proxy), on the plain listener.
        """
        client = self.register(
            token_endpoint_auth_method="tls_client_auth", tls_client_auth_subject_dn=DN
        )
        body = urlencode({"grant_type": "client_credentials", "client_id": client["client_id"]})
        for certificate, status in [
            (CLIENT, 200),
            (None, 401),
            (issue(CA, "client-two"), 401),
            # client_ca is set: checked here too, whatever the proxy let through
            (issue(None, "client-one"), 401),
        ]:
            connection = http.client.HTTPConnection(
                "127.0.0.1", self.server.port, timeout=10, source_address=("127.0.0.2", 0)
            )
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            if certificate is not None:
                headers["X-Client-Cert"] = certificate.escaped
            connection.request("POST", "/token", body, headers)
            response = connection.getresponse()
            self.assertEqual(response.status, status, response.read())
            connection.close()

    def test_discovery(self) -> None:
        document = requests.get(
            self.tls_url + "/.well-known/oauth-authorization-server", verify=self.verify_path, timeout=10
        ).json()
        self.assertIs(document["tls_client_certificate_bound_access_tokens"], True)
        self.assertEqual(
            document["mtls_endpoint_aliases"]["token_endpoint"], self.tls_url + "/token"
        )

    def test_tls_1_1_refused(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        # The client's own floor lowered, so that the refusal is the server's.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.tls_port, context=context, timeout=10
        )
        with self.assertRaises(ssl.SSLError) as caught:
            connection.request("GET", "/jwks.json")
        connection.close()
        self.assertIn("PROTOCOL_VERSION", str(caught.exception).upper())


class WorkersTLSTests(DirectTLSTests):
    """
    The same with --workers 2: the TLS listener is shared too.
    """

    workers = 2


class StartTests(SynchronousTestCase):
    def test_exposed_private_key_refused(self) -> None:
        folder = temp_dir(self)
        config = write_config(folder, free_port(), trusted="127.0.0.2")
        os.chmod(folder / "server.key", 0o640)
        result = run_ccserver("--config", str(config), "--store", "memory://", cwd=folder)
        self.assertNotEqual(result.returncode, 0)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("[tls] private_key", lines[0])
        self.assertIn("chmod 600", lines[0])

    def test_header_needs_trusted_proxies(self) -> None:
        folder = temp_dir(self)
        config = folder / "ccserver.toml"
        config.write_text('[mtls]\nproxy_header = "X-Client-Cert"\n')
        result = run_ccserver("--config", str(config), "--store", "memory://", cwd=folder)
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("trusted_proxies", result.stderr)


del subprocess
