"""Image inputs are decoded by Pillow before the engine sees them: allowed formats only,
a pixel cap read from the header, one-line errors; URLs only when allowed."""

import base64

import pytest

import hostile_images as hostile
from pyfile.runtime.server import images
from pyfile.runtime.server.images import ImageError


def test_a_png_becomes_packed_rgb_with_a_content_id():
    pic = images.decode(hostile.png((3, 2), (10, 20, 30)), "x.png")
    assert (pic.width, pic.height, pic.format) == (3, 2, "PNG")
    assert pic.rgb == bytes([10, 20, 30]) * 6
    again = images.decode(hostile.png((3, 2), (10, 20, 30)))
    other = images.decode(hostile.png((3, 2), (10, 20, 31)))
    assert pic.id == again.id != other.id


@pytest.mark.parametrize("make, says", [
    (hostile.truncated_png, "damaged PNG image"),
    (hostile.huge_header_png, "30000x30000 pixels; images are limited to"),
    (hostile.psd, "not an image in an allowed format"),
    (hostile.pic, "not an image in an allowed format"),
    (hostile.text, "not an image in an allowed format"),
])
def test_hostile_images_are_one_line_errors(make, says):
    with pytest.raises(ImageError) as e:
        images.decode(make(), "upload")
    assert says in str(e.value) and str(e.value).startswith("upload: ")
    assert "\n" not in str(e.value)


def test_the_pixel_cap_is_read_from_the_header_before_decoding():
    """A 30000x30000 header in a file of a few dozen bytes is refused at once."""
    import time
    t = time.perf_counter()
    with pytest.raises(ImageError):
        images.decode(hostile.huge_header_png())
    assert time.perf_counter() - t < 0.5


def test_urls_data_base64_and_remote():
    raw = hostile.png()
    b64 = base64.b64encode(raw).decode()
    assert images.from_url(f"data:image/png;base64,{b64}").width == 8
    assert images.from_url(b64).width == 8  # raw base64, as llama-server takes it
    assert images.from_base64(b64).height == 8
    with pytest.raises(ImageError, match="remote image URLs are not fetched"):
        images.from_url("https://example.com/cat.png")
    with pytest.raises(ImageError, match="unsupported URL scheme"):
        images.from_url("file:///etc/passwd")
    with pytest.raises(ImageError, match="not valid base64"):
        images.from_url("data:image/png;base64,@@@@")
    with pytest.raises(ImageError, match="data:image/...;base64"):
        images.from_url("data:text/plain,hello")


def test_a_remote_url_is_fetched_only_when_allowed_and_within_limits(tmp_path):
    import http.server
    import threading

    raw = hostile.png()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = raw if self.path == "/ok.png" else b"x" * (images.MAX_IMAGE_BYTES + 10)
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        assert images.from_url(f"{base}/ok.png", allow_remote=True).width == 8
        with pytest.raises(ImageError, match="limited to 20 MiB|over 20 MiB"):
            images.from_url(f"{base}/big.png", allow_remote=True)
    finally:
        srv.shutdown()


def test_a_file_that_is_missing_is_one_line(tmp_path):
    with pytest.raises(ImageError, match="cannot read"):
        images.from_file(str(tmp_path / "nope.png"))


def test_every_allowed_format_decodes():
    """Each format of the allow-list, written by Pillow and read back (a plugin missing from
    the runtime would make its format unreadable)."""
    import io
    from PIL import Image
    for fmt in images.ALLOWED_FORMATS:
        out = io.BytesIO()
        Image.new("RGB", (4, 3), (0, 0, 255)).save(out, fmt)
        pic = images.decode(out.getvalue(), fmt)
        assert (pic.width, pic.height, pic.format) == (4, 3, fmt)
