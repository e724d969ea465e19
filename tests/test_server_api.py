"""The batching server and llama-server's API against the real SmolLM2 pyfile: identical greedy
answers from concurrent clients, grammars beside free requests, cancellation, /metrics,
Anthropic's and OpenAI's official clients, embeddings, the native routes, and the API key on
every route."""

import json
import math
import re
import socket
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import run_env
from test_server import Server

pytestmark = pytest.mark.slow
QUESTION = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="module")
def srv(smol_pyfile, tmp_path_factory):
    env = run_env(PYFILE_CACHE_DIR=str(tmp_path_factory.mktemp("apicache")))
    s = Server(smol_pyfile, "-np", "4", "--kv-unified", "--metrics", "-c", "4096", env=env)
    yield s
    assert s.stop() == 0


def chat(srv, content=QUESTION, path="v1/chat/completions", **kw):
    body = {"messages": [{"role": "user", "content": content}], "temperature": 0,
            "max_tokens": 24, **kw}
    status, out = srv.request(path, body)
    assert status == 200, out
    return out


def metrics(srv):
    with urllib.request.urlopen(srv.url + "metrics", timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    values = {}
    for line in text.splitlines():  # Prometheus text format: comments, then `name value`
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) llamacpp:[a-z_]+ .+", line), line
            continue
        m = re.fullmatch(r"(llamacpp:[a-z_]+) (-?[0-9.e+-]+|NaN)", line)
        assert m, line
        values[m.group(1)] = float(m.group(2))
    return values


def test_eight_concurrent_clients_get_identical_greedy_answers_in_one_batch(srv):
    alone = chat(srv)["choices"][0]["message"]["content"]
    before = metrics(srv)
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda _: chat(srv), range(8)))
    after = metrics(srv)
    texts = [o["choices"][0]["message"]["content"] for o in outs]
    assert texts == [alone] * 8 and "Paris" in alone
    decodes = after["llamacpp:n_decode_total"] - before["llamacpp:n_decode_total"]
    generated = after["llamacpp:tokens_predicted_total"] - before["llamacpp:tokens_predicted_total"]
    # 8 answers in one shared batch: far fewer decode calls than generated tokens.
    assert generated >= 8 * outs[0]["usage"]["completion_tokens"] - 8
    assert decodes < generated / 2, (decodes, generated)


def test_grammar_request_beside_free_ones(srv):
    grammar = 'root ::= "yes" | "no"'
    with ThreadPoolExecutor(4) as pool:
        g = pool.submit(chat, srv, "Is Paris in France?", grammar=grammar)
        free = [pool.submit(chat, srv, QUESTION, max_tokens=12) for _ in range(3)]
        assert g.result()["choices"][0]["message"]["content"] in ("yes", "no")
        for f in free:  # the grammar stayed with its own request
            assert "Paris" in f.result()["choices"][0]["message"]["content"]


def test_cancel_mid_stream_frees_the_slot_at_once(srv):
    body = json.dumps({"messages": [{"role": "user", "content": "Tell a very long story."}],
                       "stream": True, "max_tokens": 2000, "temperature": 1}).encode()
    host, port = srv.url.split("//")[1].strip("/").split(":")
    s = socket.create_connection((host, int(port)), timeout=60)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
              b"application/json\r\nContent-Length: " + str(len(body)).encode() +
              b"\r\n\r\n" + body)
    got = b""
    while got.count(b"data:") < 4:
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    busy = [x for x in srv.request("slots")[1] if x["is_processing"]]
    assert len(busy) == 1 and busy[0]["n_decoded"] >= 2
    s.close()  # hang up mid-stream
    deadline = time.time() + 5
    while time.time() < deadline and any(x["is_processing"] for x in srv.request("slots")[1]):
        time.sleep(0.05)
    slots = srv.request("slots")[1]
    assert not any(x["is_processing"] for x in slots)
    assert max(x["n_cached_tokens"] for x in slots) < 1000  # it stopped well short of 2000


