"""PNG bytes built by hand for the tests: a header that promises more pixels than the file holds."""
from __future__ import annotations

import struct
import zlib


def header_only_png(w: int, h: int) -> bytes:
    """A grey PNG whose header says w x h with one row of data: only the header is ever read by a
    size check, and a decoder that trusts it is a bomb's victim."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    idat = zlib.compress(b"\x00" * (w + 1))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
