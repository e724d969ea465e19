"""Sustained load on a pyfile server (loopback only, bounded in time): well-formed clients,
malformed requests, slow clients, abrupt disconnects and (if installed) schemathesis against
the server's own OpenAPI description, all at once.

    python bench/soak_server.py MODEL.gguf|FILE.pyfile [--seconds 180] [--parallel 4]

Prints requests served, errors by type, p50/p99 latency and the server's memory at start and
end, and exits non-zero if the server died or a well-formed request failed.
"""

import argparse
import collections
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import proc_mib, venv_env  # noqa: E402


class Soak:
    def __init__(self, url: str, seconds: float, clients: int) -> None:
        self.url, self.deadline, self.clients = url, time.time() + seconds, clients
        self.host, self.port = url.split("//")[1].strip("/").split(":")
        self.port = int(self.port)
        self.counts = collections.Counter()
        self.latency = []
        self.lock = threading.Lock()

    def count(self, key: str, latency: float = None) -> None:
        with self.lock:
            self.counts[key] += 1
            if latency is not None:
                self.latency.append(latency)

    def post(self, path: str, data: bytes, timeout: float = 300):
        req = urllib.request.Request(self.url + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def wellformed(self, i: int) -> None:
        rng = random.Random(i)
        while time.time() < self.deadline:
            stream = rng.random() < 0.5
            if rng.random() < 0.5:
                path, body = "v1/chat/completions", {"messages": [
                    {"role": "user", "content": rng.choice(["Hi", "Name a color.", "2+2?"])}]}
            else:
                path, body = "v1/completions", {"prompt": "Once upon a time"}
            body.update(max_tokens=16, temperature=rng.random(), stream=stream)
            t = time.perf_counter()
            try:
                status, data = self.post(path, json.dumps(body).encode())
                ok = status == 200 and (b"[DONE]" in data if stream else b"choices" in data)
            except OSError as e:
                ok, status = False, type(e).__name__
            self.count("ok" if ok else f"wellformed_failed_{status}", time.perf_counter() - t)

    def malformed(self) -> None:
        rng = random.Random(7)
        bodies = [b"{", b"[]", b"null", b'{"messages": 5}', b'{"messages": [{"role": "x"}]}',
                  b'{"prompt": ["a", "b"]}', b'{"prompt": "x", "max_tokens": -1}',
                  b'{"prompt": "x", "temperature": "hot"}', b"\xff\xfe" * 50,
                  b'{"tokens": [1e99]}', json.dumps({"prompt": "x" * 100}).encode()]
        paths = ["v1/chat/completions", "v1/completions", "v1/embeddings", "detokenize",
                 "tokenize", "v1/nope"]
        while time.time() < self.deadline:
            body = rng.choice(bodies + [bytes(rng.getrandbits(8) for _ in range(40))])
            try:
                status, _ = self.post(rng.choice(paths), body, timeout=60)
                self.count(f"malformed_{status // 100}xx")
            except OSError as e:
                self.count(f"malformed_{type(e).__name__}")
            time.sleep(0.02)

    def slow_and_abrupt(self) -> None:
        body = json.dumps({"messages": [{"role": "user", "content": "Tell a long story."}],
                           "stream": True, "max_tokens": 500}).encode()
        host = f"{self.host}:{self.port}".encode()  # a Host the server answers (not 403)
        while time.time() < self.deadline:
            try:  # a slow client: headers, then a trickle of body, then it gives up
                s = socket.create_connection((self.host, self.port), timeout=10)
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + host
                          + b"\r\nContent-Type: application/json\r\nContent-Length: "
                          + str(len(body)).encode()
                          + b"\r\n\r\n")
                for b in body[:5]:
                    s.sendall(bytes([b]))
                    time.sleep(0.2)
                s.close()
                self.count("slow_client")
                s = socket.create_connection((self.host, self.port), timeout=60)
                s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: " + host
                          + b"\r\nContent-Type: application/json\r\nContent-Length: "
                          + str(len(body)).encode()
                          + b"\r\n\r\n" + body)
                got = b""
                while b"data:" not in got:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    got += chunk
                s.close()  # hang up mid-stream
                self.count("abrupt_disconnect")
            except OSError as e:
                self.count(f"abuse_{type(e).__name__}")


