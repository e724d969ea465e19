"""One file, two real models (SmolLM2 and a small llama the generator makes with SmolLM2's
tokenizer): both listed, each answering under its own name through the official openai
client, swapped under --models-max 1, llama-server's router routes, -m for the terminal."""

import re
import time

import pytest

from conftest import pyfile_cli, run_file
from ggufgen import write_small_llama

pytestmark = pytest.mark.slow

SMOL = "SmolLM2-135M-Instruct.Q4_1"
SMALL = "small-llama"


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, real_model):
    d = tmp_path_factory.mktemp("two")
    small = write_small_llama(str(d / f"{SMALL}.gguf"), str(real_model))
    out = d / "two.pyfile"
    r = pyfile_cli("build", str(real_model), small, "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


def _rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        kb = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))
    return kb / 1024


def test_both_models_are_served_and_swapped_under_models_max_1(two_models, cache_env):
    import openai
    from test_server import Server
    srv = Server(two_models, "--models-max", "1", "-np", "1", "-c", "1024", env=cache_env)
    try:
        client = openai.OpenAI(base_url=srv.url + "v1", api_key="none")
        assert sorted(m.id for m in client.models.list().data) == sorted([SMOL, SMALL])

        def ask(model):
            t = time.perf_counter()
            r = client.chat.completions.create(model=model, max_tokens=6, temperature=0,
                                               messages=[{"role": "user", "content": "Hi"}])
            return r, time.perf_counter() - t

        r, _ = ask(SMOL)
        assert r.model == SMOL and r.choices[0].message.content
        one = _rss_mib(srv.proc.pid)
        r, swap_in = ask(SMALL)
        assert r.model == SMALL and r.choices[0].finish_reason in ("stop", "length")
        status, models = srv.request("/models")
        state = {m["id"]: m["status"]["value"] for m in models["data"]}
        assert state == {SMOL: "unloaded", SMALL: "loaded"}, state
        r, swap_back = ask(SMOL)
        assert r.model == SMOL
        status, models = srv.request("/models")
        assert {m["id"]: m["status"]["value"] for m in models["data"]} == {
            SMOL: "loaded", SMALL: "unloaded"}
        print(f"\nswap: to {SMALL} {swap_in * 1000:.0f} ms, back to {SMOL} "
              f"{swap_back * 1000:.0f} ms (6 tokens included); RSS with one loaded "
              f"{one:.0f} MiB")
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-4o", max_tokens=2,
                                           messages=[{"role": "user", "content": "Hi"}])
    finally:
        assert srv.stop() == 0


def test_router_routes_load_unload_and_memory_with_two_loaded(two_models, cache_env):
    from test_server import Server
    srv = Server(two_models, "--models-max", "0", "-np", "1", "-c", "1024", env=cache_env)
    try:
        status, body = srv.request("/models/load", {"model": SMALL})
        assert (status, body) == (200, {"success": True})
        status, models = srv.request("/v1/models")
        assert {m["id"]: m["status"]["value"] for m in models["data"]} == {
            SMOL: "loaded", SMALL: "loaded"}
        two = _rss_mib(srv.proc.pid)
        status, body = srv.request("/models/unload", {"model": SMALL})
        assert (status, body) == (200, {"success": True})
        time.sleep(0.2)
        one = _rss_mib(srv.proc.pid)
        print(f"\nRSS: two models loaded {two:.0f} MiB, one {one:.0f} MiB")
        assert one < two
        status, body = srv.request("/models/load", {})
        assert status == 400 and "model name is missing" in body["error"]["message"]
        status, body = srv.request("/completion", {"model": SMALL, "prompt": "Hi",
                                                   "n_predict": 3})
        assert status == 200 and body["tokens_predicted"] == 3
    finally:
        assert srv.stop() == 0


def test_sleep_idle_seconds_frees_an_idle_model(two_models, cache_env):
    from test_server import Server
    srv = Server(two_models, "--sleep-idle-seconds", "1", "-np", "1", "-c", "1024",
                 env=cache_env)
    try:
        status, body = srv.request("/completion", {"model": SMALL, "prompt": "Hi",
                                                   "n_predict": 2})
        assert status == 200
        time.sleep(2.5)
        status, models = srv.request("/models")
        assert {m["id"]: m["status"]["value"] for m in models["data"]}[SMALL] == "sleeping"
        status, body = srv.request("/completion", {"model": SMALL, "prompt": "Hi",
                                                   "n_predict": 2})
        assert status == 200
    finally:
        assert srv.stop() == 0


def test_m_picks_the_model_for_the_terminal_modes(two_models, cache_env):
    r = run_file(two_models, "-m", SMALL, "-p", "Hi", "-n", "4", "--temp", "0", env=cache_env)
    assert r.returncode == 0, r.stderr
    smol = run_file(two_models, "-p", "The capital of France is", "-n", "4", "--temp", "0",
                    env=cache_env)
    assert "Paris" in smol.stdout
    r = run_file(two_models, "-m", "nope", "-p", "Hi", env=cache_env)
    assert r.returncode == 1 and "no such model" in r.stderr


def test_embedding_requests_go_to_the_embedding_model(tmp_path, real_model, cache_env):
    """A file with a chat model and an embedding model (a GGUF naming a pooling type): an
    embedding request without a model goes to the embedding model, a chat to the chat model."""
    from test_server import Server
    emb = write_small_llama(str(tmp_path / "small-embed.gguf"), str(real_model),
                            name="small-embed", pooling=1)
    out = tmp_path / "chat-and-embed.pyfile"
    r = pyfile_cli("build", str(real_model), emb, "-o", str(out))
    assert r.returncode == 0, r.stderr
    srv = Server(out, "-np", "1", "-c", "1024", env=cache_env)
    try:
        status, body = srv.request("/v1/embeddings", {"input": "hello"})
        assert status == 200 and body["model"] == "small-embed", body
        assert len(body["data"][0]["embedding"]) == 64  # the small model's width
        status, body = srv.request("/v1/chat/completions", {
            "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]})
        assert status == 200 and body["model"] == SMOL
    finally:
        assert srv.stop() == 0


def test_baked_per_model_options(tmp_path, real_model, cache_env):
    """.args can set one model's options: --model-args 'small-llama=-c 512'."""
    from test_server import Server
    small = write_small_llama(str(tmp_path / f"{SMALL}.gguf"), str(real_model))
    out = tmp_path / "per-model.pyfile"
    r = pyfile_cli("build", str(real_model), small, "-o", str(out),
                   "--args", f"--model-args '{SMALL}=-c 512' -c 1024")
    assert r.returncode == 0, r.stderr
    srv = Server(out, "-np", "1", env=cache_env)
    try:
        status, props = srv.request(f"/props?model={SMALL}")
        assert status == 200 and props["n_ctx"] == 512, props
        status, props = srv.request("/props")
        assert props["n_ctx"] == 1024
        status, models = srv.request("/models")
        assert {m["id"]: m["status"]["args"] for m in models["data"]}[SMALL] == ["-c", "512"]
    finally:
        assert srv.stop() == 0
