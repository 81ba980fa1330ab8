"""Read the members of a tar stream quickly, hashing every byte read: the container layer of the shard reader.

Python's ``tarfile`` parses each 512-byte header field by field in Python (about 80 µs a member); a shard sample
has four to seven members, so that alone would cost more than decoding its JPEG. This reader handles the subset
of the format tar writers produce for plain files: ustar and GNU headers (with their checksum checked), GNU long
names (``L``), pax extended headers (``x``: ``path`` and ``size``), and skips directories, links and global pax
headers. Anything else, a bad checksum, or a stream that ends early raises `TarFormatError`.

Writing stays with ``tarfile`` (shards/writer.py): it is not on the hot path.
"""
from __future__ import annotations

import hashlib
from typing import BinaryIO, Iterator

BLOCK = 512
READ_BLOCK = 1 << 20  # the most one read asks for: a member's declared size is not trusted with memory


class TarFormatError(ValueError):
    """The stream is not a tar this reader understands, or it is truncated or corrupt."""


class HashingReader:
    """A read-only file wrapper that hashes (sha256) and counts every byte read through it."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw, self.sha256, self.bytes = raw, hashlib.sha256(), 0

    def read(self, size: int) -> bytes:
        data = self.raw.read(size)
        self.sha256.update(data)
        self.bytes += len(data)
        return data

    def read_exactly(self, size: int, what: str) -> bytes:
        """``size`` bytes, read in blocks of at most `READ_BLOCK`, so that a size a damaged header declares (up to
        exabytes) costs no more memory than the file holds; `TarFormatError` when the stream ends first."""
        if size < 0:
            raise TarFormatError(f"{what} declares a negative size ({size}): corrupt")
        parts, left = [], size
        while left:
            part = self.read(min(left, READ_BLOCK))
            if not part:
                break
            parts.append(part)
            left -= len(part)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        if len(data) != size:
            raise TarFormatError(f"stream ends inside {what} (wanted {size} bytes, got {len(data)}): truncated")
        return data

    def drain(self) -> None:
        """Read (and hash) what is left, e.g. the tar's end padding."""
        while self.read(1 << 20):
            pass


def _number(field: bytes) -> int:
    """A header number: octal ASCII, or GNU base-256 when the high bit of the first byte is set."""
    if field[:1] and field[0] & 0x80:
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[0] & 0x40 else value
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"bad number field {field!r} in a tar header") from None


def _checksum_ok(header: bytes) -> bool:
    stored = _number(header[148:156])
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])  # the checksum field counts as 8 spaces
    return stored == unsigned


def _pax_records(data: bytes) -> dict[str, str]:
    """The ``length key=value\\n`` records of a pax extended header."""
    out, pos = {}, 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        out[key.decode("utf-8")] = value.decode("utf-8")
        pos += length
    return out


def iter_members(stream: HashingReader) -> Iterator[tuple[str, bytes]]:
    """(name, data) of each regular file in the tar ``stream``, in order; stops at the end-of-archive block.
    Anything it cannot parse (a name that is not UTF-8, a pax record that is not ``length key=value``) is a
    `TarFormatError`."""
    try:
        yield from _members(stream)
    except TarFormatError:
        raise
    except (ValueError, IndexError) as err:  # UnicodeDecodeError is a ValueError
        raise TarFormatError(f"a tar header cannot be parsed ({type(err).__name__}: {err}): corrupt") from None


def _members(stream: HashingReader) -> Iterator[tuple[str, bytes]]:
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = stream.read(BLOCK)
        if not header or header == b"\0" * BLOCK:
            return  # end of archive (or a stream with no end blocks, as some writers leave)
        if len(header) != BLOCK:
            raise TarFormatError(f"stream ends inside a header ({len(header)} of {BLOCK} bytes): truncated")
        if not _checksum_ok(header):
            raise TarFormatError("a tar header fails its checksum: corrupt or not a tar")
        kind = header[156:157]
        size = int(pax["size"]) if "size" in pax else _number(header[124:136])
        data = stream.read_exactly(size, "a member") if size else b""
        padding = -size % BLOCK
        if padding:
            stream.read_exactly(padding, "a member's padding")
        if kind == b"L":
            long_name = data.split(b"\0", 1)[0].decode("utf-8")
            continue
        if kind == b"x":
            pax = _pax_records(data)
            continue
        if kind not in (b"0", b"\0", b"7"):  # directories, links, global pax headers: not sample data
            long_name, pax = None, {}
            continue
        name = header[:100].split(b"\0", 1)[0].decode("utf-8")
        if header[257:263] == b"ustar\0" and header[345]:  # POSIX ustar: a prefix holds the leading folders
            name = header[345:500].split(b"\0", 1)[0].decode("utf-8") + "/" + name
        name = pax.get("path", long_name or name)
        long_name, pax = None, {}
        yield name, data
