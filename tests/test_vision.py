"""Pictures in, with the real SmolLM2 and the synthetic colour-probe projector (a gemma3
projector that maps pure red, green and blue images onto SmolLM2's embeddings of " red",
" green" and " blue"): through libmtmd in this process, and end to end in a built pyfile."""

import os

import numpy as np
import pytest

import hostile_images as hostile
from conftest import pyfile_cli, run_file
from ggufgen import COLOUR_WORDS, colour_png, write_colour_projector

pytestmark = pytest.mark.slow

QUESTION = "Which colour is named between the tags? Answer with one word."


@pytest.fixture(scope="session")
def probe(tmp_path_factory, real_model):
    """The colour-probe projector for the real model, and the three pictures as files."""
    d = tmp_path_factory.mktemp("probe")
    proj = write_colour_projector(str(d / "mmproj-colours.gguf"), str(real_model))
    for c in COLOUR_WORDS:
        (d / f"{c}.png").write_bytes(colour_png(c))
    from PIL import Image  # the same pictures in the other allowed formats
    for c, fmt in (("red", "JPEG"), ("green", "GIF"), ("blue", "WEBP"), ("red", "BMP")):
        Image.new("RGB", (32, 32), {"red": (255, 0, 0), "green": (0, 255, 0),
                                    "blue": (0, 0, 255)}[c]).save(
            d / f"{c}.{fmt.lower()}", fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    return d, proj


@pytest.fixture(scope="session")
def engine(real_model, probe):
    """SmolLM2 in this process (greedy, its own context) with the projector bound to it."""
    from pyfile.runtime import options
    from pyfile.runtime.backend.engine import ModelSource
    from pyfile.runtime.backend.loader import load
    from pyfile.runtime.backend.vision import load_projector
    opts = options.parse(["-c", "1024", "--seed", "0", "--gpu", "cpu"])
    llm = load(ModelSource(str(real_model), 0, os.path.getsize(real_model), real_model.name),
               opts)
    proj_path = probe[1]
    proj = load_projector(llm.model, ModelSource(proj_path, 0, os.path.getsize(proj_path),
                                                 "mmproj-colours.gguf"))
    return llm, proj


def _picture(colour):
    from pyfile.runtime.server.images import decode
    return decode(colour_png(colour), f"{colour}.png")


def _prompt(llm, text_with_images):
    from pyfile.runtime.server.chat import ChatTemplate
    prompt, _, add_bos = ChatTemplate(llm).render([{"role": "user", "content": text_with_images}])
    return prompt, add_bos


def _answer(llm, proj, colour):
    from pyfile.runtime.backend.vision import MARKER
    prompt, add_bos = _prompt(llm, f"{QUESTION}\n{MARKER}")
    proj.prefill(llm, prompt, [_picture(colour)], add_special=add_bos)
    out = llm.create_completion(llm.input_ids[:llm.n_tokens].tolist(), max_tokens=8,
                                temperature=0)
    return out["choices"][0]["text"]


def _logits(llm):
    n = llm.n_vocab()
    return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n,)).copy()


@pytest.mark.parametrize("colour", COLOUR_WORDS)
def test_smollm2_names_the_colour_it_is_shown(engine, colour):
    llm, proj = engine
    answer = _answer(llm, proj, colour).lower()
    assert colour in answer and not any(c in answer for c in COLOUR_WORDS if c != colour), \
        answer


def test_logits_after_an_image_are_nearest_those_after_its_own_word(engine):
    """The image's embedding is its word's (to the projector's rounding): the next-token
    logits after it are nearer to those after the word, in the same pieces, than to those
    after the other two words."""
    from pyfile.runtime.backend.vision import MARKER
    from ggufgen import _token_ids
    import gguf
    llm, proj = engine
    ids = dict(zip(COLOUR_WORDS, _token_ids(gguf.GGUFReader(llm.model_path), COLOUR_WORDS)))
    prompt, add_bos = _prompt(llm, f"{QUESTION}\n{MARKER}")
    for colour in COLOUR_WORDS:
        pieces = proj.tokenize(prompt, [_picture(colour)], add_bos)
        try:
            plan = pieces.pieces
            llm.pyfile_cells = []
            llm.reset()
            proj._prefill(llm, plan)
            after_image = _logits(llm)
            after_word = {}
            for word, tok in ids.items():
                tokens = [t for p in plan for t in (p.tokens if p.image is None else [tok])]
                llm.reset()
                llm.pyfile_cells = []
                llm.eval(tokens)
                after_word[word] = _logits(llm)
        finally:
            pieces.close()
        dist = {w: float(np.abs(after_image - v).max()) for w, v in after_word.items()}
        assert min(dist, key=dist.get) == colour, dist
    llm.reset()
    llm.pyfile_cells = []