def test_metrics_are_prometheus_text_and_move(srv):
    before = metrics(srv)
    for name in ("prompt_tokens_total", "tokens_predicted_total", "n_decode_total",
                 "requests_processing", "requests_deferred", "n_busy_slots_per_decode"):
        assert f"llamacpp:{name}" in before
    out = chat(srv, "Say hello.", max_tokens=5)
    after = metrics(srv)
    assert after["llamacpp:tokens_predicted_total"] - before["llamacpp:tokens_predicted_total"] \
        == out["usage"]["completion_tokens"]
    assert after["llamacpp:prompt_tokens_total"] > before["llamacpp:prompt_tokens_total"]
    assert after["llamacpp:requests_processing"] == 0


def test_anthropic_client_messages_plain_stream_and_count(srv):
    anthropic = pytest.importorskip("anthropic")
    c = anthropic.Anthropic(base_url=srv.url.rstrip("/"), api_key="none")
    m = c.messages.create(model="smol", max_tokens=30, extra_body={"temperature": 0},
                          system="You are a helpful assistant.",
                          messages=[{"role": "user", "content": QUESTION}])
    assert m.type == "message" and m.role == "assistant" and m.stop_reason == "end_turn"
    assert "Paris" in m.content[0].text and m.usage.output_tokens > 0
    with c.messages.stream(model="smol", max_tokens=30, extra_body={"temperature": 0},
                           system="You are a helpful assistant.",
                           messages=[{"role": "user", "content": QUESTION}]) as stream:
        parts = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(parts) > 3 and "".join(parts) == m.content[0].text
    assert final.stop_reason == "end_turn"
    n = c.messages.count_tokens(model="smol", messages=[{"role": "user", "content": QUESTION}],
                                system="You are a helpful assistant.")
    assert m.usage.input_tokens == n.input_tokens > 10
    short = c.messages.create(model="smol", max_tokens=3, messages=[
        {"role": "user", "content": QUESTION}])
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3
    stop = c.messages.create(model="smol", max_tokens=30, extra_body={"temperature": 0},
                             stop_sequences=["Paris"],
                             messages=[{"role": "user", "content": QUESTION}])
    assert stop.stop_reason == "stop_sequence" and stop.stop_sequence == "Paris"
    assert "Paris" not in stop.content[0].text


