"""Image inputs: untrusted bytes in, a checked RGB bitmap out, before the engine sees them.

llama.cpp's own decoder (stb_image, every format it knows: PSD, PIC, HDR... with open crash
reports) never sees what a user or a client sends: Pillow decodes it here, only in the
formats of :data:`ALLOWED_FORMATS`, after the header's size has been checked against
:data:`MAX_PIXELS` (so a 30000x30000 header costs nothing), and the engine gets packed RGB
pixels. Every failure is an :class:`ImageError` with one line naming the input; the server
turns it into a 400 in its API's own shape.

Where images come from: a file (terminal modes), base64 or a ``data:`` URL (every API),
and an ``http(s)`` URL only when the user allowed it (``--allow-image-urls``), read with
:data:`FETCH_TIMEOUT` and :data:`MAX_IMAGE_BYTES` limits.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from dataclasses import dataclass

from ..errors import InputError

#: Formats Pillow may decode (its names). Everything else, PSD and PIC included, is refused.
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
#: Largest image accepted, in pixels (width x height, read from the header before decoding):
#: 8192 x 4096, twice what the largest vision encoders take in one tile.
MAX_PIXELS = 8192 * 4096
#: Largest encoded image accepted, in bytes (files, base64 payloads, downloads).
MAX_IMAGE_BYTES = 20 << 20
#: How long a remote image may take to arrive (seconds), when URLs are allowed at all.
FETCH_TIMEOUT = 10.0
_DATA_URL = re.compile(r"data:(image/[A-Za-z0-9.+-]+)?(;[^,]*)?;base64,", re.I)


class ImageError(InputError):
    """An image input that cannot be used: unreadable, too big, a format not allowed, or
    a URL that may not be fetched."""


@dataclass(frozen=True)
class Picture:
    """A decoded image: ``width * height * 3`` bytes of packed RGB and a content id (the
    SHA-256 of the pixels and size: the same picture is the same prompt-cache entry)."""

    rgb: bytes
    width: int
    height: int
    id: str
    format: str


def decode(data: bytes, origin: str = "image") -> Picture:
    """Decode ``data`` with Pillow within the limits above; raise :class:`ImageError`."""
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"{origin}: {len(data)} bytes; images are limited to "
                         f"{MAX_IMAGE_BYTES >> 20} MiB")
    try:
        from PIL import Image
    except ImportError:
        raise ImageError("image inputs need Pillow, which this runtime lacks: install it "
                         "with 'pip install pillow' (or run a pyfile built with its runtime "
                         "inside)") from None
    Image.MAX_IMAGE_PIXELS = None  # the check below replaces Pillow's (it names the size)
    try:
        im = Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except Image.UnidentifiedImageError:
        raise ImageError(f"{origin}: not an image in an allowed format "
                         f"({', '.join(ALLOWED_FORMATS)})") from None
    except Exception as e:  # DecompressionBombError, SyntaxError, OSError...
        raise ImageError(f"{origin}: unreadable image ({_why(e)})") from None
    with im:
        width, height = im.size
        if width < 1 or height < 1 or width * height > MAX_PIXELS:
            raise ImageError(f"{origin}: {width}x{height} pixels; images are limited to "
                             f"{MAX_PIXELS} pixels")
        fmt = im.format or "?"
        try:
            im.load()
            rgb = im.convert("RGB")
            pixels = rgb.tobytes()
        except Exception as e:  # truncated data, bad chunks, decoder errors
            raise ImageError(f"{origin}: damaged {fmt} image ({_why(e)})") from None
    digest = hashlib.sha256(b"%dx%d:" % (width, height) + pixels).hexdigest()
    return Picture(pixels, width, height, digest, fmt)


def _why(e: Exception) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text[:200]


def from_file(path: str) -> Picture:
    """An image file named on the command line (``--image``, ``/image``)."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_IMAGE_BYTES + 1)
    except OSError as e:
        raise ImageError(f"{path}: cannot read: {e.strerror or e}") from None
    return decode(data, path)


def from_base64(text: str, origin: str = "image") -> Picture:
    """Raw base64 (Anthropic's ``source.data``, llama-server's ``multimodal_data``)."""
    if not isinstance(text, str) or not text:
        raise ImageError(f"{origin}: expected base64 image data")
    if len(text) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        raise ImageError(f"{origin}: images are limited to {MAX_IMAGE_BYTES >> 20} MiB")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{origin}: not valid base64") from None
    return decode(data, origin)


def from_url(url: str, allow_remote: bool = False, origin: str = "image_url") -> Picture:
    """An OpenAI-style image URL: a ``data:`` URL, raw base64, or (only when
    ``allow_remote``) an ``http(s)`` URL fetched with the time and size limits."""
    if not isinstance(url, str) or not url:
        raise ImageError(f"{origin}: expected a URL")
    head = url[:100].lower()
    if head.startswith("data:"):
        m = _DATA_URL.match(url[:200])
        if not m:
            raise ImageError(f"{origin}: a data URL must be data:image/...;base64,...")
        return from_base64(url[m.end():], origin)
    if head.startswith(("http://", "https://")):
        if not allow_remote:
            raise ImageError(f"{origin}: remote image URLs are not fetched (start the server "
                             f"with --allow-image-urls to allow it); send the image as a "
                             f"data: URL or base64")
        return decode(_fetch(url, origin), origin)
    if re.match(r"[a-z][a-z0-9+.-]*:", head):
        raise ImageError(f"{origin}: unsupported URL scheme (use a data: URL or base64)")
    return from_base64(url, origin)


def _fetch(url: str, origin: str) -> bytes:
    import urllib.error
    import urllib.request
    req = urllib.request.Request(url, headers={"User-Agent": "pyfile"})
    try:
        with urllib.request.urlopen(req, timeout=FETCH_TIMEOUT) as resp:
            data = resp.read(MAX_IMAGE_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise ImageError(f"{origin}: cannot fetch the image ({_why(e)})") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"{origin}: the image is over {MAX_IMAGE_BYTES >> 20} MiB")
    return data


__all__ = ["ALLOWED_FORMATS", "MAX_PIXELS", "MAX_IMAGE_BYTES", "ImageError", "Picture",
           "decode", "from_file", "from_base64", "from_url"]
