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


# -- llama-server's server flags (issue 22) ------------------------------------------------------

def test_slots_share_the_context_only_without_np_as_llama_server():
    assert options.parse([]).kv_unified is True and options.parse([]).parallel == 4
    ns = options.parse(["-np", "2", "-c", "512"])
    assert (ns.parallel, ns.kv_unified) == (2, False)  # each slot: 256 tokens
    assert options.parse(["-np", "2", "--kv-unified"]).kv_unified is True
    assert options.parse(["-np", "2", "-kvu"]).kv_unified is True
    assert options.parse(["--no-kv-unified"]).kv_unified is False


def test_llama_server_flags_are_accepted_and_applied():
    ns = options.parse(["--chat-template", "chatml", "--jinja", "--no-webui", "-fa", "off",
                        "-ctk", "q8_0", "--cache-type-v", "q4_0", "--mlock", "--no-warmup",
                        "-a", "b,a", "--tags", "x, y", "--host", "0.0.0.0", "--host", "::1"])
    assert (ns.chat_template, ns.jinja, ns.webui, ns.flash_attn, ns.cache_type_k,
            ns.cache_type_v, ns.mlock, ns.warmup) == ("chatml", True, False, "off", "q8_0",
                                                      "q4_0", True, False)
    assert (ns.alias, ns.aliases, ns.tags) == ("a", ["a", "b"], ["x", "y"])
    assert ns.host == "::1"  # given twice: the last one wins, as llama-server
    assert options.warnings(ns) == []
    assert options.parse(["--flash-attn"]).flash_attn == "on"  # bare, as older llama.cpp
    assert options.parse([]).flash_attn == "auto"


@pytest.mark.parametrize("argv", [["-fa", "maybe"], ["-ctk", "q3_k"], ["--cache-type-v", "x"]])
def test_bad_llama_server_flag_values_are_usage_errors(argv):
    with pytest.raises(UsageError):
        options.parse(argv)


def test_flags_without_effect_warn_in_one_line_each():
    ns = options.parse(["--lora", "a.gguf", "--slot-save-path", "/tmp", "--reasoning-format",
                        "deepseek", "-to", "30", "--sleep-idle-seconds", "60", "--no-jinja"])
    lines = options.warnings(ns)
    assert len(lines) == 5 and all("\n" not in x and x.endswith("ignored") for x in lines)
    assert [x.split(":")[0] for x in lines] == ["--lora", "--slot-save-path",
                                                 "--reasoning-format", "--timeout",
                                                 "--no-jinja"]
    assert ns.sleep_idle_seconds == 60  # a real flag: the router unloads idle models


def test_api_keys_from_the_flag_and_a_file(tmp_path):
    f = tmp_path / "keys"
    f.write_text("# team keys\nk2\n\nk3\n")
    ns = options.parse(["--api-key", "k1,k1b", "--api-key-file", str(f)])
    assert (ns.api_key, ns.api_keys) == ("k1", ["k1", "k1b", "k2", "k3"])
    assert options.parse(["--api-key-file", str(f)]).api_key == "k2"
    from pyfile.runtime.errors import InputError
    with pytest.raises(InputError, match="no-such"):
        options.parse(["--api-key-file", str(tmp_path / "no-such")])
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(InputError, match="holds no key"):
        options.parse(["--api-key-file", str(tmp_path / "empty")])


def test_chat_template_file_is_read(tmp_path):
    f = tmp_path / "t.jinja"
    f.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
    assert options.parse(["--chat-template-file", str(f)]).chat_template == f.read_text()
    from pyfile.runtime.errors import InputError
    with pytest.raises(InputError):
        options.parse(["--chat-template-file", str(tmp_path / "missing.jinja")])
