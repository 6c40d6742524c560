"""The sync client, for scripts (and notebooks: it works inside a running event loop too).

From the repository root (the cassette answers instead of pizzagpt.it):

    uv run python docs/examples/client_sync.py
"""

from llmrelay import Client, cassette

MESSAGES = [{"role": "user", "content": "Привет, как дела?"}]

with Client() as client, cassette("cassettes/pizzagpt/seed_hello.yaml"):
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    print(completion.choices[0].message.content)
    print(completion.provider, repr(completion.usage))  # Pizzagpt reports no usage: None
