"""
The Twisted plugin package of grant handlers.

Built-in handlers are plugins like any other.  A third party drops a module
that defines an L{ccserver.interfaces.IGrantHandlerFactory} provider into a
C{ccserver/plugins/} folder anywhere on C{sys.path} (no C{__init__.py}
there) and selects it by name.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
