"""Keep secrets out of logs, error messages and cassettes.

One function, used everywhere text leaves llmrelay, so a new secret shape is taught in one place.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable

__all__ = [
    "REDACTED",
    "SECRET_HEADERS",
    "cookie_values",
    "looks_secret",
    "looks_secret_query",
    "redact",
    "remember_secret",
]

REDACTED = "***"

#: Header names whose values are secrets (lower case). Cassettes and logs never show them.
SECRET_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "cookie",
        "set-cookie",
        "x-secret",
        "openai-organization",
        "openai-project",
    }
)

#: Header names that look like they carry a credential, besides ``SECRET_HEADERS``
#: (``X-Goog-Api-Key``, ``X-Auth-Token``, ``X-Session``...): a provider may send its key in
#: any of them, and a request's headers are recorded in cassettes.
_SECRET_LOOKING = re.compile(r"auth|key|token|secret|cookie|passw|signature|session", re.I)


def looks_secret(header: str) -> bool:
    """Whether a request header named ``header`` may carry a credential."""
    return header.lower() in SECRET_HEADERS or _SECRET_LOOKING.search(header) is not None


def cookie_values(header: str) -> list[str]:
    """The values in a ``Cookie`` or ``Set-Cookie`` header (``a=1; b=2``: ``["1", "2"]``),
    each of which a server may quote back on its own."""
    values = []
    for part in header.split(";"):
        _name, eq, value = part.partition("=")
        if eq:
            values.append(value.strip())
    return values


#: Words that make a query parameter's name a credential's, as whole parts of the name split at
#: ``-``, ``_`` and ``.`` (``key``, ``subscription-key``, ``auth_token``, ``x-api-key``,
#: ``client_secret``), so that ``author``, ``keyword``, ``max_tokens`` or ``tokenizer`` are not.
_CREDENTIAL_PARTS = frozenset(
    {
        "key",
        "apikey",
        "token",
        "accesstoken",
        "authtoken",
        "auth",
        "secret",
        "password",
        "passwd",
        "pwd",
        "signature",
        "credential",
        "credentials",
    }
)
#: Whole names that are credentials in well-known URLs: Azure SAS's ``sig``, Azure Functions'
#: (and OAuth's) ``code``.
_CREDENTIAL_NAMES = frozenset({"sig", "code"})
_NAME_PARTS = re.compile(r"[-_.]")


def looks_secret_query(name: str) -> bool:
    """Whether a query parameter named ``name`` may carry a credential."""
    lowered = name.lower()
    return lowered in _CREDENTIAL_NAMES or any(
        part in _CREDENTIAL_PARTS for part in _NAME_PARTS.split(lowered)
    )


def _hide_credential_param(match: re.Match[str]) -> str:
    if looks_secret_query(match.group("name")):
        return match.group("keep") + REDACTED
    return match.group(0)


def _keep_prefix(match: re.Match[str]) -> str:
    return match.group("keep") + REDACTED


# Every repeat that can meet another is bounded (``{1,256}``): a body of many ``?`` or
# ``http://`` (a server's garbled charset, say) then costs linear time, where unbounded runs
# backtracked for seconds on a few kilobytes.
_PATTERNS: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str]]] = [
    # user:password@ in any URL (proxy URLs above all): keep the user, hide the password. The
    # password runs to the LAST "@" (within 512 characters), so an unencoded "@", "/" or "#"
    # in it is hidden too (hiding part of a path in a URL that has "@" there is the safe
    # mistake).
    (
        re.compile(
            r"(?P<keep>\b[a-z][a-z0-9+.-]{0,31}://[^:/@\s]{1,256}:)[^\s'\"<>]{1,512}(?=@)",
            re.IGNORECASE,
        ),
        _keep_prefix,
    ),
    # A proxy URL's user without a password (``http://TOKEN@proxy``, ``http://KEY:@proxy``):
    # proxy services take the key in the user's place. (Not SOCKS4's: an identifier; nor
    # other schemes', such as ``ssh://git@host``.)
    (
        re.compile(r"(?P<keep>\b(?:https?|socks5h?)://)[^:/@\s'\"<>]{1,256}(?=:?@)", re.IGNORECASE),
        _keep_prefix,
    ),
    # Authorization header values and bearer tokens quoted in bodies.
    (
        re.compile(r"(?P<keep>\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]{4,}", re.IGNORECASE),
        _keep_prefix,
    ),
    # API keys in the common vendor shapes (sk-..., sk-proj-..., gsk_..., AIza...).
    (re.compile(r"(?P<keep>\b(?:sk|gsk|rk|pk)[-_])[A-Za-z0-9_-]{8,}"), _keep_prefix),
    (re.compile(r"(?P<keep>\bAIza)[0-9A-Za-z_-]{20,}"), _keep_prefix),
    # name=value pairs in query strings, fragments and form bodies, when the name is a
    # credential's (decided in Python: see looks_secret_query).
    (
        re.compile(r"(?P<keep>[?&#](?P<name>[^=&\s#?]{1,128})=)[^&\s#'\"<>]+"),
        _hide_credential_param,
    ),
]


#: Secret values llmrelay itself put into requests (API keys read from the environment, proxy
#: passwords), scrubbed wherever they appear, whatever their shape: a server that quotes the
#: key it refused ("Incorrect API key provided: ...") must not put it in an error or a log.
#: Insertion-ordered and bounded: a process that goes through more secrets than that forgets
#: the oldest first.
_known: dict[str, None] = {}
#: What is remembered: at least this long with a digit in it, as generated keys and passwords
#: are, or at least ``MIN_PLAIN_SECRET_LENGTH`` letters with no separator (a key or a cookie
#: of letters only). Placeholders local servers accept ("ollama", "lm-studio", "not-needed",
#: "no-key-required-here") are ordinary words that also name hosts and models: scrubbing them
#: would garble messages.
MIN_SECRET_LENGTH = 12
MIN_PLAIN_SECRET_LENGTH = 16
_MAX_KNOWN = 1024
_known_lock = threading.Lock()


def remember_secret(value: str | None) -> None:
    """Scrub ``value`` from everything :func:`redact` sees from now on, if it looks like a
    secret rather than a placeholder: ``MIN_SECRET_LENGTH`` characters or more with a digit
    among them, or ``MIN_PLAIN_SECRET_LENGTH`` letters or more without separators."""
    if (
        not value
        or len(value) < MIN_SECRET_LENGTH
        or value in _known
        or not (
            any(c.isdigit() for c in value)
            or (len(value) >= MIN_PLAIN_SECRET_LENGTH and value.isalnum())
        )
    ):
        return
    with _known_lock:  # threads may remember at once (the sync Client runs in its own)
        while len(_known) >= _MAX_KNOWN:
            del _known[next(iter(_known))]
        _known[value] = None


def redact(text: str) -> str:
    """Return ``text`` with passwords, tokens and API keys replaced by ``***``."""
    if _known:
        # sorted() copies the keys in one step (C, no Python code runs meanwhile), so another
        # thread adding a secret cannot change them mid-walk; longest first, for a secret
        # inside another.
        for secret in sorted(_known, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, REDACTED)
    for pattern, replace in _PATTERNS:
        text = pattern.sub(replace, text)
    return text
