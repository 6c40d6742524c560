"""Proxy URLs: parse and check them before any I/O, pick the default one, never print a password."""

from __future__ import annotations

import os
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from .errors import InvalidRequest

__all__ = ["ACCEPTED_SCHEMES", "ProxyURL", "parse_proxy", "proxy_for"]

#: ``socks5h`` is accepted as the curl spelling of "resolve names on the proxy", which is
#: what ``socks5`` already does here.
ACCEPTED_SCHEMES = ("http", "https", "socks4", "socks5", "socks5h")


@dataclass(frozen=True)
class ProxyURL:
    """A checked proxy URL. ``str()`` and ``repr()`` hide the password."""

    scheme: str
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def is_socks(self) -> bool:
        return self.scheme.startswith("socks")

    def url(self, *, with_password: bool = True) -> str:
        """The URL to hand to a connector; ``socks5h`` is spelled ``socks5`` (remote DNS)."""
        scheme = "socks5" if self.scheme == "socks5h" else self.scheme
        auth = ""
        if self.username is not None:
            secret = self.password if with_password else "***"
            auth = (
                f"{self.username}:{secret}@" if self.password is not None else f"{self.username}@"
            )
        return f"{scheme}://{auth}{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.url(with_password=False).replace("socks5://", f"{self.scheme}://", 1)

    def __repr__(self) -> str:
        return f"ProxyURL({str(self)!r})"


def parse_proxy(value: str) -> ProxyURL:
    """Check a proxy URL such as ``socks5://user:pass@127.0.0.1:1080``.

    Raises:
        InvalidRequest: the URL is malformed or its scheme is not one of ``ACCEPTED_SCHEMES``;
            the message shows the URL with its password hidden.
    """
    from ._redact import redact

    shown = redact(value)
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError as exc:
        raise InvalidRequest(f"malformed proxy URL {shown!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ACCEPTED_SCHEMES:
        raise InvalidRequest(
            f"unsupported proxy scheme in {shown!r}; use one of "
            + ", ".join(f"{s}://" for s in ACCEPTED_SCHEMES)
        )
    if not parts.hostname:
        raise InvalidRequest(
            f"malformed proxy URL {shown!r}: no host; e.g. socks5://127.0.0.1:1080"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidRequest(f"malformed proxy URL {shown!r}: a proxy URL has no path or query")
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme, 1080)
    return ProxyURL(
        scheme=scheme,
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def proxy_for(target_url: str, explicit: str | None) -> ProxyURL | None:
    """The proxy a request to ``target_url`` should use.

    An explicit ``proxy=`` wins (``""`` means "no proxy"); then ``LLMRELAY_PROXY``; then the
    standard ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``ALL_PROXY`` for the target's scheme, unless
    ``NO_PROXY`` covers the host. The environment is read at call time, so tests and long-lived
    processes see changes.
    """
    if explicit is not None:
        return parse_proxy(explicit) if explicit else None
    host = urlsplit(target_url).hostname or ""
    env = os.environ.get("LLMRELAY_PROXY")
    if env is None:
        proxies = urllib.request.getproxies_environment()
        scheme = urlsplit(target_url).scheme
        env = proxies.get(scheme) or proxies.get("all")
    bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]
    if not env or (host and bypass(host)):
        return None
    return parse_proxy(env)
