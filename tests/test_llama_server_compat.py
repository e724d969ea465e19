"""llama-server's documented behaviours against the real SmolLM2 pyfile (issue 22): slot
context and its error, the native /completions and every prompt form, post-sampling
probabilities, prompt progress, streamed chat chunks, n > 1, the chat token count, template
switches, __verbose, /metrics, /v1/models fields, Anthropic thinking blocks, embedding parts,
and llama-server's server flags. The official openai and anthropic clients where they apply,
plain HTTP elsewhere."""

import json
import math
import re
import subprocess
import time
import urllib.request

import pytest

from conftest import run_env, run_file
from pyfile.runtime import ready
from test_server import Server

pytestmark = pytest.mark.slow
QUESTION = "What is the capital of France? Answer in one sentence."
PROMPT = "The capital of France is"
# A template that shows what it is given: each message's reasoning_content and content.
THINKING_TEMPLATE = ("{% for m in messages %}<{{ m.role }}>{% if m.reasoning_content %}"
                     "[thought: {{ m.reasoning_content }}]{% endif %}{{ m.content }}"
                     "</{{ m.role }}>\n{% endfor %}{% if add_generation_prompt %}<assistant>"
                     "{% endif %}")


@pytest.fixture(scope="module")
def srv(smol_pyfile, tmp_path_factory):
    """-c 512 -np 2: llama-server gives each slot 256 tokens."""
    env = run_env(PYFILE_CACHE_DIR=str(tmp_path_factory.mktemp("compatcache")))
    s = Server(smol_pyfile, "-c", "512", "-np", "2", "--metrics", "-a", "smol-alias,smol",
               "--tags", "t2,t1", env=env)
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module")
def flagged(smol_pyfile, tmp_path_factory):
    """llama-server's flags: a template file, no web UI, flash attention off, a q8_0 K cache,
    a unified KV cache, two flags with no effect here, and --host given twice."""
    tmp = tmp_path_factory.mktemp("flagged")
    template = tmp / "thinking.jinja"
    template.write_text(THINKING_TEMPLATE)
    s = Server(smol_pyfile, "-c", "512", "-np", "2", "--kv-unified", "--chat-template-file",
               str(template), "--no-webui", "-fa", "off", "-ctk", "q8_0", "--jinja",
               "--lora", "adapter.gguf", "--timeout", "30", "--no-warmup", "--mlock",
               "--host", "0.0.0.0", "--host", "127.0.0.1",
               env=run_env(PYFILE_CACHE_DIR=str(tmp / "cache")))
    yield s
    assert s.stop() == 0


def post(srv, path, body, stream=False):
    """(status, JSON body or list of stream events)."""
    req = urllib.request.Request(srv.url + path.lstrip("/"), data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read().decode()
            status = r.status
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    if not stream:
        return status, json.loads(raw)
    return status, [json.loads(line[6:]) for line in raw.splitlines()
                    if line.startswith("data: ") and line[6:] != "[DONE]"]


def get(srv, path):
    with urllib.request.urlopen(srv.url + path.lstrip("/"), timeout=30) as r:
        return r.status, r.headers, r.read().decode()


def openai_client(srv):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=srv.url + "v1", api_key="none")


def tokens_of(srv, text, add_special=True):
    status, out = post(srv, "tokenize", {"content": text, "add_special": add_special})
    assert status == 200
    return out["tokens"]


# -- slot context ----------------------------------------------------------------------------

def test_each_slot_gets_c_over_np_as_reported_in_slots_props_and_models(srv):
    slots = json.loads(get(srv, "slots")[2])
    assert [s["n_ctx"] for s in slots] == [256, 256]
    props = json.loads(get(srv, "props")[2])
    assert props["default_generation_settings"]["n_ctx"] == 256 and props["total_slots"] == 2
    models = json.loads(get(srv, "v1/models")[2])
    assert models["data"][0]["meta"]["n_ctx"] == 256


def test_a_prompt_over_the_slot_context_is_exceed_context_size_error(srv, flagged):
    prompt = "word " * 300  # about 300 tokens: over a slot's 256, under -c 512
    status, body = post(srv, "completion", {"prompt": prompt, "n_predict": 2})
    assert status == 400, body
    err = body["error"]
    assert err["type"] == "exceed_context_size_error" and err["n_ctx"] == 256
    assert err["n_prompt_tokens"] == len(tokens_of(srv, prompt)) > 256
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.BadRequestError) as e:
        openai_client(srv).completions.create(model="smol", prompt=prompt, max_tokens=2)
    assert e.value.code == "context_length_exceeded"
    # --kv-unified: one request may use all of -c, as llama-server.
    status, body = post(flagged, "completion", {"prompt": prompt, "n_predict": 2})
    assert status == 200 and body["tokens_evaluated"] > 256


