"""Every error llmrelay raises, in one place.

Catch :class:`LLMRelayError` to handle anything llmrelay raises on purpose. The tree::

    LLMRelayError
    ├── InvalidRequest (ValueError)        bad messages, options or proxy URL; raised before any I/O
    │   └── UnsupportedOption              a provider does not take an option; .provider .options
    ├── ConfigError (ValueError)           a bad configuration file or environment variable
    ├── ModelNotFound (LookupError)        no provider serves the model; .suggestions
    ├── CassetteMismatch (LookupError)     replay found no recorded answer for a request
    ├── ProviderError                      one provider failed; .provider .status .retryable
    │   │                                  .retry_after .body
    │   ├── ConnectError (ConnectionError)     refused, reset or DNS failure        retryable
    │   │   └── ProxyError                     the proxy refused us or the credentials
    │   ├── ProviderTimeout (TimeoutError)     connect, read or total deadline     retryable
    │   ├── HTTPStatusError                    the provider answered with an error status
    │   │   ├── BadRequest                     400, 422
    │   │   ├── AuthenticationFailed           401
    │   │   ├── PermissionDenied               403
    │   │   │   └── CloudflareChallenge        403 with a Cloudflare HTML challenge page
    │   │   ├── EndpointNotFound               404
    │   │   ├── RateLimited                    429                                 retryable
    │   │   └── ServerError                    5xx                                 retryable
    │   ├── InvalidResponse                    malformed, empty or contract-breaking answer
    │   ├── MisuseDetected (ValueError)        the provider's abuse filter refused the prompt
    │   └── StreamInterrupted                  failed after the answer began: never retried
    │       └── StreamTimedOut (TimeoutError)  a timeout cut it: also a ProviderTimeout
    └── AllProvidersFailed                     every provider failed; .errors keeps each one

Subclassing builtins lets callers keep the idioms they know: ``except ValueError`` still catches
a refused prompt (the contract of the seed examples) and ``except TimeoutError`` catches a
deadline.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AllProvidersFailed",
    "AuthenticationFailed",
    "BadRequest",
    "CassetteMismatch",
    "CloudflareChallenge",
    "ConfigError",
    "ConnectError",
    "EndpointNotFound",
    "HTTPStatusError",
    "InvalidRequest",
    "InvalidResponse",
    "LLMRelayError",
    "MisuseDetected",
    "ModelNotFound",
    "PermissionDenied",
    "ProviderError",
    "ProviderTimeout",
    "ProxyError",
    "RateLimited",
    "ServerError",
    "StreamInterrupted",
    "StreamTimedOut",
    "UnsupportedOption",
]

#: How much of a response body an error keeps: enough to diagnose, short enough for one line.
BODY_EXCERPT_CHARS = 200


class LLMRelayError(Exception):
    """The root of every error llmrelay raises on purpose."""

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled (a process pool hands a worker's error to its parent this way) and copied
        # as they are: the default would call ``cls(*self.args)``, which the errors whose
        # constructor takes more than the message (``provider=``, a model and its
        # suggestions) refuse, or would word again around the finished message. As for every
        # exception, ``__cause__`` and the traceback are not pickled.
        state = self.__dict__
        bare = state.get("bare")
        if bare is not None and not _picklable(bare):
            # A provider's own exception that cannot be rebuilt (its constructor takes more
            # than a message) would break the unpickling of the whole error: keep its words.
            state = {**state, "bare": Exception(f"{type(bare).__qualname__}: {bare}")}
        return (_restored, (type(self), self.args, state))


class InvalidRequest(LLMRelayError, ValueError):
    """The caller's input cannot be sent: the message says which field and what to fix."""


class UnsupportedOption(InvalidRequest):
    """A provider does not support request options it was given.

    ``provider`` names it, ``options`` the options it refused and ``supported`` the ones it
    takes, so a caller can leave them out (or pass ``drop_unsupported=True``) and try again,
    and a front end can say what to change in its own terms (``fix``: ``llmrelay chat`` names
    its ``--option`` and ``--drop-unsupported`` flags).
    """

    def __init__(
        self,
        provider: str,
        options: Sequence[str],
        supported: Sequence[str],
        *,
        fix: str = "remove them or pass drop_unsupported=True",
    ) -> None:
        self.provider = provider
        self.options = list(options)
        self.supported = list(supported)
        super().__init__(
            f"provider {provider!r} does not support option(s) {', '.join(self.options)} "
            f"(it supports: {', '.join(self.supported) or 'none'}); {fix}"
        )


class ConfigError(LLMRelayError, ValueError):
    """A configuration file or environment variable holds a value llmrelay cannot use."""