def test_requests_schemathesis_turned_into_500s_are_400s_or_answered(srv):
    """Found by schemathesis against /openapi.json: a Responses request whose input holds
    no message, and a token count with a tool_choice (Anthropic's API takes one)."""
    status, body = srv.request("v1/responses", {"input": []})
    assert status == 400 and body["error"]["param"] == "input", body
    weather = {"name": "weather", "description": "The weather in a city.",
               "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}
    question = [{"role": "user", "content": QUESTION}]
    status, plain = srv.request("v1/messages/count_tokens", {"messages": question})
    assert status == 200, plain
    status, with_tool = srv.request("v1/messages/count_tokens", {
        "messages": question, "tools": [weather],
        "tool_choice": {"type": "tool", "name": "weather"}})
    # (SmolLM2's template does not render tools, so the count may equal the plain one)
    assert status == 200 and with_tool["input_tokens"] >= plain["input_tokens"], with_tool
    status, body = srv.request("v1/messages/count_tokens", {
        "messages": question, "tools": [weather],
        "tool_choice": {"type": "tool", "name": "nope"}})
    assert status == 400 and body["type"] == "error", body


def test_anthropic_forced_tool_use(srv):
    anthropic = pytest.importorskip("anthropic")
    c = anthropic.Anthropic(base_url=srv.url.rstrip("/"), api_key="none")
    tool = {"name": "get_weather", "description": "Weather of a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"]}}
    m = c.messages.create(model="smol", max_tokens=40, extra_body={"temperature": 0}, tools=[tool],
                          tool_choice={"type": "tool", "name": "get_weather"},
                          messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert m.stop_reason == "tool_use" and m.content[0].type == "tool_use"
    assert isinstance(m.content[0].input["city"], str)


def test_openai_responses_logprobs_and_tools(srv):
    openai = pytest.importorskip("openai")
    c = openai.OpenAI(base_url=srv.url + "v1", api_key="none")
    r = c.responses.create(model="smol", input=QUESTION, temperature=0, max_output_tokens=30)
    assert r.status == "completed" and "Paris" in r.output_text
    events = [e.type for e in c.responses.create(model="smol", input=QUESTION, temperature=0,
                                                 max_output_tokens=8, stream=True)]
    assert events[0] == "response.created" and events[-1] == "response.completed"
    assert "response.output_text.delta" in events
    lp = c.chat.completions.create(model="smol", temperature=0, max_tokens=5, logprobs=True,
                                   top_logprobs=3,
                                   messages=[{"role": "user", "content": QUESTION}])
    content = lp.choices[0].logprobs.content
    assert len(content) == lp.usage.completion_tokens and len(content[0].top_logprobs) == 3
    assert content[0].top_logprobs[0].token == content[0].token  # greedy: the top one
    assert all(x.logprob <= 0 for x in content)
    tools = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object", "properties": {
            "city": {"type": "string"}}, "required": ["city"]}}}]
    t = c.chat.completions.create(model="smol", temperature=0, max_tokens=40, tools=tools,
                                  tool_choice={"type": "function",
                                               "function": {"name": "get_weather"}},
                                  messages=[{"role": "user", "content": "Weather in Paris?"}])
    call = t.choices[0].message.tool_calls[0]
    assert t.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_embeddings_unit_length_and_batch_invariant(srv):
    a = "The quick brown fox jumps over the lazy dog."
    status, batch = srv.request("v1/embeddings", {"input": [a, a, "hello"]})
    assert status == 200
    v = [d["embedding"] for d in batch["data"]]
    _, alone = srv.request("v1/embeddings", {"input": a})
    assert v[0] == v[1] == alone["data"][0]["embedding"]
    assert v[2] != v[0]
    for x in v:
        assert abs(math.sqrt(sum(t * t for t in x)) - 1.0) < 1e-5
    status, native = srv.request("embedding", {"content": a})
    assert status == 200 and native[0]["embedding"][0] == v[0]


