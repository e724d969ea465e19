"""Hostile and odd image inputs for the image tests: each is what a careless or malicious
client could send (made here, byte by byte, not downloaded)."""

from __future__ import annotations

import io
import struct
import zlib


def png(size=(8, 8), colour=(255, 0, 0)) -> bytes:
    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def truncated_png() -> bytes:
    """A real PNG cut in the middle of its pixel data."""
    from PIL import Image
    import random
    rnd = random.Random(1)
    im = Image.frombytes("RGB", (64, 64), bytes(rnd.randrange(256) for _ in range(64 * 64 * 3)))
    out = io.BytesIO()
    im.save(out, "PNG")
    data = out.getvalue()
    return data[: len(data) // 2]


def huge_header_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's
    first line: decoding would need 2.7 GB)."""
    data = bytearray(png())
    ihdr = 8 + 8  # signature, then the IHDR chunk's length and type
    struct.pack_into(">II", data, ihdr, width, height)
    crc = zlib.crc32(bytes(data[12:ihdr + 13])) & 0xFFFFFFFF
    struct.pack_into(">I", data, ihdr + 13, crc)
    return bytes(data)


def psd() -> bytes:
    """A Photoshop header (stb_image decodes PSD; we do not)."""
    return (b"8BPS" + struct.pack(">H6xHIIHH", 1, 3, 16, 16, 8, 3)
            + struct.pack(">III", 0, 0, 0) + struct.pack(">H", 0) + bytes(16 * 16 * 3))


def pic() -> bytes:
    """A 97-byte Softimage PIC header, the shape of stb issue #1859's NULL dereference."""
    data = bytearray(97)
    data[0:4] = b"\x53\x80\xf6\x34"
    data[88:92] = b"PICT"
    return bytes(data)


def text() -> bytes:
    return b"this is not an image at all\n"
