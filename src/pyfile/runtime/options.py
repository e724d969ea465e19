"""Run-time command-line options. Names follow llama.cpp/llamafile so .args files carry over.

argparse (standard library) rather than click: this module travels inside every pyfile and
must import nothing the target may lack. Later flags win, so command-line arguments placed
after the baked ones override them.
"""

from __future__ import annotations

import argparse
from typing import List, NoReturn, Optional

from .errors import InputError, UsageError

#: llama-server's KV cache types (``-ctk``/``-ctv``), by name.
KV_CACHE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1")

#: llama-server flags a pyfile accepts but cannot honour ("|"-joined spellings -> metavar);
#: each given one prints one warning line saying why (:func:`warnings`).
IGNORED_SERVER_FLAGS = {"--lora": "FILE", "--lora-scaled": "FILE:SCALE",
                        "--slot-save-path": "PATH", "--reasoning-format": "FORMAT",
                        "-to|--timeout": "SECONDS"}
_IGNORED_WHY = {
    "lora": "LoRA adapters are not supported; the model runs without it",
    "lora_scaled": "LoRA adapters are not supported; the model runs without it",
    "slot_save_path": "slots are not saved to disk (/slots/ID?action=save is not served)",
    "reasoning_format": "reasoning is not extracted; thoughts stay in the message content",
    "timeout": "the server has no read/write timeout; a request runs until it ends or its "
               "client hangs up",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit code 2, no usage dump
        raise UsageError(f"{message} (see --help)")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {v}")
    return v


def _gpu_help() -> str:
    """The --gpu choices, from the backend registry: "auto, nvidia (cuda, cublas), ..."."""
    from .backend.choice import BACKENDS, CPU_NAMES
    names = []
    for b in BACKENDS:
        more = [n for n in dict.fromkeys((b.kind, *b.aliases)) if n != b.gpu]
        names.append(f"{b.gpu} ({', '.join(more)})" if more else b.gpu)
    return ", ".join(["auto", *names, f"{CPU_NAMES[0]} ({', '.join(CPU_NAMES[1:])})"])


def _gpu(text: str) -> str:
    from .backend.choice import gpu_choices
    try:
        return gpu_choices()[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(
            f"unknown --gpu {text!r} (choose from {_gpu_help()})") from None


def parser(prog: str = "model.pyfile") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, allow_abbrev=False, add_help=False,
                description="Run the language model inside this file.",
                epilog="With no prompt: chat on a terminal, serve the web chat otherwise.")
    g = p.add_argument_group("modes")
    g.add_argument("-p", "--prompt", help="complete this prompt and exit")
    g.add_argument("-f", "--file", metavar="FILE", help="read the prompt from FILE ('-' = stdin)")
    g.add_argument("--chat", action="store_true", help="interactive chat in the terminal")
    g.add_argument("--cli", action="store_true", help="prompt mode (llamafile compatibility)")
    g.add_argument("--server", action="store_true", help="serve the web chat and OpenAI API")
    g.add_argument("--verify", action="store_true",
                   help="check every member's SHA-256 before running")
    g.add_argument("--version", action="store_true", help="print versions and exit")
    g.add_argument("-h", "--help", action="store_true", help="show this help and exit")

    g = p.add_argument_group("model")
    g.add_argument("-m", "--model", metavar="NAME",
                   help="a model inside this file, or a .gguf / .pyfile on disk")
    g.add_argument("-c", "--ctx-size", type=_positive_int, default=4096, metavar="N",
                   help="context size in tokens (0 = the model's own; default 4096)")
    g.add_argument("-b", "--batch-size", type=_positive_int, default=512, metavar="N")
    g.add_argument("-t", "--threads", type=_positive_int, default=None, metavar="N")
    g.add_argument("-ngl", "--n-gpu-layers", "--gpu-layers", type=int, default=None,
                   metavar="N", help="layers to offload to the GPU (default: all when one is used)")
    g.add_argument("--gpu", type=_gpu, default="auto", metavar="WHICH", help=_gpu_help())
    g.add_argument("--recompile", action="store_true",
                   help="compile the GPU backend from the sources this file carries, for "
                        "this GPU, even if an earlier run did (ROCm with hipcc; NVIDIA with "
                        "your CUDA toolkit's nvcc and cuBLAS instead of the prebuilt variant)")
    g.add_argument("--no-mmap", action="store_true", help="read the weights instead of mapping them")
    g.add_argument("-v", "--verbose", action="store_true", help="show llama.cpp's log")

    g = p.add_argument_group("generation")
    g.add_argument("-n", "--n-predict", type=int, default=-1, metavar="N",
                   help="tokens to generate (-1 = until the model stops)")
    g.add_argument("--temp", type=float, default=0.8, metavar="T")
    g.add_argument("--top-k", type=int, default=40, metavar="K")
    g.add_argument("--top-p", type=float, default=0.95, metavar="P")
    g.add_argument("--min-p", type=float, default=0.05, metavar="P")
    g.add_argument("--repeat-penalty", type=float, default=1.0, metavar="R")
    g.add_argument("--seed", type=int, default=-1, metavar="N", help="-1 = random")
    g.add_argument("--grammar", metavar="GBNF", help="constrain output with a GBNF grammar")
    g.add_argument("--grammar-file", metavar="FILE")
    g.add_argument("-j", "--json-schema", metavar="SCHEMA", help="constrain output to JSON Schema")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop at TEXT (repeatable)")
    g.add_argument("--echo", action="store_true", help="print the prompt before the answer")
    g.add_argument("--system", "-sys", metavar="TEXT", help="system prompt for chat")
    g.add_argument("--no-display-prompt", action="store_true", help=argparse.SUPPRESS)

    g = p.add_argument_group("several machines (llama.cpp RPC)")
    g.add_argument("--rpc-worker", action="store_true",
                   help="serve this machine's backend to a main process (port 50052)")
    g.add_argument("--rpc", metavar="HOST:PORT,...", help="split layers across these workers")
    g.add_argument("-ts", "--tensor-split", metavar="W,W,...",
                   help="how much of the model each device gets (e.g. 1,1)")

    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1")
    g.add_argument("--port", type=_positive_int, default=None, help="8080 (server), 50052 (worker)")
    g.add_argument("--nobrowser", action="store_true")
    g.add_argument("--api-key", default=None, metavar="KEY[,KEY...]",
                   help="require one of these keys on every route but / and /health")
    g.add_argument("--api-key-file", default=None, metavar="FILE",
                   help="more keys, one per line ('#' starts a comment line)")
    g.add_argument("--parallel", "-np", type=_positive_int, default=None, metavar="N",
                   help="slots: requests decoded together in one batch (default 4); more "
                        "wait in line; given, each slot gets -c/N tokens unless --kv-unified")
    g.add_argument("-kvu", "--kv-unified", dest="kv_unified", action="store_true",
                   default=None, help="one KV cache shared by all slots (the default "
                                      "without -np): a request may use all of -c")
    g.add_argument("-no-kvu", "--no-kv-unified", dest="kv_unified", action="store_false",
                   help="each slot gets its own -c/N tokens (the default with -np)")
    g.add_argument("-ub", "--ubatch-size", type=_positive_int, default=512, metavar="N",
                   help="physical batch size; also the longest embedding input")
    g.add_argument("-a", "--alias", default=None, metavar="NAME[,NAME...]",
                   help="the model's name(s) in the API (the first in sorted order is its id)")
    g.add_argument("--tags", default=None, metavar="TAG[,TAG...]",
                   help="informational tags listed by /v1/models")
    g.add_argument("--metrics", action="store_true", help="expose /metrics (Prometheus)")
    g.add_argument("--slots", dest="no_slots", action="store_false", default=False,
                   help="expose /slots (the default)")
    g.add_argument("--no-slots", dest="no_slots", action="store_true", help="hide /slots")
    g.add_argument("--pooling", choices=["none", "mean", "cls", "last", "rank"], default=None,
                   help="embedding pooling (default: the model's own, mean for chat models)")
    g.add_argument("--embeddings", "--embedding", action="store_true",
                   help=argparse.SUPPRESS)  # llama-server's; embeddings are always on here
    g.add_argument("--reranking", "--rerank", action="store_true",
                   help="serve /reranking (same as --pooling rank)")
    g.add_argument("--allowed-hosts", action="append", default=[], metavar="NAME,...",
                   help="also answer requests whose Host is one of these names (besides IP "
                        "addresses, localhost, *.localhost and --host); '*.example.com' "
                        "patterns; '*' turns the Host check off; also PYFILE_ALLOWED_HOSTS")
    g.add_argument("--cors-origins", action="append", default=[], metavar="ORIGIN,...",
                   help="web pages (http://site:port) allowed to call the server from a "
                        "browser, besides loopback pages and the web chat; '*' allows any; "
                        "also PYFILE_CORS_ORIGINS")
    g.add_argument("--cors", action="store_true",
                   help="allow every web page to call the server (= --cors-origins '*')")
    g.add_argument("--no-webui", "--no-ui", dest="webui", action="store_false", default=True,
                   help="do not serve the web chat at /")
    g.add_argument("--webui", "--ui", dest="webui", action="store_true", help=argparse.SUPPRESS)
    g.add_argument("-fa", "--flash-attn", nargs="?", const="on", default="auto",
                   metavar="on|off|auto", help="flash attention (default: auto, where the "
                                               "backend has it)")
    g.add_argument("-ctk", "--cache-type-k", default="f16", metavar="TYPE",
                   choices=KV_CACHE_TYPES, help=f"KV cache type for K: "
                                                f"{', '.join(KV_CACHE_TYPES)} (default f16)")
    g.add_argument("-ctv", "--cache-type-v", default="f16", metavar="TYPE",
                   choices=KV_CACHE_TYPES, help="KV cache type for V (quantized V needs "
                                                "flash attention)")
    g.add_argument("--chat-template", default=None, metavar="NAME|JINJA",
                   help="a built-in template by name (chatml, llama3, ...) or Jinja text, "
                        "instead of the model's own")
    g.add_argument("--chat-template-file", default=None, metavar="FILE",
                   help="a Jinja chat template from FILE, instead of the model's own")
    g.add_argument("--jinja", dest="jinja", action="store_true", default=True,
                   help=argparse.SUPPRESS)  # llama-server's; templates are always Jinja here
    g.add_argument("--no-jinja", dest="jinja", action="store_false", help=argparse.SUPPRESS)
    g.add_argument("--mlock", action="store_true",
                   help="keep the weights in RAM (no swapping out)")
    g.add_argument("--warmup", dest="warmup", action="store_true", default=False,
                   help=argparse.SUPPRESS)
    g.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help=argparse.SUPPRESS)  # the server never warms up: nothing to turn off
    # llama-server flags that have no effect here: accepted, each with one warning line.
    for flag, metavar in IGNORED_SERVER_FLAGS.items():
        g.add_argument(*flag.split("|"), default=None, metavar=metavar,
                       dest="ignored_" + flag.split("|")[-1].lstrip("-").replace("-", "_"),
                       help=argparse.SUPPRESS)
    g.add_argument("--max-body", type=_positive_int, default=8 << 20, metavar="BYTES",
                   help=argparse.SUPPRESS)

    g = p.add_argument_group("images and several models")
    g.add_argument("--image", action="append", default=[], metavar="FILE",
                   help="a picture for the prompt (-p, --chat -p; repeatable); needs a "
                        "model with a projector (pyfile build --mmproj)")
    g.add_argument("-mm", "--mmproj", default=None, metavar="FILE",
                   help="a projector (mmproj GGUF) on disk instead of the file's own")
    g.add_argument("--no-mmproj", action="store_true",
                   help="do not load the model's projector (the model takes no images)")
    g.add_argument("--allow-image-urls", action="store_true",
                   help="let the server fetch http(s) image URLs (10 s, 20 MiB each); "
                        "without it only data: URLs and base64 are taken")
    g.add_argument("--models-max", type=_positive_int, default=4, metavar="N",
                   help="a file with several models: at most N loaded at once (0 = no "
                        "limit); the least recently used idle one is unloaded")
    g.add_argument("--model-args", action="append", default=[], metavar="NAME=ARGS",
                   help="options for one model of the file (-c, -ngl, --chat-template...), "
                        "e.g. in .args: --model-args 'small=-c 2048 -ngl 0' (repeatable)")
    g.add_argument("--sleep-idle-seconds", type=float, default=None, metavar="SECONDS",
                   help="a file with several models: unload a model idle this long (its next "
                        "request loads it again; -1 = never)")
    return p