def test_native_routes(srv):
    status, out = srv.request("completion", {"prompt": "The capital of France is",
                                             "n_predict": 6, "temperature": 0, "n_probs": 2})
    assert status == 200 and "Paris" in out["content"] and out["stop"] is True
    assert out["tokens_predicted"] == 6 and out["stop_type"] == "limit"
    assert out["timings"]["predicted_n"] == 6 and out["timings"]["prompt_n"] >= 1
    assert len(out["completion_probabilities"]) == 6
    assert out["completion_probabilities"][0]["token"] == " Paris"
    _, banned = srv.request("completion", {"prompt": "The capital of France is", "n_predict": 6,
                                           "temperature": 0, "logit_bias": [[" Paris", False]]})
    assert out["tokens"][0] not in banned["tokens"]  # " Paris" can no longer be sampled
    # the same prompt again reuses the slot's cached prefix
    _, again = srv.request("completion", {"prompt": "The capital of France is",
                                          "n_predict": 6, "temperature": 0})
    assert again["content"] == out["content"] and again["timings"]["cache_n"] > 0
    req = urllib.request.Request(srv.url + "completion", data=json.dumps({
        "prompt": "The capital of France is", "n_predict": 6, "temperature": 0,
        "stream": True}).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        chunks = [json.loads(line[6:]) for line in r.read().decode().split("\n")
                  if line.startswith("data: ")]
    assert "".join(c["content"] for c in chunks) == out["content"]
    assert chunks[-1]["stop"] is True and "timings" in chunks[-1]
    assert chat(srv, path="chat/completions")["choices"][0]["message"]["content"]
    status, comp = srv.request("completions", {"prompt": "The capital of France is",
                                               "max_tokens": 4, "temperature": 0})
    assert status == 200 and "Paris" in comp["content"]  # unprefixed: llama-server's native
    assert srv.request("models")[1]["data"][0]["id"] == "SmolLM2-135M-Instruct.Q4_1"
    status, toks = srv.request("tokenize", {"content": "hello world", "with_pieces": True})
    assert [t["piece"] for t in toks["tokens"]] == ["hello", " world"]
    status, text = srv.request("detokenize", {"tokens": [t["id"] for t in toks["tokens"]]})
    assert text["content"] == "hello world"
    status, tpl = srv.request("apply-template", {"messages": [{"role": "user",
                                                               "content": "Hi"}]})
    assert status == 200 and tpl["prompt"].endswith("<|im_start|>assistant\n")
    status, props = srv.request("props")
    assert props["model_path"].endswith(".pyfile#SmolLM2-135M-Instruct.Q4_1.gguf")
    assert props["total_slots"] == 4
    status, slots = srv.request("slots")
    assert status == 200 and [s["id"] for s in slots] == [0, 1, 2, 3]
    status, body = srv.request("reranking", {"query": "a", "documents": ["b"]})
    assert status == 501 and "cannot rank" in body["error"]["message"]
    # SmolLM2's GGUF names no fill-in-the-middle tokens: /infill says so (llama-server: 501 too)
    status, body = srv.request("infill", {"input_prefix": "def f(", "input_suffix": ")"})
    assert status == 501 and "fill-in-the-middle" in body["error"]["message"]


def test_api_key_guards_every_route(smol_pyfile, tmp_path):
    s = Server(smol_pyfile, "--api-key", "sekret", "--metrics", "-np", "2",
               env=run_env(PYFILE_CACHE_DIR=str(tmp_path)))
    try:
        from pyfile.runtime.server.http import PUBLIC_PATHS
        assert PUBLIC_PATHS == {"/", "/health", "/v1/health"}
        routes = [("GET", p) for p in ("v1/models", "models", "props", "slots", "metrics",
                                       "openapi.json", "no/such/route")]
        routes += [("POST", p) for p in (
            "v1/chat/completions", "chat/completions", "v1/completions", "completions",
            "completion", "infill", "v1/embeddings", "embeddings", "embedding", "tokenize",
            "detokenize", "apply-template", "reranking", "rerank", "v1/rerank",
            "v1/messages", "v1/messages/count_tokens", "v1/responses", "responses")]
        for method, path in routes:
            status, body = s.request(path, {} if method == "POST" else None, method=method)
            assert status == 401, (path, status)
            if path.startswith("v1/messages"):
                assert body["error"]["type"] == "authentication_error"
            else:
                assert body["error"]["code"] == "invalid_api_key"
        assert s.request("health")[0] == 200
        with urllib.request.urlopen(s.url, timeout=30) as page:
            assert page.status == 200
        ok = {"Authorization": "Bearer sekret"}
        assert s.request("props", headers=ok)[0] == 200
        assert s.request("tokenize", {"content": "hi"}, headers={"x-api-key": "sekret"})[0] == 200
        anthropic = pytest.importorskip("anthropic")
        m = anthropic.Anthropic(base_url=s.url.rstrip("/"), api_key="sekret").messages.create(
            model="smol", max_tokens=4, messages=[{"role": "user", "content": "Hi"}])
        assert m.usage.output_tokens > 0
    finally:
        assert s.stop() == 0


def test_every_registered_route_is_behind_the_key():
    """In process: walk the app's route table, so a route added later cannot ship open."""
    from types import SimpleNamespace
    from fastapi.testclient import TestClient
    from pyfile.runtime.server.app import create_app
    from pyfile.runtime.server.http import PUBLIC_PATHS
    opts = SimpleNamespace(api_key="k", cors=False, max_body=1 << 20, metrics=True,
                           no_slots=False, temp=0.8, top_k=40, top_p=0.95, min_p=0.05)
    # Routes never run: the key check is first.
    app = create_app(SimpleNamespace(opts=opts, runner=None))
    client = TestClient(app, base_url="http://127.0.0.1:8080")  # a Host the server answers
    seen = 0
    # The OpenAPI description lists every route of every router (whatever FastAPI's internals).
    for path, ops in app.openapi()["paths"].items():
        for method in ops:
            if path in PUBLIC_PATHS:
                continue
            r = client.request(method.upper(), path, json={})
            assert r.status_code == 401, (method, path)
            seen += 1
    assert seen >= 25
    assert client.get("/openapi.json").status_code == 401
