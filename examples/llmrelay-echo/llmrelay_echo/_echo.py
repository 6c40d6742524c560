from collections.abc import AsyncGenerator

from llmrelay import Call, Chunk, FinishReason, Message, Provider, format_prompt
from llmrelay.errors import InvalidResponse


class Echo(Provider):
    """The Echo service: POST /v1/reply {"model", "prompt"} answers {"reply": "..."}."""

    name = "echo"
    label = "Echo"
    url = "http://127.0.0.1:8765"
    api_endpoint = "/v1/reply"
    default_model = "echo-1"
    models = ("echo-1",)
    supported_options = frozenset({"temperature"})

    @classmethod
    async def generate(
        cls, model: str, messages: list[Message], call: Call
    ) -> AsyncGenerator[Chunk, None]:
        payload = {"model": model, "prompt": format_prompt(messages), **call.options}
        data = await call.post_json(call.url(cls.api_endpoint or ""), payload)
        reply = data.get("reply") if isinstance(data, dict) else None
        if not isinstance(reply, str) or not reply:
            raise InvalidResponse(f"no reply in {str(data)[:100]!r}", provider=cls.name)
        yield reply
        yield FinishReason("stop")
