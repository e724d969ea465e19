"""The batching scheduler against a fake engine (tests/fakeengine.py): no model, milliseconds.

The fake checks what llama.cpp would: every token at the next position of its sequence, and
no batch beyond the context. These tests pin the scheduler's contract: events per token and
one end, stop strings, length limits, batching of several slots, prompt-prefix reuse,
cancellation, a full context, and the supervision of the scheduler thread itself.
"""

import queue
import threading

import pytest

from fakeengine import BAD_GRAMMAR, EOS, FakeL, N_VOCAB, tokens_of
from pyfile.runtime.server import scheduler
from pyfile.runtime.server.sampling import SamplerChain, SamplingParams
from pyfile.runtime.server.scheduler import Engine, Request


class Boom(BaseException):
    """What kills the scheduler thread (not an Exception: a step's own guard lets it pass)."""


def make(n_slots=2, n_ctx=256, n_batch=64):
    L = FakeL(n_ctx=n_ctx, n_batch=n_batch)
    e = Engine(L, "model", "ctx", n_slots, n_batch)
    e.start()
    return L, e


def submit(e, prompt, **params):
    q = queue.Queue()
    params.setdefault("temperature", 0)
    req = Request(prompt, SamplingParams(**params), q.put)
    e.submit(req)
    return req, q


def drain(q, timeout=10):
    """(token events, the final event) of one request."""
    tokens = []
    while True:
        ev = q.get(timeout=timeout)
        if ev["type"] == "token":
            tokens.append(ev)
            continue
        return tokens, ev


@pytest.fixture
def engine():
    L, e = make()
    yield L, e
    e.stop()


def test_one_request_runs_to_the_end_of_generation(engine):
    L, e = engine
    _, q = submit(e, tokens_of("ab"))
    toks, done = drain(q)
    assert done["type"] == "done" and done["finish_reason"] == "stop"
    assert "".join(t["text"] for t in toks) + done["text"] == "cdefghijklmnopqrstuvwxyz ."
    assert [t["token"] for t in toks][-1] == N_VOCAB - 1      # "." then the end token
    assert done["n_prompt"] == 2 and done["n_decoded"] == len(toks) + 1
    assert done["timings"]["predicted_n"] == done["n_decoded"]


def test_max_tokens_ends_with_length(engine):
    _, e = engine
    _, q = submit(e, tokens_of("a"), max_tokens=3)
    toks, done = drain(q)
    assert done["finish_reason"] == "length"
    assert "".join(t["text"] for t in toks) + done["text"] == "bcd"


def test_stop_string_cuts_the_text_and_is_not_sent(engine):
    _, e = engine
    _, q = submit(e, tokens_of("a"), stop=["ef"])
    toks, done = drain(q)
    assert done["finish_reason"] == "stop" and done["stop_word"] == "ef"
    assert "".join(t["text"] for t in toks) + done["text"] == "bcd"
    # "e" was held back (it could have been the start of "ef") and never sent.
    assert all("e" not in t["text"] for t in toks)


def test_slots_share_one_batch_and_positions_stay_contiguous(engine):
    L, e = engine
    runs = [submit(e, tokens_of(p), max_tokens=8) for p in ("ab", "kl", "uv")]
    outs = [drain(q) for _, q in runs]
    assert ["".join(t["text"] for t in toks) + d["text"] for toks, d in outs] == \
        ["cdefghij", "mnopqrst", "wxyz ."]
    # two slots: the third request waited; at least one decode carried two sequences
    assert max(L.batch_sizes) >= 2
    assert L.decodes < sum(d["n_decoded"] for _, d in outs) + 3


def test_a_repeated_prompt_reuses_the_cached_prefix(engine):
    _, e = engine
    prompt = tokens_of("hello world")
    _, q = submit(e, prompt, max_tokens=2)
    drain(q)
    _, q = submit(e, prompt, max_tokens=2)
    _, done = drain(q)
    assert done["n_cached"] == len(prompt) - 1      # all but the last token, as llama-server


def test_cancel_stops_a_request_and_frees_its_chain(engine):
    L, e = engine
    req, q = submit(e, tokens_of("a"), max_tokens=-1, ignore_eos=True)
    q.get(timeout=10)
    e.cancel(req)
    for _ in range(100):  # the scheduler notices at its next step
        if not any(s.busy for s in e.slots):
            break
        threading.Event().wait(0.01)
    assert not any(s.busy for s in e.slots)
    assert all(c.freed for c in L.chains)


