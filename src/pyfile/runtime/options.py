"""Run-time command-line options. Names follow llama.cpp/llamafile so .args files carry over.

argparse (standard library) rather than click: this module travels inside every pyfile and
must import nothing the target may lack. Later flags win, so command-line arguments placed
after the baked ones override them.
"""

from __future__ import annotations

import argparse
from typing import List, NoReturn, Optional

from .errors import UsageError

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
    g.add_argument("--api-key", default=None)
    g.add_argument("--parallel", "-np", type=_positive_int, default=4, metavar="N",
                   help="slots: requests decoded together in one batch (default 4); more "
                        "wait in line; -c is shared by all slots")
    g.add_argument("-ub", "--ubatch-size", type=_positive_int, default=512, metavar="N",
                   help="physical batch size; also the longest embedding input")
    g.add_argument("-a", "--alias", default=None, metavar="NAME", help="the model's name in the API")
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
    g.add_argument("--cors", action="store_true", help="allow cross-origin browser requests")
    g.add_argument("--max-body", type=_positive_int, default=8 << 20, metavar="BYTES",
                   help=argparse.SUPPRESS)
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
    if ns.parallel < 1:
        raise UsageError("--parallel must be at least 1")
    if ns.reranking:
        ns.pooling = "rank"
    if ns.temp < 0:
        raise UsageError(f"--temp must be >= 0, got {ns.temp}")
    return ns