class ModelNotFound(LLMRelayError, LookupError):
    """No registered provider serves the requested model.

    ``suggestions`` holds the closest known model names, best first.
    """

    def __init__(self, model: str, suggestions: Sequence[str] = ()) -> None:
        self.model = model
        self.suggestions = list(suggestions)
        hint = f"; did you mean {', '.join(map(repr, self.suggestions))}?" if suggestions else ""
        super().__init__(f"no provider serves model {model!r}{hint}")


class CassetteMismatch(LLMRelayError, LookupError):
    """A replayed cassette holds no answer for the request that was made.

    Raised instead of reaching the network, so replay can never hide a live call.
    """


class ProviderError(LLMRelayError):
    """One provider failed to answer.

    Attributes:
        provider: the provider's registered name.
        status: the HTTP status, when the provider answered at all.
        retryable: whether trying the same request again may succeed.
        retry_after: seconds the provider asked us to wait, when it said so.
        body: the start of the response body (at most 200 characters, secrets scrubbed).
        bare: the exception the provider's code raised itself (a ``KeyError``, say), when
            llmrelay turned it into this error because providers must raise llmrelay's
            errors; None otherwise. It is also the ``__cause__``.
    """

    #: The default for ``retryable`` when the raiser does not decide.
    default_retryable = False
    bare: Exception | None = None

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        retryable: bool | None = None,
        retry_after: float | None = None,
        body: str | None = None,
    ) -> None:
        self.provider = provider
        self.status = status
        self.retryable = self.default_retryable if retryable is None else retryable
        self.retry_after = retry_after
        self.body = body
        super().__init__(f"{provider}: {message}")

    @property
    def reason(self) -> str:
        """The one-line reason without the provider prefix."""
        return str(self).removeprefix(f"{self.provider}: ")


class ConnectError(ProviderError, ConnectionError):
    """The connection to the provider could not be made or was cut."""

    default_retryable = True


class ProxyError(ConnectError):
    """The proxy refused the connection or the credentials.

    Not retried by default: a wrong password does not become right on the second try.
    """

    default_retryable = False


class ProviderTimeout(ProviderError, TimeoutError):
    """A connect, read or total deadline passed."""

    default_retryable = True


class HTTPStatusError(ProviderError):
    """The provider answered with an HTTP error status."""


class BadRequest(HTTPStatusError):
    """The provider rejected the request as malformed (400, 422)."""


class AuthenticationFailed(HTTPStatusError):
    """The provider rejected the credentials (401)."""


class PermissionDenied(HTTPStatusError):
    """The provider refused access (403)."""


class CloudflareChallenge(PermissionDenied):
    """A Cloudflare challenge page answered instead of the API (403 with HTML)."""


class EndpointNotFound(HTTPStatusError):
    """The provider has no such endpoint or model (404)."""


class RateLimited(HTTPStatusError):
    """The provider asked us to slow down (429); ``retry_after`` says how long, if known."""

    default_retryable = True


class ServerError(HTTPStatusError):
    """The provider failed on its side (5xx)."""

    default_retryable = True


class InvalidResponse(ProviderError):
    """The provider answered 200 but the answer is malformed, empty or breaks the contract."""


class MisuseDetected(ProviderError, ValueError):
    """The provider's abuse filter refused the prompt; the message carries its words."""


class StreamInterrupted(ProviderError):
    """The provider failed after some of the answer (text, reasoning, usage) had already
    reached the caller.

    Never retried and never handed to another provider: that would duplicate or splice text.
    ``__cause__`` holds the underlying error.
    """


class StreamTimedOut(StreamInterrupted, ProviderTimeout):
    """A timeout (the call's deadline, or the read timeout) cut the answer after it began.

    A ``StreamInterrupted`` (never retried, never handed to another provider) that is also a
    ``ProviderTimeout``, so a ``TimeoutError``: ``except TimeoutError`` catches a deadline
    wherever in the call it falls. ``__cause__`` holds the ``ProviderTimeout``.
    """

    default_retryable = False


class AllProvidersFailed(LLMRelayError):
    """Every provider that serves the model failed before sending any text.

    ``errors`` keeps each provider's typed error, in the order they were tried.
    """

    def __init__(self, model: str, errors: Sequence[ProviderError]) -> None:
        self.model = model
        self.errors = list(errors)
        lines = "".join(f"\n  - {e}" for e in self.errors)
        super().__init__(f"all {len(self.errors)} providers failed for model {model!r}:{lines}")


def _restored(
    cls: type[LLMRelayError], args: tuple[object, ...], state: dict[str, object]
) -> LLMRelayError:
    """An error as it was pickled: its message and attributes, without running ``__init__``."""
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


def _picklable(value: object) -> bool:
    """Whether ``value`` survives a pickle round trip (dumped, and loaded back)."""
    import pickle

    try:
        pickle.loads(pickle.dumps(value))  # noqa: S301 (bytes just made here)
    except Exception:
        return False
    return True