def test_full_context_fails_the_largest_request_and_the_others_finish():
    L, e = make(n_slots=2, n_ctx=40, n_batch=64)
    try:
        _, q1 = submit(e, tokens_of("abcdefghij"), max_tokens=-1, ignore_eos=True)
        _, q2 = submit(e, tokens_of("a"), max_tokens=-1, ignore_eos=True)
        _, d1 = drain(q1)
        _, d2 = drain(q2)
        assert d1["type"] == "error" and d1["status"] == 400
        assert d1["code"] == "context_length_exceeded"
        assert d2["type"] == "done" and d2["finish_reason"] == "length"
    finally:
        e.stop()


def test_top_logprobs_name_the_chosen_token_first(engine):
    _, e = engine
    _, q = submit(e, tokens_of("a"), max_tokens=2, n_probs=2)
    toks, _ = drain(q)
    lp = toks[0]["logprobs"]
    assert [t for t, _ in lp["top"]] == tokens_of("bc")
    assert lp["logprob"] == lp["top"][0][1] and lp["logprob"] < 0


def test_logit_bias_bans_a_token(engine):
    _, e = engine
    _, q = submit(e, tokens_of("a"), max_tokens=1, logit_bias={tokens_of("b")[0]: -100.0})
    toks, _ = drain(q)
    assert toks[0]["token"] == tokens_of("c")[0]


def test_a_bad_grammar_is_an_error_event(engine):
    _, e = engine
    _, q = submit(e, tokens_of("a"), grammar=BAD_GRAMMAR)
    _, done = drain(q)
    assert done["type"] == "error" and done["status"] == 400


def test_a_chain_compiled_beforehand_is_used_and_freed(engine):
    L, e = engine
    p = SamplingParams(temperature=0, max_tokens=2)
    chain = SamplerChain(L, "vocab", N_VOCAB, p, [EOS])
    q = queue.Queue()
    e.submit(Request(tokens_of("a"), p, q.put, chain))
    _, done = drain(q)
    assert done["type"] == "done"
    assert len(L.chains) == 1 and L.chains[0].freed   # no second chain; freed at the end


def test_a_fault_inside_a_step_fails_that_step_and_the_loop_goes_on(engine):
    L, e = engine
    L.fault = RuntimeError("decode exploded")
    _, q = submit(e, tokens_of("a"), max_tokens=3)
    _, done = drain(q)
    assert done["type"] == "error" and done["status"] == 500
    assert "decode exploded" in done["message"]
    _, q = submit(e, tokens_of("a"), max_tokens=3)
    assert drain(q)[1]["type"] == "done"
    assert e.restarts == 0 and e.failed is None


def test_a_dead_scheduler_thread_fails_requests_with_503_and_restarts(engine, capfd):
    L, e = engine
    L.fault = Boom("killed on purpose")
    waiting = [submit(e, tokens_of("a"), max_tokens=50) for _ in range(3)]  # 2 slots + 1 queued
    ends = [drain(q)[1] for _, q in waiting]
    assert [d["status"] for d in ends] == [503, 503, 503]
    assert all(d["code"] == "scheduler_failed" and "killed on purpose" in d["message"]
               for d in ends)
    _, q = submit(e, tokens_of("a"), max_tokens=3)     # the restarted scheduler serves
    assert drain(q)[1]["finish_reason"] == "length"
    assert e.restarts == 1 and e.failed is None
    err = capfd.readouterr().err
    assert err.count("the generation scheduler failed (Boom: killed on purpose); "
                     "restarting it") == 1


def test_the_scheduler_gives_up_after_repeated_failures(engine, monkeypatch):
    L, e = engine
    gave_up = []
    e.on_failure = gave_up.append
    for i in range(scheduler.MAX_RESTARTS + 1):
        L.fault = Boom(f"failure {i}")
        _, q = submit(e, tokens_of("a"), max_tokens=5)
        assert drain(q)[1]["status"] == 503
    assert gave_up == [f"Boom: failure {scheduler.MAX_RESTARTS}"]
    assert e.failed == gave_up[0] and e.restarts == scheduler.MAX_RESTARTS
    _, q = submit(e, tokens_of("a"), max_tokens=5)     # nothing runs any more: 503 at once
    _, done = drain(q, timeout=1)
    assert done["status"] == 503 and done["code"] == "scheduler_failed"
