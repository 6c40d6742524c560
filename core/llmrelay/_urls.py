"""The one check of a base URL, for the configuration's endpoints and a call's ``base_url=``.

A base URL is joined with an endpoint path (``{base_url}/chat/completions``), so beyond being
an absolute http(s) URL it must survive that join: no fragment (the path would land in it), a
host, a real port. Checked before any I/O: a bad one is the caller's to fix, never a failure
of the provider it was meant for.
"""

from __future__ import annotations

from urllib.parse import urlsplit

__all__ = ["check_base_url"]


def check_base_url(value: str) -> str:
    """``value`` without a trailing ``/``, if it is a usable base URL.

    Raises:
        ValueError: saying what is wrong (never quoting the URL, which may hold a key).
    """
    if not value.startswith(("http://", "https://")):
        raise ValueError("must be an absolute http:// or https:// URL")
    if any(c.isspace() for c in value):
        raise ValueError("must not contain spaces (percent-encode them)")
    try:
        parts = urlsplit(value)
        port = parts.port  # a port out of range or not a number raises here
    except ValueError as exc:  # a bad port, or an unclosed "[" around an IPv6 host
        raise ValueError(f"is not a valid URL ({exc})") from None
    if not parts.hostname:
        raise ValueError("has no host (e.g. http://127.0.0.1:8000/v1)")
    if port == 0:
        raise ValueError("has port 0 (a port is a number from 1 to 65535)")
    if "#" in value:  # "{base_url}/chat/completions" would be part of the fragment
        raise ValueError("a base URL has no fragment (remove the #... part)")
    return value.rstrip("/")
