import random
import string

import pytest

from pyfile.runtime.container import argsfile
from pyfile.runtime.container.argsfile import PLACEHOLDER, merge, parse, render
from pyfile.runtime.errors import ArgsSyntaxError


def test_whitespace_comments_and_placeholder():
    text = "-m  model.gguf\n# a comment -n 5\n--temp 0.1 ... --seed 3 # trailing\n"
    assert parse(text, env={}) == ["-m", "model.gguf", "--temp", "0.1", PLACEHOLDER,
                                   "--seed", "3"]


def test_quotes_and_escapes():
    words = parse(r"""'it''s' "a\tb\n" "q\"x" 'lit\n' a\ b "\x41\x4a" "" ''""", env={})
    assert words == ["its", "a\tb\n", 'q"x', "lit\\n", "a b", "AJ", "", ""]


def test_hash_inside_word_is_not_a_comment():
    assert parse("a#b '#c' d", env={}) == ["a#b", "#c", "d"]


def test_variables_expand_without_splitting():
    env = {"HOME": "/home/x y", "N": "7"}
    assert parse('--dir $HOME/m "${N}0" \'$N\' $MISSING. $ 5', env=env) == [
        "--dir", "/home/x y/m", "70", "$N", ".", "$", "5"]


def test_quoted_ellipsis_is_literal():
    assert parse("'...' ...", env={}) == ["...", PLACEHOLDER]


@pytest.mark.parametrize("bad", ["'open", '"open', "trail\\", "${}", "${A", '"\\xZZ"'])
def test_syntax_errors(bad):
    with pytest.raises(ArgsSyntaxError):
        parse(bad, env={})


def test_too_large():
    with pytest.raises(ArgsSyntaxError):
        parse("a " * (argsfile.MAX_ARGS_BYTES // 2 + 1), env={})


def test_merge_with_and_without_placeholder():
    assert merge(["-a", PLACEHOLDER, "-z"], ["1", "2"]) == ["-a", "1", "2", "-z"]
    assert merge(["-a", "-b"], ["1"]) == ["-a", "-b", "1"]
    assert merge([PLACEHOLDER, PLACEHOLDER], ["x"]) == ["x"]
    assert merge([], []) == []


def test_render_round_trips_arbitrary_words():
    rng = random.Random(1)
    alphabet = string.printable + "é€"
    for _ in range(300):
        words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
                 for _ in range(rng.randint(0, 6))]
        if rng.random() < 0.3:
            words.insert(rng.randint(0, len(words)), PLACEHOLDER)
        assert parse(render(words), env={"HOME": "nope"}) == words