def test_the_same_image_again_is_a_cache_hit_not_a_second_encode(engine):
    from pyfile.runtime.backend.vision import MARKER
    llm, proj = engine
    llm.reset()
    llm.pyfile_cells = []
    first = [{"role": "user", "content": f"{QUESTION}\n{MARKER}"}]
    from pyfile.runtime.server.chat import ChatTemplate
    t = ChatTemplate(llm)
    prompt, _, bos = t.render(first)
    s1 = proj.prefill(llm, prompt, [_picture("green")], bos)
    assert (s1.images, s1.encoded) == (1, 1)
    reply = llm.create_completion(llm.input_ids[:llm.n_tokens].tolist(), max_tokens=6,
                                  temperature=0)["choices"][0]["text"]
    second = first + [{"role": "assistant", "content": reply},
                      {"role": "user", "content": "And now? Answer with one word."}]
    prompt2, _, bos = t.render(second)
    s2 = proj.prefill(llm, prompt2, [_picture("green")], bos)
    assert (s2.images, s2.encoded) == (1, 0)  # the image's cells came from the cache
    assert s2.cached_cells > s1.prompt_cells - 10
    encoded = proj.encoded
    s3 = proj.prefill(llm, prompt2.replace("And now?", "Again?"), [_picture("green")], bos)
    assert s3.encoded == 0 and proj.encoded == encoded


@pytest.fixture(scope="session")
def vision_pyfile(tmp_path_factory, real_model, probe):
    out = tmp_path_factory.mktemp("vision") / "seeing.pyfile"
    r = pyfile_cli("build", str(real_model), "--mmproj", probe[1], "-o", str(out))
    assert r.returncode == 0, r.stderr
    return out


def test_image_flag_in_prompt_mode(vision_pyfile, probe, cache_env):
    """Every allowed format through the file's own runtime (its Pillow, trimmed at build)."""
    d = probe[0]
    for name in ("red.png", "green.png", "blue.png", "red.jpeg", "green.gif", "blue.webp",
                 "red.bmp"):
        r = run_file(vision_pyfile, "--image", str(d / name), "-p", QUESTION,
                     "--temp", "0", "-n", "8", env=cache_env)
        assert r.returncode == 0, r.stderr
        assert name.split(".")[0] in r.stdout.lower(), (name, r.stdout)


def test_bad_images_and_a_model_without_projector_are_one_line_errors(
        vision_pyfile, smol_pyfile, probe, tmp_path, cache_env):
    bad = tmp_path / "cut.png"
    bad.write_bytes(hostile.truncated_png())
    psd = tmp_path / "layers.psd"
    psd.write_bytes(hostile.psd())
    for path, says in ((bad, "damaged PNG image"), (psd, "not an image in an allowed format"),
                       (tmp_path / "missing.png", "cannot read")):
        r = run_file(vision_pyfile, "--image", str(path), "-p", "hi", "-n", "2", env=cache_env)
        assert r.returncode == 1 and says in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) <= 2  # the backend line, then the error
        assert "Traceback" not in r.stderr
    r = run_file(smol_pyfile, "--image", str(probe[0] / "red.png"), "-p", "hi", "-n", "2",
                 env=cache_env)
    assert r.returncode == 1 and "cannot see images" in r.stderr, r.stderr


def test_image_command_in_the_terminal_chat(vision_pyfile, probe, cache_env):
    d = probe[0]
    script = (f"/image {d / 'blue.png'}\n{QUESTION}\n/clear\n/image {d / 'nope.png'}\n"
              f"/image {d / 'red.png'}\n{QUESTION}\n")
    r = run_file(vision_pyfile, "--chat", "--temp", "0", "-n", "8", input=script,
                 env=cache_env)
    assert r.returncode == 0, r.stderr
    answers = [line for line in r.stdout.splitlines() if line.strip(" >")]
    assert "blue" in answers[0].lower() and "red" in answers[1].lower(), r.stdout
    assert "image" in r.stderr and "cannot read" in r.stderr


# -- the server: every image input route of every API ------------------------------------------

@pytest.fixture(scope="module")
def vision_server(vision_pyfile, cache_env):
    from test_server import Server
    srv = Server(vision_pyfile, "-np", "2", "-c", "4096", env=cache_env)
    yield srv
    assert srv.stop() == 0


def _b64(colour):
    import base64
    return base64.b64encode(colour_png(colour)).decode()


def test_openai_image_url_parts_data_url_and_raw_base64(vision_server):
    import openai
    client = openai.OpenAI(base_url=vision_server.url + "v1", api_key="none")
    for colour, url in (("red", f"data:image/png;base64,{_b64('red')}"),
                        ("green", _b64("green"))):
        r = client.chat.completions.create(model="x", temperature=0, max_tokens=8, messages=[
            {"role": "user", "content": [{"type": "text", "text": QUESTION},
                                         {"type": "image_url", "image_url": {"url": url}}]}])
        assert colour in r.choices[0].message.content.lower(), r


def test_responses_input_image(vision_server):
    import openai
    client = openai.OpenAI(base_url=vision_server.url + "v1", api_key="none")
    r = client.responses.create(model="x", temperature=0, max_output_tokens=8, input=[
        {"role": "user", "content": [
            {"type": "input_text", "text": QUESTION},
            {"type": "input_image", "image_url": f"data:image/png;base64,{_b64('blue')}"}]}])
    assert "blue" in r.output_text.lower(), r


