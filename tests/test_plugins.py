"""The plugin loader and registry, against real throwaway distributions.

``tests/plugin_dists/`` is laid out like a ``site-packages`` (see its README). Each test copies
it to a temporary directory on ``sys.path``, so ``importlib.metadata`` discovers its
``llmrelay`` entry points exactly as it discovers installed ones, next to the workspace's own
``llmrelay-pizzagpt``. The CLI tests run ``llmrelay`` as a subprocess with ``PYTHONPATH``.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import importlib.metadata as md
import inspect
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import llmrelay
from llmrelay import Provider, errors
from llmrelay import _registry as registry_module
from llmrelay._registry import Registry, build_registry, get_registry, reset_registry

DISTS = Path(__file__).resolve().parent / "plugin_dists"
MODULE_PREFIX = "llmrelay_test_"

#: Every provider the fixture distributions (and llmrelay-pizzagpt) register, in order.
PROVIDERS = ["good", "sleepy", "other", "pizzagpt", "dup-extra"]
#: Every broken plugin, in load order, with its distribution, target and error.
FAILURES = {
    "a-import-error": (
        "llmrelay-test-importerror",
        "llmrelay_test_importerror",
        "ModuleNotFoundError: No module named 'llmrelay_test_no_such_dependency'",
    ),
    "b-hook-raises": (
        "llmrelay-test-hookraises",
        "llmrelay_test_hookraises",
        "RuntimeError: boom from the hook",
    ),
    "c-not-a-provider": (
        "llmrelay-test-invalid",
        "llmrelay_test_invalid:not_a_provider",
        "TypeError: <class 'llmrelay_test_invalid.NotAProvider'> is not a subclass of "
        "llmrelay.Provider",
    ),
    "d-no-default": (
        "llmrelay-test-invalid",
        "llmrelay_test_invalid:no_default",
        "TypeError: provider NoDefault.default_model must be a non-empty string",
    ),
    "e-bad-signature": (
        "llmrelay-test-badsig",
        "llmrelay_test_badsig",
        "PluginValidationError: Plugin 'e-bad-signature' for hook 'register_providers'",
    ),
    "f-missing-attr": (
        "llmrelay-test-invalid",
        "llmrelay_test_invalid:no_such_plugin",
        "AttributeError: module 'llmrelay_test_invalid' has no attribute 'no_such_plugin'",
    ),
}
BROKEN = list(FAILURES)
DUPLICATE = r"provider name 'good' from plugin 'z-dup' is already registered by plugin 'good'"
MODELS = {
    "shared-model": ["good", "other", "sleepy"],
    "good-model": ["good"],
    "gm": ["good"],
    "other-model": ["other"],
    "gpt-4o-mini": ["pizzagpt"],
    "dup-model": ["dup-extra"],
}
HELLO = [{"role": "user", "content": "hello"}]


def _forget_test_modules() -> None:
    for name in [m for m in sys.modules if m.startswith(MODULE_PREFIX)]:
        del sys.modules[name]


def _copy_dists(target: Path) -> Path:
    shutil.copytree(DISTS, target, ignore=shutil.ignore_patterns("__pycache__", "README.md"))
    return target


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fixture distributions "installed": a copy of them on ``sys.path``."""
    target = _copy_dists(tmp_path / "site")
    _forget_test_modules()
    monkeypatch.syspath_prepend(str(target))  # also invalidates importlib's caches
    yield target
    _forget_test_modules()
    importlib.invalidate_caches()


def write_dist(
    site: Path, dist: str, version: str, module: str, source: str, entry_points: dict[str, str]
) -> None:
    """Write one more distribution (a module and its dist-info) into ``site``."""
    (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
    info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8"
    )
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[llmrelay]\n{lines}", encoding="utf-8")
    importlib.invalidate_caches()


def build(**kwargs: Any) -> Registry:
    """``build_registry`` over everything installed; ``z-dup`` makes it warn."""
    with pytest.warns(RuntimeWarning, match=DUPLICATE):
        return build_registry(**kwargs)


def fixture_module(name: str) -> Any:
    return sys.modules[f"{MODULE_PREFIX}{name}"]


# -- discovery and isolation ----------------------------------------------------------------


