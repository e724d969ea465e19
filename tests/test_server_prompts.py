"""llama-server's prompt forms (server/prompts.py): one prompt or several, text, token ids,
mixes and JSON-object prompts, with a stand-in tokenizer (one id per character)."""

import pytest

from pyfile.runtime.server.errors import APIError
from pyfile.runtime.server.prompts import split, tokens

BOS = 1


def tok(text, add_special):
    return ([BOS] if add_special else []) + [ord(c) for c in text]


@pytest.mark.parametrize("prompt, n", [
    ("text", 1), ([5, 6, 7], 1), ([5, "text", 7], 1), ({"prompt_string": "x"}, 1),
    (["a", "b"], 2), (["a", [5, 6], {"prompt_string": "c"}], 3), ([[5, "a"], [6]], 2),
])
def test_one_prompt_or_several_as_llama_server(prompt, n):
    assert len(split(prompt)) == n


def test_tokens_of_every_form():
    assert tokens("ab", tok, 200) == [BOS, 97, 98]
    assert tokens([5, 6], tok, 200) == [5, 6]
    assert tokens(["ab", 5], tok, 200) == [BOS, 97, 98, 5]      # BOS: text comes first
    assert tokens([5, "ab"], tok, 200) == [5, 97, 98]           # no BOS after an id
    assert tokens({"prompt_string": "ab"}, tok, 200) == [BOS, 97, 98]
    assert tokens("ab", tok, 200, add_special=False) == [97, 98]


@pytest.mark.parametrize("prompt", [[5, 999], [True], [5, 1.5], {"nope": 1},
                                    {"prompt_string": "x", "multimodal_data": ["AAAA"]}, 3])
def test_bad_prompts_are_400s_naming_the_field(prompt):
    with pytest.raises(APIError) as e:
        tokens(prompt, tok, 200, param="content")
    assert e.value.status == 400 and e.value.param == "content"


def test_an_empty_list_of_prompts_is_a_400():
    with pytest.raises(APIError) as e:
        split([])
    assert e.value.status == 400