def parse(argv: List[str], prog: Optional[str] = None) -> argparse.Namespace:
    p = parser(prog or "model.pyfile")
    ns = p.parse_args(argv)
    if ns.n_predict < -1:
        raise UsageError(f"-n/--n-predict must be -1 or more, got {ns.n_predict}")
    if ns.port is None:
        from .rpc.protocol import DEFAULT_PORT
        ns.port = DEFAULT_PORT if ns.rpc_worker else 8080
    if not 0 <= ns.port <= 65535:
        raise UsageError(f"--port must be 0..65535, got {ns.port}")
    if ns.prompt is not None and ns.file is not None:
        raise UsageError("give either -p/--prompt or -f/--file, not both")
    if ns.tensor_split:
        try:
            ns.tensor_split = [float(x) for x in ns.tensor_split.split(",")]
        except ValueError:
            raise UsageError(f"--tensor-split must be numbers separated by commas, "
                             f"got {ns.tensor_split!r}") from None
    if ns.parallel is None:  # llama-server's "auto": 4 slots sharing one KV cache
        ns.parallel = 4
        if ns.kv_unified is None:
            ns.kv_unified = True
    elif ns.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    if ns.kv_unified is None:  # -np N given: each slot gets its own -c/N, as llama-server
        ns.kv_unified = False
    fa = str(ns.flash_attn).lower()
    ns.flash_attn = {"1": "on", "true": "on", "enabled": "on", "0": "off", "false": "off",
                     "disabled": "off"}.get(fa, fa)
    if ns.flash_attn not in ("on", "off", "auto"):
        raise UsageError(f"--flash-attn must be on, off or auto, got {ns.flash_attn!r}")
    ns.aliases = sorted(set(_csv(ns.alias)))  # llama-server keeps them in a sorted set
    ns.alias = ns.aliases[0] if ns.aliases else None
    ns.tags = sorted(set(_csv(ns.tags)))
    ns.api_keys = _csv(ns.api_key) + (_key_file(ns.api_key_file) if ns.api_key_file else [])
    ns.api_key = ns.api_keys[0] if ns.api_keys else None
    if ns.chat_template_file is not None:
        ns.chat_template = _read_text(ns.chat_template_file, "--chat-template-file")
    if ns.reranking:
        ns.pooling = "rank"
    if ns.temp < 0:
        raise UsageError(f"--temp must be >= 0, got {ns.temp}")
    if ns.cors_origins:
        from .server.sites import check_origin_flag, split_list
        for entry in split_list(ns.cors_origins):
            problem = check_origin_flag(entry)
            if problem:
                raise UsageError(problem)
    return ns


def warnings(ns: argparse.Namespace) -> List[str]:
    """One line for each accepted llama-server flag that has no effect here."""
    out = [f"--{name.replace('_', '-')}: {why}; ignored" for name, why in _IGNORED_WHY.items()
           if getattr(ns, "ignored_" + name, None) is not None]
    if not ns.jinja:
        out.append("--no-jinja: chat templates are always rendered with Jinja2 here "
                   "(built-in names work with --chat-template); ignored")
    return out


def _csv(text: Optional[str]) -> List[str]:
    """llama-server's comma-separated lists (--alias, --tags, --api-key): stripped, no empties."""
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def _read_text(path: str, flag: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{flag} {path}: cannot read it "
                         f"({getattr(e, 'strerror', None) or e})") from None


def _key_file(path: str) -> List[str]:
    """llama-server's --api-key-file: one key per line; lines starting with '#' are comments."""
    keys = [line.strip() for line in _read_text(path, "--api-key-file").splitlines()]
    keys = [k for k in keys if k and not k.startswith("#")]
    if not keys:
        raise InputError(f"--api-key-file {path}: holds no key (one per line)")
    return keys
