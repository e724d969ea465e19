"""Server mode against the real SmolLM2 pyfile: the official openai client, raw HTTP,
concurrency, disconnects, auth, limits, and the web chat in a real headless Chromium."""

import asyncio
import shutil
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import run_env
from pyfile.runtime import ready

pytestmark = pytest.mark.slow
QUESTION = "What is the capital of France? Answer in one sentence."


class Server:
    def __init__(self, pyfile, *args, env=None):
        self.proc, where = ready.start([str(pyfile), "--server", "--port", "0", "--nobrowser",
                                        *args], env=env or run_env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True)
        self.lines = []
        threading.Thread(target=self._drain, daemon=True).start()
        if where is None:
            self.proc.kill()
            self.proc.wait()
            time.sleep(0.2)  # let the drain thread collect the last lines
            raise AssertionError("server did not start: " + "".join(self.lines))
        self.url = where["url"]

    def _drain(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()

    def request(self, path, body=None, headers=None, method=None, raw=None):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path.lstrip("/"), data=data, method=method,
                                     headers={"Content-Type": "application/json", **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")


@pytest.fixture(scope="module")
def server(smol_pyfile, tmp_path_factory):
    env = run_env(PYFILE_CACHE_DIR=str(tmp_path_factory.mktemp("srvcache")))
    s = Server(smol_pyfile, "--parallel", "4", "--kv-unified", "--temp", "0", env=env)
    yield s
    assert s.stop() == 0
    assert "server stopped" in "".join(s.lines)


def client(server, **kw):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "v1", api_key=kw.pop("api_key", "none"), **kw)


def test_openai_client_chat_stream_completion_models(server):
    c = client(server)
    models = c.models.list()
    assert models.data[0].id == "SmolLM2-135M-Instruct.Q4_1"
    r = c.chat.completions.create(model="any", temperature=0, max_tokens=30,
                                  messages=[{"role": "user", "content": QUESTION}])
    assert "Paris" in r.choices[0].message.content
    assert r.usage.completion_tokens > 0 and r.choices[0].finish_reason == "stop"
    parts = [ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="any", temperature=0, max_tokens=30, stream=True,
        messages=[{"role": "user", "content": QUESTION}])]
    assert "".join(parts) == r.choices[0].message.content and len(parts) > 3
    comp = c.completions.create(model="any", prompt="The capital of France is", max_tokens=8,
                                temperature=0, seed=1)
    assert "Paris" in comp.choices[0].text


