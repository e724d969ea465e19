"""Side by side: the same requests to llama.cpp's own llama-server and to a pyfile's server
(same model, same flags), and every difference in HTTP status, fields and shapes.

    python bench/compare_server.py MODEL.gguf [--pyfile FILE] [--llama-server PATH]
                                   [--out bench/results/compare_server.txt]

llama-server is built from the llama.cpp that our engine vendors by
scripts/build-llama-server.sh (cached; its CPU variant read from /proc/cpuinfo); the pyfile is
built from MODEL.gguf unless --pyfile names one. Both run with ``-c 512 -np 2 --metrics`` and
greedy requests. What is compared, per request: the status, then the JSON body's shape: every
key present on one side only, every value whose JSON type differs (numbers are one type), and
lists by their first item; a stream by the shapes of its first, second and last events.
Values are not compared (the two engines may pick different tokens). The last line is the
number of differences, as the README quotes it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from common import venv_env  # noqa: E402

FLAGS = ["-c", "512", "-np", "2", "--metrics", "-a", "smol,smol-alias", "--tags", "t1"]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
LONG = "word " * 400  # over one slot's 256 tokens at -c 512 -np 2

#: (name, method, path, body, streamed)
REQUESTS: List[Tuple[str, str, str, Any, bool]] = [
    ("health", "GET", "/health", None, False),
    ("props", "GET", "/props", None, False),
    ("slots", "GET", "/slots", None, False),
    ("models", "GET", "/v1/models", None, False),
    ("completion", "POST", "/completion",
     {"prompt": "The capital of France is", "n_predict": 8, "temperature": 0}, False),
    ("completions unprefixed (native)", "POST", "/completions",
     {"prompt": "The capital of France is", "n_predict": 8, "temperature": 0}, False),
    ("completion token ids", "POST", "/completion",
     {"prompt": [504, 3575, 282, 4649, 314], "n_predict": 4, "temperature": 0}, False),
    ("completion mixed prompt", "POST", "/completion",
     {"prompt": [504, " capital of France is"], "n_predict": 4, "temperature": 0}, False),
    ("completion JSON-object prompt", "POST", "/completion",
     {"prompt": {"prompt_string": "The capital of France is"}, "n_predict": 4,
      "temperature": 0}, False),
    ("completion n_probs post-sampling", "POST", "/completion",
     {"prompt": "The capital of France is", "n_predict": 3, "temperature": 0, "n_probs": 2,
      "post_sampling_probs": True}, False),
    ("completion stream + progress", "POST", "/completion",
     {"prompt": "The capital of France is", "n_predict": 4, "temperature": 0, "stream": True,
      "return_progress": True}, True),
    ("prompt over a slot's context", "POST", "/completion",
     {"prompt": LONG, "n_predict": 4}, False),
    ("v1 completions", "POST", "/v1/completions",
     {"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}, False),
    ("chat", "POST", "/v1/chat/completions",
     {"messages": CHAT, "max_tokens": 8, "temperature": 0}, False),
    ("chat stream", "POST", "/v1/chat/completions",
     {"messages": CHAT, "max_tokens": 4, "temperature": 0, "stream": True}, True),
    ("chat n=2", "POST", "/v1/chat/completions",
     {"messages": CHAT, "max_tokens": 4, "temperature": 0, "n": 2}, False),
    ("chat logprobs", "POST", "/v1/chat/completions",
     {"messages": CHAT, "max_tokens": 3, "temperature": 0, "logprobs": True,
      "top_logprobs": 2}, False),
    ("chat tools offered, stream", "POST", "/v1/chat/completions",
     {"messages": CHAT, "max_tokens": 4, "temperature": 0, "stream": True,
      "tools": [{"type": "function", "function": {
          "name": "get_weather", "parameters": {"type": "object", "properties": {
              "city": {"type": "string"}}}}}]}, True),
    ("chat invalid response_format", "POST", "/v1/chat/completions",
     {"messages": CHAT, "max_tokens": 4, "response_format": {"type": "nonsense"}}, False),
    ("chat continue_final_message + add_generation_prompt", "POST", "/v1/chat/completions",
     {"messages": CHAT + [{"role": "assistant", "content": "Paris"}], "max_tokens": 4,
      "continue_final_message": True, "add_generation_prompt": True}, False),
    ("chat token count", "POST", "/v1/chat/completions/input_tokens", {"messages": CHAT},
     False),
    ("responses token count", "POST", "/v1/responses/input_tokens",
     {"input": "What is the capital of France?"}, False),
    ("anthropic messages", "POST", "/v1/messages",
     {"model": "smol", "max_tokens": 8, "messages": CHAT, "temperature": 0}, False),
    ("anthropic count_tokens with thinking", "POST", "/v1/messages/count_tokens",
     {"model": "smol", "messages": CHAT + [
         {"role": "assistant", "content": [
             {"type": "thinking", "thinking": "The user asks.", "signature": "x"},
             {"type": "text", "text": "Paris."}]},
         {"role": "user", "content": "And Italy?"}]}, False),
    ("responses", "POST", "/v1/responses",
     {"input": "What is the capital of France?", "max_output_tokens": 8, "temperature": 0},
     False),
    ("tokenize", "POST", "/tokenize", {"content": "Hello world", "with_pieces": True}, False),
    ("detokenize", "POST", "/detokenize", {"tokens": [19556, 905]}, False),
    ("apply-template", "POST", "/apply-template", {"messages": CHAT}, False),
    ("embedding content parts", "POST", "/embedding",
     {"content": ["Hello", [19556, 905], {"prompt_string": "world"}]}, False),
    ("v1 embeddings", "POST", "/v1/embeddings", {"input": "Hello"}, False),
    ("infill (no FIM tokens)", "POST", "/infill",
     {"input_prefix": "def f():", "input_suffix": "", "n_predict": 4}, False),
    ("stream lookup", "POST", "/v1/streams/lookup", {"conversation_ids": ["c1::org/m"]},
     False),
    ("stream replay of an unknown id", "GET", "/v1/stream?conv_id=c1::org/m&from=0", None,
     False),
    ("unknown route", "GET", "/no/such/route", None, False),
    ("invalid JSON", "POST", "/v1/chat/completions", b"{not json", False),
    ("metrics", "GET", "/metrics", None, False),
]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(cmd: List[str], port: int, log: str, env: Optional[Dict[str, str]] = None
          ) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    for _ in range(1800):
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited ({proc.returncode}):\n"
                             + open(log).read()[-2000:])
        try:
            status, _, _ = call(port, "GET", "/health", None, False)
            if status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"{cmd[0]} did not start")


def call(port: int, method: str, path: str, body: Any, stream: bool
         ) -> Tuple[int, Dict[str, str], Any]:
    """(status, headers, JSON body or list of stream events or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    data = body if isinstance(body, bytes) else (json.dumps(body).encode()
                                                if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    raw = r.read().decode("utf-8", "replace")
    headers = {k.lower(): v for k, v in r.getheaders()}
    conn.close()
    if stream and r.status == 200:
        events = []
        for line in raw.splitlines():
            if line.startswith("data: ") and line[6:].strip() != "[DONE]":
                try:
                    events.append(json.loads(line[6:]))
                except ValueError:
                    events.append(line[6:])
        return r.status, headers, events
    try:
        return r.status, headers, json.loads(raw)
    except ValueError:
        return r.status, headers, raw


def kind(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(v)]


def shape_diff(a: Any, b: Any, where: str, out: List[str]) -> None:
    """Differences of shape between llama-server's ``a`` and pyfile's ``b``."""
    ka, kb = kind(a), kind(b)
    if ka != kb:
        out.append(f"{where or '.'}: llama-server {ka}, pyfile {kb}")
        return
    if ka == "object":
        for k in sorted(set(a) | set(b)):
            if k not in b:
                out.append(f"{where}.{k}: only in llama-server")
            elif k not in a:
                out.append(f"{where}.{k}: only in pyfile")
            else:
                shape_diff(a[k], b[k], f"{where}.{k}", out)
    elif ka == "array" and a and b:
        shape_diff(a[0], b[0], f"{where}[0]", out)
    elif ka == "array" and bool(a) != bool(b):
        out.append(f"{where}: llama-server {len(a)} items, pyfile {len(b)}")


def kind_of(diff: str) -> str:
    """status, missing (a field llama-server sends and we do not), shape (a type or a
    list's emptiness differs) or extra (a field only we send; llama-server clients ignore
    it)."""
    if diff.startswith("status"):
        return "status"
    if diff.endswith("only in pyfile"):
        return "extra"
    if "only in llama-server" in diff:
        return "missing"
    return "shape"


def compare(anchor: int, ours: int) -> List[str]:
    lines: List[str] = []
    total = 0
    kinds: Dict[str, int] = {"status": 0, "missing": 0, "shape": 0, "extra": 0}
    for name, method, path, body, stream in REQUESTS:
        sa, ha, ba = call(anchor, method, path, body, stream)
        sb, hb, bb = call(ours, method, path, body, stream)
        diffs: List[str] = []
        if sa != sb:
            diffs.append(f"status: llama-server {sa}, pyfile {sb}")
        if path == "/metrics":
            if "process-start-time-unix" in ha and "process-start-time-unix" not in hb:
                diffs.append("header Process-Start-Time-Unix: only in llama-server")
            names = lambda t: {ln.split()[0] for ln in str(t).splitlines()  # noqa: E731
                               if ln and not ln.startswith("#")}
            for n in sorted(names(ba) ^ names(bb)):
                diffs.append(f"metric {n}: only in {'llama-server' if n in names(ba) else 'pyfile'}")
        elif stream and isinstance(ba, list) and isinstance(bb, list) and sa == sb == 200:
            if len(ba) != len(bb):
                diffs.append(f"events: llama-server {len(ba)}, pyfile {len(bb)} (informative)")
            for label, i in (("first", 0), ("second", 1), ("last", -1)):
                if len(ba) > abs(i) and len(bb) > abs(i):
                    shape_diff(ba[i], bb[i], f"{label} event", diffs)
        elif sa == sb:
            shape_diff(ba, bb, "", diffs)
        counted = [d for d in diffs if not d.endswith("(informative)")]
        total += len(counted)
        for d in counted:
            kinds[kind_of(d)] += 1
        lines.append(f"{'same' if not diffs else f'{len(counted)} differences'}: {name} "
                     f"({method} {path})")
        lines += [f"    {d}" for d in diffs]
        if sa != sb:
            lines.append(f"    llama-server: {json.dumps(ba)[:300]}")
            lines.append(f"    pyfile:       {json.dumps(bb)[:300]}")
    lines.append(f"{total} differences in {len(REQUESTS)} requests: "
                 + ", ".join(f"{n} {k}" for k, n in kinds.items()))
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--pyfile", help="a pyfile of MODEL (default: build one)")
    ap.add_argument("--llama-server", help="default: scripts/build-llama-server.sh")
    ap.add_argument("--out", help="also write the report here")
    a = ap.parse_args()
    env = venv_env()
    server = a.llama_server or subprocess.run(
        [os.path.join(ROOT, "scripts", "build-llama-server.sh")], check=True,
        capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        pf = a.pyfile
        if not pf:
            pf = os.path.join(tmp, "m.pyfile")
            subprocess.run([os.path.join(os.path.dirname(sys.executable), "pyfile"), "build",
                            a.model, "-o", pf], check=True, env=env)
        pa, pb = free_port(), free_port()
        anchor = start([server, "-m", a.model, "--host", "127.0.0.1", "--port", str(pa),
                        "--no-webui", *FLAGS], pa, os.path.join(tmp, "llama-server.log"))
        try:
            ours = start([pf, "--server", "--nobrowser", "--port", str(pb), *FLAGS], pb,
                         os.path.join(tmp, "pyfile.log"), env=env)
            try:
                lines = compare(pa, pb)
            finally:
                ours.terminate()
                ours.wait(timeout=30)
        finally:
            anchor.terminate()
            anchor.wait(timeout=30)
    head = [f"llama-server {server} vs pyfile {os.path.basename(pf)}, model "
            f"{os.path.basename(a.model)}, flags {' '.join(FLAGS)}"]
    print("\n".join(head + lines))
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(head + lines) + "\n")


if __name__ == "__main__":
    main()