@pytest.mark.usefixtures("site")
def test_discovers_entry_points_of_installed_distributions() -> None:
    names = {ep.name for ep in md.entry_points(group=llmrelay.ENTRY_POINT_GROUP)}
    assert names >= {*BROKEN, "good", "other", "pizzagpt", "z-dup"}

    registry = build()

    assert list(registry.providers) == PROVIDERS
    good = registry.providers["good"]
    assert good.provider is fixture_module("good").Good
    assert (good.plugin, good.distribution) == ("good", "llmrelay-test-good")
    other = registry.providers["other"]
    assert other.provider is fixture_module("other").Other
    assert (other.plugin, other.distribution) == ("other", "llmrelay-test-other")
    assert registry.providers["sleepy"].plugin == "other"
    pizzagpt = registry.providers["pizzagpt"]
    assert (pizzagpt.plugin, pizzagpt.distribution) == ("pizzagpt", "llmrelay-pizzagpt")


@pytest.mark.usefixtures("site")
def test_each_broken_plugin_is_recorded_and_stops_nothing() -> None:
    registry = build()

    # The broken ones sort first, yet every good one after them loaded.
    assert [f.name for f in registry.failures] == BROKEN
    assert list(registry.providers) == PROVIDERS
    for failure in registry.failures:
        dist, target, error = FAILURES[failure.name]
        assert (failure.distribution, failure.target) == (dist, target)
        assert failure.error.startswith(error), failure.error
        assert "\n" not in failure.error
        assert failure.exception is not None
        assert failure.error.startswith(type(failure.exception).__name__)


@pytest.mark.usefixtures("site")
def test_entry_points_load_in_name_order_whatever_the_discovery_order() -> None:
    eps = list(md.entry_points(group=llmrelay.ENTRY_POINT_GROUP))
    shuffled = eps.copy()
    random.Random(7).shuffle(shuffled)
    for order in (eps, eps[::-1], shuffled):
        registry = build(entry_points=order)
        assert list(registry.providers) == PROVIDERS
        assert [f.name for f in registry.failures] == BROKEN


@pytest.mark.usefixtures("site")
def test_a_plugin_registers_completely_or_not_at_all() -> None:
    registry = build()
    # Both registered a valid provider before failing; neither provider is kept.
    assert "half-raise" not in registry.providers
    assert "half-invalid" not in registry.providers
    assert "no-default" not in registry.providers
    # ...and a failed plugin leaves no trace in model resolution either.
    with pytest.raises(errors.ModelNotFound):
        registry.resolve("half-model")


@pytest.mark.usefixtures("site")
def test_a_taken_provider_name_warns_and_the_first_keeps_its_place() -> None:
    with pytest.warns(RuntimeWarning, match=DUPLICATE) as caught:
        registry = build_registry()
    assert len(caught) == 1
    assert registry.providers["good"].provider is fixture_module("good").Good
    assert registry.providers["good"].plugin == "good"
    assert list(registry.providers).index("good") == 0
    # The rest of the duplicate's plugin registers as usual.
    assert registry.providers["dup-extra"].plugin == "z-dup"
    assert [p.name for p, _ in registry.resolve("shared-model")] == ["good", "other", "sleepy"]
    assert "z-dup" not in {f.name for f in registry.failures}