def start_server(target: str, parallel: int, workdir: str):
    pf = target
    if not target.endswith(".pyfile"):
        pf = os.path.join(workdir, "soak.pyfile")
        subprocess.run([sys.executable, "-m", "pyfile", "build", target, "-o", pf], check=True,
                       capture_output=True)
    env = venv_env()
    log = os.path.join(workdir, "server.log")
    from pyfile.runtime import ready
    proc, where = ready.start([pf, "--server", "--port", "0", "--nobrowser", "--parallel",
                               str(parallel)], env=env, stderr=open(log, "w"),
                              stdout=subprocess.DEVNULL)
    proc.log = log
    if where is None:
        proc.kill()
        raise SystemExit(f"server did not start (see {log})")
    return proc, where["url"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--clients", type=int, default=6)
    ap.add_argument("--no-schemathesis", action="store_true")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        proc, url = start_server(a.target, a.parallel, d)
        try:
            soak = Soak(url, a.seconds, a.clients)
            soak.post("v1/completions", b'{"prompt": "Hi", "max_tokens": 2}')
            rss0 = proc_mib(proc.pid, "VmRSS")
            threads = [threading.Thread(target=soak.wellformed, args=(i,))
                       for i in range(a.clients)]
            threads += [threading.Thread(target=soak.malformed),
                        threading.Thread(target=soak.slow_and_abrupt)]
            samples = []

            def sample() -> None:
                while time.time() < soak.deadline and proc.poll() is None:
                    samples.append(proc_mib(proc.pid, "VmRSS"))
                    time.sleep(max(1.0, a.seconds / 12))

            threads.append(threading.Thread(target=sample))
            for t in threads:
                t.start()
            st = shutil.which("st") or os.path.join(os.path.dirname(sys.executable), "st")
            schema = None
            if os.path.exists(st) and not a.no_schemathesis:
                try:  # bounded like everything else: it stops with the soak
                    schema = subprocess.run(
                        [st, "run", url + "openapi.json", "-n", "10", "--checks",
                         "not_a_server_error", "--request-timeout", "60",
                         "--phases", "coverage,fuzzing"],
                        capture_output=True, text=True, timeout=a.seconds + 30)
                except subprocess.TimeoutExpired as e:
                    schema = subprocess.CompletedProcess(e.cmd, -1, (e.stdout or b"").decode(
                        errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or ""), "")
            for t in threads:
                t.join()
            alive = proc.poll() is None
            rss1 = proc_mib(proc.pid, "VmRSS") if alive else 0.0
            if not alive:
                with open(proc.log) as f:
                    print(f"SERVER DIED (exit {proc.returncode}); last log lines:\n"
                          + "".join(f.readlines()[-15:]))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    lat = sorted(soak.latency)
    served = sum(v for k, v in soak.counts.items())
    print(f"duration {a.seconds:.0f} s, {a.clients} well-formed clients, --parallel {a.parallel}")
    print(f"requests {served}: " + ", ".join(f"{k} {v}" for k, v in sorted(soak.counts.items())))
    if lat:
        print(f"well-formed latency p50 {statistics.median(lat) * 1000:.0f} ms, "
              f"p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000:.0f} ms")
    print(f"server RSS {rss0:.0f} MiB at start, {rss1:.0f} MiB at end; alive: {alive}")
    print("server RSS over time (MiB): " + " ".join(f"{x:.0f}" for x in samples))
    if schema is not None:
        tail = [ln for ln in schema.stdout.splitlines() if "generated" in ln or "failures" in ln
                or "passed" in ln]
        print("schemathesis: " + (" | ".join(tail[-2:]) or f"exit {schema.returncode}"))
    failed = [k for k in soak.counts if k.startswith("wellformed_failed")
              or k == "malformed_5xx" or k.startswith("malformed_Remote")]
    return 0 if alive and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