# -- routes and prompt forms ---------------------------------------------------------------

def test_unprefixed_completions_is_the_native_completion(srv):
    body = {"prompt": PROMPT, "n_predict": 6, "temperature": 0}
    status, native = post(srv, "completions", body)
    assert status == 200 and "choices" not in native
    assert native["content"] and len(native["tokens"]) == 6 and native["timings"]["predicted_n"]
    status, oai = post(srv, "v1/completions", {"prompt": PROMPT, "max_tokens": 6,
                                                "temperature": 0})
    assert status == 200 and oai["choices"][0]["text"] == native["content"]


def test_every_prompt_form_of_completion(srv):
    base = {"n_predict": 6, "temperature": 0}
    _, text = post(srv, "completion", dict(base, prompt=PROMPT))
    ids = tokens_of(srv, PROMPT)
    for prompt in (ids, {"prompt_string": PROMPT}):
        status, out = post(srv, "completion", dict(base, prompt=prompt))
        assert status == 200 and out["content"] == text["content"], (prompt, out)
    status, out = post(srv, "completion", dict(base, prompt=[ids[0], ids[1], " capital"]))
    assert status == 200 and out["tokens_evaluated"] >= 3
    status, outs = post(srv, "completion", dict(base, prompt=[PROMPT, ids]))
    assert status == 200 and [o["index"] for o in outs] == [0, 1]
    assert outs[0]["content"] == outs[1]["content"] == text["content"]
    status, body = post(srv, "completion", dict(base, prompt=[ids[0], 10 ** 6]))
    assert status == 400 and "token ids" in body["error"]["message"]
    status, body = post(srv, "completion", dict(base, prompt=[PROMPT, [10 ** 6]]))
    assert status == 400 and "token ids" in body["error"]["message"]
    time.sleep(0.5)  # the other prompt of that request was stopped: every slot is free
    assert not any(s["is_processing"] for s in json.loads(get(srv, "slots")[2]))


# -- sampling and stream outputs -----------------------------------------------------------

def test_n_probs_with_post_sampling_probs(srv):
    body = {"prompt": PROMPT, "n_predict": 4, "n_probs": 3, "temperature": 0.8, "top_k": 3,
            "seed": 7}
    status, post_ = post(srv, "completion", dict(body, post_sampling_probs=True))
    assert status == 200
    for p in post_["completion_probabilities"]:
        assert "logprob" not in p and 0 < p["prob"] <= 1
        tops = p["top_probs"]
        assert 1 <= len(tops) <= 3 and all(0 < t["prob"] <= 1 for t in tops)
        assert sum(t["prob"] for t in tops) == pytest.approx(1, abs=1e-3)  # top_k 3: all
        assert p["id"] in [t["id"] for t in tops]
    status, pre = post(srv, "completion", dict(body, seed=7))
    for p in pre["completion_probabilities"]:
        assert "prob" not in p and p["logprob"] <= 0 and len(p["top_logprobs"]) == 3


def test_return_progress_streams_prompt_progress(srv):
    prompt = "Tell me about the history of the city of Paris. " * 3
    status, events = post(srv, "completion", {"prompt": prompt, "n_predict": 3, "stream": True,
                                              "return_progress": True}, stream=True)
    assert status == 200
    progress = [e["prompt_progress"] for e in events if "prompt_progress" in e]
    n = len(tokens_of(srv, prompt))
    assert progress and all(p["total"] == n for p in progress)
    assert progress[-1]["processed"] == n and progress[0]["processed"] <= n
    assert [p["processed"] for p in progress] == sorted(p["processed"] for p in progress)
    assert events[-1]["stop"] is True
    _, plain = post(srv, "completion", {"prompt": prompt, "n_predict": 3, "stream": True},
                    stream=True)
    assert not any("prompt_progress" in e for e in plain)


