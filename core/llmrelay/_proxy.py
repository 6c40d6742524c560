"""Proxy URLs: parse and check them before any I/O, pick the default one, never print a password."""

from __future__ import annotations

import contextlib
import functools
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from ._env import EnvWatch, getenv
from .errors import ConfigError, InvalidRequest

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

    @property
    def secret(self) -> str | None:
        """The credential: the password, or a user without one (``TOKEN@``, ``KEY:@``: proxy
        services take the key in the user's place), but for SOCKS4's user, an identifier
        with no password."""
        if self.password:
            return self.password
        if self.username is not None and self.scheme != "socks4":
            return self.username
        return None

    def url(self, *, with_password: bool = True) -> str:
        """The URL (credentials percent-encoded); ``socks5h`` is spelled ``socks5`` (remote DNS).

        The transport hands the parts to the connectors, not this string.
        """
        scheme = "socks5" if self.scheme == "socks5h" else self.scheme
        auth = ""
        if not with_password and not self.password and self.secret is not None:
            auth = "***@"  # no password: the user is the credential
        elif self.username is not None:
            auth = quote(self.username, safe="")
            if self.password is not None:
                auth += ":" + (quote(self.password, safe="") if with_password else "***")
            auth += "@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{auth}{host}:{self.port}"

    def __str__(self) -> str:
        return self.url(with_password=False).replace("socks5://", f"{self.scheme}://", 1)

    def __repr__(self) -> str:
        return f"ProxyURL({str(self)!r})"


_SCHEMES_HINT = "; use one of " + ", ".join(f"{s}://" for s in ACCEPTED_SCHEMES)
#: The port a URL without one means, by scheme (a SOCKS proxy's is 1080).
_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_proxy(value: str, *, source: str | None = None) -> ProxyURL:
    """Check a proxy URL such as ``socks5://user:pass@127.0.0.1:1080``.

    ``source`` names the environment variable the value came from, if any.

    Raises:
        InvalidRequest: the URL is malformed or its scheme is not one of ``ACCEPTED_SCHEMES``;
            the message lists the accepted schemes and shows the URL with its password hidden.
        ConfigError: the same, for a value taken from the environment variable ``source``.
    """
    from ._redact import redact, remember_secret

    if not isinstance(value, str):
        raise InvalidRequest(f"proxy must be a URL string, got {type(value).__name__}")
    shown = _hide_password(value, redact)

    def refuse(problem: str | None) -> Exception:
        where = f"{source}: " if source else ""
        if problem is None:
            message = f"{where}unsupported proxy scheme in {shown!r}{_SCHEMES_HINT}"
        else:
            message = f"{where}malformed proxy URL {shown!r}: {problem}{_SCHEMES_HINT}"
        return ConfigError(message) if source else InvalidRequest(message)

    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        # Not the ValueError's own text: it may quote part of a password with a stray "#".
        raise refuse("bad port or host (percent-encode @ : / # in user and password)") from None
    scheme = parts.scheme.lower()
    if scheme not in ACCEPTED_SCHEMES:
        raise refuse(None)
    if not parts.hostname:
        raise refuse("no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise refuse("a proxy URL has no path, query or fragment")
    if port == 0:
        raise refuse("port 0")
    if port is None:
        port = _DEFAULT_PORTS.get(scheme, 1080)
    proxy = ProxyURL(
        scheme=scheme,
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username is not None else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )
    remember_secret(proxy.secret)
    return proxy


def _hide_password(value: str, redact: Callable[[str], str]) -> str:
    """``value`` with the password hidden, even when the URL cannot be parsed."""
    shown = redact(value)
    with contextlib.suppress(ValueError):
        password = urlsplit(value.strip()).password
        if password and password in shown:
            shown = shown.replace(password, "***")
    at = shown.rfind("@")
    if at > 0 and "://" not in shown:
        # No scheme: not a URL to the redaction patterns, yet "user:password@host" or
        # "token@host" all the same. Keep the user, hide the rest of what precedes the "@".
        colon = shown.find(":")
        shown = (shown[: colon + 1] if 0 <= colon < at else "") + "***" + shown[at:]
    return shown


def proxy_for(
    target_url: str, explicit: str | None, configured: str | None = None
) -> ProxyURL | None:
    """The proxy a request to ``target_url`` should use.

    An explicit ``proxy=`` wins (``""`` means "no proxy"); then ``LLMRELAY_PROXY``; then the
    configuration file's ``proxy`` (``configured``); then the standard ``HTTPS_PROXY`` /
    ``HTTP_PROXY`` / ``ALL_PROXY`` for the target's scheme. ``NO_PROXY`` exempts hosts from all
    but an explicit ``proxy=``. The environment is read at call time, so tests and long-lived
    processes see changes; the decision is cached per URL and environment, as both repeat.
    """
    if explicit is not None:
        return checked_proxy(explicit) if explicit else None
    return _default_proxy(target_url, configured, _PROXY_ENV.values())


#: The variables :func:`proxy_for` reads (lower case first, as curl and urllib prefer it).
_PROXY_ENV = EnvWatch(
    "LLMRELAY_PROXY",
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
)


@functools.lru_cache(maxsize=256)
def _default_proxy(
    target_url: str, configured: str | None, env: tuple[object, ...]
) -> ProxyURL | None:
    """The proxy for ``target_url`` when no ``proxy=`` was given (``env``: the cache key)."""
    source = "LLMRELAY_PROXY"
    value = getenv(source)
    if value is None and configured:
        value, source = configured, "the configuration file's proxy"
    if value is None:
        # Only the few variables that matter, looked up directly: urllib's
        # getproxies_environment() scans the whole environment.
        scheme = urlsplit(target_url).scheme
        for name in (f"{scheme}_proxy", "all_proxy"):
            value = getenv(name) or getenv(name.upper())
            if value:
                source = name.upper()
                if "://" not in value:  # "proxy:3128": http://, as curl, requests and urllib read
                    value = f"http://{value.strip()}"  # these variables, shared with them
                break
    if not value:
        return None
    no_proxy = getenv("no_proxy") or getenv("NO_PROXY")
    if no_proxy and _bypassed(target_url, no_proxy):
        return None
    return _parse_cached(value, source)


def _bypassed(target_url: str, no_proxy: str) -> bool:
    """Whether ``NO_PROXY`` exempts the target: an entry names its host (or a domain above
    it), or its host and port (``127.0.0.1:8080``) when the URL gives a port."""
    parts = urlsplit(target_url)
    host = parts.hostname or ""
    if not host:
        return False
    try:
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        port = None
    if port is not None and ":" not in host:  # (urllib splits "host:port" at the last ":";
        host = f"{host}:{port}"  # IPv6 hosts are matched without their port)
    return bool(_bypass(host, {"no": no_proxy}))


_bypass = urllib.request.proxy_bypass_environment  # type: ignore[attr-defined]


def checked_proxy(value: str) -> ProxyURL:
    """``parse_proxy(value)`` for a caller's ``proxy=``, cached: it repeats on every request.

    Raises:
        InvalidRequest: as :func:`parse_proxy`.
    """
    return _parse_cached(value, None)


@functools.lru_cache(maxsize=64)
def _parse_cached(value: str, source: str | None) -> ProxyURL:
    """Proxies repeat on every request: parse each distinct one once."""
    return parse_proxy(value, source=source)
