"""The task layer and the API formatters, over real HTTP with the official clients, against the
fake engine (tests/fakeengine.py): every API turns its body into one Task, one runner runs it,
each API renders the typed results in its own shape. No model: seconds, not minutes.

The fake model writes the alphabet on from the last prompt letter, so every expected text
below follows from the prompt: the toy chat template renders [user "hi"] as "uhi.a", and the
answer starts "bcd...".
"""

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import anthropic
import openai
import pytest

from fakeengine import FakeL, FakeLlm


class FakeServer:
    """The real app (middleware, routes, task layer, scheduler) on a loopback port."""

    def __init__(self, llm=None, n_ctx=256, parallel=2):
        import uvicorn

        from pyfile.runtime import options
        from pyfile.runtime.server.app import create_app
        from pyfile.runtime.server.scheduler import Engine
        from pyfile.runtime.server.state import ServerState
        self.L = FakeL(n_ctx=n_ctx)
        self.engine = Engine(self.L, "model", "ctx", parallel, 64)
        opts = options.parse(["--server", "--metrics", "-np", str(parallel)], prog="fake")
        self.state = ServerState(llm or FakeLlm(), self.engine, "fake-model", "fake.gguf",
                                 opts, "fake backend")
        self.app = create_app(self.state)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="error", lifespan="off"))
        self.engine.start()
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                break
            time.sleep(0.01)

    def post(self, path, body, headers=None):
        req = urllib.request.Request(self.url + path, json.dumps(body).encode(),
                                     {"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=20) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def get(self, path):
        try:
            with urllib.request.urlopen(self.url + path, timeout=20) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.engine.stop()


@pytest.fixture
def srv():
    s = FakeServer()
    yield s
    s.close()


def sse_events(text):
    return [json.loads(line[6:]) for line in text.splitlines()
            if line.startswith("data: ") and line != "data: [DONE]"]


HI = [{"role": "user", "content": "hi"}]


def test_openai_chat_through_the_official_client(srv):
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x")
    r = client.chat.completions.create(model="fake-model", messages=HI, max_tokens=3,
                                       logprobs=True, top_logprobs=2)
    assert r.choices[0].message.content == "bcd"
    assert r.choices[0].finish_reason == "length"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (5, 3)
    lps = r.choices[0].logprobs.content
    assert [p.token for p in lps] == ["b", "c", "d"]
    assert [t.token for t in lps[0].top_logprobs] == ["b", "c"] and lps[0].bytes == [98]


def test_openai_chat_stream_shape(srv):
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x")
    chunks = list(client.chat.completions.create(model="m", messages=HI, max_tokens=4,
                                                 stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "bcde"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4


def test_a_forced_tool_answers_a_tool_call(srv):
    tools = [{"type": "function", "function": {"name": "spell", "parameters": {
        "type": "object", "properties": {}}}}]
    status, body = srv.post("/v1/chat/completions", {
        "messages": HI, "tools": tools, "max_tokens": 2,
        "tool_choice": {"type": "function", "function": {"name": "spell"}}})
    assert status == 200
    msg = json.loads(body)["choices"][0]["message"]
    assert msg["content"] is None and msg["tool_calls"][0]["function"] == {
        "name": "spell", "arguments": "bc"}
    assert "grammar" in srv.L.chains[-1].parts      # its schema became the grammar


def test_legacy_completions_with_logprobs(srv):
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x")
    r = client.completions.create(model="m", prompt="xy", max_tokens=3, logprobs=1, echo=True)
    assert r.choices[0].text == "xyz ."
    assert r.choices[0].logprobs.tokens == ["z", " ", "."]
    assert r.choices[0].logprobs.text_offset == [0, 1, 2]


def test_native_completion_and_its_probabilities(srv):
    status, body = srv.post("/completion", {"prompt": "ab", "n_predict": 2, "n_probs": 2,
                                            "temperature": 0})
    out = json.loads(body)
    assert status == 200 and out["content"] == "cd" and out["stop_type"] == "limit"
    assert out["prompt"] == "ab" and out["tokens"] == [3, 4]
    probs = out["completion_probabilities"]
    assert [p["id"] for p in probs] == [3, 4]
    assert [t["token"] for t in probs[0]["top_logprobs"]] == ["c", "d"]


def test_native_completion_stream(srv):
    status, body = srv.post("/completion", {"prompt": "ab", "n_predict": 3, "stream": True})
    events = sse_events(body)
    assert status == 200 and [e["content"] for e in events[:-1]] == ["c", "d", "e"]
    assert events[-1]["stop"] is True and events[-1]["tokens_predicted"] == 3


def test_anthropic_messages_through_the_official_client(srv):
    client = anthropic.Anthropic(base_url=srv.url, api_key="x")
    m = client.messages.create(model="m", max_tokens=3, messages=HI, stop_sequences=["d"])
    assert m.content[0].text == "bc"
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == "d"
    n = client.messages.count_tokens(model="m", messages=HI)
    assert n.input_tokens == 5


def test_responses_api(srv):
    client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x")
    r = client.responses.create(model="m", input="hi", max_output_tokens=3)
    assert r.output_text == "bcd" and r.status == "incomplete"


def test_every_api_reports_a_bad_grammar_as_a_400_before_queueing(srv):
    status, body = srv.post("/completion", {"prompt": "ab", "grammar": "not a grammar"})
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_grammar"
    assert srv.L.decodes == 0          # nothing reached the engine


def test_a_dead_scheduler_is_a_503_in_each_api_shape_and_health_says_so(srv):
    from test_scheduler import Boom
    srv.L.fault = Boom("killed on purpose")
    status, body = srv.post("/v1/chat/completions", {"messages": HI, "max_tokens": 3})
    err = json.loads(body)["error"]
    assert status == 503 and err["code"] == "scheduler_failed" and err["type"] == "server_error"
    assert "killed on purpose" in err["message"]
    assert srv.get("/health") == (200, {"status": "ok", "slots_idle": 2, "slots_busy": 0,
                                        "scheduler_restarts": 1})
    srv.L.fault = Boom("again")
    status, body = srv.post("/v1/messages", {"messages": HI, "max_tokens": 3})
    assert status == 503 and json.loads(body)["type"] == "error"
    assert json.loads(body)["error"]["type"] == "api_error"
    # the restarted scheduler serves
    status, body = srv.post("/v1/chat/completions", {"messages": HI, "max_tokens": 2})
    assert status == 200 and json.loads(body)["choices"][0]["message"]["content"] == "bc"


def test_health_is_503_once_the_scheduler_gave_up(srv):
    from pyfile.runtime.server import scheduler
    from test_scheduler import Boom
    for i in range(scheduler.MAX_RESTARTS + 1):
        srv.L.fault = Boom(f"failure {i}")
        assert srv.post("/completion", {"prompt": "a", "n_predict": 3})[0] == 503
    status, body = srv.get("/health")
    assert status == 503 and body["error"]["code"] == "scheduler_failed"
    status, body = srv.post("/completion", {"prompt": "a", "n_predict": 3})
    assert status == 503 and "the server is stopping" in json.loads(body)["error"]["message"]


class SlowTokenizer(FakeLlm):
    """Tokenizing takes a second (a 1 MB prompt's worth), as a C call that drops the GIL."""

    def tokenize(self, data, add_bos=True, special=True):
        if len(data) > 100:
            time.sleep(1.0)
        return super().tokenize(data[:8], add_bos, special)


def test_preparing_a_task_never_stalls_the_event_loop():
    srv = FakeServer(llm=SlowTokenizer())
    try:
        worst = []
        slow = threading.Thread(target=srv.post, args=("/v1/chat/completions", {
            "messages": [{"role": "user", "content": "a" * 1000}], "max_tokens": 1}))
        slow.start()
        time.sleep(0.1)
        while slow.is_alive():
            t0 = time.perf_counter()
            assert srv.get("/health")[0] == 200
            worst.append(time.perf_counter() - t0)
            time.sleep(0.02)
        assert len(worst) >= 10 and max(worst) < 0.1, worst
    finally:
        srv.close()


def test_knobs_take_only_declared_fields():
    """A body's extra fields (schemas accept unknown ones) never reach the sampler: only a
    field the schema declares, and so checks, is a knob."""
    from pydantic import BaseModel, ConfigDict

    from pyfile.runtime.server.task import knobs

    class Body(BaseModel):
        model_config = ConfigDict(extra="allow")
        temperature: float = 0.5

    assert knobs(Body(seed=[], top_k="x")) == {"temperature": 0.5}
    assert knobs(Body(), min_p=0.0) == {"temperature": 0.5, "min_p": 0.0}
