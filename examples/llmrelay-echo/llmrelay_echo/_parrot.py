from collections.abc import AsyncGenerator

from llmrelay import Call, Chunk, FinishReason, Message, Provider, Usage


class Parrot(Provider):
    """Says the last user message back, word by word. No network, no key, no model."""

    name = "parrot"
    label = "Parrot (offline)"
    url = "http://127.0.0.1"  # the contract wants one; Parrot never calls it
    default_model = "parrot-1"
    models = ("parrot-1",)
    supports_stream = True

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        heard = next((m.text for m in reversed(messages) if m.role == "user"), "")
        words = heard.split() or ["..."]
        for index, word in enumerate(words):
            yield word if index == 0 else f" {word}"
        said = sum(len(m.text.split()) for m in messages)
        yield Usage(prompt_tokens=said, completion_tokens=len(words))  # Parrot's own "tokens"
        yield FinishReason("stop")
