import pytest

from pyfile.runtime import options
from pyfile.runtime.errors import UsageError
from pyfile.runtime.main import choose_mode


@pytest.mark.parametrize("value, expected", [
    ("auto", "auto"), ("nvidia", "nvidia"), ("cuda", "nvidia"), ("cublas", "nvidia"),
    ("amd", "amd"), ("rocm", "amd"), ("hip", "amd"), ("cpu", "cpu"), ("disable", "cpu"),
    ("DISABLED", "cpu"),
])
def test_gpu_aliases(value, expected):
    assert options.parse(["--gpu", value]).gpu == expected


def test_later_flags_win():
    ns = options.parse(["-n", "5", "--temp", "0.1", "-n", "9", "--stop", "a", "--stop", "b"])
    assert ns.n_predict == 9 and ns.temp == 0.1 and ns.stop == ["a", "b"]


def test_llama_cpp_spellings():
    ns = options.parse(["-ngl", "20", "-c", "2048", "-t", "3", "-m", "x.gguf", "-sys", "hi"])
    assert (ns.n_gpu_layers, ns.ctx_size, ns.threads, ns.model, ns.system) == (
        20, 2048, 3, "x.gguf", "hi")


@pytest.mark.parametrize("argv", [["--nope"], ["-n", "-5"], ["--port", "70000"],
                                  ["--temp", "-1"], ["--gpu", "tpu"], ["-p", "x", "-f", "y"],
                                  ["-ng", "3"]])
def test_usage_errors(argv):
    with pytest.raises(UsageError):
        options.parse(argv)


def test_mode_choice(monkeypatch):
    assert choose_mode(options.parse(["--server", "-p", "x"])) == "server"
    assert choose_mode(options.parse(["--chat"])) == "chat"
    assert choose_mode(options.parse(["-p", "x"])) == "prompt"
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert choose_mode(options.parse([])) == "server"  # double-clicked: no terminal
