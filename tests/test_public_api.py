"""Pin the public API: a change here is a change users see, and belongs in the CHANGELOG."""

from __future__ import annotations

import pytest

import llmrelay
from llmrelay import errors

PUBLIC = {
    "AsyncClient",
    "ChatCompletion",
    "ChatCompletionChunk",
    "Client",
    "ENTRY_POINT_GROUP",
    "Call",
    "Chunk",
    "ChunkStream",
    "Completion",
    "ContentPart",
    "FinishReason",
    "HTTPResponse",
    "LLMRelayError",
    "Message",
    "Messages",
    "PluginFailure",
    "Provider",
    "ProviderInfo",
    "Reasoning",
    "Registry",
    "RelayStream",
    "RetryPolicy",
    "Role",
    "TextPart",
    "Timeouts",
    "Usage",
    "__version__",
    "aclose",
    "cassette",
    "errors",
    "format_prompt",
    "get_registry",
    "hookimpl",
    "relay",
    "reload_config",
    "reset_registry",
    "validate_messages",
}

ERRORS = {
    "AllProvidersFailed": (errors.LLMRelayError,),
    "AuthenticationFailed": (errors.HTTPStatusError,),
    "BadRequest": (errors.HTTPStatusError,),
    "CassetteMismatch": (errors.LLMRelayError, LookupError),
    "CloudflareChallenge": (errors.PermissionDenied,),
    "ConfigError": (errors.LLMRelayError, ValueError),
    "ConnectError": (errors.ProviderError, ConnectionError),
    "EndpointNotFound": (errors.HTTPStatusError,),
    "HTTPStatusError": (errors.ProviderError,),
    "InvalidRequest": (errors.LLMRelayError, ValueError),
    "InvalidResponse": (errors.ProviderError,),
    "LLMRelayError": (Exception,),
    "MisuseDetected": (errors.ProviderError, ValueError),
    "ModelNotFound": (errors.LLMRelayError, LookupError),
    "PermissionDenied": (errors.HTTPStatusError,),
    "ProviderError": (errors.LLMRelayError,),
    "ProviderTimeout": (errors.ProviderError, TimeoutError),
    "ProxyError": (errors.ConnectError,),
    "RateLimited": (errors.HTTPStatusError,),
    "ServerError": (errors.HTTPStatusError,),
    "StreamInterrupted": (errors.ProviderError,),
    "StreamTimedOut": (errors.StreamInterrupted, errors.ProviderTimeout, TimeoutError),
    "UnsupportedOption": (errors.InvalidRequest,),
}


def test_top_level_names() -> None:
    assert set(llmrelay.__all__) == PUBLIC
    for name in PUBLIC:
        assert hasattr(llmrelay, name), name
    assert set(dir(llmrelay)) >= PUBLIC


def test_import_is_lazy() -> None:
    """``import llmrelay`` loads neither pydantic nor aiohttp until a name needs them."""
    import subprocess
    import sys

    code = (
        "import sys, llmrelay\n"
        "heavy = ('pydantic', 'aiohttp', 'tenacity', 'pluggy')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = llmrelay.nope  # type: ignore[attr-defined]


def test_error_hierarchy() -> None:
    assert set(errors.__all__) == set(ERRORS)
    for name, bases in ERRORS.items():
        cls = getattr(errors, name)
        for base in bases:
            assert issubclass(cls, base), f"{name} should subclass {base.__name__}"
        assert name in (errors.__doc__ or ""), f"{name} missing from the tree in the docstring"


def test_provider_errors_carry_their_fields() -> None:
    exc = errors.RateLimited("HTTP 429", provider="p", status=429, retry_after=2.0, body="slow")
    assert (exc.provider, exc.status, exc.retryable, exc.retry_after, exc.body) == (
        "p",
        429,
        True,
        2.0,
        "slow",
    )
    assert str(exc) == "p: HTTP 429"
    assert exc.reason == "HTTP 429"
    assert errors.BadRequest("x", provider="p").retryable is False
    assert errors.ServerError("x", provider="p", retryable=False).retryable is False


def test_all_providers_failed_lists_each_reason() -> None:
    failed = errors.AllProvidersFailed(
        "m",
        [
            errors.ServerError("HTTP 500", provider="a"),
            errors.ConnectError("refused", provider="b"),
        ],
    )
    assert str(failed) == "all 2 providers failed for model 'm':\n  - a: HTTP 500\n  - b: refused"
    assert [e.provider for e in failed.errors] == ["a", "b"]


def _example(name: str) -> errors.LLMRelayError:
    """One error of each class, built as llmrelay builds it."""
    cls = getattr(errors, name)
    if name == "ModelNotFound":
        return errors.ModelNotFound("gpt-5", ["gpt-4o"])
    if name == "UnsupportedOption":
        return errors.UnsupportedOption("pizzagpt", ["temperature"], [])
    if name == "AllProvidersFailed":
        return errors.AllProvidersFailed(
            "m",
            [
                errors.RateLimited("HTTP 429", provider="a", status=429, retry_after=2.5),
                errors.ConnectError("refused", provider="b"),
            ],
        )
    if issubclass(cls, errors.ProviderError):
        return cls("HTTP 401", provider="p", status=401, retryable=False, body="no key")  # type: ignore[no-any-return]
    return cls("bad value")  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_errors_survive_pickling_and_copying(name: str) -> None:
    """A process pool hands a worker's error to its parent by pickling it: every error comes
    back whole (class, message, attributes), not as a TypeError that breaks the pool."""
    import copy
    import pickle

    error = _example(name)
    error.__dict__["extra"] = "kept"  # what a caller added stays too
    pickled = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own bytes)
    for again in (pickled, copy.copy(error), copy.deepcopy(error)):
        assert type(again) is type(error)
        assert (str(again), again.args) == (str(error), error.args)
        assert vars(again).keys() == vars(error).keys()
        for key, value in vars(error).items():
            if key == "errors":  # AllProvidersFailed: each one's class and message
                assert [(type(e), str(e)) for e in vars(again)[key]] == [
                    (type(e), str(e)) for e in value
                ]
            else:
                assert vars(again)[key] == value


class _TwoArgumentError(Exception):
    def __init__(self, code: int, why: str) -> None:
        super().__init__(f"{code}: {why}")


def test_an_error_whose_bare_cause_cannot_be_rebuilt_still_pickles() -> None:
    """``bare`` holds what a provider raised itself; one that cannot be unpickled (its
    constructor takes two arguments) came back as a TypeError, and broke a process pool."""
    import pickle

    from llmrelay._provider import typed_error

    error = typed_error(_TwoArgumentError(7, "bad"), "p")
    assert isinstance(error, errors.ProviderError)
    assert isinstance(error.bare, _TwoArgumentError)
    again = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own bytes)
    assert (type(again), str(again)) == (type(error), str(error))
    assert str(again.bare) == "_TwoArgumentError: 7: bad"
    assert error.bare.args == ("7: bad",)  # the original is untouched


def test_a_worker_process_error_reaches_the_parent() -> None:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn: no fork() of a process whose other threads may hold locks.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        future = pool.submit(_raise_authentication_failed)
        with pytest.raises(errors.AuthenticationFailed) as caught:
            future.result(timeout=60)
    assert (caught.value.provider, caught.value.status, caught.value.reason) == ("p", 401, "no")


def _raise_authentication_failed() -> None:
    raise errors.AuthenticationFailed("no", provider="p", status=401)


def test_py_typed_ships() -> None:
    from importlib.resources import files

    assert files("llmrelay").joinpath("py.typed").is_file()
    assert files("llmrelay_pizzagpt").joinpath("py.typed").is_file()
