"""The HTTP fuzzer: hypothesis draws request bodies for every route of a real server (the
SmolLM2 pyfile): random JSON values under the routes' own field names (wrong types, huge and
odd numbers, lone surrogates, nesting) and byte-level damage of valid bodies. Every answer
must be a 4xx in the route's API shape or a success: no 5xx, no dropped connection, and the
server healthy afterwards. `FUZZ_EXAMPLES=5000 pytest fuzz/test_http_fuzz.py` for a long run.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import MODEL_ENV, pyfile_cli, run_env  # noqa: E402

httpx = pytest.importorskip("httpx2")  # the HTTP client of the openai and anthropic SDKs
from test_server import Server  # noqa: E402
from test_server_safety import BASES, check_answer  # noqa: E402

pytestmark = pytest.mark.slow
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                    suppress_health_check=list(HealthCheck))
COUNT = {"requests": 0}

#: The field names the routes read, and some they do not.
KEYS = sorted({k for b in BASES.values() for k in b} | {
    "max_tokens", "n_predict", "temperature", "top_p", "top_k", "seed", "stop", "logit_bias",
    "logprobs", "top_logprobs", "n_probs", "grammar", "json_schema", "response_format",
    "tools", "tool_choice", "system", "role", "content", "type", "text", "name", "function",
    "parameters", "input_schema", "stream", "n", "input_extra", "x"})
LENGTHS = ("max_tokens", "n_predict", "max_output_tokens", "max_completion_tokens")

TEXT = st.text(alphabet=st.sampled_from(list("aZ0 {}[]\":\\/<>|") + ["\ud800", "\udfff",
                                                                         "\x00", "é", "😀"]),
               max_size=12)
NUMBERS = st.sampled_from([0, 1, -1, 2, 2 ** 31 - 1, 2 ** 31, 2 ** 63, -2 ** 63 - 1,
                           10 ** 40, 1.5, -0.0, 1e308, float("inf"), float("nan")])
VALUES = st.recursive(st.none() | st.booleans() | NUMBERS | st.integers() | TEXT,
                      lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
                      max_leaves=12)


def bounded(body):
    """A drawn length that is valid becomes 1: the fuzzer is after bad input, not long
    generations (the server's -c bounds the rest)."""
    if isinstance(body, dict):
        for k in LENGTHS:
            v = body.get(k)
            if isinstance(v, int) and not isinstance(v, bool) and 1 < v < 2 ** 31:
                body[k] = 1
    return body


BODIES = st.one_of(
    st.tuples(st.sampled_from(sorted(BASES)),
              st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5)).map(
        lambda t: (t[0], json.dumps(bounded(dict(BASES[t[0]], **t[1])))
                   .encode("utf-8", "surrogatepass"))),
    st.tuples(st.sampled_from(sorted(BASES)), st.integers(0, 200), st.binary(max_size=6)).map(
        lambda t: (t[0], _damage(json.dumps(BASES[t[0]]).encode(), t[1], t[2]))))


def _damage(data, pos, junk):
    pos %= len(data)
    return data[:pos] + junk + data[pos + len(junk):]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = os.environ.get(MODEL_ENV) or subprocess.run(
        [str(ROOT / "scripts" / "fetch-model.sh"), sys.executable], capture_output=True,
        text=True).stdout.strip()
    if not model or not os.path.isfile(model):
        pytest.fail(f"the real model is missing: run `make model` ({MODEL_ENV} unset)")
    out = tmp_path_factory.mktemp("fuzzsrv") / "smol.pyfile"
    r = pyfile_cli("build", model, "-o", str(out))
    assert r.returncode == 0, r.stderr
    s = Server(out, "-np", "1", "-c", "256", "--temp", "0",
               env=run_env(PYFILE_CACHE_DIR=str(tmp_path_factory.mktemp("fuzzcache"))))
    yield s
    assert s.stop() == 0


def test_http_bodies_for_every_route(server):
    with httpx.Client(base_url=server.url, timeout=120) as client:
        @SETTINGS
        @given(BODIES)
        def run(case):
            path, data = case
            COUNT["requests"] += 1
            r = client.post(path, content=data, headers={"Content-Type": "application/json"})
            check_answer(path, r)  # a transport error (dropped connection) raises here too
        run()
        assert client.get("health").json()["status"] == "ok"
        r = client.post("v1/chat/completions", json={
            "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2
    assert COUNT["requests"] >= min(EXAMPLES, 100)
    assert not any("Traceback" in line for line in server.lines), "".join(server.lines)[-3000:]
