import pytest
from llmrelay.testing import ProviderConformance

from llmrelay_echo import Echo

HI = [{"role": "user", "content": "hi"}]


@pytest.mark.llmrelay_cassette("cassettes/hi.yaml")
async def test_echo_replies_from_the_cassette() -> None:
    assert await Echo.create_async_generator("echo-1", HI).text() == "echo: hi"


class TestEcho(ProviderConformance):
    provider = Echo
    cassette = "cassettes/hi.yaml"
    messages = HI
    expected_text = "echo: hi"
