"""llmrelay's errors as OpenAI error bodies, with the status an OpenAI client expects.

Every error the server sends has OpenAI's shape,
``{"error": {"message", "type", "param", "code"}}``, so any OpenAI SDK raises its own exception
class for it (400 ``BadRequestError``, 401 ``AuthenticationError``, 404 ``NotFoundError``,
429 ``RateLimitError``, 5xx ``InternalServerError``) and retries what is worth retrying.

The mapping, and why:

=====================================  ======  ================================================
error                                  status  why
=====================================  ======  ================================================
InvalidRequest, body validation        400     the client sent something unusable
MisuseDetected                         400     the provider refused the prompt itself
BadRequest (upstream 400/422)          400     upstream rejected what the client asked for
ModelNotFound                          404     as OpenAI answers an unknown model
RateLimited (upstream 429)             429     passed on with ``Retry-After``, so clients wait
ServerError with upstream 503          503     upstream is overloaded: retry later
another retryable failure with         503     the upstream named when to come back: a wait
Retry-After (a 500 asking for 30 s)            the server passed on (longer than it waits
                                               out itself) or could not finish (deadline)
ProviderTimeout after an upstream      429     the deadline left no time to wait as long as
429 / 503 (its Retry-After too long)   / 503   the upstream asked: its status and Retry-After
ProviderTimeout                        504     the upstream did not answer in time
any other ProviderError                502     upstream failed or misbehaved (bad gateway)
AllProvidersFailed                     502     429 / 503 when any provider asked to come back
                                               later (the shortest wait of those), 504 when
                                               every one timed out
ConfigError, anything unexpected       500     the server's fault; details go to the log only
=====================================  ======  ================================================

An upstream 401/403 becomes 502, never 401: it is the server's credentials that failed, and a
client told "401" would wrongly blame its own key.

500, 502 and 504 carry ``x-should-retry: false``, which OpenAI's SDKs obey: llmrelay has
already retried (and fallen back) within the request's deadline, so a client's retries would
only multiply the upstream requests and the wait. 429 and 503 stay retryable, after their
``Retry-After``, and so does a whole answer the upstream cut midway (``stream_interrupted``),
which llmrelay never retries itself.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from .. import errors

__all__ = ["APIError", "bug_behind", "error_for", "internal_error", "invalid_request"]


class APIError(Exception):
    """An error answer: raise it anywhere in a handler, the middleware sends it.

    ``headers`` carries extras such as ``Retry-After``.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
        final: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})
        if status in _FINAL_STATUSES if final is None else final:
            self.headers.setdefault("x-should-retry", "false")

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> web.Response:
        return web.json_response(self.body(), status=self.status, headers=self.headers)


#: Statuses after which a client's retry cannot help (see the module's docstring).
_FINAL_STATUSES = frozenset({500, 502, 504})


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def internal_error() -> APIError:
    """The answer for a bug: it says nothing about the server's insides (the log does)."""
    return APIError(
        500,
        "the server failed to handle the request; its log has the details",
        type="server_error",
    )


