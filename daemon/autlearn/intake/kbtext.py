"""Text as the keyboard reads it: the manifest's tokenizer, decoding (BOMs, GB18030), files streamed in pieces.

A round never holds a whole file as one string: a file is read in pieces of READ_BYTES, decoded incrementally,
normalised line by line and split into sentences as they complete, so memory stays bounded by the piece size
whatever the file's length (a line longer than MAX_PENDING_CHARS without a sentence end is cut there).
"""

from __future__ import annotations

import codecs
import errno
import os
import re
import stat
import unicodedata
from typing import Iterable, Iterator

READ_BYTES = 1 << 20
MAX_PENDING_CHARS = 100_000  # an unfinished sentence longer than this is cut (a 10-MB line without a full stop)
# Byte order marks, longest first (UTF-32's LE mark begins with UTF-16's).
BOMS = ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"))
FALLBACK = "gb18030"  # tried when a file without a BOM is not UTF-8 (Chinese text saved by older Windows tools)
_CONTROL = re.compile(r"[\x01-\x08\x0e-\x1f]")  # control characters text does not hold (NUL is refused alone)
# Terminal colour codes (ESC [ … m and the like) are text's, not binary data's: not counted as control characters.
_ESCAPE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")
# The start of an escape sequence cut at a piece's end (held back until the next piece completes it).
_PARTIAL_ESCAPE = re.compile(r"\x1b(?:\[[0-?]{0,64}[ -/]{0,8}|[\]PX^_][^\x07\x1b\n]{0,256}|[ -/]{0,8})\Z")


def sniff(head: bytes) -> tuple[str | None, int]:
    """The encoding a byte order mark declares and the mark's length; (None, 0) without one."""
    for bom, name in BOMS:
        if head.startswith(bom):
            return name, len(bom)
    return None, 0


def _decodes(read, enc: str, skip: int, size: int) -> tuple[bool, str]:
    """Whether bytes [skip, size) read piecewise by `read(offset, n)` decode as `enc`, and the reason if not;
    a NUL or many control characters also fail (binary data)."""
    dec = codecs.getincrementaldecoder(enc)("strict")
    words, controls, chars = False, 0, 0
    offset = skip
    while True:
        raw = read(offset, READ_BYTES)
        offset += len(raw)
        try:
            piece = dec.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            return False, f"not {enc.upper()} text (byte {offset - len(raw) + e.start}: {raw[e.start:e.start + 1]!r})"
        if "\x00" in piece:
            return False, "binary data (NUL characters), not text"
        controls += len(_CONTROL.findall(_ESCAPE.sub("", piece)))
        chars += len(piece)
        words = words or bool(piece.strip())
        if not raw:
            break
    if not words:
        return False, "empty, not text"
    if controls > 0.01 * chars:
        return False, f"binary data ({controls} control characters), not text"
    return True, ""


def encoding_of(read, size: int) -> tuple[str | None, int, str]:
    """(encoding, BOM length, "") for text the keyboard can learn from, else (None, 0, the reason): UTF-8,
    UTF-16/32 with a BOM, or GB18030; binary data and empty files are refused. Reads in pieces."""
    name, skip = sniff(read(0, 4))
    if name:
        ok, reason = _decodes(read, name, skip, size)
        return (name, skip, "") if ok else (None, 0, reason)
    offset = 0
    while offset < size:  # text without a BOM holds no NUL byte (UTF-16/32 without one is not taken)
        raw = read(offset, READ_BYTES)
        if not raw:
            break
        if b"\x00" in raw:
            return None, 0, "binary data (NUL bytes), not text"
        offset += len(raw)
    ok, reason = _decodes(read, "utf-8", 0, size)
    if ok:
        return "utf-8", 0, ""
    if reason.startswith("not "):
        ok, _ = _decodes(read, FALLBACK, 0, size)
        if ok:
            return FALLBACK, 0, ""
        reason += ", nor GB18030 or UTF-16/32 with a byte order mark; save it as UTF-8"
    return None, 0, reason


def text_problem(data: bytes) -> str | None:
    """Why `data` (a whole file's bytes) is not text the keyboard learns from, or None when it is."""
    return encoding_of(lambda off, n: data[off:off + n], len(data))[2] or None


