from llmrelay import FinishReason, Usage
from llmrelay.testing import ProviderConformance

from llmrelay_echo import Parrot


async def test_parrot_says_it_back_word_by_word() -> None:
    stream = Parrot.create_async_generator("", [{"role": "user", "content": "hi there"}])
    assert [chunk async for chunk in stream] == ["hi", " there", Usage(2, 2), FinishReason("stop")]


class TestParrot(ProviderConformance):
    provider = Parrot
    uses_http = False
