from echo_server import make_app
from llmrelay.testing import serve

from llmrelay_echo import Echo


async def test_the_stand_in_answers_like_the_cassette() -> None:
    async with serve(make_app()) as base_url:
        stream = Echo.create_async_generator(
            "", [{"role": "user", "content": "hi"}], base_url=base_url
        )
        assert await stream.text() == "echo: hi"