def test_anthropic_image_block(vision_server):
    import anthropic
    client = anthropic.Anthropic(base_url=vision_server.url.rstrip("/"), api_key="none")
    r = client.messages.create(model="x", max_tokens=8, extra_body={"temperature": 0}, messages=[
        {"role": "user", "content": [
            {"type": "text", "text": QUESTION},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": _b64("green")}}]}])
    assert "green" in r.content[0].text.lower(), r


def test_native_completion_multimodal_data_and_the_cache(vision_server):
    """llama-server's /completion with multimodal_data; the same image again is read from
    the slot's cache (timings.cache_n covers the image), not encoded twice."""
    status, props = vision_server.request("/props")
    assert status == 200 and props["modalities"]["vision"] is True
    status, rendered = vision_server.request("/apply-template", {"messages": [
        {"role": "user", "content": QUESTION + "\n<__media__>"}]})
    prompt = rendered["prompt"]
    body = {"prompt": {"prompt_string": prompt, "multimodal_data": [_b64("red")]},
            "n_predict": 8, "temperature": 0, "cache_prompt": True}
    status, first = vision_server.request("/completion", body)
    assert status == 200 and "red" in first["content"].lower(), first
    status, again = vision_server.request("/completion", body)
    assert status == 200 and again["content"] == first["content"]
    # Everything but the last token (decoded again for its logits) came from the cache.
    assert again["timings"]["prompt_n"] == 1, again["timings"]
    assert again["timings"]["cache_n"] > first["timings"]["cache_n"]


@pytest.mark.parametrize("name, data", [
    ("truncated", hostile.truncated_png()), ("huge", hostile.huge_header_png()),
    ("psd", hostile.psd()), ("pic", hostile.pic()), ("text", hostile.text())])
def test_hostile_images_are_400s_in_each_apis_shape_and_the_server_stays_up(
        vision_server, name, data):
    import base64
    b64 = base64.b64encode(data).decode()
    status, body = vision_server.request("/v1/chat/completions", {"max_tokens": 2, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": f"data:image/png;base64,{b64}"}}, {"type": "text", "text": "hi"}]}]})
    assert status == 400 and body["error"]["code"] == "invalid_image", body
    status, body = vision_server.request("/v1/messages", {"max_tokens": 2, "messages": [
        {"role": "user", "content": [{"type": "image", "source": {
            "type": "base64", "media_type": "image/png", "data": b64}}]}]})
    assert status == 400 and body["type"] == "error", body
    assert body["error"]["type"] == "invalid_request_error"
    status, body = vision_server.request("/completion", {"n_predict": 2, "prompt": {
        "prompt_string": "<__media__> hi", "multimodal_data": [b64]}})
    assert status == 400 and "error" in body
    status, body = vision_server.request("/health")
    assert status == 200


def test_remote_urls_are_refused_without_the_flag(vision_server):
    status, body = vision_server.request("/v1/chat/completions", {"max_tokens": 2, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {
            "url": "http://127.0.0.1:9/cat.png"}}]}]})
    assert status == 400 and "--allow-image-urls" in body["error"]["message"]


def test_an_image_to_a_model_without_a_projector_is_a_400(smol_pyfile, cache_env):
    from test_server import Server
    srv = Server(smol_pyfile, "-np", "1", env=cache_env)
    try:
        status, props = srv.request("/props")
        assert props["modalities"]["vision"] is False
        status, body = srv.request("/v1/chat/completions", {"max_tokens": 2, "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {
                "url": f"data:image/png;base64,{_b64('red')}"}}]}]})
        assert status == 400 and body["error"]["code"] == "image_input_not_supported", body
        status, body = srv.request("/v1/messages", {"max_tokens": 2, "messages": [
            {"role": "user", "content": [{"type": "image", "source": {
                "type": "base64", "media_type": "image/png", "data": _b64("red")}}]}]})
        assert status == 400 and body["type"] == "error"
    finally:
        assert srv.stop() == 0


def test_web_chat_attach_button_in_headless_chromium(vision_server, probe):
    pw = pytest.importorskip("playwright.sync_api")
    chromium = "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.fail("chromium is not installed: run `make tools`")
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        page = browser.new_page()
        page.goto(vision_server.url)
        page.wait_for_selector("#attach:not([hidden])", timeout=20000)
        page.click("#settings-btn")
        page.fill("#temp", "0")
        page.press("#temp", "Tab")
        page.set_input_files("#file", str(probe[0] / "blue.png"))
        page.wait_for_function("document.getElementById('attach').textContent === 'Image (1)'")
        page.fill("#input", QUESTION)
        page.keyboard.press("Enter")
        page.wait_for_selector(".msg.assistant .bubble:not(.cursor)", timeout=60000)
        answer = page.inner_text(".msg.assistant .bubble")
        shown = page.inner_text(".msg.user .bubble")
        browser.close()
    assert "blue" in answer.lower() and shown.endswith("[1 image]")