def test_a_plugin_name_taken_by_another_distribution_warns(
    site: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fork = tmp_path / "fork"
    fork.mkdir()
    write_dist(
        fork,
        "llmrelay-test-fork",
        "1.0",
        "llmrelay_test_fork",
        """
        import llmrelay
        from llmrelay_test_good import Good

        class Fork(Good):
            name = "fork"

        @llmrelay.hookimpl
        def register_providers(register):
            register(Fork)
        """,
        {"good": "llmrelay_test_fork"},
    )
    monkeypatch.syspath_prepend(str(fork))  # first on sys.path: discovered first
    monkeypatch.setenv("LLMRELAY_PLUGINS", "good")
    with pytest.warns(RuntimeWarning, match="'llmrelay-test-good'") as caught:
        registry = build_registry()
    assert "plugin name 'good'" in str(caught[0].message)
    assert list(registry.providers) == ["fork"]
    assert registry.providers["fork"].distribution == "llmrelay-test-fork"
    assert "llmrelay_test_good._plugin" not in sys.modules


# -- allow-list and block-list --------------------------------------------------------------


@pytest.mark.usefixtures("site")
def test_allow_list_loads_only_the_named_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRELAY_PLUGINS", " other , good,")
    registry = build_registry()  # z-dup is not loaded: no warning
    assert list(registry.providers) == ["good", "sleepy", "other"]
    assert registry.failures == []
    # Plugins left out are not even imported.
    assert not {"llmrelay_test_hookraises", "llmrelay_test_dup"} & set(sys.modules)


@pytest.mark.usefixtures("site")
def test_block_list_skips_the_named_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRELAY_DISABLE_PLUGINS", ",".join([*BROKEN, "z-dup", "pizzagpt"]))
    registry = build_registry()
    assert list(registry.providers) == ["good", "sleepy", "other"]
    assert registry.failures == []
    assert "llmrelay_test_importerror" not in sys.modules


@pytest.mark.usefixtures("site")
def test_block_list_wins_over_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMRELAY_PLUGINS", "good,other")
    monkeypatch.setenv("LLMRELAY_DISABLE_PLUGINS", "other")
    assert list(build_registry().providers) == ["good"]


def test_allow_and_block_lists_apply_to_extra_plugins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    good, other = _Plugin(_provider("p1")), _Plugin(_provider("p2"))
    monkeypatch.setenv("LLMRELAY_PLUGINS", "one,two")
    monkeypatch.setenv("LLMRELAY_DISABLE_PLUGINS", "two")
    registry = build_registry(entry_points=[], extra_plugins=[("one", good), ("two", other)])
    assert list(registry.providers) == ["p1"]


@pytest.mark.usefixtures("site")
def test_lists_are_read_when_the_registry_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[Registry] = []
    real_build = registry_module.build_registry

    def counting_build() -> Registry:
        builds.append(real_build())
        return builds[-1]

    monkeypatch.setattr(registry_module, "build_registry", counting_build)
    monkeypatch.setenv("LLMRELAY_PLUGINS", "good")
    first = get_registry()
    assert list(first.providers) == ["good"]

    monkeypatch.setenv("LLMRELAY_PLUGINS", "good,other")
    assert get_registry() is first  # cached: built once, the change is not seen
    assert llmrelay.get_registry() is first
    assert len(builds) == 1

    reset_registry()
    second = get_registry()
    assert second is not first
    assert list(second.providers) == ["good", "sleepy", "other"]
    assert len(builds) == 2


@pytest.mark.usefixtures("site")
def test_get_registry_reads_the_real_entry_points() -> None:
    with pytest.warns(RuntimeWarning, match=DUPLICATE):
        registry = get_registry()
    assert list(registry.providers) == PROVIDERS
    assert [f.name for f in registry.failures] == BROKEN


# -- resolve ----------------------------------------------------------------------------------


@pytest.fixture
def registry(site: Path) -> Registry:
    return build()


def _pairs(pairs: list[tuple[type[Provider], str]]) -> list[tuple[str, str]]:
    return [(provider.name, model) for provider, model in pairs]


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        # provider/model pins that provider
        ("good/shared-model", [("good", "shared-model")]),
        ("other/shared-model", [("other", "shared-model")]),
        ("sleepy/shared-model", [("sleepy", "shared-model")]),
        ("good/gm", [("good", "good-model")]),
        ("good/", [("good", "good-model")]),
        ("pizzagpt/gpt-4o-mini", [("pizzagpt", "gpt-4o-mini")]),
        # a bare model goes to every provider serving it: working first, then in order
        (
            "shared-model",
            [("good", "shared-model"), ("other", "shared-model"), ("sleepy", "shared-model")],
        ),
        ("other-model", [("other", "other-model")]),
        ("gpt-4o-mini", [("pizzagpt", "gpt-4o-mini")]),
        # aliases resolve to the provider's own name
        ("gm", [("good", "good-model")]),
    ],
)
def test_resolve(registry: Registry, model: str, expected: list[tuple[str, str]]) -> None:
    assert _pairs(registry.resolve(model)) == expected