def test_json_schema_response_format(server):
    c = client(server)
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"]}
    r = c.chat.completions.create(model="m", temperature=0, max_tokens=40, messages=[
        {"role": "user", "content": "Which city is the capital of France? Reply in JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
    assert isinstance(json.loads(r.choices[0].message.content)["city"], str)


def test_embeddings_tokenize_props_health(server):
    c = client(server)
    e = c.embeddings.create(model="m", input=["hello", "world"])
    assert len(e.data) == 2 and len(e.data[0].embedding) == 576
    status, toks = server.request("tokenize", {"content": "hello world"})
    assert status == 200 and len(toks["tokens"]) >= 2
    status, text = server.request("detokenize", {"tokens": toks["tokens"]})
    assert text["content"].strip() == "hello world"
    status, props = server.request("props")
    assert props["n_ctx"] == 4096 and "im_start" in props["chat_template"]
    assert props["backend"].startswith("backend cpu") and props["parallel"] == 4
    assert server.request("health")[1]["status"] == "ok"


def test_errors_in_openai_shape(server):
    status, body = server.request("v1/chat/completions", raw=b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    status, body = server.request("v1/chat/completions", {"messages": []})
    assert status == 400 and "messages" in body["error"]["message"]
    status, body = server.request("v1/chat/completions", {
        "messages": [{"role": "user", "content": "x"}], "temperature": 9})
    assert status == 400 and body["error"]["param"] == "temperature"
    status, body = server.request("v1/completions", {"prompt": "word " * 5000,
                                                     "max_tokens": 4})
    assert status == 400 and body["error"]["code"] == "context_length_exceeded"
    import http.client
    host, port = server.url.split("//")[1].strip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(64 << 20))
    conn.endheaders(b'{"prompt": "')
    r = conn.getresponse()
    assert r.status == 413 and json.loads(r.read())["error"]["code"] == "request_too_large"
    conn.close()
    status, body = server.request("v1/nothing")
    assert status == 404 and body["error"]["type"] == "not_found_error"
    status, body = server.request("detokenize", {"tokens": [-1]})
    assert status == 400
    assert server.request("health")[0] == 200  # still up


def test_eight_concurrent_clients(server):
    openai = pytest.importorskip("openai")

    async def main():
        c = openai.AsyncOpenAI(base_url=server.url + "v1", api_key="none")
        return await asyncio.gather(*[c.chat.completions.create(
            model="m", temperature=0, max_tokens=30,
            messages=[{"role": "user", "content": QUESTION}]) for _ in range(8)])

    results = asyncio.run(main())
    texts = {r.choices[0].message.content for r in results}
    assert len(results) == 8 and all("Paris" in t for t in texts)
    assert len(texts) == 1  # greedy answers agree whichever slot served them


def test_disconnecting_stream_frees_its_slot(server):
    body = json.dumps({"messages": [{"role": "user", "content": "Tell a very long story."}],
                       "stream": True, "max_tokens": 3000, "temperature": 1}).encode()
    host, port = server.url.split("//")[1].strip("/").split(":")
    for _ in range(6):  # more than --parallel 4: leaked slots would block the last ones
        s = socket.create_connection((host, int(port)), timeout=60)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                  b"application/json\r\nContent-Length: " + str(len(body)).encode() +
                  b"\r\n\r\n" + body)
        got = b""
        while b"data:" not in got:
            chunk = s.recv(4096)
            assert chunk, got
            got += chunk
        s.close()  # hang up mid-stream
    deadline = time.time() + 30
    while time.time() < deadline:
        if server.request("health")[1]["slots_busy"] == 0:
            break
        time.sleep(0.2)
    assert server.request("health")[1]["slots_busy"] == 0
    status, body = server.request("v1/completions", {"prompt": "Hi", "max_tokens": 2})
    assert status == 200


def test_a_client_hanging_up_before_a_whole_answer_frees_its_slot(server):
    """Non-streaming requests whose clients hang up leave the engine at once: without that,
    each would hold its slot for 3,000 tokens (minutes here) generating for nobody."""
    body = json.dumps({"prompt": "Tell a very long story.", "max_tokens": 3000,
                       "ignore_eos": True, "temperature": 1}).encode()
    host, port = server.url.split("//")[1].strip("/").split(":")
    socks = []
    for _ in range(4):  # every slot
        s = socket.create_connection((host, int(port)), timeout=60)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                  b"application/json\r\nContent-Length: " + str(len(body)).encode() +
                  b"\r\n\r\n" + body)
        socks.append(s)
    deadline = time.time() + 30
    while time.time() < deadline and server.request("health")[1]["slots_busy"] < 4:
        time.sleep(0.05)
    assert server.request("health")[1]["slots_busy"] == 4
    for s in socks:
        s.close()  # hang up, no answer read
    hung_up = time.time()
    while time.time() < hung_up + 5 and server.request("health")[1]["slots_busy"]:
        time.sleep(0.05)
    assert server.request("health")[1]["slots_busy"] == 0, "slots still generating"
    status, answer = server.request("v1/completions", {"prompt": "Hi", "max_tokens": 2})
    assert status == 200 and answer["usage"]["completion_tokens"] == 2


def test_web_chat_in_headless_chromium(server, tmp_path):
    pw = pytest.importorskip("playwright.sync_api")
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.fail("chromium is not installed: run `make tools`")
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        page = browser.new_page()
        page.goto(server.url)
        page.wait_for_function("document.getElementById('model').textContent.includes('SmolLM2')")
        page.click("#settings-btn")
        page.fill("#temp", "0")
        page.press("#temp", "Tab")
        page.fill("#system", "You are a helpful assistant.")
        page.fill("#input", QUESTION)
        page.keyboard.press("Enter")
        page.wait_for_selector(".msg.assistant .bubble:not(.cursor)", timeout=60000)
        answer = page.inner_text(".msg.assistant .bubble")
        page.screenshot(path=str(tmp_path / "chat.png"))
        page.click("#new")
        assert page.locator(".msg").count() == 0
        browser.close()
    assert "Paris" in answer


def test_api_key_and_loopback(smol_pyfile, tmp_path):
    s = Server(smol_pyfile, "--api-key", "sekret",
               env=run_env(PYFILE_CACHE_DIR=str(tmp_path)))
    try:
        assert s.url.startswith("http://127.0.0.1:")
        status, body = s.request("v1/models")
        assert status == 401 and body["error"]["code"] == "invalid_api_key"
        assert s.request("v1/models", headers={"Authorization": "Bearer wrong"})[0] == 401
        status, body = s.request("v1/models", headers={"Authorization": "Bearer sekret"})
        assert status == 200
        assert s.request("health")[0] == 200
        r = client(s, api_key="sekret").models.list()
        assert r.data
        port = int(s.url.rsplit(":", 1)[1].strip("/"))
        # The listening socket (state 0A: TCP_LISTEN) is on 127.0.0.1 only: the rows the
        # requests above left (connections, TIME_WAIT) say nothing about what it listens on.
        listening = [row[1] for name in ("tcp", "tcp6")
                     for row in (ln.split() for ln in
                                 open(f"/proc/{s.proc.pid}/net/{name}").read().splitlines()[1:])
                     if row[3] == "0A" and int(row[1].rsplit(":", 1)[1], 16) == port]
        assert listening == [f"0100007F:{port:04X}"], listening
    finally:
        assert s.stop() == 0


def test_busy_port_is_a_clean_error(smol_pyfile, tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    port = sock.getsockname()[1]
    r = subprocess.run([str(smol_pyfile), "--server", "--port", str(port), "--nobrowser"],
                       capture_output=True, text=True, env=run_env(), timeout=60)
    sock.close()
    assert r.returncode == 2 and "cannot listen on 127.0.0.1" in r.stderr
    assert "Traceback" not in r.stderr


def test_double_click_serves(real_model, tmp_path):
    """No arguments and no terminal (a file manager's double-click): serve the web chat."""
    out = tmp_path / "dbl.pyfile"
    from conftest import pyfile_cli
    r = pyfile_cli("build", str(real_model), "-o", str(out), "--args", "--port 0 --nobrowser")
    assert r.returncode == 0, r.stderr
    proc, where = ready.start([str(out)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=run_env(PYFILE_CACHE_DIR=str(tmp_path / "c")))
    try:
        assert where is not None, "exited before serving"
        with urllib.request.urlopen(where["url"], timeout=30) as page:
            assert b"<title>pyfile chat</title>" in page.read()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_pyfile_replaced_by_rename_keeps_serving(smol_pyfile, tmp_path):
    """A careful re-download renames a new copy over the file: we keep the old inode mapped,
    keep serving and say so once."""
    live = tmp_path / "live.pyfile"
    shutil.copy2(smol_pyfile, live)
    s = Server(live, env=run_env(PYFILE_CACHE_DIR=str(tmp_path / "c")))
    try:
        body = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
        assert s.request("v1/completions", body)[0] == 200
        fresh = tmp_path / "fresh.pyfile"
        shutil.copy2(smol_pyfile, fresh)
        os.replace(fresh, live)
        for _ in range(2):
            status, out = s.request("v1/completions", body)
            assert status == 200 and "Paris" in out["choices"][0]["text"]
    finally:
        assert s.stop() == 0
    assert "".join(s.lines).count("was replaced on disk") == 1


def test_pyfile_overwritten_in_place_is_refused(smol_pyfile, tmp_path):
    """`cp new old` writes into the inode we map: the next generation is refused with a 503
    (model_file_changed) and the server stays up, as the README says."""
    live = tmp_path / "live.pyfile"
    shutil.copy2(smol_pyfile, live)
    newer = tmp_path / "newer.pyfile"
    shutil.copy2(smol_pyfile, newer)
    from pyfile.runtime.container.archive import Archive
    with Archive.open(str(newer)) as arch:
        off = arch.member(arch.default_model).offset
    with open(newer, "r+b") as f:  # a different model version: other bytes in its header
        f.seek(off + 16)
        f.write(b"\xff" * 64)
    s = Server(live, env=run_env(PYFILE_CACHE_DIR=str(tmp_path / "c")))
    try:
        body = {"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
        assert s.request("v1/completions", body)[0] == 200
        ino = os.stat(live).st_ino
        shutil.copyfile(newer, live)  # what `cp newer live` does: truncate and rewrite in place
        assert os.stat(live).st_ino == ino
        for path, req in (("v1/completions", body), ("completion", {"prompt": "Hi"}),
                          ("v1/embeddings", {"input": "Hi"})):
            status, out = s.request(path, req)
            assert status == 503 and out["error"]["code"] == "model_file_changed", path
        assert s.request("health")[0] == 200  # the server stays up
    finally:
        assert s.stop() == 0


def test_short_soak(smol_pyfile):
    """bench/soak_server.py for 20 s: load + malformed + slow + disconnecting clients."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("soak", str(Path(__file__).resolve()
                                                               .parents[1] / "bench" / "soak_server.py"))
    soak = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soak)
    assert soak.main([str(smol_pyfile), "--seconds", "20", "--no-schemathesis"]) == 0


def test_embedding_failure_does_not_corrupt_the_server(server):
    """Found by schemathesis: a failed embedding decode, then an odd string, corrupted the
    heap inside llama-cpp-python. Empty inputs are refused and a failed embedder is replaced."""
    status, body = server.request("v1/embeddings", {"input": [""]})
    assert status == 400 and "must not be empty" in body["error"]["message"]
    odd = "e\u0019T\U0002d0e7\u00e1\u0084_i\u001ePk\U000e9d3cFh\t"
    for _ in range(3):
        status, body = server.request("v1/embeddings", {"input": [odd]})
        assert status == 200 and len(body["data"][0]["embedding"]) == 576
    assert server.request("health")[0] == 200