def test_streamed_chat_opens_with_content_null_and_tools_unused_still_stream_text(srv):
    c = openai_client(srv)
    chunks = list(c.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": QUESTION}], max_tokens=12,
        temperature=0, stream=True))
    first = chunks[0].choices[0].delta
    assert first.role == "assistant" and first.content is None
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}}}}]
    with_tools = list(c.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": QUESTION}], max_tokens=12,
        temperature=0, stream=True, tools=tools, tool_choice="auto"))
    deltas = [ch.choices[0].delta.content for ch in with_tools[1:] if ch.choices
              and ch.choices[0].delta.content]
    assert len(deltas) >= 2 and text
    assert not any(ch.choices and ch.choices[0].delta.tool_calls for ch in with_tools)


def test_chat_n_choices(srv):
    c = openai_client(srv)
    r = c.chat.completions.create(model="smol", messages=[{"role": "user", "content": QUESTION}],
                                  max_tokens=8, temperature=0, n=2)
    assert [ch.index for ch in r.choices] == [0, 1]
    assert r.choices[0].message.content == r.choices[1].message.content != ""
    assert r.usage.completion_tokens == 16
    chunks = list(c.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": QUESTION}], max_tokens=8,
        temperature=0, n=2, stream=True))
    texts = {0: "", 1: ""}
    for ch in chunks:
        for choice in ch.choices:
            texts[choice.index] += choice.delta.content or ""
    assert texts[0] == texts[1] == r.choices[0].message.content


def test_chat_token_count_route(srv):
    body = {"messages": [{"role": "user", "content": QUESTION}]}
    status, count = post(srv, "v1/chat/completions/input_tokens", body)
    assert status == 200 and count["object"] == "response.input_tokens"
    status, done = post(srv, "v1/chat/completions", dict(body, max_tokens=1))
    assert count["input_tokens"] == done["usage"]["prompt_tokens"] > 5
    assert post(srv, "chat/completions/input_tokens", body)[1] == count
    c = openai_client(srv)  # the Responses API's count, through the official client
    counted = c.responses.input_tokens.count(model="smol", input=QUESTION)
    answer = c.responses.create(model="smol", input=QUESTION, max_output_tokens=2)
    assert counted.input_tokens == answer.usage.input_tokens > 5


# -- templates -------------------------------------------------------------------------------

def test_template_switches_and_invalid_formats_are_400s(srv):
    msgs = [{"role": "user", "content": QUESTION},
            {"role": "assistant", "content": "The capital of France"}]
    status, body = post(srv, "v1/chat/completions", {
        "messages": msgs, "max_tokens": 4, "continue_final_message": True,
        "add_generation_prompt": True})
    assert status == 400 and "add_generation_prompt" in body["error"]["message"]
    # The last assistant message is continued (llama-server's prefill): no new turn opens.
    status, body = post(srv, "v1/chat/completions", {"messages": msgs, "max_tokens": 4,
                                                     "temperature": 0, "verbose": True})
    assert status == 200
    prompt = body["__verbose"]["prompt"]
    assert prompt.endswith("The capital of France")
    assert prompt.count("<|im_start|>assistant") == 1
    status, body = post(srv, "v1/chat/completions", {
        "messages": msgs[:1], "max_tokens": 4, "response_format": {"type": "nonsense"}})
    assert status == 400 and body["error"]["param"].startswith("response_format")


def test_verbose_adds_the_rendered_prompt(srv):
    msgs = [{"role": "user", "content": QUESTION}]
    status, body = post(srv, "v1/chat/completions", {"messages": msgs, "max_tokens": 3,
                                                     "verbose": True})
    v = body["__verbose"]
    assert status == 200 and QUESTION in v["prompt"] and v["prompt"].endswith("assistant\n")
    assert v["tokens_evaluated"] == body["usage"]["prompt_tokens"]
    status, events = post(srv, "v1/chat/completions", {"messages": msgs, "max_tokens": 3,
                                                       "stream": True, "verbose": True},
                          stream=True)
    assert QUESTION in events[-1]["__verbose"]["prompt"] and events[-1]["choices"][0][
        "finish_reason"]
    status, body = post(srv, "v1/chat/completions", {"messages": msgs, "max_tokens": 3})
    assert status == 200 and "__verbose" not in body