@pytest.mark.parametrize(
    ("model", "suggestion"),
    [
        ("shared-modle", "shared-model"),
        ("good-modle", "good-model"),
        ("gpt-4o-mni", "gpt-4o-mini"),
        ("nosuch/shared-model", "good/shared-model"),  # not a provider prefix: a model name
        ("good/good-modle", "good-model"),  # pinned provider, unknown model
        ("good/other-model", None),
    ],
)
def test_unknown_model_raises_model_not_found(
    registry: Registry, model: str, suggestion: str | None
) -> None:
    with pytest.raises(LookupError) as caught:
        registry.resolve(model)
    exc = caught.value
    assert isinstance(exc, errors.ModelNotFound)
    assert isinstance(exc, llmrelay.LLMRelayError)
    if suggestion is not None:
        assert suggestion in exc.suggestions
        assert "did you mean" in str(exc)
        assert repr(suggestion) in str(exc)


def test_models_maps_each_model_to_its_providers_in_order(registry: Registry) -> None:
    assert registry.models() == MODELS


def test_get_suggests_close_provider_names(registry: Registry) -> None:
    assert registry.get("other") is fixture_module("other").Other
    with pytest.raises(errors.ModelNotFound) as caught:
        registry.get("godo")
    assert "good" in caught.value.suggestions


async def test_a_discovered_provider_answers(registry: Registry) -> None:
    stream = llmrelay.relay("shared-model", HELLO, registry=registry)
    assert await stream.text() == "good answers with shared-model"
    pinned = llmrelay.relay("other/shared-model", HELLO, registry=registry)
    assert await pinned.text() == "other answers with shared-model"


# -- what a plugin may register (in-memory plugins) -------------------------------------------


class _Plugin:
    """A plugin object registering the given providers."""

    def __init__(self, *providers: object) -> None:
        self.providers = providers

    @llmrelay.hookimpl
    def register_providers(self, register: Callable[[object], None]) -> None:
        for provider in self.providers:
            register(provider)


async def _never_yields(cls: type[Provider], model: str, messages: object, call: object) -> Any:
    return None  # pragma: no cover - never called: "async def" without "yield"


def _sync_generator(cls: type[Provider], model: str, messages: object, call: object) -> Any:
    yield llmrelay.FinishReason("stop")  # pragma: no cover - never called: "async" forgotten


def _provider(name: str, **attrs: Any) -> type[Provider]:
    async def generate(
        cls: type[Provider], model: str, messages: object, call: object
    ) -> Any:  # pragma: no cover - never called
        yield llmrelay.FinishReason("stop")

    namespace: dict[str, Any] = {
        "name": name,
        "url": f"https://{name.replace('/', '-')}.invalid",
        "default_model": "m1",
        "models": ("m1", "m2"),
        "generate": classmethod(generate),
        **attrs,
    }
    return type(f"P_{name}", (Provider,), namespace)


@pytest.mark.parametrize(
    ("provider", "error"),
    [
        (_provider("x", default_model="nope"), "default_model 'nope' is not in its models"),
        (_provider(""), "name must be a non-empty string"),
        (_provider("a/b"), "must not contain '/'"),
        (_provider("x", url=None), "url must be a non-empty string"),
        (_provider("x", working="yes"), "working must be a bool"),
        (_provider("x", api_key_env=""), "api_key_env must be None or the name of an env"),
        (_provider("x", api_key_env=["KEY"]), "api_key_env must be None or the name of an env"),
        (_provider("x", models="m1"), "models must be a sequence of strings"),
        (_provider("x", model_aliases={"fast": "m9"}), "point at models it does not list: 'm9'"),
        (_provider("x", model_aliases={"fast": 1}), "model_aliases must map str to str"),
        (
            _provider("x", generate=inspect.getattr_static(Provider, "generate")),
            "implements neither generate() (a stream of chunks) nor complete()",
        ),
        (_provider("x", generate=lambda *a: None), "generate must be a classmethod"),
        (_provider("x", complete=lambda *a: None), "complete must be a classmethod"),
        (
            _provider("x", generate=classmethod(_never_yields)),
            "generate is an async function that never yields: make it an async generator",
        ),
        (
            _provider("x", generate=classmethod(_sync_generator)),
            "generate is a plain generator (def with yield): make it an async generator",
        ),
        (Provider, "Provider.name must be a non-empty string"),
        (object(), "is not a subclass of llmrelay.Provider"),
    ],
)
def test_invalid_providers_are_refused(provider: object, error: str) -> None:
    good = _provider("fine")
    registry = build_registry(entry_points=[], extra_plugins=[("bad", _Plugin(good, provider))])
    assert registry.providers == {}
    [failure] = registry.failures
    assert failure.name == "bad"
    assert failure.error.startswith("TypeError: ")
    assert error in failure.error


