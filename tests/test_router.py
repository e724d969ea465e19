"""The router's rules (ids, routing, load on first use, --models-max with LRU eviction of
idle models only, --sleep-idle-seconds) on stand-in models; the real models are exercised
end to end in tests/test_multimodel.py."""

import threading

import pytest

from pyfile.runtime.server.errors import APIError
from pyfile.runtime.server.router import (LOADED, SLEEPING, UNLOADED, ModelEntry, Router,
                                          model_id)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def make(n=3, models_max=2, sleep=None, embedding=None):
    loads, unloads = [], []
    entries = [ModelEntry(id=f"m{i}", member=f"m{i}.gguf", embedding=(i == embedding))
               for i in range(n)]
    clock = Clock()

    def load(e):
        loads.append(e.id)
        return f"instance-{e.id}"

    r = Router(entries, load, unloads.append, models_max, sleep, clock)
    return r, loads, unloads, clock


def test_ids_come_from_member_names():
    assert model_id("SmolLM2-135M.Q4_1.gguf") == "SmolLM2-135M.Q4_1"
    assert model_id("notes") == "notes"


def test_a_request_names_its_model_and_unknown_names_are_404_with_several():
    r, *_ = make()
    assert r.resolve("m1").id == "m1"
    assert r.resolve(None).id == "m0"
    with pytest.raises(APIError) as e:
        r.resolve("gpt-4o")
    assert e.value.status == 404 and e.value.code == "model_not_found"
    single, *_ = make(n=1)
    assert single.resolve("gpt-4o").id == "m0"  # one model: any name reaches it


def test_embedding_requests_without_a_model_go_to_the_embedding_model():
    r, *_ = make(embedding=2)
    assert r.resolve(None, embeddings=True).id == "m2"
    assert r.resolve(None).id == "m0"
    assert r.resolve("m1", embeddings=True).id == "m1"  # an explicit name wins


def test_models_load_on_first_use_and_the_least_recently_used_idle_one_goes():
    r, loads, unloads, clock = make(models_max=2)
    m0, m1, m2 = r.entries
    with r.use(m0) as inst:
        assert inst == "instance-m0"
    clock.t = 1
    with r.use(m1):
        pass
    clock.t = 2
    with r.use(m0):  # m0 is now the most recently used
        pass
    assert loads == ["m0", "m1"] and unloads == []
    clock.t = 3
    with r.use(m2):
        pass
    assert unloads == ["instance-m1"] and m1.status == UNLOADED
    assert (m0.status, m2.status) == (LOADED, LOADED)


def test_a_model_with_a_request_in_flight_is_never_unloaded():
    r, loads, unloads, clock = make(models_max=1)
    m0, m1, _ = r.entries
    r.acquire(m0)  # a request in flight on m0
    with pytest.raises(APIError) as e:
        r.acquire(m1)
    assert e.value.status == 503 and "model limit reached" in e.value.message
    assert m0.status == LOADED and unloads == []
    assert r.unload(m0) is False
    r.release(m0)
    with r.use(m1):
        pass
    assert unloads == ["instance-m0"] and m1.loads == 1


def test_models_max_zero_means_no_limit():
    r, loads, unloads, _ = make(n=3, models_max=0)
    for e in r.entries:
        with r.use(e):
            pass
    assert len(loads) == 3 and unloads == []


def test_sleep_idle_unloads_and_the_next_request_wakes_it():
    r, loads, unloads, clock = make(models_max=0, sleep=10)
    m0 = r.entries[0]
    with r.use(m0):
        pass
    clock.t = 5
    assert r.sweep() == []
    clock.t = 11
    assert r.sweep() == ["m0"] and m0.status == SLEEPING
    assert r.describe(m0)["status"]["value"] == "sleeping"
    with r.use(m0):
        pass
    assert loads == ["m0", "m0"] and m0.status == LOADED


def test_a_failed_load_is_reported_and_retried():
    entries = [ModelEntry(id="bad", member="bad.gguf")]
    tries = []

    def load(e):
        tries.append(1)
        if len(tries) == 1:
            raise RuntimeError("no memory")
        return "ok"

    r = Router(entries, load, lambda i: None)
    with pytest.raises(RuntimeError):
        r.acquire(entries[0])
    assert r.describe(entries[0])["status"] == {"value": "failed", "args": [],
                                                "failed": True, "error": "no memory"}
    assert r.acquire(entries[0]) == "ok"


def test_concurrent_first_requests_load_once():
    entries = [ModelEntry(id="m", member="m.gguf")]
    gate = threading.Event()
    loads = []

    def load(e):
        loads.append(1)
        gate.wait(5)
        return "x"

    r = Router(entries, load, lambda i: None)
    got = []
    threads = [threading.Thread(target=lambda: got.append(r.acquire(entries[0])))
               for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(5)
    assert got == ["x"] * 4 and loads == [1] and entries[0].in_flight == 4


def test_entries_of_a_manifest_and_per_model_options():
    from pyfile.runtime.container.manifest import Manifest
    from pyfile.runtime.errors import UsageError
    from pyfile.runtime.server.router import entries_of, model_options
    from pyfile.runtime import options
    man = Manifest(default_model="b.gguf", members=[
        {"name": n, "kind": k} for n, k in (("a.gguf", "model"), ("b.gguf", "model"),
                                             ("p.gguf", "mmproj"))],
        models={"a.gguf": {"pooling_type": 1}, "b.gguf": {"mmproj": "p.gguf"}})
    entries = entries_of(man, alias="chat", model_args=["a=-c 512 --temp 0"])
    assert [(e.id, e.member, e.embedding, e.vision) for e in entries] == [
        ("chat", "b.gguf", False, True), ("a", "a.gguf", True, False)]
    assert entries[1].args == ["-c", "512", "--temp", "0"]
    opts = options.parse(["-c", "4096", "--top-k", "7"])
    mine = model_options(opts, entries[1].args)
    assert (mine.ctx_size, mine.temp, mine.top_k, opts.ctx_size) == (512, 0.0, 7, 4096)
    with pytest.raises(UsageError, match="NAME one of b, a"):
        entries_of(man, model_args=["nope=-c 1"])