def test_verbose_flag_adds___verbose_to_every_answer(smol_pyfile, tmp_path):
    proc, where = ready.start([str(smol_pyfile), "--server", "--port", "0", "--nobrowser",
                               "-c", "512", "--verbose"], timeout=300,
                              env=run_env(PYFILE_CACHE_DIR=str(tmp_path / "c")),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert where is not None, "the server did not start"
        body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 3}
        req = urllib.request.Request(where["url"] + "v1/chat/completions",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            out = json.loads(r.read())
        assert QUESTION in out["__verbose"]["prompt"]
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


# -- /metrics, /v1/models --------------------------------------------------------------------

def metric_values(text):
    return {m.group(1): float(m.group(2)) for m in
            re.finditer(r"^llamacpp:([a-z_]+) (\S+)$", text, re.M)}


def test_metrics_count_as_llama_server_and_carry_the_start_time(srv):
    _, headers, text = get(srv, "metrics")
    start = int(headers["Process-Start-Time-Unix"])
    assert time.time() - 3600 < start <= time.time()
    before = metric_values(text)
    status, out = post(srv, "completion", {"prompt": PROMPT, "n_predict": 8, "temperature": 0,
                                           "ignore_eos": True})
    after = metric_values(get(srv, "metrics")[2])
    assert after["tokens_predicted_total"] - before["tokens_predicted_total"] == 8
    assert after["prompt_tokens_total"] + after["prompt_tokens_cached_total"] - \
        before["prompt_tokens_total"] - before["prompt_tokens_cached_total"] == \
        out["tokens_evaluated"]
    assert after["n_tokens_max"] >= out["tokens_evaluated"] + 7
    t = out["timings"]  # the rate leaves out the first token (it came with the prompt)
    assert t["predicted_n"] == 8
    assert t["predicted_per_second"] == pytest.approx(7 * 1000 / t["predicted_ms"])
    assert list(after)[:2] == ["prompt_tokens_total", "prompt_tokens_cached_total"]


def test_models_list_aliases_and_tags(srv):
    c = openai_client(srv)
    m = c.models.list().data[0]
    assert m.id == "smol" and m.aliases == ["smol", "smol-alias"] and m.tags == ["t1", "t2"]
    models = json.loads(get(srv, "v1/models")[2])
    assert models["models"][0]["name"] == "smol"
    assert models["data"][0]["meta"]["ftype"] == "Q4_1"
    assert json.loads(get(srv, "props")[2])["model_ftype"] == "Q4_1"


# -- Anthropic, embeddings -------------------------------------------------------------------

def test_anthropic_thinking_blocks_are_counted_and_kept_in_the_template(flagged):
    anthropic = pytest.importorskip("anthropic")
    c = anthropic.Anthropic(base_url=flagged.url.rstrip("/"), api_key="none")
    plain = [{"role": "user", "content": QUESTION},
             {"role": "assistant", "content": [{"type": "text", "text": "Paris."}]},
             {"role": "user", "content": "And Italy?"}]
    thought = json.loads(json.dumps(plain))
    thought[1]["content"].insert(0, {"type": "thinking", "thinking": "France: Paris.",
                                     "signature": "sig"})
    n_plain = c.messages.count_tokens(model="smol", messages=plain).input_tokens
    n_thought = c.messages.count_tokens(model="smol", messages=thought).input_tokens
    extra = len(tokens_of(flagged, "[thought: France: Paris.]", add_special=False))
    assert n_thought - n_plain == pytest.approx(extra, abs=2)
    m = c.messages.create(model="smol", max_tokens=4, messages=thought)
    assert m.type == "message" and m.usage.input_tokens == n_thought


def test_embedding_content_parts(srv):
    ids = tokens_of(srv, "world")
    status, out = post(srv, "embedding", {"content": ["world", ids, {"prompt_string": "world"},
                                                      [ids[0], "world"]]})
    assert status == 200 and [o["index"] for o in out] == [0, 1, 2, 3]
    vecs = [o["embedding"][0] for o in out]
    assert vecs[1] == pytest.approx(vecs[0], abs=1e-5)
    assert vecs[2] == pytest.approx(vecs[0], abs=1e-5)
    assert math.isclose(sum(x * x for x in vecs[3]), 1, rel_tol=1e-4)
    status, body = post(srv, "embedding", {"content": []})
    assert status == 400


# -- flags -----------------------------------------------------------------------------------

def test_llama_server_flags_apply_or_warn_once(flagged):
    log = "".join(flagged.lines)
    assert log.count("warning: --lora:") == 1 and log.count("warning: --timeout:") == 1
    assert "--no-warmup" not in log and "--mlock" not in log
    assert flagged.url.startswith("http://127.0.0.1:")  # --host twice: the last one
    with pytest.raises(urllib.error.HTTPError) as e:  # --no-webui
        urllib.request.urlopen(flagged.url, timeout=30)
    assert e.value.code == 404
    status, body = post(flagged, "apply-template", {"messages": [
        {"role": "user", "content": "hi"}]})
    assert status == 200 and body["prompt"] == "<user>hi</user>\n<assistant>"
    status, out = post(flagged, "v1/chat/completions", {  # -fa off, q8_0 K cache: it answers
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    assert status == 200 and out["usage"]["completion_tokens"] >= 1


def test_builtin_chat_template_by_name(smol_pyfile, tmp_path):
    s = Server(smol_pyfile, "-c", "512", "--chat-template", "llama3",
               env=run_env(PYFILE_CACHE_DIR=str(tmp_path / "c")))
    try:
        status, body = post(s, "apply-template", {"messages": [
            {"role": "user", "content": "hi"}]})
        assert status == 200 and "<|start_header_id|>user<|end_header_id|>" in body["prompt"]
        assert body["prompt"].endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
        status, out = post(s, "v1/chat/completions", {
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert status == 200
    finally:
        assert s.stop() == 0


def test_unknown_chat_template_name_is_a_usage_error(smol_pyfile, tmp_path):
    r = run_file(smol_pyfile, "--server", "--port", "0", "--nobrowser", "--chat-template",
                 "no-such-template", env=run_env(PYFILE_CACHE_DIR=str(tmp_path / "c")),
                 timeout=300)
    assert r.returncode == 2, r.stderr
    line = [x for x in r.stderr.splitlines() if "no-such-template" in x]
    assert len(line) == 1 and "chatml" in line[0] and "Traceback" not in r.stderr


def test_a_quantized_v_cache_without_flash_attention_is_one_line_and_exit_1(smol_pyfile,
                                                                           tmp_path):
    r = run_file(smol_pyfile, "--server", "--port", "0", "--nobrowser", "-c", "512", "-ctv",
                 "q4_0", "-fa", "off", env=run_env(PYFILE_CACHE_DIR=str(tmp_path / "c")),
                 timeout=300)
    assert r.returncode == 1, r.stderr
    lines = [x for x in r.stderr.splitlines() if "could not create a context" in x]
    assert len(lines) == 1 and "-fa on" in lines[0] and "Traceback" not in r.stderr


# -- resumable streams -----------------------------------------------------------------------

def test_a_stream_with_a_conversation_id_outlives_its_connection_and_resumes(srv):
    import http.client
    from urllib.parse import quote, urlparse
    u = urlparse(srv.url)
    conv = "chat-7::org/some-model"  # a model name with a slash, as the web UI sends
    body = {"messages": [{"role": "user", "content": "Tell me a long story about Paris."}],
            "max_tokens": 40, "temperature": 0, "stream": True}
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
    c.request("POST", "/v1/chat/completions", json.dumps(body),
              {"Content-Type": "application/json", "X-Conversation-Id": conv})
    r = c.getresponse()
    assert r.status == 200
    first = r.read1(100)
    c.close()  # the client goes away; the generation goes on
    for _ in range(300):
        status, found = post(srv, "v1/streams/lookup", {"conversation_ids": ["chat-7"]})
        if found and found[0]["is_done"]:
            break
        time.sleep(0.1)
    assert status == 200 and found[0]["conversation_id"] == conv and found[0]["is_done"]
    assert post(srv, "v1/streams/lookup", {"conversation_ids": ["chat-8"]})[1] == []
    url = f"v1/stream?conv_id={quote(conv)}"
    whole = get(srv, url + "&from=0")[2]
    assert whole.startswith(first.decode()) and whole.endswith("data: [DONE]\n\n")
    assert len(whole) == found[0]["total_bytes"] > len(first)
    deltas = [json.loads(e[6:])["choices"] for e in whole.split("\n\n")
              if e.startswith("data: {")]
    text = "".join(ch[0]["delta"].get("content") or "" for ch in deltas if ch)
    plain = post(srv, "v1/chat/completions", dict(body, stream=False))[1]
    assert text == plain["choices"][0]["message"]["content"]
    assert first.decode() + get(srv, url + f"&from={len(first)}")[2] == whole
    req = urllib.request.Request(srv.url + url, method="DELETE")
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 204
    for bad, code in ((url, 404), ("v1/stream", 400)):
        with pytest.raises(urllib.error.HTTPError) as e:
            get(srv, bad)
        assert e.value.code == code