class _PlainComplete(Provider):
    name = "plain"
    url = "https://plain.invalid"
    default_model = "m1"
    models = ("m1",)

    @classmethod
    def complete(  # type: ignore[override]
        cls, model: str, messages: object, call: object
    ) -> llmrelay.Completion:  # pragma: no cover - never called: "async" forgotten
        return llmrelay.Completion("x", llmrelay.FinishReason("stop"))


class _YieldingComplete(_PlainComplete):
    name = "yielding"

    @classmethod
    async def complete(  # type: ignore[override]
        cls, model: str, messages: object, call: object
    ) -> Any:  # pragma: no cover - never called: a generator, not a coroutine
        yield "x"


def _passed_on(func: Callable[..., Any]) -> Callable[..., Any]:
    """A decorator whose plain wrapper returns the coroutine (no functools.wraps)."""

    def wrapper(*args: Any) -> Any:
        return func(*args)

    return wrapper


class _DecoratedComplete(_PlainComplete):
    name = "decorated"

    @classmethod
    @_passed_on
    async def complete(
        cls, model: str, messages: object, call: object
    ) -> llmrelay.Completion:  # pragma: no cover - only registered
        return llmrelay.Completion("x", llmrelay.FinishReason("stop"))


def _in_thread(func: Callable[..., Any]) -> Callable[..., Any]:
    """An async wrapper running a blocking function in a thread (``functools.wraps``)."""

    @functools.wraps(func)
    async def wrapper(*args: Any) -> Any:
        return await asyncio.to_thread(func, *args)

    return wrapper


class _ThreadedComplete(_PlainComplete):
    name = "threaded"

    @classmethod
    @_in_thread
    def complete(  # type: ignore[override]
        cls, model: str, messages: object, call: object
    ) -> llmrelay.Completion:  # pragma: no cover - only registered
        return llmrelay.Completion("x", llmrelay.FinishReason("stop"))


@pytest.mark.parametrize("provider", [_PlainComplete, _YieldingComplete])
def test_a_complete_that_is_not_an_async_function_is_refused(provider: type[Provider]) -> None:
    """Every call would have failed with a bare TypeError from the ``await``: the plugin is
    refused when it registers instead, saying what to write."""
    registry = build_registry(entry_points=[], extra_plugins=[("bad", _Plugin(provider))])
    [failure] = registry.failures
    assert f"{provider.__name__}.complete must be an async function" in failure.error


@pytest.mark.parametrize("provider", [_DecoratedComplete, _ThreadedComplete])
def test_a_decorated_complete_is_taken_as_written(provider: type[Provider]) -> None:
    """A decorator may well be right: a plain wrapper returning the coroutine, or an async
    wrapper running a plain function in a thread. Neither is refused."""
    registry = build_registry(entry_points=[], extra_plugins=[("ok", _Plugin(provider))])
    assert registry.failures == []
    assert provider.name in registry.providers


def test_a_plugin_without_the_hook_fails() -> None:
    registry = build_registry(entry_points=[], extra_plugins=[("empty", object())])
    [failure] = registry.failures
    assert "no register_providers hook" in failure.error


@pytest.mark.parametrize(
    ("target", "error"),
    [
        (
            "llmrelay_test_slip:register_providers",
            "TypeError: the entry point names the function register_providers(), not a plugin: "
            "point it at the module holding the register_providers hook ('llmrelay_test_slip')",
        ),
        (
            "llmrelay_test_slip:Slip",
            "TypeError: the entry point names the provider Slip, not a plugin: point it at the "
            "module whose register_providers hook registers it",
        ),
        (
            "llmrelay_test_slip:Unmarked",
            "TypeError: its register_providers is not marked @llmrelay.hookimpl",
        ),
    ],
)
def test_an_entry_point_aimed_at_the_wrong_thing_says_what_to_point_it_at(
    site: Path, target: str, error: str
) -> None:
    # Each was "it has no register_providers hook marked @llmrelay.hookimpl", which reads as
    # wrong to an author whose register_providers is right there, marked.
    write_dist(
        site,
        "llmrelay-test-slip",
        "1.0",
        "llmrelay_test_slip",
        """
        import llmrelay
        from llmrelay_test_good import Good

        class Slip(Good):
            name = "slip"

        @llmrelay.hookimpl
        def register_providers(register):
            register(Slip)

        class Unmarked:
            @staticmethod
            def register_providers(register):
                register(Slip)
        """,
        {"slip": target},
    )
    registry = build_registry(entry_points=md.entry_points(group="llmrelay", name="slip"))
    assert [(f.target, f.error) for f in registry.failures] == [(target, error)]


