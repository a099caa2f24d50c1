"""
Grant types: what the token endpoint's C{grant_type} selects, each a
Twisted plugin of L{ccserver.plugins} (L{ccserver.interfaces.IGrantTypeFactory}),
the built-in ones (C{client_credentials}, token exchange) like any other.

Every grant type plugin found is loaded (a grant handler plugin is chosen
by name; a grant type is used by the clients registered for it).  The
modules here import only the model, the errors and the interfaces: a grant
takes its steps through the endpoint it is made with
(L{ccserver.interfaces.ITokenEndpoint}), as a third party's grant does.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.logger import Logger

from ccserver.errors import GrantNotConfigured, GrantUnavailable
from ccserver.interfaces import IGrantType, IGrantTypeFactory, ITokenEndpoint
from ccserver.model import CLIENT_CREDENTIALS, is_grant_type
from ccserver.pluginloader import Found, PluginError, PluginKind, PluginScan, scan_plugins

_log = Logger()


def _grant_type_problem(grant_type: str) -> str | None:
    if is_grant_type(grant_type):
        return None
    return (
        "is not a grant type: use a name of letters, digits, '-', '.' and '_', "
        "or an absolute URI (RFC 6749 §4.5)"
    )


#: Grant type plugins: every one found is loaded, made with the endpoint.
GRANT_TYPES = PluginKind(
    interface=IGrantTypeFactory,
    what="grant type",
    key="grant_type",
    key_help=(
        "give its class a grant_type attribute (the grant_type value that selects it) "
        "and a description"
    ),
    check_key=_grant_type_problem,
    make="makeGrant",
    parameters=("endpoint",),
    failure_hint=(
        ", or have it raise ccserver.errors.GrantUnavailable('...') when the grant "
        "cannot be offered with this server"
    ),
    passes=GrantUnavailable,
    product=IGrantType,
    product_method="token",
    product_parameters=("request",),
    clash="are for",
    clash_fix="remove all but one",
)


def find_grant_types(scan: PluginScan | None = None) -> Found:
    """
    Every grant type plugin, checked: a factory that is found but cannot be
    used (no L{twisted.plugin.IPlugin}, no usable C{grant_type}, two for one
    grant type) stops the start.  A module that does not import is the
    caller's to log: nobody can tell which kind of plugin it was.

    @raise PluginError: for the first such factory.
    """
    found = (scan or scan_plugins()).find(GRANT_TYPES)
    unusable = (*found.broken, *found.clashes.values())
    if unusable:
        more = f" (and {len(unusable) - 1} more)" if len(unusable) > 1 else ""
        raise PluginError(f"a grant type plugin cannot be loaded: {unusable[0]}{more}")
    return found


def make_grants(found: Found, endpoint: ITokenEndpoint) -> dict[str, IGrantType]:
    """
    The grants of the plugins found, by C{grant_type}: C{client_credentials}
    first, the others in order.  A plugin that raises
    L{GrantUnavailable} is left out, and its message logged.

    @raise PluginError: a plugin failed in any other way.
    """
    grants: dict[str, IGrantType] = {}
    for grant_type in sorted(found.plugins, key=lambda name: (name != CLIENT_CREDENTIALS, name)):
        plugin = found.plugins[grant_type]
        try:
            grants[grant_type] = plugin.make(endpoint)
        except GrantUnavailable as e:
            # one not configured is the usual case, no cause for a warning
            log = _log.info if isinstance(e, GrantNotConfigured) else _log.warn
            log(
                "The grant type {grant_type} is not offered: {reason}",
                grant_type=grant_type,
                reason=" ".join(str(e).split()),
            )
    return grants


def descriptions(found: Found) -> Mapping[str, str]:
    """
    Each grant type plugin's one-line description, by grant type.
    """
    return {
        grant_type: str(getattr(plugin.factory, "description", ""))
        for grant_type, plugin in found.plugins.items()
    }


def builtin_grant_types() -> Found:
    """
    The grant types ccserver ships (its own plugin module only), for a
    server made without a look at the plugin folders (the tests').
    """
    from ccserver.plugins import ccserver_builtin

    return PluginScan(((ccserver_builtin.__file__, ccserver_builtin),), ()).find(GRANT_TYPES)
