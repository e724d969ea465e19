"""Chat with a running pyfile server through the official OpenAI client.

    ./model.pyfile --server --nobrowser &      # serves http://127.0.0.1:8080/v1
    python examples/openai_client.py "What is the capital of France?"
"""

import sys

from openai import OpenAI

client = OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unused-unless---api-key")
question = " ".join(sys.argv[1:]) or "What is the capital of France?"
stream = client.chat.completions.create(
    model="local", stream=True, temperature=0,
    messages=[{"role": "user", "content": question}])
for chunk in stream:
    print(chunk.choices[0].delta.content or "", end="", flush=True)
print()
