"""
Bad input of any shape gets a 4xx OAuth error naming what is wrong, never a
500, on every store: generated bodies, headers and metadata, and the inputs
a review found reaching a 500, against a real C{twist ccserver} over each of
the four stores (the C{ccserver_process} fixture of C{conftest.py}).

The memory store accepts strings that SQLite, Redis and PostgreSQL refuse
(a lone surrogate cannot be encoded as UTF-8), so these tests on memory
alone once missed a 500 on the others.  After every test the server's log
must hold no critical or error line: those are for our own bugs.
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccserver.keys import public_jwk
from ccserver.oauth.clientauth import JWT_BEARER
from ccserver.oauth.dpop import MAX_JTI
from ccserver.strictjson import MAX_DEPTH
from ccserver.text import MAX_IDENTIFIER
from tests.helpers import basic
from tests.process import CCServerProcess
from tests.test_dpop import Key
from tests.test_identifiers import unstorable

pytestmark = pytest.mark.process

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
metadata_names = st.sampled_from(
    [
        "client_name", "scope", "grant_types", "response_types", "token_endpoint_auth_method",
        "client_uri", "logo_uri", "contacts", "jwks", "jwks_uri", "redirect_uris", "audience",
        "access_token_lifetime", "resource_server_uris", "software_id", "client_id",
        "client_secret", "application_type", "client_name#en", "software_statement",
    ]
)
# Bounded, so that four stores stay within seconds; derandomized in CI by
# the profile of conftest.py.
SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

#: An access log line (ccserver.accesslog): "source" - - [time] "request" ...
_ACCESS_LINE = re.compile(r'"[^"]*" - - \[[^]]*\] "')
_LOUD = re.compile(r"#(critical|error)\]")
_SENDABLE_HEADER = re.compile(r"(\S[^\r\n\x00]*)?")


class Server:
    """
    A real ccserver over one store, spoken to over HTTP.
    """

    def __init__(self, process: CCServerProcess) -> None:
        self.process = process
        self.url = process.url
        self.master_token = process.master_token
        self.session = requests.Session()

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        json_body: Any = None,
    ) -> requests.Response:
        headers = dict(headers or {})
        if json_body is not None:
            # ensure_ascii: a lone surrogate goes out as the escape \ud800
            data = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", "application/json")
        return self.session.request(method, self.url + path, headers=headers, data=data, timeout=10)

    def master(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.master_token}"}

    def register(self, **metadata: Any) -> dict[str, Any]:
        response = self.request("POST", "/client-reg", headers=self.master(), json_body=metadata)
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    def token(
        self, form: bytes, authorization: str | None = None, **more: str
    ) -> requests.Response:
        headers = {"Content-Type": "application/x-www-form-urlencoded", **more}
        if authorization is not None:
            headers["Authorization"] = authorization
        return self.request("POST", "/token", headers=headers, data=form)

    def log_size(self) -> int:
        return len(self.process.read_log())

    def log_since(self, offset: int) -> str:
        """
        The main log since C{offset}: without the audit trail's lines and
        the access log's, which go to the same standard output ([audit]
        log = "-", access_log_file = "-"), each written on a timer of its
        own (those of an earlier request may land in a later test's
        window).
        """
        text = self.process.read_log()[offset:]
        return "".join(
            line for line in text.splitlines(keepends=True)
            if not line.startswith('{"audit_version"') and _ACCESS_LINE.match(line) is None
        )


@pytest.fixture
def server(ccserver_process: CCServerProcess) -> Iterator[Server]:
    """
    The module's server; the test fails if it logged anything at the
    critical or error level.
    """
    server = Server(ccserver_process)
    start = server.log_size()
    yield server
    server.session.close()
    loud = [line for line in server.log_since(start).splitlines() if _LOUD.search(line)]
    assert loud == [], server.log_since(start)[-4000:]


def assert_oauth_error_or_success(response: requests.Response, *ok: int) -> None:
    assert response.status_code < 500, response.text
    if response.status_code not in ok:
        assert response.status_code >= 400, response.text
        body = response.json()
        assert isinstance(body["error"], str)
        assert isinstance(body["error_description"], str)


def assert_error(
    response: requests.Response, error: str, naming: str, status: int = 400
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    assert naming in body["error_description"], body
    return body


# generated input


@SETTINGS
@given(metadata=st.dictionaries(metadata_names, json_values, max_size=6))
def test_registration_metadata(server: Server, metadata: dict[str, Any]) -> None:
    response = server.request("POST", "/client-reg", headers=server.master(), json_body=metadata)
    assert_oauth_error_or_success(response, 201)


@SETTINGS
@given(
    body=st.binary(max_size=200),
    content_type=st.sampled_from(
        ["application/json", "application/json; charset=utf-8", "text/plain", ""]
    ),
)
def test_registration_raw_body(server: Server, body: bytes, content_type: str) -> None:
    response = server.request(
        "POST", "/client-reg", headers=dict(server.master(), **{"Content-Type": content_type}),
        data=body,
    )
    assert_oauth_error_or_success(response, 201)


@SETTINGS
@given(
    pairs=st.lists(
        st.tuples(
            st.sampled_from(["grant_type", "scope", "client_id", "client_secret", "resource", "x"]),
            st.text(max_size=30),
        ),
        max_size=6,
    ),
    authorization=st.one_of(
        st.none(),
        st.text(max_size=60),
        st.builds(basic, st.text(max_size=20), st.text(max_size=20)),
    ),
)
def test_token_form(
    server: Server, pairs: list[tuple[str, str]], authorization: str | None
) -> None:
    # what an HTTP client can send: ASCII, no line break, no leading space
    if authorization is not None and not (
        authorization.isascii() and _SENDABLE_HEADER.fullmatch(authorization)
    ):
        authorization = None
    response = server.token(urlencode(pairs).encode(), authorization)
    assert_oauth_error_or_success(response, 200)


@SETTINGS
@given(body=st.binary(max_size=200))
def test_token_raw_body(server: Server, body: bytes) -> None:
    response = server.token(body, basic("someone", "secret"))
    assert_oauth_error_or_success(response)


@SETTINGS
@given(metadata=st.dictionaries(metadata_names, json_values, max_size=6))
def test_replace_metadata(server: Server, metadata: dict[str, Any]) -> None:
    client = server.register(scope="read")
    own = {"Authorization": f"Bearer {client['registration_access_token']}"}
    response = server.request(
        "PUT",
        f"/client-reg/{client['client_id']}",
        headers=own,
        json_body=dict(metadata, client_id=client["client_id"]),
    )
    assert_oauth_error_or_success(response, 200)
    # The stored client is the old one or the new one, whole.
    stored = server.request("GET", f"/client-reg/{client['client_id']}", headers=own)
    assert stored.status_code == 200, stored.text
    json.dumps(stored.json())


@SETTINGS
@given(token=st.text(max_size=300))
def test_introspect_any_token(server: Server, token: str) -> None:
    client = server.register(scope="read")
    response = server.request(
        "POST",
        "/token/introspect",
        headers={
            "Authorization": basic(client["client_id"], client["client_secret"]),
            "Content-Type": "application/x-www-form-urlencoded",
        },
        data=urlencode({"token": token}).encode(),
    )
    assert_oauth_error_or_success(response, 200)
    if response.status_code == 200 and token.strip():
        assert response.json() == {"active": False}


@SETTINGS
@given(client_id=st.text(max_size=40))
def test_configuration_of_any_client_id(server: Server, client_id: str) -> None:
    """
    Whatever the path names as the client, a 4xx: the id reaches the store.
    """
    response = server.request(
        "GET", "/client-reg/" + quote(client_id, safe=""), headers=server.master()
    )
    assert_oauth_error_or_success(response)


# the inputs that once reached a 500


def test_resource_with_an_unclosed_ipv6_bracket(server: Server) -> None:
    client = server.register(scope="read")
    response = server.token(
        b"grant_type=client_credentials&resource=http://%5B::1",
        basic(client["client_id"], client["client_secret"]),
    )
    assert_error(response, "invalid_target", "resource: 'http://[::1'")


URI_FIELDS = {
    "client_uri": "http://[x",
    "logo_uri": "http://[x",
    "client_uri#fr": "http://[x",
    "jwks_uri": "https://[::1/keys",
    "audience": ["http://[x"],
    "redirect_uris": ["https://ok.example/cb", "http://[x"],
    "resource_server_uris": ["http://[x"],
}


@pytest.mark.parametrize("field", URI_FIELDS)
def test_uri_that_cannot_be_split_at_registration(server: Server, field: str) -> None:
    response = server.request(
        "POST", "/client-reg", headers=server.master(), json_body={field: URI_FIELDS[field]}
    )
    assert_error(response, "invalid_client_metadata", f"{field}: ")


@pytest.mark.parametrize("field", URI_FIELDS)
def test_uri_that_cannot_be_split_at_replace(server: Server, field: str) -> None:
    client = server.register(scope="read")
    response = server.request(
        "PUT",
        f"/client-reg/{client['client_id']}",
        headers=server.master(),
        json_body={"client_id": client["client_id"], field: URI_FIELDS[field]},
    )
    assert_error(response, "invalid_client_metadata", f"{field}: ")


SURROGATE = "\ud800"

#: Bodies with a lone surrogate somewhere, and the name the error must give.
SURROGATE_BODIES: dict[str, dict[str, Any]] = {
    "client_name": {"client_name": "Robot " + SURROGATE},
    "client_name#fr": {"client_name#fr": SURROGATE},
    "software_id": {"software_id": SURROGATE},
    "scope": {"scope": "read" + SURROGATE},
    "client_uri": {"client_uri": "https://app.example/" + SURROGATE},
    "contacts[1]": {"contacts": ["ops@example.com", "\udfff@example.com"]},
    "audience[0]": {"audience": ["https://api.example/" + SURROGATE]},
    "jwks.keys[0].kid": {"jwks": {"keys": [{"kty": "oct", "kid": SURROGATE}]}},
    # a member this server ignores is refused too: every store sees the same
    "x-extension": {"x-extension": SURROGATE},
    "the document: has a member name": {SURROGATE: "x"},
}


@pytest.mark.parametrize("naming", SURROGATE_BODIES)
def test_lone_surrogate_at_registration(server: Server, naming: str) -> None:
    response = server.request(
        "POST", "/client-reg", headers=server.master(), json_body=SURROGATE_BODIES[naming]
    )
    body = assert_error(response, "invalid_client_metadata", naming)
    assert "lone surrogate" in body["error_description"]


@pytest.mark.parametrize("naming", SURROGATE_BODIES)
def test_lone_surrogate_at_replace(server: Server, naming: str) -> None:
    client = server.register(client_name="before", scope="read")
    response = server.request(
        "PUT",
        f"/client-reg/{client['client_id']}",
        headers=server.master(),
        json_body=dict(SURROGATE_BODIES[naming], client_id=client["client_id"]),
    )
    assert_error(response, "invalid_client_metadata", naming)
    stored = server.request("GET", f"/client-reg/{client['client_id']}", headers=server.master())
    assert stored.json()["client_name"] == "before"


@pytest.mark.parametrize(
    "form",
    [
        # %ED%A0%80 is what UTF-8 would make of U+D800: strict decoding refuses it
        b"grant_type=client_credentials&client_id=%ED%A0%80&client_secret=x",
        b"grant_type=client_credentials&scope=read%ED%A0%80",
        b"grant_type=client_credentials&resource=https://api.example/%ED%A0%80",
        b"grant_type=client_credentials&x=%ED%B0%80",
    ],
)
def test_surrogate_in_a_form(server: Server, form: bytes) -> None:
    client = server.register(scope="read")
    response = server.token(form, basic(client["client_id"], client["client_secret"]))
    assert_error(response, "invalid_request", "UTF-8")


def test_surrogate_in_basic_credentials(server: Server) -> None:
    """
    RFC 6749 §2.3.1: the Basic credentials are percent-decoded; what is
    not UTF-8 there is no client's id, and authentication fails.
    """
    response = server.token(b"grant_type=client_credentials", basic("%ED%A0%80", "secret"))
    assert response.status_code == 401, response.text


def nested(depth: int) -> bytes:
    """
    A registration body whose extension member (metadata this server does
    not know, which RFC 7591 §2 has it ignore: no rule of its own refuses
    it) nests C{depth} levels deep in all (the body's own object is level 1).
    """
    inner = depth - 2  # below the body and the member; the first is keys
    return b'{"x_extension": {"keys": ' + b"[" * inner + b"]" * inner + b"}}"


def test_nesting_at_the_limit_is_accepted(server: Server) -> None:
    response = server.request(
        "POST",
        "/client-reg",
        headers=dict(server.master(), **{"Content-Type": "application/json"}),
        data=nested(MAX_DEPTH),
    )
    assert response.status_code == 201, response.text


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100, 950, 951, 955, 958, 959, 1000, 30_000])
def test_nesting_beyond_the_limit(server: Server, depth: int) -> None:
    response = server.request(
        "POST",
        "/client-reg",
        headers=dict(server.master(), **{"Content-Type": "application/json"}),
        data=nested(depth),
    )
    assert_error(response, "invalid_client_metadata", f"nested more than {MAX_DEPTH} levels deep")
    if depth < 900:
        # named where it is: the parser itself stops (RecursionError) far below
        assert "x_extension.keys[0]" in response.json()["error_description"]


# odd URLs: a client's mistake, answered in JSON, never a critical log line


@pytest.mark.parametrize(
    "path", ["/%FF", "/client-reg/%FF", "/token/%FF", "/client-reg/%ED%A0%80", "/%C3"]
)
def test_path_not_utf8(server: Server, path: str) -> None:
    start = server.log_size()
    response = server.request("GET", path, headers=server.master())
    assert_error(response, "invalid_request", "the URL path is not UTF-8")
    # the access log line, and nothing else
    assert len(server.log_since(start).splitlines()) <= 1, server.log_since(start)


@pytest.mark.parametrize(
    "path", ["/%00", "//", "///token", "/client-reg/%00", "/client-reg//x", "/x" * 2000]
)
def test_odd_path(server: Server, path: str) -> None:
    start = server.log_size()
    response = server.request("GET", path, headers=server.master())
    assert_oauth_error_or_success(response)
    assert response.headers["Content-Type"] == "application/json"
    assert len(server.log_since(start).splitlines()) <= 1, server.log_since(start)


def test_host_not_utf8(server: Server) -> None:
    with socket.create_connection(("127.0.0.1", server.process.port), timeout=10) as connection:
        connection.sendall(b"GET /jwks.json HTTP/1.0\r\nHost: \xff\xfe\r\n\r\n")
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    # RFC 9112 §3.2: not a host, refused before any route sees it
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert json.loads(body)["error_description"].startswith("the Host header is not a host")


# strings that would become part of a store key: one rule (ccserver.text)

UNSTORABLE = unstorable(MAX_IDENTIFIER)
#: Those a form can carry: it is strict UTF-8, so no lone surrogate.
FORM_UNSTORABLE = {name: value for name, value in UNSTORABLE.items() if name != "lone surrogate"}


@pytest.mark.parametrize("jti", unstorable(MAX_JTI).values(), ids=unstorable(MAX_JTI))
def test_dpop_jti_not_storable(server: Server, jti: str) -> None:
    client = server.register(scope="read")
    response = server.token(
        b"grant_type=client_credentials",
        basic(client["client_id"], client["client_secret"]),
        DPoP=Key().proof(time.time(), jti=jti, htu=server.url + "/token"),
    )
    assert_error(response, "invalid_dpop_proof", "jti")


def private_key_jwt_client(server: Server) -> tuple[dict[str, Any], ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    client = server.register(
        scope="read",
        token_endpoint_auth_method="private_key_jwt",
        jwks={"keys": [dict(public_jwk(key), kid="k1")]},
    )
    return client, key


def assertion_form(
    server: Server, key: ec.EllipticCurvePrivateKey, client_id: str, **changes: Any
) -> bytes:
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": server.url + "/token",
        "exp": int(time.time()) + 60,
        "jti": str(uuid.uuid4()),
    }
    kid = changes.pop("kid", "k1")
    claims.update(changes)
    assertion = jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid})
    return urlencode(
        {
            "grant_type": "client_credentials",
            "client_assertion_type": JWT_BEARER,
            "client_assertion": assertion,
        }
    ).encode()


@pytest.mark.parametrize("claim", ["jti", "sub", "kid"])
@pytest.mark.parametrize("value", UNSTORABLE.values(), ids=UNSTORABLE)
def test_assertion_value_not_storable(server: Server, claim: str, value: str) -> None:
    client, key = private_key_jwt_client(server)
    changes = {claim: value}
    if claim == "sub":
        changes["iss"] = value
    response = server.token(assertion_form(server, key, client["client_id"], **changes))
    assert_error(response, "invalid_client", claim, status=401)


@pytest.mark.parametrize("client_id", FORM_UNSTORABLE.values(), ids=FORM_UNSTORABLE)
@pytest.mark.parametrize("how", ["post", "basic", "certificate", "assertion"])
def test_client_id_not_storable(server: Server, client_id: str, how: str) -> None:
    form: dict[str, str] = {"grant_type": "client_credentials", "client_id": client_id}
    authorization = None
    if how == "post":
        form["client_secret"] = "secret"
    elif how == "basic":
        del form["client_id"]
        authorization = basic(client_id, "secret")
    elif how == "assertion":
        form.update(client_assertion_type=JWT_BEARER, client_assertion="a.b.c")
    response = server.token(urlencode(form).encode(), authorization)
    assert_error(response, "invalid_request", "client_id")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
@pytest.mark.parametrize("client_id", FORM_UNSTORABLE.values(), ids=FORM_UNSTORABLE)
def test_configuration_client_id_not_storable(server: Server, client_id: str, method: str) -> None:
    response = server.request(
        method,
        "/client-reg/" + quote(client_id, safe=""),
        headers=server.master(),
        json_body={"client_id": client_id} if method == "PUT" else None,
    )
    assert_error(response, "invalid_request", "client_id")


@pytest.mark.parametrize("path", ["/token/introspect", "/token/revoke"])
@pytest.mark.parametrize("token", FORM_UNSTORABLE.values(), ids=FORM_UNSTORABLE)
def test_token_value_not_storable(server: Server, token: str, path: str) -> None:
    """
    RFC 7662 §2.2 and RFC 7009 §2.2: a token that cannot be one of ours is
    inactive, and revoking it succeeds (the in-process tests show that the
    store is not asked: tests/test_identifiers.py).
    """
    client = server.register(scope="read")
    response = server.request(
        "POST",
        path,
        headers={
            "Authorization": basic(client["client_id"], client["client_secret"]),
            "Content-Type": "application/x-www-form-urlencoded",
        },
        data=urlencode({"token": token}).encode(),
    )
    assert response.status_code == 200, response.text
    assert response.json() == ({"active": False} if path == "/token/introspect" else {})