def read_pieces(path: str, max_bytes: int) -> Iterator[str]:
    """The decoded text of a regular file in pieces that end at a line end (or at READ_BYTES without one).
    Opened without blocking and refused (OSError) when it is not a regular file; stops at `max_bytes`; a file
    that is no longer text gives nothing (the next scan judges it again)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        size = min(st.st_size, max_bytes)

        def read(offset: int, n: int) -> bytes:
            return os.pread(fd, max(0, min(n, size - offset)), offset) if offset < size else b""

        enc, offset, _ = encoding_of(read, size)
        if enc is None:
            return
        dec = codecs.getincrementaldecoder(enc)("replace")
        carry = ""
        while True:
            raw = read(offset, READ_BYTES)
            offset += len(raw)
            text = carry + dec.decode(raw, final=not raw)
            cut = text.rfind("\n") + 1 if raw else len(text)
            if cut == 0 and len(text) >= READ_BYTES:
                cut = len(text)
            carry = text[cut:]
            if cut:
                yield text[:cut]
            if not raw:
                break
    finally:
        os.close(fd)


class Tokenizer:
    """The word tokenizer exactly as the manifest's `tokenizer` describes it (the regular expressions decide:
    `kind: "cjk"` bundles match each Chinese/Japanese character as one token)."""

    def __init__(self, spec: dict):
        self.kind = spec.get("kind", "word")
        self.table = str.maketrans({c: "'" for c in spec.get("apostrophes", "")})
        # version 2 bundles remove escape codes and control characters first; older ones keep their behaviour
        self.remove = re.compile(spec["remove_pattern"]) if spec.get("remove_pattern") else None
        self.word = re.compile(spec["word_pattern"])
        self.sentence_end = re.compile(spec["sentence_end_pattern"])
        self.paragraph = re.compile(spec["paragraph_break_pattern"])
        self.boundary = re.compile(f"(?:{spec['sentence_end_pattern']})|(?:{spec['paragraph_break_pattern']})")
        self.lower = bool(spec.get("lowercase", True))
        self.normalization = spec.get("normalization", "NFKC")
        ids = spec.get("special_ids", {})
        self.pad, self.unk, self.bos, self.eos = (ids.get(k, i) for i, k in enumerate(("pad", "unk", "bos", "eos")))

    def _norm(self, text: str) -> str:
        if self.remove is not None:
            text = self.remove.sub("", text)
        text = unicodedata.normalize(self.normalization, text) if self.normalization else text
        return (text.lower() if self.lower else text).translate(self.table)

    def sentences(self, text: str) -> list[list[str]]:
        return self._split(self._norm(text))

    def _split(self, norm: str) -> list[list[str]]:
        out = []
        for paragraph in self.paragraph.split(norm):
            for chunk in self.sentence_end.split(paragraph):
                words = self.word.findall(chunk)
                if words:
                    out.append(words)
        return out

    def stream(self, pieces: Iterable[str]) -> Iterator[list[str]]:
        """The sentences of the concatenated `pieces`, as `sentences` gives them, holding only the unfinished
        sentence between pieces (cut at MAX_PENDING_CHARS)."""
        pending = cut = ""
        for piece in pieces:
            piece = cut + piece
            m = _PARTIAL_ESCAPE.search(piece) if self.remove is not None else None
            piece, cut = (piece[:m.start()], piece[m.start():]) if m else (piece, "")
            pending += self._norm(piece)
            last = None
            for last in self.boundary.finditer(pending):
                pass
            if last is not None:
                done, pending = pending[:last.end()], pending[last.end():]
                yield from self._split(done)
            if len(pending) > MAX_PENDING_CHARS:
                pending = yield from self._long(pending)
        pending += self._norm(cut)
        if pending:
            yield from self._split(pending)

    def _long(self, text: str):
        """Words of an unfinished sentence too long to wait for its end, as sentences of at most 4096 words;
        returns the text of a word that touches the end (it may go on in the next piece)."""
        words: list[str] = []
        rest = ""
        for m in self.word.finditer(text):
            if m.end() == len(text) and m.end() - m.start() < MAX_PENDING_CHARS // 2:
                rest = text[m.start():]
                break
            words.append(m.group())
            if len(words) >= 4096:
                yield words
                words = []
        if words:
            yield words
        return rest

    def context(self, text: str) -> list[str]:
        """The words of the sentence being typed (empty after a sentence end)."""
        norm = self._norm(text)
        last = self.paragraph.split(norm)[-1]
        parts = self.sentence_end.split(last)
        return self.word.findall(parts[-1]) if parts else []
