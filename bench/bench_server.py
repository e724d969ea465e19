"""Server throughput and time to first token at 1, 4, 8 and 16 concurrent clients: pyfile's
server against llama.cpp's own llama-server (the anchor) and llama-cpp-python's server, same
model, same machine, same run. Also the memory of pyfile's server at --parallel 1 and 8.

    python bench/bench_server.py MODEL.gguf [--tokens 64] [--parallel 4] [--threads 2]
                                 [--llama-server PATH] [--out bench/results/server.txt]
                                 [--baseline OLD.pyfile]   # before/after a change, same run

Every request is a streaming chat completion with a question never asked before in the run
(so llama-server's RAM prompt cache cannot answer it from a copy; every server still reuses
the shared system-prompt prefix), greedy, of
``--tokens`` tokens; each client sends its requests back to back. Each client count is run
``--rounds`` times with the servers interleaved (the machine is shared and its load drifts).
Reported per server and client count: median aggregate generated tokens/s, the median and
range of its per-round ratio to llama-server, and time to first token (p50, p90). llama-server is built by scripts/build-llama-server.sh (cached);
llama-cpp-python's server needs `pip install sse-starlette starlette-context
pydantic-settings` (skipped with a note when missing).
"""

import argparse
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from common import proc_mib, venv_env  # noqa: E402

LLAMA_CPP_PYTHON_SERVER = """
import ctypes, glob, os, runpy, sys
import llama_cpp
pkg = os.path.dirname(llama_cpp.__file__)
found = glob.glob(os.path.join(pkg, "..", "bin", "libggml-cpu-%s.so" % os.environ["VARIANT"]))
if found:  # a GGML_BACKEND_DL build: load the same CPU variant pyfile picked
    g = ctypes.CDLL("libggml.so.0")
    g.ggml_backend_load.restype = ctypes.c_void_p
    g.ggml_backend_load.argtypes = [ctypes.c_char_p]
    assert g.ggml_backend_load(found[0].encode())
sys.argv = ["llama_cpp.server"] + sys.argv[1:]
runpy.run_module("llama_cpp.server", run_name="__main__")
"""

TOPICS = ["Paris", "the Moon", "bees", "the ocean", "volcanoes", "chess", "bread", "rain",
          "the Nile", "owls", "glass", "jazz", "trains", "salt", "maps", "clocks", "tea",
          "bridges", "snow", "coral", "kites", "copper", "deserts", "violins"]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_ready(url: str, proc: subprocess.Popen, log: str) -> None:
    for _ in range(1200):
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}): {proc.args[:3]}\n"
                             + open(log).read()[-2000:])
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("server did not start")


