"""
The token request parameters more than one grant reads, each read one way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ccserver.errors import OAuthError, invalid_request
from ccserver.model import is_resource_uri, is_scope_token


def requested_scope(form: Mapping[str, str]) -> frozenset[str] | None:
    """
    RFC 6749 §3.3: the scope values of the request, or None when it named
    none.
    """
    scope = form.get("scope")
    if scope is None or not scope.strip(" "):
        return None
    values = scope.split(" ")
    if not all(is_scope_token(v) for v in values if v):
        raise OAuthError("invalid_scope", "scope: malformed; scope values are separated by spaces")
    return frozenset(v for v in values if v)


def requested_resources(resources: Sequence[str]) -> tuple[str, ...]:
    """
    RFC 8707 §2: each C{resource} is an absolute URI without a fragment.
    """
    for resource in resources:
        if not is_resource_uri(resource):
            raise OAuthError(
                "invalid_target", f"resource: {resource!r} is not an absolute URI without fragment"
            )
    return tuple(dict.fromkeys(resources))


def required(form: Mapping[str, str], name: str) -> str:
    """
    The form parameter C{name}, which the grant cannot do without.
    """
    value = form.get(name)
    if value is None:
        raise invalid_request(f"{name}: missing")
    return value
