"""The order providers are tried in: working, priority, recent health, registration.

``route()`` is checked directly with providers registered as plugins (no I/O), and through the
``llmrelay models`` command, which prints the order it would use.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from llmrelay import Call, Chunk, FinishReason, Message, Provider, Registry
from llmrelay._client import list_models
from llmrelay._config import Config
from llmrelay._routing import Health, config_problems, route
from llmrelay.cli import cli
from llmrelay.errors import ModelNotFound
from tests.endpoint_support import endpoint, run_cli
from tests.support import Plugin


def fake(
    name: str,
    *,
    working: bool = True,
    models: tuple[str, ...] = ("m",),
    text: tuple[str, ...] = (),
) -> type[Provider]:
    class Fake(Provider):
        @classmethod
        async def generate(
            cls, model: str, messages: list[Message], call: Call
        ) -> AsyncGenerator[Chunk, None]:
            for chunk in text:
                yield chunk
            yield FinishReason("stop")

    Fake.name, Fake.url, Fake.working = name, "http://127.0.0.1:9", working
    Fake.models, Fake.default_model = models, models[0]
    Fake.__name__ = Fake.__qualname__ = f"Fake_{name}"
    return Fake


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def registry(use_plugins: Callable[..., Registry]) -> Registry:
    """a, b, c and d serve "m", registered in that order; d is not working."""
    return use_plugins(
        (
            "p",
            Plugin(
                fake("a"),
                fake("b"),
                fake("c"),
                fake("d", working=False),
                fake("z", models=("other",)),
            ),
        )
    )


def config(**data: Any) -> Config:
    return Config.model_validate(data)


def names(model: str, registry: Registry, cfg: Config, tracker: Health) -> list[str]:
    return [p.name for p, _ in route(model, registry, cfg, tracker)]


def test_registration_order_with_working_first(registry: Registry) -> None:
    assert names("m", registry, config(), Health()) == ["a", "b", "c", "d"]


def test_priority_comes_before_registration(registry: Registry) -> None:
    cfg = config(providers={"c": {"priority": 5}, "a": {"priority": -1}, "d": {"priority": 9}})
    # d stays last: not working is the first criterion, whatever its priority.
    assert names("m", registry, cfg, Health()) == ["c", "b", "a", "d"]


def test_a_failed_provider_goes_later_for_its_cool_down(registry: Registry) -> None:
    clock = Clock()
    tracker = Health(clock)
    cfg = config(cooldown=2, max_cooldown=5)
    tracker.failed("a")
    assert tracker.cooldown("a", 2, 5) == 2
    assert names("m", registry, cfg, tracker) == ["b", "c", "a", "d"]
    clock.now += 1.9
    assert names("m", registry, cfg, tracker) == ["b", "c", "a", "d"]
    clock.now += 0.2
    assert tracker.cooldown("a", 2, 5) == 0
    assert names("m", registry, cfg, tracker) == ["a", "b", "c", "d"]  # its place again


def test_the_cool_down_doubles_up_to_the_cap_and_resets_on_success() -> None:
    clock = Clock()
    tracker = Health(clock)
    spans = []
    for _ in range(5):
        tracker.failed("a")
        spans.append(tracker.cooldown("a", 2, 10))
    assert spans == [2, 4, 8, 10, 10]
    assert tracker.failures("a") == 5
    tracker.succeeded("a")
    assert (tracker.failures("a"), tracker.cooldown("a", 2, 10)) == (0, 0)
    for _ in range(200):  # no overflow however long the streak
        tracker.failed("b")
    assert tracker.cooldown("b", 2, 10) == 10


def test_a_provider_that_asked_for_a_wait_cools_down_at_least_that_long() -> None:
    """A rate limit's Retry-After of 30 s outlasts the 2 s the first failure earns: the
    provider is asked later for the 30 s (within the cap), not again after 2."""
    clock = Clock()
    tracker = Health(clock)
    tracker.failed("a", retry_after=30)
    assert tracker.cooldown("a", 2, 300) == 30
    assert tracker.cooldown("a", 2, 10) == 10  # the cap bounds it too
    clock.now += 5
    tracker.failed("a")  # a later failure with no wait asked: the asked time still holds
    assert tracker.cooldown("a", 2, 300) == 25
    tracker.failed("b", retry_after=1)  # shorter than the failures' own span: that span
    assert tracker.cooldown("b", 2, 300) == 2
    tracker.succeeded("a")
    assert tracker.cooldown("a", 2, 300) == 0


def test_requests_in_flight_when_a_provider_fails_count_as_one_failure() -> None:
    """Ten requests sent together into one blip counted ten consecutive failures: the longest
    cool-down at once. A request sent before the last failure was counted fails in the same
    outage; the next one sent after it, if it fails too, is the next step."""
    clock = Clock()
    tracker = Health(clock)
    sent = clock()
    clock.now += 0.1
    for _ in range(10):
        tracker.failed("a", since=sent)
    assert (tracker.failures("a"), tracker.cooldown("a", 5, 300)) == (1, 5)
    clock.now += 6  # its cool-down over, a new request is sent and fails
    tracker.failed("a", since=clock())
    assert tracker.failures("a") == 2


async def test_a_stream_that_begins_is_a_success_even_if_closed_early(
    use_plugins: Callable[..., Registry],
) -> None:
    """The first chunk resets the provider's health ("its first success resets it"): only a
    stream read to its FinishReason did, so one closed early left the failures counted."""
    from llmrelay import relay
    from llmrelay._routing import health

    use_plugins(("chatty", Plugin(fake("chatty", text=("one ", "two")))))
    health.failed("chatty")
    stream = relay("m", [{"role": "user", "content": "hi"}])
    assert await anext(stream) == "one "
    await stream.aclose()
    assert health.failures("chatty") == 0


def test_among_cooling_providers_fewer_failures_go_first(registry: Registry) -> None:
    tracker = Health(Clock())
    for _ in range(3):
        tracker.failed("a")
    tracker.failed("b")
    assert names("m", registry, config(), tracker) == ["c", "b", "a", "d"]


def test_priority_still_wins_over_health(registry: Registry) -> None:
    tracker = Health(Clock())
    tracker.failed("a")
    cfg = config(providers={"a": {"priority": 1}})
    assert names("m", registry, cfg, tracker) == ["a", "b", "c", "d"]


def test_the_order_is_deterministic(registry: Registry) -> None:
    tracker = Health(Clock())
    tracker.failed("b")
    cfg = config(providers={"c": {"priority": 1}})
    orders = {tuple(names("m", registry, cfg, tracker)) for _ in range(20)}
    assert orders == {("c", "a", "b", "d")}


def test_disabled_providers_are_left_out(registry: Registry) -> None:
    cfg = config(providers={"b": {"disabled": True}})
    assert names("m", registry, cfg, Health()) == ["a", "c", "d"]
    with pytest.raises(ModelNotFound, match="b is disabled in the configuration"):
        route("b/m", registry, cfg)
    cfg = config(providers={"z": {"disabled": True}})
    with pytest.raises(ModelNotFound, match="z is disabled"):
        route("other", registry, cfg)
    # A disabled provider's names are not suggested: they lead to another refusal.
    with pytest.raises(ModelNotFound) as info:
        route("otherz", registry, cfg)
    assert not any("other" in name for name in info.value.suggestions)
    with pytest.raises(ModelNotFound) as info:
        route("otherz", registry, config())
    assert "other" in info.value.suggestions  # (enabled, it is)


def test_aliases(registry: Registry) -> None:
    cfg = config(aliases={"fast": "b/m", "broken": "nothing-serves-this", "mm": "m"})
    assert names("fast", registry, cfg, Health()) == ["b"]
    assert names("mm", registry, cfg, Health()) == ["a", "b", "c", "d"]
    with pytest.raises(ModelNotFound, match="alias 'broken' points at 'nothing-serves-this'"):
        route("broken", registry, cfg)
    with pytest.raises(ModelNotFound) as info:
        route("fsat", registry, cfg)
    assert "fast" in info.value.suggestions


def test_unknown_model_suggests_close_names(registry: Registry) -> None:
    with pytest.raises(ModelNotFound) as info:
        route("otehr", registry, config())
    assert isinstance(info.value, LookupError)
    assert info.value.suggestions[0] == "other"
    assert "did you mean 'other'" in str(info.value)


def test_a_pinned_name_whose_provider_is_not_registered_says_so(registry: Registry) -> None:
    with pytest.raises(ModelNotFound) as info:
        route("echo/echo-1", registry, config())
    names = ", ".join(registry.providers)
    assert str(info.value) == (
        "no provider serves model 'echo/echo-1': no provider is registered as 'echo' "
        f"(registered: {names}; is its plugin installed?)"
    )
    with pytest.raises(ModelNotFound) as info:
        route("otehr/m", registry, config())
    assert "no provider is registered as 'otehr'" in str(info.value)


def test_an_unknown_model_names_the_plugins_that_failed_to_load(
    use_plugins: Callable[..., Registry],
) -> None:
    # The failure is only logged, and the llmrelay logger prints nothing unless configured:
    # "no provider serves" was all an author whose plugin did not load got to see.
    registry = use_plugins(("p", Plugin(fake("a"))), ("echo", object()))
    suffix = " (plugin(s) that failed to load: echo; `llmrelay providers` says why)"
    for model in ("echo-1", "echo/echo-1", "a/nope"):
        with pytest.raises(ModelNotFound) as info:
            route(model, registry, config())
        assert str(info.value).endswith(suffix)
    with pytest.raises(ModelNotFound) as info:
        route("echo-1", use_plugins(("p", Plugin(fake("a")))), config())
    assert "failed to load" not in str(info.value)


def test_a_model_name_with_a_slash_is_not_taken_for_a_provider(
    use_plugins: Callable[..., Registry],
) -> None:
    class Hub(Provider):
        name = "hub"
        url = "http://127.0.0.1:9"
        default_model = "meta-llama/Llama-3.1-8B"
        models = ("meta-llama/Llama-3.1-8B",)

        @classmethod
        async def generate(
            cls, model: str, messages: list[Message], call: Call
        ) -> AsyncGenerator[Chunk, None]:
            yield FinishReason("stop")

    from llmrelay._hooks import hookimpl

    class Plugin:
        @hookimpl
        def register_providers(self, register: Callable[[type[Provider]], None]) -> None:
            register(Hub)

    registry = use_plugins(("hub", Plugin()))
    with pytest.raises(ModelNotFound) as info:
        route("meta-llama/Llama-3.1-8b", registry, config())
    assert "registered as" not in str(info.value)
    assert "did you mean 'meta-llama/Llama-3.1-8B'" in str(info.value)


def test_config_problems_name_the_typos(registry: Registry) -> None:
    cfg = config(
        default_model="nope",
        providers={"a": {"priority": 1}, "bb": {"priority": 2}},
        aliases={"ok": "m", "bad": "mm"},
    )
    problems = config_problems(cfg, registry)
    assert problems[0].startswith("[providers.bb]: no provider is registered as 'bb'")
    assert problems[1].startswith("[aliases] bad = 'mm': no provider serves model 'mm'")
    assert problems[2] == "default_model 'nope': no provider serves it"
    assert len(problems) == 3
    assert config_problems(config(default_model="m"), registry) == []


def test_llmrelay_models_prints_the_routing_order(tmp_path: Path) -> None:
    """A user's view: two endpoints and Pizzagpt, with priorities, one provider disabled."""
    path = tmp_path / "config.toml"
    path.write_text(
        "[providers.second]\npriority = 10\n[providers.third]\ndisabled = true\n"
        + endpoint("first", "http://127.0.0.1:9/v1")
        + endpoint("second", "http://127.0.0.1:9/v1")
        + endpoint("third", "http://127.0.0.1:9/v1")
    )
    result = run_cli("models", env={"LLMRELAY_CONFIG": str(path)})
    assert result.returncode == 0, result.stderr
    rows = [line.split(None, 1) for line in result.stdout.splitlines()]
    assert rows == [["gpt-4o-mini", "second, first, pizzagpt"], ["llama3", "second, first"]]
    as_json = CliRunner().invoke(cli, ["models", "--json"], env={"LLMRELAY_CONFIG": str(path)})
    assert json.loads(as_json.stdout)["llama3"] == ["second", "first"]