def test_a_hookimpl_may_take_fewer_arguments_than_the_spec() -> None:
    class Quiet:
        @llmrelay.hookimpl
        def register_providers(self) -> None:
            pass

    registry = build_registry(entry_points=[], extra_plugins=[("quiet", Quiet())])
    assert registry.failures == []
    assert registry.providers == {}


def test_register_refuses_calls_after_the_hook_returned() -> None:
    kept: list[Callable[[object], None]] = []

    class Sneaky:
        @llmrelay.hookimpl
        def register_providers(self, register: Callable[[object], None]) -> None:
            kept.append(register)

    build_registry(entry_points=[], extra_plugins=[("sneaky", Sneaky())])
    with pytest.raises(RuntimeError, match="after register_providers returned"):
        kept[0](_provider("late"))


def test_add_plugin_warns_about_a_taken_name() -> None:
    registry = build_registry(entry_points=[], extra_plugins=[("one", _Plugin(_provider("p")))])
    with pytest.warns(RuntimeWarning, match="provider name 'p' from plugin 'two'"):
        assert registry.add_plugin(_Plugin(_provider("p"), _provider("q")), "two")
    assert registry.providers["p"].plugin == "one"
    assert registry.providers["q"].plugin == "two"


def test_a_duplicate_raised_as_an_error_still_leaves_the_plugin_whole() -> None:
    # Under -W error the warning raises; the plugin's other providers are in place by then.
    registry = build_registry(entry_points=[], extra_plugins=[("one", _Plugin(_provider("p")))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(RuntimeWarning, match="provider name 'p'"):
            registry.add_plugin(_Plugin(_provider("p"), _provider("q")), "two")
    assert list(registry.providers) == ["p", "q"]


def test_the_same_provider_registered_twice_by_one_plugin_is_not_a_duplicate() -> None:
    p = _provider("p")
    registry = build_registry(entry_points=[], extra_plugins=[("one", _Plugin(p, p))])
    assert list(registry.providers) == ["p"]


def test_a_model_name_with_a_slash_is_served_bare_and_listed() -> None:
    meta = _provider("meta", default_model="llama", models=("llama",))
    hub = _provider("hub", default_model="meta/llama", models=("meta/llama",))
    registry = build_registry(entry_points=[], extra_plugins=[("p", _Plugin(meta, hub))])
    # A registered provider's name as prefix pins it; models() does not trip over that.
    assert _pairs(registry.resolve("meta/llama")) == [("meta", "llama")]
    assert registry.models() == {"llama": ["meta"], "meta/llama": ["hub"]}
    assert _pairs(registry.resolve("hub/meta/llama")) == [("hub", "meta/llama")]


# -- the CLI, as a subprocess -----------------------------------------------------------------


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    site = _copy_dists(tmp_path_factory.mktemp("cli") / "site")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMRELAY_", "PYTHON"))}
    env["PYTHONPATH"] = str(site)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


#: Imports the CLI, runs ``--help``, and prints which modules each step had imported.
_HELP_IMPORTS = textwrap.dedent(
    """
    import json, sys
    from llmrelay.cli import main
    on_import = sorted(sys.modules)
    sys.argv = ["llmrelay", "--help"]
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    print(json.dumps({"code": code, "on_import": on_import, "after_help": sorted(sys.modules)}))
    """
)
_CLI = [sys.executable, "-m", "llmrelay.cli"]
_SCRIPT = Path(sys.executable).with_name("llmrelay")
CLI_RUNS: dict[str, list[str]] = {
    "providers-json": [*_CLI, "providers", "--json"],
    "providers-text": [*_CLI, "providers"],
    "models-json": [*_CLI, "models", "--json"],
    "models-text": [*_CLI, "models"],
    "script-help": [str(_SCRIPT), "--help"],
    "help-imports": [sys.executable, "-c", _HELP_IMPORTS],
}


@pytest.fixture(scope="module")
def cli(cli_env: dict[str, str]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Every CLI run above, started at once (each pays the interpreter's start-up)."""
    procs = {
        key: subprocess.Popen(
            argv, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for key, argv in CLI_RUNS.items()
    }
    results = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        results[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def test_cli_providers_json(cli: dict[str, subprocess.CompletedProcess[str]]) -> None:
    run = cli["providers-json"]
    assert run.returncode == 0, run.stderr
    data = json.loads(run.stdout)
    rows = {row["name"]: row for row in data["providers"]}
    assert [row["name"] for row in data["providers"]] == PROVIDERS
    assert rows["good"]["models"] == ["shared-model", "good-model"]
    assert rows["good"]["working"] is True
    assert rows["good"]["distribution"] == "llmrelay-test-good"
    assert rows["sleepy"]["working"] is False
    assert rows["sleepy"]["distribution"] == "llmrelay-test-other"
    assert rows["pizzagpt"]["distribution"] == "llmrelay-pizzagpt"
    assert rows["pizzagpt"]["models"] == ["gpt-4o-mini"]
    assert rows["dup-extra"]["plugin"] == "z-dup"
    for row in data["providers"]:
        assert {"name", "models", "working", "distribution"} <= set(row)

    assert [f["plugin"] for f in data["failed_plugins"]] == BROKEN
    for failed in data["failed_plugins"]:
        dist, target, error = FAILURES[failed["plugin"]]
        assert (failed["distribution"], failed["target"]) == (dist, target)
        assert failed["error"].startswith(error)
    # The duplicate is a warning on stderr, not a failure: one line, no source line.
    assert DUPLICATE.replace("\\", "") in run.stderr
    assert "RuntimeWarning" in run.stderr
    warned = [line for line in run.stderr.splitlines() if "already registered" in line]
    assert warned
    assert all(line.startswith("warning: ") for line in warned)
    assert "build_registry()" not in run.stderr


def test_cli_providers_text(cli: dict[str, subprocess.CompletedProcess[str]]) -> None:
    run = cli["providers-text"]
    assert run.returncode == 0, run.stderr
    out = run.stdout
    assert "good  (working; from llmrelay-test-good)" in out
    assert "sleepy  (not working; from llmrelay-test-other)" in out
    assert "pizzagpt  (not working; from llmrelay-pizzagpt)" in out
    assert "models: shared-model, good-model" in out
    failed = [line for line in out.splitlines() if line.startswith("FAILED plugin ")]
    assert len(failed) == len(BROKEN)
    for line, (name, (_, target, error)) in zip(failed, FAILURES.items(), strict=True):
        assert line.startswith(f"FAILED plugin {name} ({target}): {error}")


def test_cli_models_json(cli: dict[str, subprocess.CompletedProcess[str]]) -> None:
    run = cli["models-json"]
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == MODELS


def test_cli_models_text(cli: dict[str, subprocess.CompletedProcess[str]]) -> None:
    run = cli["models-text"]
    assert run.returncode == 0, run.stderr
    table = {}
    for line in run.stdout.splitlines():
        model, providers = line.split(None, 1)
        table[model] = providers.split(", ")
    assert table == MODELS


def test_cli_help_imports_neither_aiohttp_nor_any_provider(
    cli: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    run = cli["help-imports"]
    assert run.returncode == 0, run.stderr
    help_text, _, last = run.stdout.rstrip("\n").rpartition("\n")
    data = json.loads(last)
    assert data["code"] == 0
    assert "Usage: llmrelay" in help_text
    for command in ("chat", "providers", "models"):
        assert command in help_text
    for when in ("on_import", "after_help"):
        heavy = [
            m
            for m in data[when]
            if m.split(".")[0] in {"aiohttp", "llmrelay_pizzagpt"} or m.startswith(MODULE_PREFIX)
        ]
        assert heavy == [], when


def test_console_script_help(cli: dict[str, subprocess.CompletedProcess[str]]) -> None:
    run = cli["script-help"]
    assert run.returncode == 0, run.stderr
    assert "Usage: llmrelay" in run.stdout
