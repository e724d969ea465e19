"""Server throughput and time to first token: pyfile's server against llama-cpp-python's own
OpenAI server on the raw GGUF, same machine, same run.

    python bench/bench_server.py MODEL.gguf [--requests 16] [--tokens 32] [--parallel 4]

For 1, 4 and 8 concurrent clients it sends streaming chat completions (greedy, fixed
length) and reports requests/s, median and p90 time to first token. llama-cpp-python's
server needs `pip install sse-starlette starlette-context pydantic-settings`.
"""

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import http.client
import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import venv_env  # noqa: E402
LLAMA_SERVER = """
import ctypes, glob, os, runpy, sys
import llama_cpp
pkg = os.path.dirname(llama_cpp.__file__)
(path,) = glob.glob(os.path.join(pkg, "..", "bin", "libggml-cpu-%s.so" % os.environ["VARIANT"]))
g = ctypes.CDLL("libggml.so.0")
g.ggml_backend_load.restype = ctypes.c_void_p
g.ggml_backend_load.argtypes = [ctypes.c_char_p]
assert g.ggml_backend_load(path.encode())
sys.argv = ["llama_cpp.server"] + sys.argv[1:]
runpy.run_module("llama_cpp.server", run_name="__main__")
"""


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


env = venv_env


def wait_ready(url: str, proc: subprocess.Popen) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}): {proc.args[:3]}")
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("server did not start")


def one(url: str, tokens: int) -> float:
    """One streaming chat completion; returns the time to its first content token."""
    host, port = url.split("//")[1].split(":")
    body = json.dumps({"model": "m", "messages": [{"role": "user",
                                                   "content": "Tell me about Paris."}],
                       "max_tokens": tokens, "temperature": 0, "stream": True})
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200, r.status
    ttft, chunks = None, 0
    for line in r:
        if b'"content"' in line:
            chunks += 1
            if ttft is None:
                ttft = time.perf_counter() - t0
    conn.close()
    return (ttft if ttft is not None else time.perf_counter() - t0), chunks


def load(url: str, clients: int, requests: int, tokens: int):
    one(url, 4)  # warm-up
    with ThreadPoolExecutor(clients) as pool:
        t0 = time.perf_counter()
        results = list(pool.map(lambda _: one(url, tokens), range(requests)))
        rps = requests / (time.perf_counter() - t0)
        return rps, [t for t, _ in results], sum(c for _, c in results) / len(results)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--parallel", type=int, default=4)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        pf = os.path.join(d, "m.pyfile")
        subprocess.run([sys.executable, "-m", "pyfile", "build", a.model, "-o", pf],
                       check=True, capture_output=True)
        first = subprocess.run([pf, "-p", "Hi", "-n", "1"], capture_output=True, text=True,
                               env=env())
        variant = re.search(r"backend cpu \((\S+) variant", first.stderr).group(1)
        servers = {}
        p1 = free_port()
        servers["pyfile"] = (f"http://127.0.0.1:{p1}", subprocess.Popen(
            [pf, "--server", "--port", str(p1), "--nobrowser", "--parallel", str(a.parallel)],
            env=env(), stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "a.log"), "w")))
        p2 = free_port()
        servers["llama-cpp-python"] = (f"http://127.0.0.1:{p2}", subprocess.Popen(
            [sys.executable, "-c", LLAMA_SERVER, "--model", a.model, "--host", "127.0.0.1",
             "--port", str(p2),
             "--n_ctx", "4096", "--interrupt_requests", "False"], env=dict(env(), VARIANT=variant),
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "b.log"), "w")))
        try:
            for url, proc in servers.values():
                wait_ready(url, proc)
            print(f"CPU variant {variant}; {a.requests} requests of {a.tokens} tokens; "
                  f"pyfile --parallel {a.parallel}")
            print(f"{'server':18} {'clients':>7} {'req/s':>7} {'TTFT p50':>9} {'TTFT p90':>9}"
                  f" {'tokens/req':>10}")
            for clients in (1, 4, 8):
                for name, (url, _) in servers.items():
                    rps, ttfts, per = load(url, clients, a.requests, a.tokens)
                    ttfts.sort()
                    p90 = ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.9))]
                    print(f"{name:18} {clients:>7} {rps:>7.2f} {statistics.median(ttfts) * 1000:>7.0f}ms"
                          f" {p90 * 1000:>7.0f}ms {per:>10.1f}")
        finally:
            for _, proc in servers.values():
                proc.terminate()
                proc.wait(timeout=30)


if __name__ == "__main__":
    main()