def test_llmrelay_models_reports_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[providers.a]\npriority = 'high'\n")
    result = CliRunner().invoke(cli, ["models"], env={"LLMRELAY_CONFIG": str(path)})
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid configuration in ")
    assert "providers.a.priority: Input should be a valid integer" in result.stderr


def test_a_model_id_that_reads_as_another_provider_pinned_is_listed_by_the_name_that_reaches_it(
    use_plugins: Callable[..., Registry], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Endpoint ``r`` lists ``a/llama3`` while a provider ``a`` exists: a request for
    ``a/llama3`` goes to ``a``, so ``r``'s model is listed as ``r/a/llama3``, which reaches it;
    ids whose prefix is no provider (``b/qwen``) are listed as they are."""
    registry = use_plugins(
        ("a", Plugin(fake("a", models=("llama3",)))),
        ("r", Plugin(fake("r", models=("a/llama3", "b/qwen")))),
    )
    listed = {m.id: m.providers for m in list_models(registry).data}
    assert listed == {
        "llama3": ["a"],
        "a/llama3": ["a"],  # a request reads it as "a" pinned, as the listing says
        "r/a/llama3": ["r"],
        "b/qwen": ["r"],
    }
    assert [(p.name, m) for p, m in registry.resolve("r/a/llama3")] == [("r", "a/llama3")]
    path = tmp_path / "config.toml"
    path.write_text("[providers.r]\ndisabled = true\n")
    monkeypatch.setenv("LLMRELAY_CONFIG", str(path))
    assert [m.id for m in list_models(registry).data] == ["llama3", "a/llama3"]


def test_listing_models_is_linear_in_their_number(use_plugins: Callable[..., Registry]) -> None:
    """Two providers listing 30,000 models: one pass, not a search per name (that took
    seconds per 20,000, on ``llmrelay serve``'s event loop)."""
    many = tuple(f"model-{i}" for i in range(30_000))
    registry = use_plugins(
        ("big", Plugin(fake("big", models=many))),
        ("half", Plugin(fake("half", models=many[::2]))),
    )
    started = time.perf_counter()
    listed = list_models(registry).data
    elapsed = time.perf_counter() - started
    assert len(listed) == 30_000
    assert (listed[0].providers, listed[1].providers) == (["big", "half"], ["big"])
    assert elapsed < 5.0, f"{elapsed:.1f} s"  # linear: well under 1 s; quadratic: 30 s