def one(url: str, tokens: int, i: int):
    """One streaming chat completion: (time to first content token, content chunks)."""
    host, port = url.split("//")[1].split(":")
    body = json.dumps({"model": "m", "messages": [{
        "role": "user", "content": f"Question {i}: tell me about {TOPICS[i % len(TOPICS)]}."}],
        "max_tokens": tokens, "temperature": 0, "stream": True, "ignore_eos": True})
    conn = http.client.HTTPConnection(host, int(port), timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200, r.status
    ttft, chunks = None, 0
    for line in r:
        if line.startswith(b"data: {") and b'"content":"' in line.replace(b" ", b"") \
                and b'"content":""' not in line.replace(b" ", b""):
            chunks += 1
            if ttft is None:
                ttft = time.perf_counter() - t0
    conn.close()
    return (ttft if ttft is not None else time.perf_counter() - t0), chunks


_counter = iter(range(10 ** 9))  # every request of the run asks a question never asked before


def load(url: str, clients: int, per_client: int, tokens: int):
    """``clients`` threads, each sending ``per_client`` requests back to back."""
    one(url, 4, next(_counter))  # warm-up
    lock = threading.Lock()

    def client(_: int):
        out = []
        for _ in range(per_client):
            with lock:
                i = next(_counter)
            out.append(one(url, tokens, i))
        return out

    with ThreadPoolExecutor(clients) as pool:
        t0 = time.perf_counter()
        results = [x for batch in pool.map(client, range(clients)) for x in batch]
        wall = time.perf_counter() - t0
    return sum(c for _, c in results) / wall, sorted(t for t, _ in results)


def start_pyfile(pf: str, d: str, parallel: int, ctx: int, threads: int, tag: str,
                 extra: tuple = ("--kv-unified",)):
    """``extra``: flags for this pyfile (a baseline from before --kv-unified existed shares
    one cache across slots without it)."""
    port = free_port()
    log = os.path.join(d, f"pyfile-{tag}.log")
    proc = subprocess.Popen([pf, "--server", "--port", str(port), "--nobrowser", "-np",
                             str(parallel), "-c", str(ctx), "-t", str(threads), *extra],
                            env=venv_env(), stdout=subprocess.DEVNULL, stderr=open(log, "w"))
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, proc, log)
    return url, proc


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--per-client", type=int, default=2, help="requests per client")
    ap.add_argument("--clients", default="1,4,8,16")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--llama-server", default=None, help="default: scripts/build-llama-server.sh")
    ap.add_argument("--skip-llama-cpp-python", action="store_true")
    ap.add_argument("--baseline", default=None, metavar="PYFILE",
                    help="also serve this pyfile (built from an earlier commit) as "
                         "'pyfile-before', interleaved in the same rounds")
    ap.add_argument("--out", default=None, help="also write the table to this file")
    a = ap.parse_args()
    lines = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    anchor = a.llama_server or subprocess.run(
        [os.path.join(ROOT, "scripts", "build-llama-server.sh")], check=True,
        capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as d:
        pf = os.path.join(d, "m.pyfile")
        subprocess.run([sys.executable, "-m", "pyfile", "build", a.model, "-o", pf],
                       check=True, capture_output=True)
        first = subprocess.run([pf, "-p", "Hi", "-n", "1"], capture_output=True, text=True,
                               env=venv_env())
        variant = re.search(r"backend cpu \((\S+) variant", first.stderr).group(1)
        servers = {}
        procs = []
        try:
            servers["pyfile"], p = start_pyfile(pf, d, a.parallel, a.ctx, a.threads, "main")
            procs.append(p)
            if a.baseline:
                servers["pyfile-before"], p = start_pyfile(a.baseline, d, a.parallel, a.ctx,
                                                           a.threads, "before", extra=())
                procs.append(p)
            port = free_port()
            log = os.path.join(d, "llama-server.log")
            p = subprocess.Popen([anchor, "-m", a.model, "--host", "127.0.0.1", "--port",
                                  str(port), "-np", str(a.parallel), "-c", str(a.ctx),
                                  "--kv-unified", "-t", str(a.threads), "-tb", str(a.threads),
                                  "--no-webui"],
                                 stdout=subprocess.DEVNULL, stderr=open(log, "w"))
            procs.append(p)
            servers["llama-server"] = f"http://127.0.0.1:{port}"
            wait_ready(servers["llama-server"], p, log)
            if not a.skip_llama_cpp_python:
                try:
                    import sse_starlette  # noqa: F401
                    import starlette_context  # noqa: F401
                    port = free_port()
                    log = os.path.join(d, "lcp.log")
                    p = subprocess.Popen(
                        [sys.executable, "-c", LLAMA_CPP_PYTHON_SERVER, "--model", a.model,
                         "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(a.ctx),
                         "--n_threads", str(a.threads), "--n_threads_batch", str(a.threads),
                         "--interrupt_requests", "False"],
                        env=dict(venv_env(), VARIANT=variant), stdout=subprocess.DEVNULL,
                        stderr=open(log, "w"))
                    procs.append(p)
                    servers["llama-cpp-python"] = f"http://127.0.0.1:{port}"
                    wait_ready(servers["llama-cpp-python"], p, log)
                except ImportError:
                    say("llama-cpp-python's server skipped: pip install sse-starlette "
                        "starlette-context pydantic-settings")
            say(f"{os.path.basename(a.model)}; CPU variant {variant}; {os.cpu_count()} "
                f"cores, load average {os.getloadavg()[0]:.1f} at the start; -t {a.threads}; {a.tokens} greedy tokens per request, "
                f"{a.per_client} requests per client; pyfile -np {a.parallel} -c {a.ctx}; "
                f"llama-server -np {a.parallel} -c {a.ctx} --kv-unified; "
                f"llama-cpp-python one request at a time")
            say(f"{'clients':>7} {'server':18} {'tok/s':>7} {'vs llama-server':>15} "
                f"{'TTFT p50':>9} {'TTFT p90':>9}   (median of {a.rounds} interleaved rounds; "
                f"ratio range in brackets)")
            names = list(servers)
            for clients in [int(x) for x in a.clients.split(",")]:
                runs = {name: [] for name in names}
                for r in range(a.rounds):  # interleaved: the shared machine's load drifts
                    order = names[r % len(names):] + names[:r % len(names)]
                    for name in order:
                        runs[name].append(load(servers[name], clients, a.per_client,
                                               a.tokens))
                ref = [tps for tps, _ in runs["llama-server"]]
                for name in names:
                    tps = [x for x, _ in runs[name]]
                    ratios = sorted(x / y for x, y in zip(tps, ref))
                    ttfts = sorted(t for _, ts in runs[name] for t in ts)
                    p90 = ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.9))]
                    say(f"{clients:>7} {name:18} {statistics.median(tps):>7.1f} "
                        f"{statistics.median(ratios):>6.2f}x [{ratios[0]:.2f}-{ratios[-1]:.2f}] "
                        f"{statistics.median(ttfts) * 1000:>6.0f}ms {p90 * 1000:>7.0f}ms")
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=30)
        say(f"load average {os.getloadavg()[0]:.1f} at the end (other work shares this machine)")
        # Memory: the weights are mapped once from the file (RssFile); each slot adds only
        # its share of the KV cache, in anonymous memory.
        mem = {}
        for n in (1, 8):
            url, p = start_pyfile(pf, d, n, a.ctx, a.threads, f"mem{n}")
            try:
                one(url, 8, 0)
                # anonymous memory (the private heap: KV cache, buffers, Python) and the
                # file-backed resident set (the mapped weights)
                mem[n] = (proc_mib(p.pid, "Anonymous", "smaps_rollup"),
                          proc_mib(p.pid, "RssFile"))
            finally:
                p.terminate()
                p.wait(timeout=30)
        say(f"memory, pyfile -c {a.ctx}: -np 1: anonymous {mem[1][0]:.0f} MiB, file-backed "
            f"(weights) {mem[1][1]:.0f} MiB; -np 8: anonymous {mem[8][0]:.0f} MiB, file-backed "
            f"{mem[8][1]:.0f} MiB; model file {os.path.getsize(a.model) / 2**20:.0f} MiB")
    if a.out:
        with open(a.out + ".tmp", "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(a.out + ".tmp", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