def error_for(exc: BaseException) -> APIError:
    """The OpenAI-shaped error for anything a handler raised."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, errors.ModelNotFound):
        return APIError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, errors.InvalidRequest):
        return invalid_request(str(exc))
    if isinstance(exc, errors.AllProvidersFailed):
        return _all_failed(exc)
    if isinstance(exc, errors.ProviderError):
        return _provider_error(exc)
    if isinstance(exc, errors.CassetteMismatch):
        return APIError(502, str(exc), type="upstream_error", code="cassette_mismatch")
    return internal_error()


def _provider_error(exc: errors.ProviderError) -> APIError:
    message = str(exc)
    if isinstance(exc, errors.StreamInterrupted):
        # llmrelay never retries an answer cut midway; the client, which got none of it, may.
        return APIError(502, message, type="upstream_error", code="stream_interrupted", final=False)
    if _busy(exc):
        return _come_back_later([exc], message)
    if isinstance(exc, errors.ProviderTimeout):
        tried = exc.__cause__  # the relay's deadline, after several providers
        if isinstance(tried, errors.AllProvidersFailed) and any(map(_busy, tried.errors)):
            return _all_failed(tried)  # one asked to be called again later: say so
        if exc.status is not None:  # the deadline cut the retries of an upstream failure
            return APIError(502, message, type="upstream_error", code="upstream_error")
        return APIError(504, message, type="upstream_error", code="upstream_timeout")
    if isinstance(exc, errors.MisuseDetected):
        return APIError(400, message, code="content_filter")
    if isinstance(exc, errors.BadRequest):
        return APIError(400, message, code="upstream_rejected_request")
    return APIError(502, message, type="upstream_error", code="upstream_error")


def _all_failed(exc: errors.AllProvidersFailed) -> APIError:
    """502, unless every provider failed the same transient way: then that status, so the
    client backs off (429, or 503 when some were overloaded rather than rate limited) or
    knows it was time (504). A wait is the shortest any provider asked for."""
    failures = exc.errors
    message = str(exc)
    busy = [e for e in failures if _busy(e)]
    if busy:  # one asked to be called again later: the client may, and find it ready then
        return _come_back_later(busy, message)
    if failures and all(
        isinstance(e, errors.ProviderTimeout) and e.status is None for e in failures
    ):
        return APIError(504, message, type="upstream_error", code="upstream_timeout")
    return APIError(502, message, type="upstream_error", code="all_providers_failed")


def _come_back_later(failures: list[errors.ProviderError], message: str) -> APIError:
    """429 when every failure was a rate limit, else 503; with the shortest wait any asked."""
    waits = [e.retry_after for e in failures if e.retry_after is not None]
    headers = retry_after_headers(min(waits) if waits else None)
    if all(_rate_limited(e) for e in failures):
        return APIError(
            429, message, type="rate_limit_error", code="rate_limit_exceeded", headers=headers
        )
    return APIError(
        503, message, type="upstream_error", code="upstream_unavailable", headers=headers
    )


def _busy(exc: errors.ProviderError) -> bool:
    """Whether a provider said "not now, later": 429 or 503, or any retryable failure that
    named a time to come back (``Retry-After``, with a 500, say), which the server passed on
    rather than waited out (see ``MAX_UPSTREAM_WAIT``), or the deadline that ended the wait
    it asked for."""
    return (
        _rate_limited(exc)
        or (isinstance(exc, errors.ServerError | errors.ProviderTimeout) and exc.status == 503)
        or (
            exc.retry_after is not None
            and (exc.retryable or isinstance(exc, errors.ProviderTimeout))
        )
    )


def _rate_limited(exc: errors.ProviderError) -> bool:
    """An upstream 429, or the deadline that ended the wait it asked for."""
    return isinstance(exc, errors.RateLimited) or (
        isinstance(exc, errors.ProviderTimeout) and exc.status == 429
    )


def retry_after_headers(seconds: float | None) -> dict[str, str]:
    """``Retry-After`` in whole seconds (what HTTP allows) and ``retry-after-ms`` (what OpenAI's
    SDKs read first, for sub-second precision); nothing when the wait is unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return {}
    return {
        "Retry-After": str(max(1, math.ceil(seconds))),
        "retry-after-ms": str(round(seconds * 1000)),
    }


def bug_behind(exc: BaseException) -> BaseException | None:
    """The bare exception a provider's code raised behind ``exc`` (which llmrelay turned into
    a typed error: ``ProviderError.bare``), if any; AllProvidersFailed looks at each error."""
    found: list[BaseException] = [exc, *getattr(exc, "errors", ())]
    for error in found:
        bare = getattr(error, "bare", None)
        if isinstance(bare, BaseException):
            return bare
    return None
