"""
What a store URL says: its scheme, and for SQLite its file (and so the
folder of the files made beside it).  A leaf of the stores package, so
that the package's factory and the stores it makes share it without
importing each other.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from ccserver.errors import ConfigError

SCHEMES = ("memory", "sqlite", "redis", "postgresql")


def sqlite_path(url: str) -> Path:
    """
    The file of a C{sqlite:///...} URL: three slashes and a relative path,
    or four and an absolute one.
    """
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or rest == "/":
        raise ConfigError(
            f"[store] url: {url!r} is not sqlite:///relative.db or sqlite:////absolute.db"
        )
    return Path(rest[1:])


def data_dir(url: str) -> Path:
    """
    The folder for the files the server makes beside its database (the
    generated master token, the key-encryption key): the SQLite file's
    folder, otherwise the working folder.
    """
    if url.startswith("sqlite:"):
        return sqlite_path(url).parent
    return Path(".")


def check_url(url: str) -> None:
    """
    Raise L{ConfigError} unless C{url} names a store this server can open.
    """
    scheme = urlsplit(url).scheme
    if scheme not in SCHEMES:
        raise ConfigError(
            f"[store] url: unknown scheme in {url!r}; use one of "
            + ", ".join(f"{s}://" for s in SCHEMES)
        )
    if scheme == "sqlite":
        folder = sqlite_path(url).parent
        if not folder.is_dir():
            raise ConfigError(f"[store] url: the folder {str(folder)!r} does not exist")
